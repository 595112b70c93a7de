"""Tucker-2 factorised layers and the choice of which layers and ranks to use.

A Conv2d weight (out, in, k, k) (or a Conv1d's, (out, in, k)) factorises over its two channel modes into
``out_factor (out, r_out)``, ``core (r_out, r_in, k, k)`` and
``in_factor (in, r_in)``: a 1x1 conv down to r_in channels, the core KxK conv,
and a 1x1 conv up to ``out`` channels that keeps the bias.  A Linear weight is
the same with k = 1.  Factorisation follows KegNet's reference: partial
Tucker by higher-order orthogonal iteration from an SVD start.  Given sample
inputs (:func:`layer_moments`), the factors are instead chosen for the error
they cause in the layer's *output* on those inputs (:func:`tucker2_on_activations`,
activation-aware low rank as in ASVD / SVD-LLM): the input factor by the SVD
of the weights whitened by the input channels' second moment, the output
factor by the principal directions of the output channels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import tensorly
import torch
from tensorly.decomposition import partial_tucker
from torch import fx, nn

from kegnet_core.errors import SpecError
from kegnet_core.evbmf import evbmf_rank

Ranks = tuple[int, int]  # (out_rank, in_rank)
Conv = nn.Conv1d | nn.Conv2d
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)  # the convolutions Tucker-2 factorises: signals and images


def tucker2(
    weight: torch.Tensor, ranks: Ranks, *, n_iter_max: int = 100, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partial Tucker of ``weight`` over modes 0 and 1: (core, out_factor, in_factor)."""
    array = weight.detach().to("cpu", torch.float64).numpy()
    with tensorly.backend_context("numpy"):
        (core, (out_factor, in_factor)), _errors = partial_tucker(
            array, rank=list(ranks), modes=[0, 1], init="svd", n_iter_max=n_iter_max, random_state=seed
        )
    dtype = weight.dtype
    return (
        torch.as_tensor(core, dtype=dtype),
        torch.as_tensor(out_factor, dtype=dtype),
        torch.as_tensor(in_factor, dtype=dtype),
    )


@dataclass(frozen=True)
class LayerMoments:
    """Uncentred second moments of a layer's input channels and of its output channels less
    the bias, over sample inputs (and every spatial position of a conv)."""

    inputs: torch.Tensor  # (in, in), float64
    outputs: torch.Tensor  # (out, out), float64


@torch.no_grad()
def layer_moments(
    model: nn.Module, names: Sequence[str], inputs: torch.Tensor, *, batch_size: int = 128
) -> dict[str, LayerMoments]:
    """Each named Conv1d / Conv2d / Linear layer's :class:`LayerMoments` as ``model`` runs on
    ``inputs``."""
    sums: dict[str, list[torch.Tensor]] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x, y = args[0].detach().double(), output.detach().double()
            bias = getattr(module, "bias", None)
            # conv: (N, C, H, W) or (N, C, L); linear: (..., C)
            channels = -1 if isinstance(module, nn.Linear) else 1
            if bias is not None:
                y = y - bias.double().reshape([-1] + [1] * (y.dim() - 2) if channels == 1 else [-1])
            x = x.movedim(channels, -1).reshape(-1, x.shape[channels])
            y = y.movedim(channels, -1).reshape(-1, y.shape[channels])
            moments = [x.T @ x, y.T @ y]
            if name in sums:
                moments = [a + b for a, b in zip(sums[name], moments, strict=True)]
            sums[name] = moments
            counts[name] += x.shape[0]

        return hook

    device = next(model.parameters()).device
    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: LayerMoments(sums[name][0].cpu() / counts[name], sums[name][1].cpu() / counts[name])
        for name in names
        if name in sums
    }


