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
    export_onnx,
    quantisable_form,
    quantize_int8,
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


def test_a_quantize_run_makes_an_int8_teacher_and_no_student(tmp_path):
    from .models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    model.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    report = run(
        model, CompressionSpec(input_shape=(1, 8, 8), preset="quick", task="quantize"), tmp_path / "out"
    )
    assert report.task == "quantize" and report.int8 is not None and report.prior == "synthesis"
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written == {"student_int8.pt", "report.json"}
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
