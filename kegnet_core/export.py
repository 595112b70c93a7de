"""Deliver models as TorchScript that loads anywhere with plain ``torch.jit.load``.

The student is scripted (not traced), so the batch size stays free and the
weights stay parameters that can be fine-tuned further.  Every file is
written to a temporary name, loaded back and compared with the model it came
from, and only then renamed into place.
"""

from __future__ import annotations

import copy
import io
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from kegnet_core.archive import ArchiveLimits
from kegnet_core.errors import UnsupportedModelError
from kegnet_core.loading import with_original_answers
from kegnet_core.tucker import CONVOLUTIONS, Conv, TuckerConv, TuckerLinear, cheapest_exact_form


class GeneratorModule(nn.Module):
    """A trained generator as users receive it: G(y, z) -> x, eval mode.

    ``n_classes`` and ``noise_dim`` ride along as attributes so a user can
    build y and z without knowing the run's settings.
    """

    def __init__(self, generator: nn.Module, n_classes: int, noise_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.n_classes = n_classes
        self.noise_dim = noise_dim

    def forward(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(labels, noise)


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # GraphModule's attributes trigger a harmless TorchScript annotation warning.
        warnings.simplefilter("ignore", UserWarning)
        return torch.jit.script(module)


def atomic_save(module: torch.jit.ScriptModule, path: Path) -> None:
    """Write ``module`` to ``path``, packed by :func:`compact_archive`, through a temporary file."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(compact_archive(buffer.getvalue()))
    os.replace(temporary, path)


# An entry deflated further than this stays stored: archive scanners (ours: ArchiveLimits) read
# an entry that expands too far as a zip bomb, and a student file must pass them as an upload.
COMPACT_MAX_RATIO = ArchiveLimits().max_compression_ratio / 2
COMPACT_ROOT = "m"
COMPACT_LEVEL = 6  # zlib's default: level 9 takes twice as long for under 1% more


def compact_archive(archive: bytes) -> bytes:
    """A TorchScript archive re-packed to load the same in less space: each entry deflated where
    that saves bytes, the debug tables (``*.debug_pkl``: where each line of the serialised code
    came from in the original Python, for tracebacks) left out, which ``torch.jit.load`` does
    without, and a one-letter top folder.

    What this saves is mostly fixed cost: debug tables, per-entry headers, the zero points of
    int8 weights; weights themselves deflate by a few percent (int8 ones by about 7%).  torch
    writes records stored for zero-copy reads; the loader inflates deflated ones, so only
    loading (not running) is slower, by the inflate."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(out, "w") as packed:
        for info in source.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            data = source.read(info)
            # Every entry sits under one top folder, whose name the loader ignores; a one-letter
            # one saves twice its length per entry (local and central headers).
            entry = zipfile.ZipInfo(f"{COMPACT_ROOT}/{info.filename.split('/', 1)[1]}", info.date_time)
            squeezed = len(zlib.compress(data, COMPACT_LEVEL))
            if squeezed < len(data) and len(data) <= COMPACT_MAX_RATIO * max(squeezed, 1):
                entry.compress_type = zipfile.ZIP_DEFLATED
                packed.writestr(entry, data, compresslevel=COMPACT_LEVEL)
            else:
                packed.writestr(entry, data)
    return out.getvalue()


@dataclass(frozen=True)
class SavedStudent:
    """The student file as loaded back, and the inference form it was saved in."""

    module: torch.jit.ScriptModule
    batch_norms_folded: int
    memory_format: str  # "channels_last" or "contiguous"
    # Factorised layers stored in another exact form: layer -> "first folded", "last folded", "dense".
    factor_forms: dict[str, str] = field(default_factory=dict)
    inference: nn.Module | None = None  # the eager module that was scripted and saved


_BATCH_NORM = (torch.ops.aten.batch_norm, torch.ops.aten.batch_norm.default, torch.batch_norm)


def _folding_target(model: fx.GraphModule, node: fx.Node) -> Conv | None:
    """The convolution whose only output ``node`` normalises (a Tucker twin's last 1x1), if any;
    none where the convolution is called more than once (its weights are shared)."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return None
    calls = sum(other.op == "call_module" and other.target == source.target for other in model.graph.nodes)
    if calls != 1:
        return None
    module = model.get_submodule(str(source.target))
    if isinstance(module, TuckerConv):
        return module.last
    return module if type(module) in CONVOLUTIONS else None  # type: ignore[return-value]


def _tensor_at(model: fx.GraphModule, value: object) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, fx.Node) or value.op != "get_attr":
        raise LookupError("not an attribute")
    target = str(value.target)
    parameters = dict(model.named_parameters())
    tensor = parameters[target] if target in parameters else model.get_buffer(target)
    return tensor.detach()


@dataclass(frozen=True)
class _Norm:
    """An inference-mode BatchNorm's affine parameters and running statistics."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    mean: torch.Tensor
    var: torch.Tensor
    eps: float


def _inference_norm(model: fx.GraphModule, node: fx.Node) -> _Norm | None:
    """What ``node`` normalises with, where it is a BatchNorm on running statistics."""
    if node.op == "call_function" and node.target in _BATCH_NORM:
        args = [*node.args, *[None] * 8]
        if args[5] is not False:  # batch statistics: nothing fixed to fold
            return None
        try:
            weight, bias, mean, var = (_tensor_at(model, args[index]) for index in (1, 2, 3, 4))
        except LookupError:
            return None
        eps = args[7]
    elif node.op == "call_module" and isinstance(
        norm := model.get_submodule(str(node.target)), (nn.BatchNorm1d, nn.BatchNorm2d)
    ):
        if norm.training:
            return None
        weight, bias, mean, var, eps = norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
    else:
        return None
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor) or not isinstance(eps, float):
        return None
    return _Norm(weight=weight, bias=bias, mean=mean.detach(), var=var.detach(), eps=eps)


def fold_batch_norms(model: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``model`` with each inference-mode BatchNorm that reads only a convolution's
    output folded into that convolution's weights and bias, and how many were folded.

    The function is the same to float precision; the normalisation's pass over the activations
    is gone.  BatchNorm layers anywhere else stay as they are."""
    model = copy.deepcopy(model)
    folded = 0
    for node in list(model.graph.nodes):
        norm = _inference_norm(model, node)
        conv = _folding_target(model, node) if norm is not None else None
        if norm is None or conv is None:
            continue
        with torch.no_grad():
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.mean, norm.var, norm.eps, norm.weight, norm.bias
            )
        # A bias made from nothing (a convolution without one) comes back frozen: the file's
        # parameters all stay trainable, as the student's were.
        assert conv.bias is not None
        conv.bias.requires_grad_(conv.weight.requires_grad)
        node.replace_all_uses_with(node.args[0])
        model.graph.erase_node(node)
        folded += 1
    if folded:
        # In-place ops without a ``.default`` overload (``add_``, ``mul_``) count as pure to fx:
        # the loader's ``mutates`` mark keeps them.
        model.graph.eliminate_dead_code(
            is_impure_node=lambda node: node.is_impure() or bool(node.meta.get("mutates", False))
        )
        model.graph.lint()
        model.recompile()
        model.delete_all_unused_submodules()
    return model, folded


_VIEWS = {
    torch.ops.aten.view: torch.ops.aten.reshape,
    torch.ops.aten.view.default: torch.ops.aten.reshape.default,
}


def views_as_reshapes(model: fx.GraphModule) -> fx.GraphModule:
    """``model`` (changed in place) with its ``view`` calls made ``reshape``: the same result, which
    is a view wherever ``view`` would work, and a copy where the input's strides do not allow a
    view (a channels-last activation flattened for a linear head).  Left as it is where any node
    mutates its input, so no write can go through a reshape's copy."""
    nodes = list(model.graph.nodes)
    if any(node.meta.get("mutates", False) for node in nodes):
        return model
    changed = False
    for node in nodes:
        if node.op == "call_function" and node.target in _VIEWS:
            node.target = _VIEWS[node.target]
            changed = True
        elif node.op == "call_method" and node.target == "view":
            node.target = "reshape"
            changed = True
    if changed:
        model.recompile()
    return model


@torch.no_grad()
def fold_factors(model: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Module, dict[str, str]]:
    """``model`` (changed in place) with each factorised layer in its cheapest exact form
    (:func:`kegnet_core.tucker.cheapest_exact_form`: fewest multiply-accumulates, no more
    parameters), and which layers changed form.  The function is the same to float precision."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (TuckerConv, TuckerLinear))
    }
    positions: dict[str, tuple[int, int]] = {}

    def recorder(name: str) -> Any:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, TuckerConv):  # positions: (N, C, H, W) or (N, C, L) after C
                positions.setdefault(name, (math.prod(args[0].shape[2:]), math.prod(output.shape[2:])))
            else:
                positions.setdefault(name, (1, 1))

        return record

    hooks = [module.register_forward_hook(recorder(name)) for name, module in layers.items()]
    try:
        device = next(iter(model.parameters())).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    changed = {}
    for name, layer in layers.items():
        if name not in positions:
            continue  # not run on this input: left as trained
        form = cheapest_exact_form(layer, *positions[name])
        if form.module is not layer:
            model.set_submodule(name, form.module)
            changed[name] = form.name
    return model, changed


def folded_or_as_trained(model: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` with its factors folded (:func:`fold_factors`) and the forms chosen;
    ``model`` itself and no forms where folding fails, so the factors stay as trained."""
    try:
        return fold_factors(copy.deepcopy(model), input_shape)
    except Exception:  # an op the forward hooks or a form cannot take
        return model, {}


def _has_convolutions(model: nn.Module) -> bool:
    return any(parameter.dim() == 4 for parameter in model.parameters())


def save_student(student: nn.Module, path: str | Path, input_shape: Sequence[int]) -> SavedStudent:
    """Script ``student`` (a copy, on the CPU) in its inference form, check it against the
    trained one, and save it atomically.

    The inference form folds BatchNorm into the convolutions it follows, stores each factorised
    layer in its cheapest exact form (:func:`fold_factors`) and a convolutional model's weights
    channels-last, which makes PyTorch's CPU convolutions run in
    that layout (1.3-2x faster at batch 64 on the suite's CNNs, docs/benchmarks.md); a model that
    cannot run channels-last (a ``view`` of a convolution's output) is saved as it is laid out.
    The file is still a plain TorchScript model with parameters: callers feed it the usual
    contiguous inputs."""
    path = Path(path)
    student = with_original_answers(student)  # probabilities again, where the teacher gave them
    plain = copy.deepcopy(student).cpu().eval()
    model, folded = plain, 0
    if isinstance(plain, fx.GraphModule):
        model, folded = fold_batch_norms(plain)
        model = views_as_reshapes(model)
    variants: list[tuple[nn.Module, dict[str, str]]] = []
    factored, factor_forms = folded_or_as_trained(model, input_shape)
    if factor_forms:
        variants.append((factored, factor_forms))
    variants.append((model, {}))  # the factors as trained, should the folded form not save
    # The fastest form first; last, the student exactly as trained (nothing folded or rewritten).
    forms: list[tuple[nn.Module, int, dict[str, str], str]] = []
    for variant, variant_forms in variants:
        if _has_convolutions(variant):
            laid_out = copy.deepcopy(variant).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            forms.append((laid_out, folded, variant_forms, "channels_last"))
        forms.append((variant, folded, variant_forms, "contiguous"))
    if model is not plain:
        forms.append((plain, 0, {}, "contiguous"))
    failure: Exception | None = None
    for candidate, candidate_folded, candidate_forms, memory_format in forms:
        try:
            loaded = _save_checked(candidate, student, path, input_shape)
        except Exception as exc:  # the next form, or the error below
            failure = exc
            continue
        return SavedStudent(
            module=loaded,
            batch_norms_folded=candidate_folded,
            memory_format=memory_format,
            factor_forms=candidate_forms,
            inference=candidate,
        )
    if isinstance(failure, UnsupportedModelError):
        raise failure
    raise UnsupportedModelError(f"the compressed model could not be scripted: {failure}") from failure


def _save_checked(
    model: nn.Module, reference: nn.Module, path: Path, input_shape: Sequence[int]
) -> torch.jit.ScriptModule:
    """Script and save ``model``; load it back and hold it to ``reference`` (the trained student)."""
    scripted = _script(model)
    atomic_save(scripted, path)
    loaded = torch.jit.load(str(path), map_location="cpu")
    reference = copy.deepcopy(reference).cpu().eval()
    with torch.no_grad():
        for batch in (1, 5):
            x = torch.randn(batch, *input_shape)
            expected, actual = reference(x), loaded(x)
            if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-5):
                path.unlink(missing_ok=True)
                raise UnsupportedModelError("the saved student does not reproduce the trained one")
    return loaded


def save_generator(generator: nn.Module, path: str | Path, n_classes: int, noise_dim: int) -> Path:
    """Script one trained generator as a standalone G(y, z) -> x and save it."""
    path = Path(path)
    module = GeneratorModule(copy.deepcopy(generator).cpu().eval(), n_classes, noise_dim).eval()
    atomic_save(_script(module), path)
    return path


def optimised_for_inference(saved: Path, input_shape: Sequence[int]) -> tuple[torch.jit.ScriptModule, float]:
    """The TorchScript at ``saved`` as ``torch.jit.optimize_for_inference`` makes it at load time
    (frozen, BatchNorm folded into the convolutions, oneDNN layouts), and the largest output
    difference from the file as saved.

    That form cannot be saved (its oneDNN constants do not serialise), so the report measures it
    and says how to get it; it has no parameters left (docs/benchmarks.md, "Student latency")."""
    reference = torch.jit.load(str(saved), map_location="cpu").eval()
    try:
        optimised = torch.jit.optimize_for_inference(torch.jit.load(str(saved), map_location="cpu").eval())
        difference = 0.0
        with torch.no_grad():
            for batch in (1, 5, 64):
                x = torch.randn(batch, *input_shape)
                difference = max(difference, float((optimised(x) - reference(x)).abs().max()))
    except Exception as exc:
        raise UnsupportedModelError(f"the model could not be optimised for inference: {exc}") from exc
    return optimised, difference
