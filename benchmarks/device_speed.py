"""Time the default recipe on one device, stage by stage, and check the CUDA path end to end.

The teacher is our LeNet5: the paper's MNIST weights when ``../shared`` (or
``$KEGNET_SHARED``) has them, else seeded random weights, which time the
same work.  Each run is a whole ``kegnet_core.pipeline.run`` for student 1
(``conv3``) and student 2 (``conv2``, ``conv3``); the student it writes is
then loaded on the CPU, as a user would, and its outputs compared with the
same file loaded on the run's device.

    python benchmarks/device_speed.py --device cuda --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import platform
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
from benchmarks.paper_table import STUDENTS, default_shared  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.sampling import seeded_init  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402
from kegnet_core.zoo import LeNet5, load_paper_teacher  # noqa: E402


def build_teacher(folder: Path) -> tuple[Path, str]:
    weights = default_shared() / "teachers" / "kegnet" / "mnist.pth.tar"
    if weights.is_file():
        teacher, origin = load_paper_teacher(weights), "the paper's MNIST weights"
    else:
        with seeded_init(0):
            teacher, origin = LeNet5(), "seeded random weights (../shared absent)"
    path = folder / "lenet5.pt"
    torch.jit.script(teacher.eval()).save(str(path))
    return path, origin


def time_run(teacher: Path, student: int, preset: str, seed: int, device: str) -> dict[str, Any]:
    spec = CompressionSpec(
        input_shape=(1, 32, 32), layers=STUDENTS[student], ranks="evbmf", preset=preset, seed=seed
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        report = run(teacher, spec, out, device=device, measure_latency=False)
        wall = time.perf_counter() - started
        probe = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
        on_cpu = torch.jit.load(str(Path(out) / "student.pt"), map_location="cpu")(probe)
        on_device = torch.jit.load(str(Path(out) / "student.pt"), map_location=device)(probe.to(device))
    return {
        "student": student,
        "seed": seed,
        "device": report.device,
        "wall_s": wall,
        "stage_s": report.timings_s,
        "agreement": report.agreement.student_vs_teacher if report.agreement else None,
        "cpu_vs_device_max_abs": float((on_cpu - on_device.cpu()).abs().max()),
    }


def describe(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def section(rows: list[dict[str, Any]], device: str, origin: str, preset: str) -> str:
    lines = [
        f"## The `{preset}` recipe on one device (`benchmarks/device_speed.py`)",
        "",
        "| student | seed | device | wall time | extracting | distilling | agreement with teacher "
        "| CPU vs device outputs, max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        stages = row["stage_s"]
        lines.append(
            f"| {row['student']} | {row['seed']} | {row['device']} | {row['wall_s']:.1f} s "
            f"| {stages.get('extracting', 0):.1f} s | {stages.get('distilling', 0):.1f} s "
            f"| {row['agreement'] * 100:.2f}% | {row['cpu_vs_device_max_abs']:.1e} |"
        )
    lines += [
        "",
        f"{describe(device)}; teacher: LeNet5 with {origin}; "
        f"measured {datetime.now(UTC).date().isoformat()}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--write", type=Path, help="markdown file whose device section is replaced")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        teacher, origin = build_teacher(Path(folder))
        rows = []
        for student in args.students:
            for seed in args.seeds:
                rows.append(time_run(teacher, student, args.preset, seed, args.device))
                print(json.dumps(rows[-1]), flush=True)
    text = section(rows, args.device, origin, args.preset)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.write:
        write_section(args.write, f"device-{args.device.split(':')[0]}", text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
