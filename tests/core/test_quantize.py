"""The int8 student and the ONNX export: files a plain torch / ONNX Runtime loads, and checks
that fail when the outputs do not match."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from kegnet_core.archive import inspect_torchscript_archive
from kegnet_core.errors import SpecError, UnsupportedModelError
from kegnet_core.loading import load_classifier
from kegnet_core.pipeline import run
from kegnet_core.quantize import (
    calibration_batches,
    compact_onnx,
    export_onnx,
    onnx_forward,
    onnx_session,
    quantisable_form,
    quantize_int8,
    quantize_onnx,
    save_int8,
)
from kegnet_core.report import Report
from kegnet_core.spec import CompressionSpec
from kegnet_core.tucker import apply_plan, plan_compression

from .models import randomise_batchnorm

SHAPE = (3, 16, 16)

FRESH_INT8_CHECK = """
import json, sys, torch
model = torch.jit.load(sys.argv[1])
shape = json.loads(sys.argv[2])
outs = [tuple(model(torch.randn(batch, *shape)).shape) for batch in (1, 9)]
leaked = [m for m in sys.modules if m.split('.')[0] in ('kegnet_core', 'kegnet_cli', 'api', 'worker')]
assert not leaked, leaked
print(json.dumps(outs))
"""


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.b1 = nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        x = torch.max_pool2d(x + torch.relu(self.c3(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _teacher_file(folder: Path) -> Path:
    path = folder / "teacher.pt"
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(randomise_batchnorm(SmallCNN())), buffer)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> nn.Module:
    torch.manual_seed(0)
    teacher = load_classifier(_teacher_file(tmp_path_factory.mktemp("teacher")), SHAPE).eval()
    plan = plan_compression(teacher, layers=None, ranks="auto", target_ratio=None)
    return apply_plan(teacher, plan, n_iter_max=20, seed=0).eval()


def _gaussian(batches: int, scale: float = 1.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(64, *SHAPE, generator=generator) * scale for _ in range(batches)]


def _relative_error(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = reference(x)
        return float((model(x) - expected).norm() / expected.norm())


def test_the_int8_student_is_a_smaller_file_that_plain_torch_runs(student, tmp_path):
    float_path, int8_path = tmp_path / "float.pt", tmp_path / "int8.pt"
    torch.jit.save(torch.jit.script(student), str(float_path))
    saved = save_int8(quantize_int8(student, _gaussian(8)), int8_path, SHAPE)
    assert int8_path.stat().st_size * 3 < float_path.stat().st_size
    # Packed small: deflated, no debug tables, and still an archive that passes as an upload.
    with zipfile.ZipFile(int8_path) as archive:
        names = archive.namelist()
        assert any(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    assert not [name for name in names if name.endswith(".debug_pkl")]
    assert inspect_torchscript_archive(int8_path).entries == len(names)
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(2))
    assert _relative_error(saved, student, x) < 0.1
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH_INT8_CHECK, str(int8_path), json.dumps(list(SHAPE))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout) == [[1, 10], [9, 10]]


def test_batchnorm_relu_pools_and_the_residual_add_run_in_int8_not_between_float_islands(student, tmp_path):
    form, folded = quantisable_form(student)
    assert folded == 1  # c1's BatchNorm; nothing else normalises
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(form(x), student(x), atol=1e-5)
    code = save_int8(quantize_int8(student, _gaussian(4)), tmp_path / "int8.pt", SHAPE).code
    assert "batch_norm" not in code
    assert code.count("conv2d_relu") == 3  # c1 + b1 + ReLU, and each ReLU after a convolution
    assert "quantized.add" in code
    # Quantised once at the input, dequantised once at the output: no float op in between.
    assert code.count("torch.quantize_per_tensor(") == 1 and code.count("torch.dequantize(") == 1


def test_the_int8_student_quantises_the_factors_in_the_form_the_float_file_stores_them(tmp_path):
    torch.manual_seed(0)
    teacher = load_classifier(_teacher_file(tmp_path), SHAPE).eval()
    # c2's input rank is small (its output 1x1 folds into the core), c3's ranks near full (dense).
    plan = plan_compression(teacher, ranks={"c2": [60, 12], "c3": [60, 60]})
    student = apply_plan(teacher, plan, n_iter_max=20, seed=0).eval()
    unfolded, _ = quantisable_form(student)
    folded, _ = quantisable_form(student, SHAPE)
    convolutions = [sum(isinstance(m, nn.Conv2d) for m in form.modules()) for form in (unfolded, folded)]
    assert convolutions == [7, 4]  # c1, c2 as two convolutions, c3 as one
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(folded(x), student(x), atol=1e-4)
    code = save_int8(quantize_int8(student, _gaussian(4)), tmp_path / "int8.pt", SHAPE).code
    assert code.count("quantized.conv2d") == 4
    assert _relative_error(torch.jit.load(str(tmp_path / "int8.pt")), student, x) < 0.1


def test_calibration_on_the_inputs_the_model_sees_beats_calibration_on_the_wrong_scale(student):
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(3))
    matched = _relative_error(quantize_int8(student, _gaussian(4)), student, x)
    mismatched = _relative_error(quantize_int8(student, _gaussian(4, scale=0.02)), student, x)
    assert matched * 3 < mismatched


class _HeavyTails:
    """N(0, 1) inputs of which one value in 200 is 12 times larger, as synthesised ones can be."""

    name = "heavy-tailed"

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        x = torch.randn(count, *SHAPE, generator=rng)
        return torch.where(torch.rand(x.shape, generator=rng) < 0.005, 12 * x, x)


def test_calibration_clips_the_tails_that_stretch_every_range(student):
    batches = calibration_batches(_HeavyTails(), seed=0, device=torch.device("cpu"), batches=4)
    assert len(batches) == 4 and batches[0].shape == (64, *SHAPE)
    assert 2.0 < max(float(batch.abs().max()) for batch in batches) < 4.0
    rng = torch.Generator().manual_seed(7919)
    raw = [_HeavyTails().sample(64, rng) for _ in range(4)]  # the same draws, unclipped
    assert max(float(batch.abs().max()) for batch in raw) > 20
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(3))
    clipped_error = _relative_error(quantize_int8(student, batches), student, x)
    assert clipped_error * 1.5 < _relative_error(quantize_int8(student, raw), student, x)


def test_the_onnx_student_matches_the_torchscript_one_and_the_check_can_fail(student, tmp_path):
    reference = torch.jit.script(student).eval()
    difference = export_onnx(student, tmp_path / "student.onnx", SHAPE, reference)
    assert difference <= 1e-4 and (tmp_path / "student.onnx").stat().st_size > 0
    other = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))).eval()
    with pytest.raises(UnsupportedModelError, match="differs"):
        export_onnx(student, tmp_path / "wrong.onnx", SHAPE, other)
    assert not (tmp_path / "wrong.onnx").exists()
    assert not list(tmp_path.glob(".onnx-*"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter's notice
def test_compacting_an_onnx_file_keeps_what_it_computes_in_fewer_bytes(student, tmp_path):
    import onnx

    reference = torch.jit.script(student).eval()
    path = tmp_path / "student.onnx"
    export_onnx(student, path, SHAPE, reference)  # compacted as it is written
    compacted = onnx.load(str(path))
    assert all(not node.name for node in compacted.graph.node)
    assert max(len(t.name) for t in compacted.graph.initializer) <= 4
    # The exporter's own names, for comparison: the same graph, the same answers, more bytes.
    verbose = tmp_path / "verbose.onnx"
    torch.onnx.export(
        reference,
        (torch.randn(1, *SHAPE),),
        str(verbose),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    before = verbose.stat().st_size
    x = torch.randn(6, *SHAPE)
    expected = onnx_forward(onnx_session(verbose))(x)
    compact_onnx(verbose)
    assert verbose.stat().st_size < before
    assert torch.equal(onnx_forward(onnx_session(verbose))(x), expected)


def test_the_int8_onnx_student_is_quantised_per_channel_and_agrees_with_the_float_one(student, tmp_path):
    import onnx
    from onnx import numpy_helper

    reference = torch.jit.script(student).eval()
    float_path = tmp_path / "student.onnx"
    export_onnx(student, float_path, SHAPE, reference)
    calibration = _gaussian(8)
    forward = quantize_onnx(float_path, tmp_path / "student_int8.onnx", calibration)
    graph = onnx.load(str(tmp_path / "student_int8.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # Every convolution's weight is stored in int8, with one scale per output channel.
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for conv in (node for node in graph.node if node.op_type == "Conv"):
        dequantise = producers[conv.input[1]]
        assert dequantise.op_type == "DequantizeLinear"
        weight, scale = arrays[dequantise.input[0]], arrays[dequantise.input[1]]
        assert weight.dtype.name == "int8" and scale.shape == (weight.shape[0],)
    assert (tmp_path / "student_int8.onnx").stat().st_size * 2.5 < float_path.stat().st_size
    x = torch.randn(256, *SHAPE)
    with torch.no_grad():
        expected = reference(x)
    answer = forward(x)
    assert answer.shape == expected.shape
    assert float((answer - expected).norm() / expected.norm()) < 0.1
    assert float((answer.argmax(1) == expected.argmax(1)).float().mean()) > 0.9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_onnx_runtime_runs_every_convolution_of_the_int8_onnx_student_in_int8(student, tmp_path):
    import onnx
    import onnxruntime

    reference = torch.jit.script(student).eval()
    export_onnx(student, tmp_path / "student.onnx", SHAPE, reference)
    quantize_onnx(tmp_path / "student.onnx", tmp_path / "student_int8.onnx", _gaussian(4))
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")  # the graph ONNX Runtime runs
    options.log_severity_level = 3
    onnxruntime.InferenceSession(
        str(tmp_path / "student_int8.onnx"), options, providers=["CPUExecutionProvider"]
    )
    ops = [node.op_type for node in onnx.load(str(tmp_path / "as_run.onnx")).graph.node]
    convolutions = sum(op == "Conv" for op in ops) + sum(op == "QLinearConv" for op in ops)
    assert convolutions > 0 and ops.count("QLinearConv") == convolutions, ops


def test_a_file_onnx_runtime_cannot_quantise_is_an_error_and_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(UnsupportedModelError, match="int8 ONNX"):
        quantize_onnx(broken, tmp_path / "int8.onnx", _gaussian(2))
    assert {p.name for p in tmp_path.iterdir()} == {"broken.onnx"}


def test_an_onnx_file_that_froze_the_batch_size_is_refused(tmp_path):
    from .models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    (tmp_path / "tiny.pt").write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    module = load_classifier(tmp_path / "tiny.pt", (1, 8, 8)).eval()  # x.view(x.size(0), -1)
    scripted = torch.jit.script(module).eval()
    with pytest.raises(UnsupportedModelError):  # traced at batch 1, run at batch 7
        export_onnx(module, tmp_path / "traced.onnx", (1, 8, 8), scripted)
    assert not (tmp_path / "traced.onnx").exists()
    assert export_onnx(scripted, tmp_path / "scripted.onnx", (1, 8, 8), scripted) <= 1e-4


def test_a_compress_run_with_quantize_int8_writes_both_students(tmp_path):
    from .models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    model.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    spec = CompressionSpec(input_shape=(1, 8, 8), preset="quick", quantize="int8")
    report = run(model, spec, tmp_path / "out")
    assert isinstance(report, Report) and report.int8 is not None and report.onnx is not None
    assert report.artifacts.student_int8 == report.int8.file
    assert (tmp_path / "out" / report.int8.file).stat().st_size == report.int8.file_size
    assert report.onnx.file is not None and (tmp_path / "out" / report.onnx.file).exists()
    assert 0.0 <= report.int8.agreement_with_student <= 1.0
    # The int8 file computes the float file's form: its MACs, and no more parameters than trained.
    assert report.int8.macs == report.macs_after
    assert report.int8.parameters is not None and report.params_after is not None
    assert 0 < report.int8.parameters <= report.params_after
    assert report.agreement is not None
    assert report.int8.agreement.samples == report.agreement.samples  # the same probes as the float one
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["int8"]["file"] == "student_int8.pt" and saved["onnx"]["file"] == "student.onnx"
    # The int8 ONNX file: quantised from the float ONNX file, judged on the same probes.
    onnx = report.int8.onnx
    assert onnx is not None and onnx.file == "student_int8.onnx" == report.artifacts.student_int8_onnx
    assert onnx.file_size == (tmp_path / "out" / onnx.file).stat().st_size
    assert onnx.float_file_size == (tmp_path / "out" / "student.onnx").stat().st_size
    assert onnx.agreement is not None and onnx.agreement.samples == report.agreement.samples
    assert onnx.agreement_with_student is not None and 0.0 <= onnx.agreement_with_student <= 1.0
    assert onnx.latency_ms is not None and set(onnx.latency_ms.after) == {"batch_1", "batch_64"}
    session = onnx_session(tmp_path / "out" / onnx.file)
    assert onnx_forward(session)(torch.randn(3, 1, 8, 8)).shape == (3, 3)


def test_a_quantize_run_makes_an_int8_teacher_and_no_student(tmp_path):
    from .models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    model.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    report = run(
        model, CompressionSpec(input_shape=(1, 8, 8), preset="quick", task="quantize"), tmp_path / "out"
    )
    assert report.task == "quantize" and report.int8 is not None and report.prior == "synthesis"
    written = {path.name for path in (tmp_path / "out").iterdir()}  # no float ONNX of the teacher left
    assert written == {"student_int8.pt", "student_int8.onnx", "report.json"}
    assert report.int8.onnx is not None and report.artifacts.student_int8_onnx == "student_int8.onnx"
    assert report.file_size_after == (tmp_path / "out" / "student_int8.pt").stat().st_size
    assert report.file_size_after is not None and report.file_size_after < report.file_size_before
    # Judged against the teacher itself: the probes' classes are the float teacher's.
    assert report.int8.agreement_with_student == report.int8.agreement.student_vs_teacher
    # The teacher's BatchNorm layers folded into its convolutions: the same MACs, fewer parameters.
    assert report.int8.macs == report.macs_before
    assert report.int8.parameters is not None and report.int8.parameters < report.params_before
    int8 = torch.jit.load(str(tmp_path / "out" / "student_int8.pt"))
    assert int8(torch.randn(3, 1, 8, 8)).shape == (3, 3)


def test_quantize_belongs_to_compress_and_quantize_jobs():
    with pytest.raises(SpecError) as raised:
        CompressionSpec(input_shape=(1, 8, 8), task="extract", quantize="int8")
    assert raised.value.field == "quantize"
    assert CompressionSpec(input_shape=(1, 8, 8), task="quantize").quantize == "int8"
    with pytest.raises(SpecError) as refused:
        CompressionSpec(input_shape=(1, 8, 8), task="quantize", quantize="none")
    assert refused.value.field == "quantize"
