"""Int8 quantisation calibrated on generated samples, and ONNX export of a student.

Post-training static quantisation needs inputs to measure each activation's
range, which is the same obstacle as distillation without data; the run's
own sample source (the one distillation learned from) is the calibration
set.  PyTorch's FX graph mode does the work (``torch.ao.quantization``):
per-channel int8 weights, per-tensor int8 activations with histogram
observers, the x86 (fbgemm/oneDNN) kernels.  The result is scripted and frozen
into TorchScript, so a user loads it with plain ``torch.jit.load``.  (PT2E,
now in the separate torchao package, yields q/dq graphs that only get fast
under ``torch.compile``, not a file any torch loads and runs fast.)

ONNX export uses ``torch.onnx.export`` on the scripted float student and
checks the file with ONNX Runtime against it.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import fx, nn
from torch.nn import functional as F

from kegnet_core.errors import UnsupportedModelError
from kegnet_core.export import atomic_save, fold_batch_norms, folded_or_as_trained
from kegnet_core.measure import latency_figure_s
from kegnet_core.sources import SampleSource

QUANTIZED_ENGINE = "x86"
CALIBRATION_BATCHES = 16
CALIBRATION_BATCH_SIZE = 64
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17
# What an int8 copy costs, for a time budget, in passes at batch 64 of the float model on the
# CPU (where quantisation runs): a calibration batch through the histogram observers, with the
# preparing and converting, costs OBSERVED_PASS plain passes (measured 6-8 on three suite
# teachers, 2026-12-03); then the agreement of the int8 and float models over up to 2,000
# probes (2 x 32 passes) and the saved file's check; plus scripting, freezing and saving.
OBSERVED_PASS = 8.0
# Calibration inputs are clipped at this quantile of their own magnitudes (docs/design.md, Int8).
CALIBRATION_CLIP_QUANTILE = 0.99
INT8_FIXED_S = 1.0


def int8_seconds(cpu_forward_s: float, *, measure_latency: bool) -> float:
    """About what :func:`kegnet_core.stages.quantize_student` takes where the float model's pass at
    batch 64 takes ``cpu_forward_s`` on the CPU (its latency figures too, with ``measure_latency``)."""
    passes = CALIBRATION_BATCHES * OBSERVED_PASS + 2 * 32 + 2
    seconds = INT8_FIXED_S + passes * cpu_forward_s
    if measure_latency:  # int8 passes counted as float ones: an upper bound
        seconds += latency_figure_s(cpu_forward_s) + latency_figure_s(cpu_forward_s / 32)
    return seconds


def calibration_batches(
    source: SampleSource,
    *,
    seed: int,
    device: torch.device,
    batches: int = CALIBRATION_BATCHES,
    batch_size: int = CALIBRATION_BATCH_SIZE,
) -> list[torch.Tensor]:
    """Fresh draws from ``source`` (made on ``device``, returned on the CPU) to measure
    activation ranges on, clipped at the :data:`CALIBRATION_CLIP_QUANTILE` of their magnitudes.

    Inputs synthesised against a teacher have tails that real inputs lack (photos-vgg's: 99% of
    values within 2.6, the extremes at 12, its real images within 2.6), and one range per tensor,
    from the model's input on, is stretched to cover them, leaving real inputs a fifth of the
    int8 steps."""
    rng = torch.Generator(device).manual_seed(seed + 7919)
    drawn = [source.sample(batch_size, rng).detach().float().cpu() for _ in range(batches)]
    magnitudes = torch.cat([batch.flatten() for batch in drawn]).abs()
    magnitudes = magnitudes[:: max(1, magnitudes.numel() // 2**22)]  # a quantile of <= 8 M values
    limit = magnitudes.kthvalue(max(1, int(CALIBRATION_CLIP_QUANTILE * magnitudes.numel()))).values
    return [batch.clamp(-limit, limit) for batch in drawn]


def quantize_int8(model: nn.Module, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """A CPU int8 copy of ``model`` (static: weights per channel, activations per tensor), its
    activation ranges measured on ``calibration``."""
    form, _ = quantisable_form(model, tuple(calibration[0].shape[1:]))
    return quantize_form(form, calibration)


def quantize_form(float_model: nn.Module, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """:func:`quantize_int8` of a model already in :func:`quantisable_form` (a caller that also
    measures that form makes it once)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if QUANTIZED_ENGINE not in torch.backends.quantized.supported_engines:
        raise UnsupportedModelError(f"this torch build has no {QUANTIZED_ENGINE} int8 kernels")
    if torch.backends.quantized.engine != QUANTIZED_ENGINE:
        torch.backends.quantized.engine = QUANTIZED_ENGINE
    example = (calibration[0][:1],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that PT2E moved to torchao
        try:
            prepared = prepare_fx(float_model, get_default_qconfig_mapping(QUANTIZED_ENGINE), example)
            with torch.no_grad():
                for batch in calibration:
                    prepared(batch)
            return convert_fx(prepared)
        except Exception as exc:  # FX tracing or an op without an int8 kernel
            raise UnsupportedModelError(f"the student could not be quantised to int8: {exc}") from exc


def _aten(*names: str) -> set[object]:
    """The packets and default overloads of these aten ops, as the loader's graph calls them."""
    ops: set[object] = set()
    for name in names:
        packet = getattr(torch.ops.aten, name)
        ops.update({packet, packet.default})
    return ops


# The loader writes a TorchScript model's ops as aten calls, which torch.ao's patterns do not
# know: there each one becomes a float island (dequantise, run, quantise again) and a convolution
# followed by ``aten.relu`` is not fused.  These are the same functions as torch.ao knows them.
_FUNCTIONAL_FORMS: dict[object, Callable[..., object]] = {
    **dict.fromkeys(_aten("relu"), F.relu),
    **dict.fromkeys(_aten("max_pool2d"), F.max_pool2d),
    **dict.fromkeys(_aten("avg_pool2d"), F.avg_pool2d),
    **dict.fromkeys(_aten("adaptive_avg_pool2d"), F.adaptive_avg_pool2d),
    **dict.fromkeys(_aten("hardtanh"), F.hardtanh),
}
_FLATTEN = {torch.ops.aten.flatten, torch.ops.aten.flatten.using_ints}
_ADD = {torch.ops.aten.add, torch.ops.aten.add.Tensor}
_MEAN = {torch.ops.aten.mean, torch.ops.aten.mean.dim}
_RESHAPE = _aten("view", "reshape") | {torch.Tensor.view}


def quantisable_form(model: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[nn.Module, int]:
    """``model`` (a copy, on the CPU) in the form torch.ao quantises best, and how many BatchNorm
    layers were folded: each BatchNorm that reads only a convolution's output folded into it (as
    the float student file has it), so the convolution, its ReLU and the BatchNorm become one int8
    kernel; given the ``input_shape``, each factorised layer in its cheapest exact form (as the
    float student file stores it, :func:`kegnet_core.export.folded_or_as_trained`: fewer operations, so
    fewer int8 kernels and requantisations); the loader's aten calls written as the functions
    torch.ao's patterns name (ReLU, pools, flatten, mean, a two-tensor add), so they run on int8
    tensors; and views as reshapes, since int8 kernels return channels-last tensors.  The
    function is the same to float precision.

    Ops that write into their input (the loader marks them) are left as they are."""
    model = copy.deepcopy(model).cpu().eval()
    if not isinstance(model, fx.GraphModule):
        return model, 0
    model, folded = fold_batch_norms(model)
    if input_shape is not None:
        factored, _ = folded_or_as_trained(model, input_shape)
        assert isinstance(factored, fx.GraphModule)  # folding swaps submodules, not the graph
        model = factored
    for node in model.graph.nodes:
        if node.meta.get("mutates", False):
            continue
        if node.op == "call_method" and node.target == "view":
            node.target = "reshape"
        elif node.op != "call_function":
            continue
        elif node.target in _FUNCTIONAL_FORMS:
            node.target = _FUNCTIONAL_FORMS[node.target]
        elif node.target in _FLATTEN:
            node.target = torch.flatten
        elif node.target in _RESHAPE and len(node.args) == 2 and not node.kwargs:
            node.op, node.target = "call_method", "reshape"
        elif (
            node.target in _ADD
            and len(node.args) == 2
            and all(isinstance(arg, fx.Node) for arg in node.args)
            and node.kwargs.get("alpha", 1) == 1
        ):
            node.target = torch.add
        elif node.target in _MEAN and not node.kwargs and (len(node.args) < 4 or node.args[3] is None):
            node.target, node.args = torch.mean, tuple(node.args[:3])
    model.graph.lint()
    model.recompile()
    return model, folded


def save_int8(quantized: nn.Module, path: str | Path, input_shape: Sequence[int]) -> torch.jit.ScriptModule:
    """Script, freeze and save the int8 model atomically; check the saved file reproduces it
    at two batch sizes."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # scripted, not traced: a trace would freeze the example's batch size into reshapes
            scripted = torch.jit.freeze(torch.jit.script(quantized).eval())
        except Exception as exc:
            raise UnsupportedModelError(f"the int8 student could not be scripted: {exc}") from exc
        atomic_save(scripted, path)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
        for batch in (1, 5):
            x = torch.randn(batch, *input_shape)
            if not torch.allclose(quantized(x), loaded(x), atol=1e-5):
                path.unlink(missing_ok=True)
                raise UnsupportedModelError("the saved int8 student does not reproduce the quantised one")
    return loaded


def export_onnx(
    model: nn.Module | torch.jit.ScriptModule,
    path: str | Path,
    input_shape: Sequence[int],
    reference: torch.jit.ScriptModule,
) -> float:
    """Write ``model`` as ONNX (batch size free) and return the largest difference of its
    outputs (ONNX Runtime) from ``reference``'s on random inputs; raise past 1e-4.

    Pass a scripted model where you can: scripting keeps ``x.size(0)`` a graph op, where
    exporting a plain module traces it and freezes the example's batch size into reshapes
    (which the check then catches)."""
    import onnxruntime

    path = Path(path)
    if not isinstance(model, torch.jit.ScriptModule):
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    example = torch.randn(1, *input_shape)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".onnx-", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                model,
                (example,),
                scratch,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(scratch, options, providers=["CPUExecutionProvider"])
        difference = 0.0
        with torch.no_grad():
            for batch in (1, 7):
                x = torch.randn(batch, *input_shape)
                (answer,) = session.run(None, {"input": x.numpy()})
                difference = max(difference, float((torch.from_numpy(answer) - reference(x)).abs().max()))
        if difference > ONNX_TOLERANCE:
            raise UnsupportedModelError(
                f"the ONNX student differs from the TorchScript one by {difference:.2e} "
                f"(over {ONNX_TOLERANCE})"
            )
        os.replace(scratch, path)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # an op the exporter or ONNX Runtime does not know
        raise UnsupportedModelError(f"the student could not be exported to ONNX: {exc}") from exc
    finally:
        Path(scratch).unlink(missing_ok=True)
    return difference
