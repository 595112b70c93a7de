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
checks the file with ONNX Runtime against it.  The int8 ONNX file is that
float file quantised by ONNX Runtime's own static quantiser on the same
calibration samples, in the QDQ form (QuantizeLinear / DequantizeLinear
pairs around float ops, int8 weights per channel, uint8 activations) that
ONNX Runtime and OpenVINO read and fuse into int8 kernels.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from kegnet_core.errors import UnsupportedModelError
from kegnet_core.export import atomic_save, fold_batch_norms, folded_or_as_trained
from kegnet_core.loading import with_original_answers
from kegnet_core.measure import latency_figure_s
from kegnet_core.sources import SampleSource

QUANTIZED_ENGINE = "x86"
CALIBRATION_BATCHES = 16
CALIBRATION_BATCH_SIZE = 64
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17
# What the int8 ONNX file costs beyond the TorchScript one, in float passes at batch 64: ONNX
# Runtime's calibration runs each calibration batch through the float graph with a minimum and a
# maximum of every tensor as outputs (counted as two passes), then the agreement over the probes
# (2 x 32 passes).
ONNX_CALIBRATION_PASS = 2.0
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
    passes += CALIBRATION_BATCHES * ONNX_CALIBRATION_PASS + 2 * 32  # the int8 ONNX file
    seconds = 2 * INT8_FIXED_S + passes * cpu_forward_s
    if measure_latency:  # int8 passes counted as float ones: an upper bound; ONNX float and int8
        seconds += 3 * (latency_figure_s(cpu_forward_s) + latency_figure_s(cpu_forward_s / 32))
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
    model = with_original_answers(copy.deepcopy(model).cpu().eval())
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


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` (``threads`` intra-op threads; its default where
    None)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: the quantiser's graphs draw warnings on shapes
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_forward(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``session`` as a function of a CPU tensor batch, returning its first output."""
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return forward


def compact_onnx(path: str | Path) -> None:
    """Rewrite the ONNX file at ``path`` with short value names, no node names and no doc
    strings: the same graph, computing the same, in fewer bytes.

    Exporters and the quantiser name every value after the module path it came from
    (``/layer1/conv1/Conv_output_0_QuantizeLinear_Output``), and each name is stored wherever
    the value is read; on a small int8 student those names are a fifth of the file."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    keep = {value.name for value in (*graph.input, *graph.output)}
    names: dict[str, str] = {}
    # Subgraphs (If, Loop) read outer values by name: there only the doc strings go.
    nested = any(
        attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for attribute in node.attribute
    )

    def short(name: str) -> str:
        if not name or name in keep or nested:
            return name
        return names.setdefault(name, f"v{len(names):x}")

    for initializer in graph.initializer:
        initializer.name = short(initializer.name)
        initializer.doc_string = ""
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for info in graph.value_info:
        info.name = short(info.name)
    graph.doc_string = ""
    model.doc_string = ""
    del model.metadata_props[:]
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".onnx-", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, scratch)
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)


def quantize_onnx(
    float_path: str | Path, path: str | Path, calibration: Sequence[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write a static int8 copy of the float ONNX model at ``float_path`` to ``path`` (QDQ form:
    int8 weights per output channel, uint8 activations per tensor, their ranges measured by ONNX
    Runtime on ``calibration``) and return it, loaded in ONNX Runtime, as a function.

    The file is checked by running it at two batch sizes; a model ONNX Runtime cannot quantise
    or run raises :class:`UnsupportedModelError`, and nothing is left at ``path``."""
    path = Path(path)
    work = tempfile.mkdtemp(dir=path.parent, prefix=".onnx-int8-")
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        name = onnx_session(float_path, threads=1).get_inputs()[0].name

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(calibration)

            def get_next(self) -> dict[str, Any] | None:
                batch = next(self.batches, None)
                return None if batch is None else {name: batch.detach().cpu().float().numpy()}

        prepared = Path(work) / "prepared.onnx"
        try:  # shape inference and graph clean-up, as ONNX Runtime advises before quantising
            quant_pre_process(str(float_path), str(prepared))
        except Exception:  # a graph the symbolic shape inference cannot follow: quantise it as it is
            prepared = Path(float_path)
        scratch = Path(work) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared),
                str(scratch),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # uint8 activations: with int8 ones ONNX Runtime's x86 graph left convolutions in
                # float between dequantisations (docs/design.md, Int8 and ONNX).
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        compact_onnx(scratch)
        forward = onnx_forward(onnx_session(scratch))
        example = calibration[0][:7].detach().cpu().float()
        for batch in (example[:1], example):
            answer = forward(batch)
            if answer.shape[0] != batch.shape[0] or not bool(torch.isfinite(answer).all()):
                raise UnsupportedModelError("the int8 ONNX student gives no finite answer per input")
        os.replace(scratch, path)  # the session checked above holds the same model: it is returned
        return forward
    except UnsupportedModelError:
        raise
    except Exception as exc:  # an op ONNX Runtime's quantiser or runtime does not take
        raise UnsupportedModelError(
            "ONNX Runtime's quantiser or runtime could not make an int8 ONNX file of this graph "
            f"({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}); the TorchScript int8"
            " file stands"
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
        compact_onnx(scratch)
        forward = onnx_forward(onnx_session(scratch, threads=1))
        difference = 0.0
        with torch.no_grad():
            for batch in (1, 7):
                x = torch.randn(batch, *input_shape)
                difference = max(difference, float((forward(x) - reference(x)).abs().max()))
        if difference > ONNX_TOLERANCE:
            raise UnsupportedModelError(
                f"the ONNX student differs from the TorchScript one by {difference:.2e} "
                f"(over {ONNX_TOLERANCE})"
            )
        os.replace(scratch, path)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # an op the exporter or ONNX Runtime does not know
        # The exporter's first sentence says what it could not do; the rest is its graph dump.
        first = str(exc).strip().split("  [Caused by", 1)[0].splitlines()
        reason = first[0].strip() if first else type(exc).__name__
        raise UnsupportedModelError(f"the student could not be exported to ONNX: {reason}") from exc
    finally:
        Path(scratch).unlink(missing_ok=True)
    return difference