def _input_roots(moments: LayerMoments) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(root, inverse root) of the input channels' second moment C = root root^T, or None where
    the moments are unusable (non-finite, or no signal)."""
    c_in, c_out = moments.inputs.double(), moments.outputs.double()
    if not (torch.isfinite(c_in).all() and torch.isfinite(c_out).all()) or torch.trace(c_in) <= 0:
        return None
    values, vectors = torch.linalg.eigh(c_in)
    values = values.clamp_min(values.max() * 1e-8)
    return vectors * values.sqrt(), vectors / values.sqrt()


def tucker2_on_activations(
    weight: torch.Tensor, ranks: Ranks, moments: LayerMoments
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(core, out_factor, in_factor) chosen for the output error on the inputs ``moments`` saw,
    or None where the moments are unusable (non-finite, or no signal).

    With C the input channels' second moment and C = Q diag(l) Q^T, the weight
    unfolded over its input channels, A (in, out*k*k), is whitened to
    A^T Q diag(sqrt l); its best rank-r_in approximation U S V^T gives the
    input factor (Q diag(1/sqrt l) V)^T, the best possible for the output
    error with inputs of that second moment.  The output factor is the top
    r_out eigenvectors of the output channels' second moment.  Full ranks
    reproduce the weight exactly."""
    out_rank, in_rank = ranks
    w = weight.detach().to("cpu", torch.float64)
    out_channels, in_channels = w.shape[:2]
    kernel = w.shape[2:]
    roots = _input_roots(moments)
    if roots is None:
        return None
    root, inverse_root = roots
    c_out = moments.outputs.double()
    unfolded = w.transpose(0, 1).reshape(in_channels, -1)  # (in, out*k*k)
    u, s, vh = torch.linalg.svd(unfolded.T @ root, full_matrices=False)
    # Past the unfolding's own rank the extra input channels carry nothing (zero factors).
    in_factor = torch.zeros(in_channels, in_rank, dtype=w.dtype)
    kept = min(in_rank, len(s))
    in_factor[:, :kept] = inverse_root @ vh[:kept].T
    projected = torch.zeros(in_rank, out_channels * kernel.numel(), dtype=w.dtype)
    projected[:kept] = (u[:, :kept] * s[:kept]).T
    # Unit columns, the scale in the core, as in a plain Tucker: Adam moves every weight by
    # about its learning rate, so a whitened factor of tiny entries would be wiped out at once.
    norms = in_factor.norm(dim=0).clamp_min(1e-12)
    in_factor = in_factor / norms
    projected = projected * norms[:, None]
    projected = projected.reshape(in_rank, out_channels, *kernel).transpose(0, 1)  # (out, r_in, k, k)
    out_values, out_vectors = torch.linalg.eigh(c_out)
    out_factor = out_vectors[:, torch.argsort(out_values, descending=True)[:out_rank]]  # (out, r_out)
    core = torch.einsum("or,oi...->ri...", out_factor, projected)
    dtype = weight.dtype
    return core.to(dtype), out_factor.to(dtype), in_factor.to(dtype)


def _factors(
    weight: torch.Tensor, ranks: Ranks, n_iter_max: int, seed: int, moments: LayerMoments | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    factors = tucker2_on_activations(weight, ranks, moments) if moments is not None else None
    return factors if factors is not None else tucker2(weight, ranks, n_iter_max=n_iter_max, seed=seed)


class TuckerConv(nn.Module):
    """1x1 conv (in -> r_in), KxK core conv (r_in -> r_out), 1x1 conv (r_out -> out), each of
    the factorised convolution's kind (Conv1d or Conv2d)."""

    def __init__(self, conv: Conv, ranks: Ranks) -> None:
        super().__init__()
        out_rank, in_rank = ranks
        kind = type(conv)
        self.first = kind(conv.in_channels, in_rank, 1, bias=False)
        self.core = kind(
            in_rank,
            out_rank,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            bias=False,
            padding_mode=conv.padding_mode,
        )
        self.last = kind(out_rank, conv.out_channels, 1, bias=conv.bias is not None)

    @classmethod
    def from_conv(
        cls,
        conv: Conv,
        ranks: Ranks,
        *,
        n_iter_max: int = 100,
        seed: int = 0,
        moments: LayerMoments | None = None,
    ) -> TuckerConv:
        """The factorised twin of ``conv``: its partial Tucker, or with ``moments`` the factors
        for the output error on those inputs."""
        if conv.groups != 1:
            raise ValueError("only convolutions with groups=1 can be Tucker-factorised")
        layer = cls(conv, ranks)
        core, out_factor, in_factor = _factors(conv.weight, ranks, n_iter_max, seed, moments)
        with torch.no_grad():
            layer.first.weight.copy_(in_factor.T.reshape(layer.first.weight.shape))  # (r_in, in, 1, 1)
            layer.core.weight.copy_(core)  # (r_out, r_in, k, k)
            layer.last.weight.copy_(out_factor.reshape(layer.last.weight.shape))  # (out, r_out, 1, 1)
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))


class TuckerLinear(nn.Module):
    """Linear in -> r_in, core r_in -> r_out, Linear r_out -> out (with the bias)."""

    def __init__(self, linear: nn.Linear, ranks: Ranks) -> None:
        super().__init__()
        out_rank, in_rank = ranks
        self.first = nn.Linear(linear.in_features, in_rank, bias=False)
        self.core = nn.Linear(in_rank, out_rank, bias=False)
        self.last = nn.Linear(out_rank, linear.out_features, bias=linear.bias is not None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        ranks: Ranks,
        *,
        n_iter_max: int = 100,
        seed: int = 0,
        moments: LayerMoments | None = None,
    ) -> TuckerLinear:
        """The factorised twin of ``linear``: its partial Tucker, or with ``moments`` the factors
        for the output error on those inputs."""
        layer = cls(linear, ranks)
        core, out_factor, in_factor = _factors(linear.weight, ranks, n_iter_max, seed, moments)
        with torch.no_grad():
            layer.first.weight.copy_(in_factor.T)  # (r_in, in)
            layer.core.weight.copy_(core)  # (r_out, r_in)
            layer.last.weight.copy_(out_factor)  # (out, r_out)
            if linear.bias is not None:
                layer.last.bias.copy_(linear.bias)
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))


