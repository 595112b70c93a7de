"""Int8 without data, on suite teachers: the teacher alone, and Tucker + int8; scored on real data.

For each teacher of :mod:`benchmarks.suite_teachers` (trained and cached on
first use) this runs, exactly as ``kegnet quantize`` / ``kegnet compress``
do:

* ``int8``: ``task: quantize`` with the ``auto`` prior (calibrated on the
  samples the recipe makes for this teacher);
* ``int8, Gaussian``: the same calibrated on N(0, 1) noise, the baseline the
  issue asks us to beat;
* ``tucker`` and ``tucker + int8``: one ``default`` compress run with
  ``quantize: int8``, its float and int8 students both scored (``--compress``);
* ``..., ONNX``: the int8 ONNX file the same run wrote (ONNX Runtime's QDQ
  quantisation of the float ONNX file on the same calibration samples), scored
  in ONNX Runtime; its file and latency are against the float ONNX file's.

Only the scoring reads the teacher's test split.  Rows go to a JSON-lines file
(``--results``; rows already there are skipped), ``--write`` puts the table
into docs/benchmarks.md.

    python benchmarks/quantize.py --members lenet5-mnist digits-bnres --compress lenet5-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.docs_section import write_section  # noqa: E402
from benchmarks.suite_teachers import MEMBERS, Teacher, available, load_teacher, score  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.quantize import onnx_forward, onnx_session  # noqa: E402
from kegnet_core.report import Report  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402

IMAGE_TEACHERS = ["lenet5-mnist", "digits-bnres", "textures-cnn", "photos-vgg", "photos-resnet14"]


def _load(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path), map_location="cpu").eval()


def _onnx_row(
    report: Report, out: Path, teacher: Teacher, common: dict[str, Any], approach: str
) -> dict[str, Any]:
    """The row of the int8 ONNX file ``report`` says the run wrote into ``out``."""
    assert report.int8 is not None and report.int8.onnx is not None
    onnx = report.int8.onnx
    assert onnx.file is not None and onnx.latency_ms is not None, onnx.error
    accuracy = score(onnx_forward(onnx_session(out / onnx.file)), teacher)  # in ONNX Runtime
    return {
        **common,
        "approach": approach,
        "accuracy": accuracy,
        "loss_points": round((teacher.accuracy - accuracy) * 100, 3),
        "file_before": onnx.float_file_size,
        "file_after": onnx.file_size,
        "file_float": onnx.float_file_size,
        "latency_before_ms": onnx.latency_ms.before,
        "latency_after_ms": onnx.latency_ms.after,
        "estimated_loss": onnx.quality.estimated_loss if onnx.quality else None,
    }


def quantize_rows(teacher: Teacher, seed: int) -> list[dict[str, Any]]:
    rows = []
    shape = list(teacher.member.input_shape)
    for label, prior in (("int8", "auto"), ("int8, Gaussian calibration", "gaussian")):
        spec = CompressionSpec(input_shape=shape, task="quantize", prior=prior, seed=seed)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            report = run(teacher.path, spec, out)
            wall = time.perf_counter() - started
            assert report.int8 is not None and report.latency_ms is not None
            accuracy = score(_load(Path(out) / report.int8.file), teacher)
            common = {
                "member": teacher.member.name,
                "seed": seed,
                "prior": report.prior,
                "calibration": report.int8.calibration,
                "teacher_accuracy": teacher.accuracy,
                "wall_s": round(wall, 1),
            }
            rows.append(
                {
                    **common,
                    "approach": label,
                    "accuracy": accuracy,
                    "loss_points": round((teacher.accuracy - accuracy) * 100, 3),
                    "file_before": report.file_size_before,
                    "file_after": report.int8.file_size,
                    "latency_before_ms": report.latency_ms.before,
                    "latency_after_ms": report.int8.latency_ms,
                    "estimated_loss": report.int8.quality.estimated_loss,
                }
            )
            onnx_label = label.replace("int8", "int8, ONNX", 1)
            rows.append(_onnx_row(report, Path(out), teacher, common, onnx_label))
    return rows


def compress_rows(teacher: Teacher, seed: int) -> list[dict[str, Any]]:
    spec = CompressionSpec(input_shape=list(teacher.member.input_shape), quantize="int8", seed=seed)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        report = run(teacher.path, spec, out)
        wall = time.perf_counter() - started
        assert report.int8 is not None and report.latency_ms is not None
        float_accuracy = score(_load(Path(out) / "student.pt"), teacher)
        int8_accuracy = score(_load(Path(out) / report.int8.file), teacher)
        run_fields = {
            "member": teacher.member.name,
            "seed": seed,
            "prior": report.prior,
            "teacher_accuracy": teacher.accuracy,
            "wall_s": round(wall, 1),
        }
        onnx_row = _onnx_row(report, Path(out), teacher, run_fields, "tucker + int8, ONNX")
        # The same run's float student, for the extra loss where its own row was measured before.
        onnx_row["float_accuracy"] = float_accuracy
    common = {
        **run_fields,
        "file_before": report.file_size_before,
        "onnx_max_abs_difference": report.onnx.max_abs_difference if report.onnx else None,
        "onnx_error": report.onnx.error if report.onnx else None,
    }
    return [
        {
            **common,
            "approach": "tucker (default)",
            "accuracy": float_accuracy,
            "loss_points": round((teacher.accuracy - float_accuracy) * 100, 3),
            "file_after": report.file_size_after,
            "latency_before_ms": report.latency_ms.before,
            "latency_after_ms": report.latency_ms.after,
            "estimated_loss": report.quality.estimated_loss if report.quality else None,
        },
        {
            **common,
            "approach": "tucker + int8",
            "accuracy": int8_accuracy,
            "loss_points": round((teacher.accuracy - int8_accuracy) * 100, 3),
            "file_after": report.int8.file_size,
            "file_float": report.file_size_after,
            "latency_before_ms": report.latency_ms.before,
            "latency_after_ms": report.int8.latency_ms,
            "estimated_loss": report.int8.quality.estimated_loss,
        },
        onnx_row,
    ]


def cpu_description() -> str:
    """The CPU's model and its vector extensions that int8 kernels use: int8 speed-ups depend on
    them (AVX-512 VNNI or AMX against AVX2 alone)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), ""
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    extensions = [flag for flag in wanted if flag in flags]
    return f"{model or platform.machine()} ({', '.join(extensions) or 'no AVX2'})"


