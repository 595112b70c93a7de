"""Real-size classifiers: what a `default` job costs on ResNet-18 and MobileNetV2 at 3x224x224.

Issue 14 asks for the time per stage and the peak memory of a job on the architectures users
deploy, on the CPU and, where a GPU machine is lent, on it.  Each row is one job run through
``kegnet_core.pipeline.run`` exactly as the worker runs it (sandboxed first load, latency
measurement and ONNX export included) with a time budget (``budget_s``), since `default` without
one would take more than a day on two CPU cores.  The teachers are built by
:mod:`benchmarks.large_models` (seeded random weights, BatchNorm statistics settled on procedural
images): their answers mean nothing, so the table has no accuracy column.

Every job runs in a child process of its own, so that its peak resident memory (the larger of
the job's process and the sandbox's child, ``getrusage``; building the teacher included) and, on
CUDA, the peak GPU memory PyTorch allocated (not the CUDA context) are its own.  A job that dies
(out of memory, a crash) leaves a row saying so.

    python benchmarks/large.py --runs mobilenet_v2:600 resnet18:2400 --write docs/benchmarks.md
    python benchmarks/large.py --runs resnet18:600 --device cuda --write docs/benchmarks.md
    python benchmarks/large.py --runs resnet18:120 --size 64 --results /tmp/smoke.jsonl  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
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
from benchmarks.large_models import CLASSES, MODELS, make_teacher  # noqa: E402
from kegnet_core.errors import KegnetError  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.progress import ProgressEvent  # noqa: E402
from kegnet_core.sandbox import SandboxLimits  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "large.jsonl"


def _peak_rss_mib() -> float:
    """The largest resident set of this process and of any child it waited for (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def job(model: str, budget_s: float, size: int, device: str, seed: int, preset: str) -> dict[str, Any]:
    """One budgeted job on a freshly built ``model`` teacher; the row for the table."""
    input_shape = (3, size, size)
    row: dict[str, Any] = {
        "model": model,
        "input_shape": list(input_shape),
        "classes": CLASSES,
        "device": device,
        "preset": preset,
        "budget_s": budget_s,
        "seed": seed,
    }
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as folder:
        teacher = make_teacher(model, Path(folder) / f"{model}.pt", seed=seed, input_shape=input_shape)
        spec = CompressionSpec.model_validate(
            {"input_shape": list(input_shape), "budget_s": budget_s, "seed": seed, "preset": preset}
        )
        estimate: list[float] = []

        def progress(event: ProgressEvent) -> None:
            if event.estimate_s is not None:
                estimate.append(event.estimate_s)
                sys.stderr.write(f"{model}: the budget's warm-up estimates {event.estimate_s:.0f} s\n")
            elif event.step == event.total:
                sys.stderr.write(f"{model}: {event.stage} done at {time.perf_counter() - started:.0f} s\n")

        started = time.perf_counter()
        try:
            report = run(
                teacher, spec, Path(folder) / "out", device=device, progress=progress, sandbox=SandboxLimits()
            )
        except KegnetError as exc:
            row.update(wall_s=round(time.perf_counter() - started, 1), error=f"{exc.code}: {exc.message}")
            row["peak_rss_mib"] = _peak_rss_mib()
            return row
        wall = time.perf_counter() - started
    budget = report.budget or {}
    latency = report.latency_ms
    row.update(
        wall_s=round(wall, 1),
        off_by=round(wall / budget_s - 1, 4),
        estimated_s=estimate[0] if estimate else budget.get("estimated_s"),
        scale=budget.get("scale"),
        stage_s=report.timings_s,
        params_before=report.params_before,
        params_after=report.params_after,
        compression_ratio=report.compression_ratio,
        macs_before=report.macs_before,
        macs_after=report.macs_after,
        latency_ms={"before": latency.before, "after": latency.after} if latency else None,
        student_form=report.student_form.summary if report.student_form else None,
        kept_dense=[kept.name for kept in report.student_form.kept_dense] if report.student_form else [],
        peak_rss_mib=_peak_rss_mib(),
        peak_gpu_mib=(
            round(torch.cuda.max_memory_allocated() / 1024**2, 1) if device.startswith("cuda") else None
        ),
        gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
    )
    return row


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | input | device | budget | job took (estimate) | per stage | compression | "
        "batch 64 latency, teacher → student | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shape = "x".join(map(str, row["input_shape"]))
        head = (
            f"| {row['model']} | {shape} | {row.get('gpu') or row['device']} | {_seconds(row['budget_s'])} "
        )
        if row.get("error"):
            lines.append(
                f"{head}| failed after {_seconds(row['wall_s'])}: {row['error']} | | | | "
                f"{row['peak_rss_mib']:.0f} MiB resident |"
            )
            continue
        stages = ", ".join(
            f"{name} {_seconds(seconds)}"
            for name, seconds in row["stage_s"].items()
            if seconds >= 1 and name != "total"
        )
        latency = row.get("latency_ms")
        speed = (
            f"{latency['before']['batch_64']:.0f} → {latency['after']['batch_64']:.0f} ms" if latency else "–"
        )
        memory = f"{row['peak_rss_mib']:.0f} MiB resident"
        if row.get("peak_gpu_mib") is not None:
            memory += f", {row['peak_gpu_mib']:.0f} MiB GPU allocated"
        lines.append(
            f"{head}| {_seconds(row['wall_s'])} ({_seconds(row['estimated_s'])}, "
            f"{100 * row['off_by']:+.1f}%) "
            f"| {stages} | {row['compression_ratio']:.2f}x, {row['macs_before'] / 1e6:.0f} → "
            f"{row['macs_after'] / 1e6:.0f} MMACs | {speed} | {memory} |"
        )
    return "\n".join(lines)


def _failed_row(
    model: str, budget_s: float, args: argparse.Namespace, wall_s: float, code: int
) -> dict[str, Any]:
    """The row of a job whose process died before writing its own (out of memory, a crash)."""
    return {
        "model": model,
        "input_shape": [3, args.size, args.size],
        "device": args.device,
        "preset": args.preset,
        "budget_s": budget_s,
        "seed": args.seed,
        "wall_s": round(wall_s, 1),
        "peak_rss_mib": _peak_rss_mib(),
        "error": f"the job's process ended with code {code} and wrote no row",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", nargs="+", metavar="MODEL:SECONDS", help=f"models: {', '.join(MODELS)}")
    parser.add_argument(
        "--size", type=int, default=224, help="image side (224 for the table; less to smoke-test)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write", type=Path, help="put the table of all results into this markdown file")
    parser.add_argument(
        "--memory-gib", type=float, default=18.0, help="address-space limit of a CPU job's process (0: none)"
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)  # MODEL:SECONDS: run it in this process
    parser.add_argument("--row", type=Path, help=argparse.SUPPRESS)  # where --job writes its row
    args = parser.parse_args()
    if args.job:
        if args.memory_gib and args.device == "cpu":  # fail the job, not the machine
            limit = int(args.memory_gib * 1024**3)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        model, _, seconds = args.job.partition(":")
        row = job(model, float(seconds), args.size, args.device, args.seed, args.preset)
        args.row.write_text(json.dumps(row))
        return 0
    for item in args.runs or []:
        model, _, seconds = item.partition(":")
        if model not in MODELS or not seconds:
            parser.error(f"--runs takes MODEL:SECONDS with MODEL one of {', '.join(MODELS)}, got {item!r}")
        with tempfile.TemporaryDirectory() as folder:
            row_file = Path(folder) / "row.json"
            command = [
                *(sys.executable, __file__, "--job", item, "--row", str(row_file)),
                *("--size", str(args.size), "--device", args.device, "--seed", str(args.seed)),
                *("--preset", args.preset, "--memory-gib", str(args.memory_gib)),
            ]
            started = time.perf_counter()
            done = subprocess.run(command, check=False)
            if row_file.exists():
                row = json.loads(row_file.read_text())
            else:
                row = _failed_row(model, float(seconds), args, time.perf_counter() - started, done.returncode)
        row["measured_at"] = datetime.now(UTC).isoformat(timespec="minutes")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    if args.write:
        if not args.results.exists():
            parser.error(f"no results at {args.results} to write a table from")
        rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        settings = sorted({f"`{row['preset']}`, seed {row['seed']}" for row in rows})
        head = (
            f"Measured on {machine} by `benchmarks/large.py` (up to {datetime.now(UTC).date()}); "
            f"{'; '.join(settings)}, with `budget_s`, one job at a time; results in "
            f"`{args.results.relative_to(ROOT) if args.results.is_relative_to(ROOT) else args.results}`."
        )
        write_section(args.write, "large-table", head + "\n\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
