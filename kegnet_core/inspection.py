"""What the teacher itself shows: its BatchNorm statistics, its classes, its cost.

The recipe may adapt to these and to nothing else: no data set and no
statistic of one ever enters compression.  The teacher is the editable
``fx.GraphModule`` that :func:`kegnet_core.loading.load_classifier` returns,
where a BatchNorm is an ``aten.batch_norm`` call whose running mean and
variance are buffers of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn


@dataclass(frozen=True)
class BatchNormStats:
    """One BatchNorm in evaluation mode: the statistics of real inputs it was trained on."""

    name: str  # the module path of its running mean (``layers1.0.bn1``)
    running_mean: torch.Tensor  # (C,)
    running_var: torch.Tensor  # (C,)


def _is_batch_norm(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    target = getattr(node.target, "__name__", str(node.target))
    return "batch_norm" in target and "backward" not in target


def _buffer(model: nn.Module, node: object) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    owner: object = model
    for part in str(node.target).split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner if isinstance(owner, torch.Tensor) else None


def _batch_norm_nodes(model: fx.GraphModule) -> list[tuple[fx.Node, BatchNormStats]]:
    found = []
    for node in model.graph.nodes:
        if not _is_batch_norm(node) or len(node.args) < 6:
            continue
        mean, var = _buffer(model, node.args[3]), _buffer(model, node.args[4])
        if mean is None or var is None or node.args[5] is not False:
            continue  # batch statistics in use, or stats that are not stored: nothing to match
        assert isinstance(node.args[3], fx.Node)
        name = str(node.args[3].target).rsplit(".", 1)[0]
        found.append((node, BatchNormStats(name, mean.detach(), var.detach())))
    return found


def batch_norm_stats(model: nn.Module) -> list[BatchNormStats]:
    """Every evaluation-mode BatchNorm of ``model``, in the order they run (none for plain modules)."""
    if not isinstance(model, fx.GraphModule):
        return []
    return [stats for _, stats in _batch_norm_nodes(model)]


class BatchNormTap(nn.Module):
    """The teacher, returning its logits and the input of each BatchNorm: ``(logits, [x_1, ...])``.

    It shares the teacher's parameters (no copy); the inputs come in the order
    of :func:`batch_norm_stats`.
    """

    def __init__(self, model: fx.GraphModule) -> None:
        super().__init__()
        nodes = _batch_norm_nodes(model)
        self.stats = [stats for _, stats in nodes]
        graph = fx.Graph()
        mapping: dict[fx.Node, fx.Node] = {}
        logits = graph.graph_copy(model.graph, mapping)
        graph.output((logits, tuple(mapping[node.args[0]] for node, _ in nodes)))  # type: ignore[index]
        self.module = fx.GraphModule(model, graph)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return self.module(x)


def batch_norm_distance(inputs: Sequence[torch.Tensor], stats: Sequence[BatchNormStats]) -> torch.Tensor:
    """Sum over BatchNorms of ||batch mean - running mean|| + ||batch var - running var||.

    The DeepInversion / ZeroQ statistic: how far a batch's activations are
    from those of the data the teacher was trained on, layer by layer.
    """
    total = inputs[0].new_zeros(()) if inputs else torch.zeros(())
    for x, layer in zip(inputs, stats, strict=True):
        dims = [0, *range(2, x.dim())]  # every axis but the channel's
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        total = (
            total
            + torch.linalg.vector_norm(mean - layer.running_mean.to(x.device))
            + torch.linalg.vector_norm(var - layer.running_var.to(x.device))
        )
    return total


Moments = tuple[torch.Tensor, torch.Tensor, int]


def channel_moments(x: torch.Tensor) -> Moments:
    """Per channel: the sum and the sum of squares over every other axis, and their count."""
    dims = [0, *range(2, x.dim())]
    return x.sum(dim=dims), x.square().sum(dim=dims), x.numel() // max(x.size(1), 1)


def moments_distance(moments: Sequence[Moments], stats: Sequence[BatchNormStats]) -> torch.Tensor:
    """:func:`batch_norm_distance` from each layer's summed moments (a batch seen in chunks)."""
    total = moments[0][0].new_zeros(()) if moments else torch.zeros(())
    for (sums, squares, count), layer in zip(moments, stats, strict=True):
        mean = sums / count
        var = (squares / count - mean.square()).clamp_min(0)
        total = (
            total
            + torch.linalg.vector_norm(mean - layer.running_mean.to(mean.device))
            + torch.linalg.vector_norm(var - layer.running_var.to(mean.device))
        )
    return total