def _estimate(loss: float | None) -> str:
    """The report's own estimate of the loss, in points, or that it cannot tell."""
    return "cannot tell" if loss is None else f"{loss:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    tucker_files = {
        (r["member"], r["seed"]): r["file_after"] for r in rows if r["approach"] == "tucker (default)"
    }
    lines = [
        f"Measured {stamp} on {cpu_description()}, {os.cpu_count()} CPUs by `benchmarks/quantize.py` "
        "(accuracy on each teacher's held-out test split; latency on this CPU, median of 20). "
        "ONNX rows: the int8 ONNX file in ONNX Runtime, its file and latency against the float ONNX "
        "file's (in brackets), and \"vs Tucker's file\" against the float student's ONNX file.",
        "",
        "| teacher | approach | seed | calibration | accuracy (teacher) | loss, points | report's estimate | "
        "file (teacher) | vs Tucker's file | batch 64 latency (teacher) | ONNX max diff | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        before, after = row["latency_before_ms"], row.get("latency_after_ms") or {}
        speed = f"{after['batch_64']:.2f} ms ({before['batch_64']:.2f} ms)" if after.get("batch_64") else "–"
        onnx = row.get("onnx_max_abs_difference")
        tucker = row.get("file_float") or tucker_files.get((row["member"], row["seed"]))
        smaller = (
            f"{tucker / row['file_after']:.2f}x smaller"
            if row["approach"].startswith("tucker + int8") and tucker
            else "–"
        )
        lines.append(
            f"| {row['member']} | {row['approach']} | {row['seed']} | "
            f"{row.get('calibration', row.get('prior', ''))} | "
            f"{row['accuracy'] * 100:.2f}% ({row['teacher_accuracy'] * 100:.2f}%) | "
            f"{row['loss_points']:.2f} | {_estimate(row.get('estimated_loss'))} | "
            f"{row['file_after'] / 1024:.0f} KiB ({row['file_before'] / 1024:.0f} KiB) | "
            f"{smaller} | {speed} | "
            f"{'–' if onnx is None else f'{onnx:.1e}'} | {row['wall_s']:.0f} s |"
        )
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["member"], row["approach"]), []).append(row["loss_points"])
    if any(len(losses) > 1 for losses in groups.values()):
        lines += ["", "| teacher | approach | loss, points: mean ± sample std (seeds) |", "|---|---|---|"]
        for (member, approach), losses in groups.items():
            spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
            mean = statistics.fmean(losses)
            lines.append(f"| {member} | {approach} | {mean:.2f} ± {spread:.2f} ({len(losses)}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", nargs="*", default=IMAGE_TEACHERS, choices=sorted(MEMBERS))
    parser.add_argument("--compress", nargs="*", default=[], help="members to also run Tucker + int8 on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quantize.jsonl")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args()

    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = (
        {
            (r["member"], r["approach"], r["seed"])
            for r in map(json.loads, args.results.read_text().splitlines())
        }
        if args.results.exists()
        else set()
    )
    for name in available(list(dict.fromkeys(args.members + args.compress))):
        teacher = load_teacher(name)
        jobs = []
        if name in args.members and (name, "int8, ONNX", args.seed) not in done:
            jobs.append(quantize_rows)
        if name in args.compress and (name, "tucker + int8, ONNX", args.seed) not in done:
            jobs.append(compress_rows)
        for job in jobs:
            for row in job(teacher, args.seed):
                if (row["member"], row["approach"], row["seed"]) in done:  # measured before: kept as it was
                    continue
                with args.results.open("a") as results:
                    results.write(json.dumps(row) + "\n")
                sys.stdout.write(json.dumps(row) + "\n")
    if args.write:
        rows = [json.loads(line) for line in args.results.read_text().splitlines()]
        write_section(args.write, "quantize", markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