# --------------------------------------------------------------------------
# The same function in fewer operations, for the saved file


@dataclass(frozen=True)
class ExactForm:
    """One way to store a trained factorised layer that computes the same function: ``"three"``
    (as trained), ``"first folded"`` (the input 1x1 merged into the core), ``"last folded"``
    (the output 1x1 merged into the core) or ``"dense"`` (all three multiplied out)."""

    name: str
    module: nn.Module
    params: int
    macs: int  # multiply-accumulates per input at the layer's spatial size
    calls: int


def _conv_from(
    template: Conv,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, ...] | None = None,
) -> Conv:
    """A convolution of ``template``'s kind and geometry (its stride unless ``stride`` is given)
    holding ``weight`` and ``bias``."""
    conv = type(template)(
        weight.shape[1],
        weight.shape[0],
        tuple(weight.shape[2:]),  # type: ignore[arg-type]
        stride=stride or template.stride,  # type: ignore[arg-type]
        padding=template.padding,  # type: ignore[arg-type]
        dilation=template.dilation,  # type: ignore[arg-type]
        bias=bias is not None,
        padding_mode=template.padding_mode,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None and conv.bias is not None:
            conv.bias.copy_(bias)
    return conv.to(template.weight.device, template.weight.dtype)


def _params(*modules: nn.Module) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def _conv_forms(layer: TuckerConv, in_positions: int, out_positions: int) -> list[ExactForm]:
    first = layer.first.weight.detach().double().flatten(1)  # (r_in, in)
    core = layer.core.weight.detach().double()  # (r_out, r_in, kh, kw) or (r_out, r_in, k)
    last = layer.last.weight.detach().double().flatten(1)  # (out, r_out)
    bias = layer.last.bias.detach() if layer.last.bias is not None else None
    out_rank, in_rank, *kernel = core.shape
    in_channels, out_channels, taps = first.shape[1], last.shape[0], math.prod(kernel)
    pointwise_shape = [1] * len(kernel)
    # A 1x1 core without padding only subsamples: its stride can move to the first 1x1, which then
    # runs on the output's positions.
    pointwise = taps == 1 and (layer.core.padding == "valid" or not any(layer.core.padding))
    first_positions = out_positions if pointwise else in_positions
    first_stride: tuple[int, ...] = layer.core.stride if pointwise else (1,) * len(kernel)
    forms = [
        ExactForm(
            "three",
            layer,
            _params(layer),
            in_positions * in_channels * in_rank
            + out_positions * (out_rank * in_rank * taps + out_channels * out_rank),
            3,
        )
    ]
    merged_first = torch.einsum("oi...,ic->oc...", core, first)
    a = _conv_from(layer.core, merged_first.float(), None)
    b = _conv_from(layer.last, last.reshape(*last.shape, *pointwise_shape).float(), bias)
    forms.append(
        ExactForm(
            "first folded",
            nn.Sequential(a, b),
            _params(a, b),
            out_positions * (out_rank * in_channels * taps + out_channels * out_rank),
            2,
        )
    )
    merged_last = torch.einsum("co,oi...->ci...", last, core)
    c = _conv_from(
        layer.first, first.reshape(*first.shape, *pointwise_shape).float(), None, stride=first_stride
    )
    d = _conv_from(layer.core, merged_last.float(), bias, stride=(1,) * len(kernel) if pointwise else None)
    forms.append(
        ExactForm(
            "last folded",
            nn.Sequential(c, d),
            _params(c, d),
            first_positions * in_channels * in_rank + out_positions * out_channels * in_rank * taps,
            2,
        )
    )
    dense = _conv_from(layer.core, torch.einsum("co,oi...,ij->cj...", last, core, first).float(), bias)
    forms.append(
        ExactForm("dense", dense, _params(dense), out_positions * out_channels * in_channels * taps, 1)
    )
    return forms


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None and linear.bias is not None:
            linear.bias.copy_(bias)
    return linear.to(like.weight.device, like.weight.dtype)


def _linear_forms(layer: TuckerLinear) -> list[ExactForm]:
    first = layer.first.weight.detach().double()  # (r_in, in)
    core = layer.core.weight.detach().double()  # (r_out, r_in)
    last = layer.last.weight.detach().double()  # (out, r_out)
    bias = layer.last.bias.detach() if layer.last.bias is not None else None
    a, b = (
        _linear_from((core @ first).float(), None, layer.first),
        _linear_from(last.float(), bias, layer.last),
    )
    c, d = (
        _linear_from(first.float(), None, layer.first),
        _linear_from((last @ core).float(), bias, layer.last),
    )
    dense = _linear_from((last @ core @ first).float(), bias, layer.last)

    def weights(*modules: nn.Module) -> int:  # multiply-accumulates: the weight matrices' entries
        return sum(module.weight.numel() for module in modules if isinstance(module, nn.Linear))

    return [
        ExactForm("three", layer, _params(layer), weights(layer.first, layer.core, layer.last), 3),
        ExactForm("first folded", nn.Sequential(a, b), _params(a, b), weights(a, b), 2),
        ExactForm("last folded", nn.Sequential(c, d), _params(c, d), weights(c, d), 2),
        ExactForm("dense", dense, _params(dense), weights(dense), 1),
    ]


def exact_forms(
    layer: TuckerConv | TuckerLinear, in_positions: int = 1, out_positions: int = 1
) -> list[ExactForm]:
    """Every exact form of ``layer``, as trained first (``in_positions`` and ``out_positions``:
    how many spatial positions a convolution's input and output have)."""
    if isinstance(layer, TuckerConv):
        return _conv_forms(layer, in_positions, out_positions)
    return _linear_forms(layer)


def cheapest_exact_form(
    layer: TuckerConv | TuckerLinear, in_positions: int = 1, out_positions: int = 1
) -> ExactForm:
    """The form of ``layer`` with the fewest multiply-accumulates (then the fewest calls) among
    those with no more parameters than it has: the model stays at least as small as planned.

    A rank close to its layer's channel count leaves a factor that costs more
    than it saves: a 24-channel convolution at ranks (23, 23) holds more parameters and MACs
    than the dense one, and a 1x1 convolution or a Linear never needs its core as a third
    operation."""
    forms = exact_forms(layer, in_positions, out_positions)
    allowed = [form for form in forms if form.params <= forms[0].params]
    return min(allowed, key=lambda form: (form.macs, form.calls))


# --------------------------------------------------------------------------
# Which layers, which ranks


@dataclass(frozen=True)
class LayerPlan:
    """One layer to factorise: its path, shape and chosen ranks."""

    name: str
    kind: str  # "conv2d", "conv1d" or "linear"
    weight_shape: tuple[int, ...]
    ranks: Ranks
    params_before: int
    params_after: int


@dataclass(frozen=True)
class CompressionPlan:
    """The layers to factorise and what the whole model's size becomes."""

    layers: tuple[LayerPlan, ...]
    params_before: int
    params_after: int

    @property
    def compression_ratio(self) -> float:
        return self.params_before / self.params_after

    @property
    def ranks(self) -> dict[str, list[int]]:
        return {layer.name: list(layer.ranks) for layer in self.layers}


def factorisable_layers(model: nn.Module) -> dict[str, Conv | nn.Linear]:
    """Every Conv1d and Conv2d with groups=1 and every Linear, by module path."""
    return {
        name: module
        for name, module in model.named_modules()
        if (isinstance(module, CONVOLUTIONS) and module.groups == 1) or isinstance(module, nn.Linear)
    }


def grouped_convolutions(model: nn.Module) -> dict[str, Conv]:
    """The convolutions Tucker-2 leaves alone (groups > 1: grouped and depthwise), by module path."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, CONVOLUTIONS) and module.groups > 1
    }


def _execution_order(model: nn.Module) -> list[str]:
    """Factorisable layers in the order they run (in a traced graph; else as registered)."""
    layers = factorisable_layers(model)
    if isinstance(model, fx.GraphModule):
        calls = [str(node.target) for node in model.graph.nodes if node.op == "call_module"]
        return list(dict.fromkeys(name for name in calls if name in layers))
    return list(layers)


def output_layer(model: nn.Module) -> str | None:
    """The factorisable layer that runs last.

    By default it is left dense: it produces the class scores, and a low rank
    there caps how many classes the student can tell apart.
    """
    ordered = _execution_order(model)
    return ordered[-1] if ordered else None


def default_layers(model: nn.Module) -> list[str]:
    """The layers factorised when the user names none: all but the first and the last.

    The first layer reads the raw input through few channels: it holds few
    parameters, and EVBMF often gives it rank 1, which loses most of the
    input (on the 8x8 digits demo, 70.6% instead of 94.8% real accuracy).
    The last is the output layer (see :func:`output_layer`).  A model with
    only two such layers keeps its first one in the choice.
    """
    ordered = _execution_order(model)
    skip = {ordered[-1]} if ordered else set()
    if len(ordered) > 2:
        skip.add(ordered[0])
    return [name for name in ordered if name not in skip]


def _weight_4d(module: Conv | nn.Linear) -> torch.Tensor:
    """The weight as (out, in, kh, kw): a Conv1d's as (out, in, k, 1), a Linear's as (out, in, 1, 1)."""
    weight = module.weight.detach()
    return weight.reshape(*weight.shape, *[1] * (4 - weight.dim()))


def factorised_params(module: Conv | nn.Linear, ranks: Ranks) -> int:
    """Parameters of the Tucker-2 twin of ``module`` at ``ranks``."""
    out_channels, in_channels, kh, kw = _weight_4d(module).shape
    out_rank, in_rank = ranks
    bias = out_channels if module.bias is not None else 0
    return in_channels * in_rank + out_rank * in_rank * kh * kw + out_rank * out_channels + bias


def dense_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _unfoldings(module: Conv | nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    weight = _weight_4d(module)
    return weight.flatten(1), weight.transpose(0, 1).flatten(1)


def evbmf_ranks(module: Conv | nn.Linear) -> Ranks:
    """Ranks EVBMF keeps on the output- and input-channel unfoldings (at least 1)."""
    out_unfolding, in_unfolding = _unfoldings(module)
    return max(1, evbmf_rank(out_unfolding)), max(1, evbmf_rank(in_unfolding))


def fraction_ranks(module: Conv | nn.Linear, keep: float) -> Ranks:
    out_channels, in_channels = _weight_4d(module).shape[:2]
    return max(1, round(keep * out_channels)), max(1, round(keep * in_channels))


def _energy_curve(matrix: torch.Tensor) -> torch.Tensor:
    """The share of the squared singular values held by the first 1, 2, ... of them."""
    s2 = torch.linalg.svdvals(matrix.to(torch.float64)) ** 2
    return torch.cumsum(s2, 0) / s2.sum()


def _rank_at(curve: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values hold ``energy`` of the squared total."""
    return min(int(torch.searchsorted(curve, torch.tensor(energy, dtype=torch.float64))) + 1, len(curve))


def _energy_curves(module: Conv | nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Both unfoldings' energy curves (output side, input side): computed once per layer, as a
    search over energy levels reads them at every level (30 SVDs per layer before, 2026-12-05:
    98 of 102 s of a 224k-parameter model's validation on a loaded 2-core machine)."""
    out_unfolding, in_unfolding = _unfoldings(module)
    return _energy_curve(out_unfolding), _energy_curve(in_unfolding)


RankSpec = str | float | Mapping[str, Sequence[int]]


def _explicit_ranks(name: str, module: Conv | nn.Linear, ranks: Sequence[int]) -> Ranks:
    out_channels, in_channels = _weight_4d(module).shape[:2]
    if len(ranks) != 2 or not all(isinstance(r, int) for r in ranks):
        raise SpecError(f"ranks for {name!r} must be [out_rank, in_rank], got {list(ranks)}", field="ranks")
    out_rank, in_rank = ranks
    if not (1 <= out_rank <= out_channels and 1 <= in_rank <= in_channels):
        raise SpecError(
            f"ranks {list(ranks)} for {name!r} are impossible: out_rank must be in 1..{out_channels} "
            f"and in_rank in 1..{in_channels}",
            field="ranks",
        )
    return out_rank, in_rank


def _choose_layers(
    candidates: dict[str, Conv | nn.Linear],
    all_modules: dict[str, nn.Module],
    layers: Sequence[str],
    *,
    field: str = "layers",
) -> dict[str, Conv | nn.Linear]:
    """The named layers; a name that cannot be factorised is blamed on ``field`` (``ranks`` where
    explicit ranks named the layers)."""
    chosen: dict[str, Conv | nn.Linear] = {}
    for name in layers:
        if name not in candidates:
            module = all_modules.get(name)
            holds_weight = module is not None and "weight" in dict(module.named_parameters(recurse=False))
            if type(module) is nn.Module and holds_weight:
                raise SpecError(
                    f"layer {name!r} holds weights that its model does not use as one Conv1d, Conv2d "
                    "or Linear layer (they are used by more than one call, or as a transposed or 3-D "
                    "convolution), so it cannot be factorised",
                    field=field,
                )
            if name in all_modules:
                raise SpecError(
                    f"layer {name!r} is a {type(all_modules[name]).__name__}; only Conv1d and Conv2d "
                    "(groups=1) and Linear layers can be factorised",
                    field=field,
                )
            known = ", ".join(sorted(candidates)) or "none"
            raise SpecError(f"layer {name!r} is not in the model; factorisable layers: {known}", field=field)
        chosen[name] = candidates[name]
    return chosen


# What ``ranks="auto"`` aims at: the whole model at least this much smaller.
AUTO_RATIO = 2.0


def plan_compression(
    model: nn.Module,
    *,
    layers: Sequence[str] | None = None,
    ranks: RankSpec = "auto",
    target_ratio: float | None = None,
) -> CompressionPlan:
    """Choose the layers and ranks to factorise.

    ``layers`` names module paths; ``None`` means every layer where the chosen
    ranks save parameters, except the first and the output layer
    (:func:`default_layers`).  ``ranks`` is ``"auto"`` (the ranks that make
    the whole model :data:`AUTO_RATIO` times smaller, see below),
    ``"evbmf"``, a keep fraction in (0, 1], or ``{layer: [out_rank, in_rank]}``
    (which then also names the layers).  ``target_ratio`` overrides ``ranks``:
    one energy level for all layers is searched so that the whole model
    shrinks at least that much.

    ``"auto"`` exists because EVBMF, which reads only the weights, cuts most
    of the suite's teachers 10 to 25 times and leaves them at chance (10%)
    before distillation (docs/design.md); a user who asks for no ratio gets a
    model half the size that distillation can bring back to its teacher.
    When the default layers cannot reach that ratio, the first layer joins them.
    """
    from_auto = ranks == "auto" and target_ratio is None
    if from_auto:
        target_ratio = AUTO_RATIO
        if layers is None:
            return _auto_plan(model)
    candidates = factorisable_layers(model)
    named_by_ranks = False
    if layers is None and isinstance(ranks, Mapping) and target_ratio is None:
        layers, named_by_ranks = list(ranks), True  # explicit ranks name their layers
    if layers is None:
        keep = set(default_layers(model))
        chosen = {name: module for name, module in candidates.items() if name in keep}
    else:
        chosen = _choose_layers(
            candidates, dict(model.named_modules()), layers, field="ranks" if named_by_ranks else "layers"
        )
    total = sum(p.numel() for p in model.parameters())
    if target_ratio is not None:
        try:
            return _plan_for_ratio(chosen, total, target_ratio, explicit=layers is not None)
        except SpecError as exc:
            if not from_auto or exc.field != "target_ratio":
                raise
            reach = _rank_one_plan(chosen, total)
            raise SpecError(
                f"the default ranks ('auto') make the whole model {AUTO_RATIO:g}x smaller, which "
                f"factorising only {sorted(chosen)} cannot: at rank 1 they give "
                f"{reach.compression_ratio:.2f}x; name ranks for them (e.g. {{layer: [out_rank, "
                "in_rank]}}), a keep fraction such as 0.5, 'evbmf', or more layers",
                field="ranks",
            ) from None

    if isinstance(ranks, Mapping):
        unknown = sorted(set(ranks) - set(chosen))
        if unknown:
            raise SpecError(f"ranks given for layers that are not chosen: {unknown}", field="ranks")
        missing = sorted(set(chosen) - set(ranks))
        if missing:
            raise SpecError(f"ranks missing for chosen layers: {missing}", field="ranks")
        picked = {name: _explicit_ranks(name, module, ranks[name]) for name, module in chosen.items()}
    elif isinstance(ranks, str):
        if ranks != "evbmf":
            raise SpecError(
                f"ranks must be 'auto', 'evbmf', a fraction or a mapping, got {ranks!r}", field="ranks"
            )
        picked = {name: evbmf_ranks(module) for name, module in chosen.items()}
    elif isinstance(ranks, (int, float)) and not isinstance(ranks, bool):
        if not 0 < ranks <= 1:
            raise SpecError(f"a keep fraction must be in (0, 1], got {ranks}", field="ranks")
        picked = {name: fraction_ranks(module, float(ranks)) for name, module in chosen.items()}
    else:
        raise SpecError(
            f"ranks must be 'auto', 'evbmf', a fraction or a mapping, got {ranks!r}", field="ranks"
        )
    return _make_plan(chosen, picked, total, keep_all=layers is not None)


def _auto_plan(model: nn.Module) -> CompressionPlan:
    """The :data:`AUTO_RATIO` plan over the default layers, or over every layer but the output one."""
    try:
        return plan_compression(model, ranks="evbmf", target_ratio=AUTO_RATIO)
    except SpecError:
        ordered = _execution_order(model)
        wider = [name for name in ordered[:-1]] if len(ordered) > 1 else ordered
        try:
            if set(wider) == set(default_layers(model)):
                raise
            return plan_compression(model, layers=wider, ranks="evbmf", target_ratio=AUTO_RATIO)
        except SpecError as exc:
            raise _auto_out_of_reach(model, wider) from exc


def _auto_out_of_reach(model: nn.Module, layers: Sequence[str]) -> SpecError:
    """Why ``ranks="auto"`` (which the user may never have named) cannot make ``model``
    :data:`AUTO_RATIO` times smaller, and what to ask for instead."""
    candidates = factorisable_layers(model)
    chosen = {name: candidates[name] for name in layers if name in candidates}
    total = sum(p.numel() for p in model.parameters())
    reach = _rank_one_plan(chosen, total).compression_ratio
    ordered = _execution_order(model)
    output = f" and the output layer {ordered[-1]!r}" if ordered else ""
    untouched = 1 - sum(dense_params(module) for module in chosen.values()) / max(1, total)
    grouped = sum(dense_params(module) for module in grouped_convolutions(model).values())
    why = (
        f"; grouped or depthwise convolutions, which are never factorised, hold {grouped / max(1, total):.0%}"
        if grouped
        else ""
    )
    everything = {
        **chosen,
        **({ordered[-1]: candidates[ordered[-1]]} if ordered and ordered[-1] in candidates else {}),
    }
    widest = _rank_one_plan(everything, total).compression_ratio
    naming = (
        " or name the layers to factorise, the output layer among them"
        if widest >= AUTO_RATIO
        else f" (even the output layer too would give only {widest:.2f}x)"
    )
    return SpecError(
        f"the default ranks ('auto') make a model {AUTO_RATIO:g}x smaller, which this one cannot be: "
        f"factorising every layer but the output one, at rank 1, gives {reach:.2f}x "
        f"({untouched:.0%} of the parameters are in layers that cannot be factorised{output}{why}); "
        f"ask for less (target_ratio below {reach:.2f}){naming}",
        field="ranks",
    )


def _conv_kind(conv: Conv) -> str:
    """``"conv1d"`` or ``"conv2d"``, whatever subclass of either ``conv`` is."""
    return "conv1d" if isinstance(conv, nn.Conv1d) else "conv2d"


def _make_plan(
    chosen: dict[str, Conv | nn.Linear], picked: dict[str, Ranks], total: int, *, keep_all: bool
) -> CompressionPlan:
    plans = []
    after = total
    for name, module in chosen.items():
        before, factorised = dense_params(module), factorised_params(module, picked[name])
        if factorised >= before and not keep_all:
            continue  # factorising this layer would not save anything
        plans.append(
            LayerPlan(
                name=name,
                kind="linear" if isinstance(module, nn.Linear) else _conv_kind(module),
                weight_shape=tuple(module.weight.shape),
                ranks=picked[name],
                params_before=before,
                params_after=factorised,
            )
        )
        after += factorised - before
    return CompressionPlan(layers=tuple(plans), params_before=total, params_after=after)


def _rank_one_plan(chosen: dict[str, Conv | nn.Linear], total: int) -> CompressionPlan:
    """Every chosen layer at rank 1: the most these layers can shrink the model."""
    return _make_plan(chosen, {name: (1, 1) for name in chosen}, total, keep_all=False)


def _plan_for_ratio(
    chosen: dict[str, Conv | nn.Linear], total: int, target: float, *, explicit: bool
) -> CompressionPlan:
    if not target > 1:
        raise SpecError(f"target_ratio must be above 1, got {target}", field="target_ratio")

    curves = {name: _energy_curves(module) for name, module in chosen.items()}

    def plan_at(energy: float) -> CompressionPlan:
        picked = {name: (_rank_at(out, energy), _rank_at(inp, energy)) for name, (out, inp) in curves.items()}
        return _make_plan(chosen, picked, total, keep_all=False)

    smallest = _rank_one_plan(chosen, total)
    if smallest.compression_ratio < target:
        raise SpecError(
            f"target_ratio {target} is out of reach: factorising "
            f"{'these layers' if explicit else 'every layer'} at rank 1 gives "
            f"{smallest.compression_ratio:.2f}x",
            field="target_ratio",
        )
    return _highest_energy_plan(plan_at, target) or smallest


def _highest_energy_plan(
    plan_at: Callable[[float], CompressionPlan], target: float
) -> CompressionPlan | None:
    """The plan at the highest energy level in [0, 1] that is still ``target`` times smaller
    (bisection, 30 rounds); None where no level tried reaches it."""
    low, high, best = 0.0, 1.0, None
    for _ in range(30):
        middle = (low + high) / 2
        plan = plan_at(middle)
        if plan.compression_ratio >= target:
            low, best = middle, plan
        else:
            high = middle
    return best


def plan_without(
    model: nn.Module, plan: CompressionPlan, dropped: Sequence[str], target: float
) -> CompressionPlan | None:
    """``plan`` less the ``dropped`` layers, its ranks searched again (one energy level of the
    weights, as for ``target_ratio``) so that the model is still ``target`` times smaller; None
    where the other layers cannot get there."""
    chosen = {
        layer.name: module
        for layer in plan.layers
        if layer.name not in dropped
        and isinstance(module := model.get_submodule(layer.name), (*CONVOLUTIONS, nn.Linear))
    }
    if not chosen:
        return None
    try:
        found = _plan_for_ratio(chosen, plan.params_before, target, explicit=False)
    except SpecError:
        return None
    return found if found.compression_ratio >= target else None


def shape_twin(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """A copy of ``model`` with each planned layer swapped for an untrained factorised twin of the
    planned ranks: the shapes of the student, for timing it, without fitting any factor."""
    twin = copy.deepcopy(model)
    for layer in plan.layers:
        module = twin.get_submodule(layer.name)
        if isinstance(module, CONVOLUTIONS):
            twin.set_submodule(layer.name, TuckerConv(module, layer.ranks).to(module.weight.device))
        elif isinstance(module, nn.Linear):
            twin.set_submodule(layer.name, TuckerLinear(module, layer.ranks).to(module.weight.device))
    return twin


def activation_spectra(
    weight: torch.Tensor, moments: LayerMoments
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The output energy along each output direction (eigenvalues of the output channels' second
    moment) and through each input direction (squared singular values of the whitened input
    unfolding, as in :func:`tucker2_on_activations`), largest first; None where unusable."""
    w = weight.detach().to("cpu", torch.float64)
    roots = _input_roots(moments)
    if roots is None:
        return None
    unfolded = w.transpose(0, 1).reshape(w.shape[1], -1)
    through_inputs = torch.linalg.svdvals(unfolded.T @ roots[0]) ** 2
    along_outputs = torch.linalg.eigvalsh(moments.outputs.double()).clamp_min(0).flip(0)
    return along_outputs, through_inputs


def _spectrum_rank(spectrum: torch.Tensor, energy: float, limit: int) -> int:
    cumulative = torch.cumsum(spectrum, 0) / spectrum.sum().clamp_min(1e-300)
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64))) + 1
    return max(1, min(rank, limit))


def plan_on_activations(
    model: nn.Module, plan: CompressionPlan, moments: Mapping[str, LayerMoments], target: float
) -> CompressionPlan:
    """``plan``'s layers with ranks chosen again from what the inputs ``moments`` saw: one energy
    level of every layer's activation spectra (:func:`activation_spectra`) is searched so that
    the model is at least ``target`` times smaller.  ``plan`` itself where a layer's moments are
    missing or unusable, or no level reaches the target."""
    chosen: dict[str, Conv | nn.Linear] = {}
    spectra = {}
    for layer in plan.layers:
        module = model.get_submodule(layer.name)
        if layer.name not in moments or not isinstance(module, (*CONVOLUTIONS, nn.Linear)):
            return plan
        found = activation_spectra(module.weight, moments[layer.name])
        if found is None:
            return plan
        chosen[layer.name], spectra[layer.name] = module, found
    total = plan.params_before

    def plan_at(energy: float) -> CompressionPlan:
        picked = {}
        for name, module in chosen.items():
            out_channels, in_channels = _weight_4d(module).shape[:2]
            along, through = spectra[name]
            picked[name] = (
                _spectrum_rank(along, energy, out_channels),
                _spectrum_rank(through, energy, in_channels),
            )
        return _make_plan(chosen, picked, total, keep_all=True)

    return _highest_energy_plan(plan_at, target) or plan


def apply_plan(
    model: nn.Module,
    plan: CompressionPlan,
    *,
    n_iter_max: int = 100,
    seed: int = 0,
    inplace: bool = False,
    moments: Mapping[str, LayerMoments] | None = None,
) -> nn.Module:
    """The model with each planned layer swapped for its Tucker-2 twin; layers with
    ``moments`` (from :func:`layer_moments` on the original model) are factorised for their
    output error on those inputs."""
    student = model if inplace else copy.deepcopy(model)
    for layer in plan.layers:
        module = student.get_submodule(layer.name)
        seen = (moments or {}).get(layer.name)
        twin: nn.Module
        if isinstance(module, CONVOLUTIONS):
            twin = TuckerConv.from_conv(module, layer.ranks, n_iter_max=n_iter_max, seed=seed, moments=seen)
        elif isinstance(module, nn.Linear):
            twin = TuckerLinear.from_linear(
                module, layer.ranks, n_iter_max=n_iter_max, seed=seed, moments=seen
            )
        else:
            raise TypeError(f"{layer.name} is a {type(module).__name__}, not Conv1d, Conv2d or Linear")
        student.set_submodule(layer.name, twin)
    return student
