"""``kegnet compress`` and ``kegnet extract`` as a user runs them."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kegnet_cli.options import add_spec_options, parse_ranks, parse_shape, spec_from_args
from kegnet_core.spec import parse_spec
from tests.core.models import TinyCNN


def kegnet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kegnet_cli.main", *args], capture_output=True, text=True, cwd=cwd
    )


def test_compress_writes_the_student_and_its_report(tiny_cnn: Path, tmp_path: Path):
    result = kegnet(
        "compress",
        str(tiny_cnn),
        "--input-shape",
        "1,8,8",
        "--preset",
        "quick",
        "--prior",
        "kegnet",
        "--layers",
        "block.0",
        "--ranks",
        "block.0=4:4",
        "-o",
        "out/student.pt",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {
        "student.pt",
        "student_report.json",
        "student_samples.png",
        "student_latent_walk.png",
        "student_generator_0.pt",
    }
    report = json.loads((out / "student_report.json").read_text())
    assert report["ranks"] == {"block.0": [4, 4]}
    assert report["artifacts"]["student"] == "student.pt"
    assert report["artifacts"]["samples"] == ["student_samples.png"]
    assert "compression ratio" in result.stdout and "parameters" in result.stdout
    student = torch.jit.load(str(out / "student.pt"))
    assert student(torch.randn(3, 1, 8, 8)).shape == (3, 3)
    assert "distilling" in result.stderr  # the progress bar
    assert (out / "student.onnx").exists() and "ONNX: student.onnx" in result.stdout
    # Teacher and student as optimize_for_inference makes them at load time, timed beside.
    optimised = report["optimised"]
    assert (
        set(optimised["latency_ms"]["after"])
        == set(optimised["latency_ms"]["before"])
        == {"batch_1", "batch_64"}
    )
    assert optimised["max_abs_difference"] < 1e-3 and "optimised (batch 64)" in result.stdout
    # Saved for speed, and the summary says how.
    form = report["student_form"]
    assert form["batch_norms_folded"] == 2 and form["memory_format"] == "channels_last"
    assert f"student file: {form['summary']}" in result.stdout


def test_quantize_writes_the_int8_model_under_the_name_given(tiny_cnn: Path, tmp_path: Path):
    result = kegnet(
        "quantize",
        str(tiny_cnn),
        "--input-shape",
        "1,8,8",
        "--preset",
        "quick",
        "-o",
        "q/tiny8.pt",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "q").iterdir()} == {"tiny8.pt", "tiny8.onnx", "tiny8_report.json"}
    report = json.loads((tmp_path / "q" / "tiny8_report.json").read_text())
    assert (
        report["task"] == "quantize"
        and report["int8"]["file_size"] == (tmp_path / "q" / "tiny8.pt").stat().st_size
    )
    assert "int8 model:" in result.stdout
    assert f"int8 ONNX: {report['int8']['onnx']['file']}" in result.stdout
    assert report["int8"]["onnx"]["file"] == "tiny8.onnx"
    assert f"{report['int8']['parameters']:,} parameters" in result.stdout
    assert torch.jit.load(str(tmp_path / "q" / "tiny8.pt"))(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_extract_writes_generators(tiny_cnn: Path, tmp_path: Path):
    result = kegnet(
        "extract", str(tiny_cnn), "--input-shape", "1,8,8", "--preset", "quick", "-o", "gen", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gen" / "generator_0.pt").is_file()
    assert (tmp_path / "gen" / "latent_walk.png").is_file()


def test_compress_refuses_a_state_dict_clearly(tmp_path: Path):
    path = tmp_path / "weights.pt"
    torch.save(TinyCNN().state_dict(), path)
    result = kegnet("compress", str(path), "--input-shape", "1,8,8", "-o", "s.pt", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid_model_file (model)" in result.stderr and "torch.jit.script" in result.stderr
    assert not (tmp_path / "s.pt").exists()


def test_option_parsing():
    assert parse_shape("1,32,32") == [1, 32, 32]
    assert parse_shape("2,256") == [2, 256]  # a signal
    with pytest.raises(argparse.ArgumentTypeError, match="C,L"):
        parse_shape("1,2,3,4")
    assert parse_ranks("evbmf") == "evbmf"
    assert parse_ranks("0.5") == 0.5
    assert parse_ranks("conv3=11:7,conv2=4:3") == {"conv3": [11, 7], "conv2": [4, 3]}
    assert parse_ranks('{"conv3": [11, 7]}') == {"conv3": [11, 7]}


def test_budget_option_becomes_the_specs_seconds(capsys: pytest.CaptureFixture[str]):
    parser = argparse.ArgumentParser()
    add_spec_options(parser)
    args = parser.parse_args(["--input-shape", "1,8,8", "--budget", "1h30m"])
    assert parse_spec(spec_from_args(args)).budget_s == 5400
    assert parse_spec(spec_from_args(parser.parse_args(["--input-shape", "64"]))).budget_s is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--input-shape", "64", "--budget", "soon"])
    assert "--budget: a duration looks like 90s, 15m, 1h30m" in capsys.readouterr().err


def test_a_slower_int8_model_is_called_slower():
    from kegnet_cli.offline import _speed

    assert _speed(1.0, 2.5) == "2.50x slower"
    assert _speed(2.0, 1.0) == "2.00x faster"


def test_everyday_mistakes_get_one_line_and_exit_code_2_and_never_touch_the_model(
    tiny_cnn: Path, tmp_path: Path
):
    original = tiny_cnn.read_bytes()
    common = ("--input-shape", "1,8,8", "--preset", "quick")
    cases = [
        (("compress", str(tiny_cnn), *common, "-o", "out/student.pth"), "must end in .pt"),
        (("compress", str(tiny_cnn), *common, "-o", str(tiny_cnn)), "is the model itself"),
        (("quantize", str(tiny_cnn), *common, "-o", str(tiny_cnn)), "is the model itself"),
        (("compress", str(tmp_path / "missing.pt"), *common, "-o", "s.pt"), "no model file"),
        (
            ("compress", str(tiny_cnn), *common, "--set", "distill.steps", "-o", "s.pt"),
            "SECTION.SETTING=VALUE",
        ),
        (("compress", str(tiny_cnn), *common, "--device", "gpu", "-o", "s.pt"), "invalid_spec (device)"),
    ]
    for args, expected in cases:
        result = kegnet(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert tiny_cnn.read_bytes() == original
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.pt").exists()
