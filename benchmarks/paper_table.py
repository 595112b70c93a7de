"""Rebuild the MNIST rows of the KegNet paper's table and score every student on real data.

The teacher is the paper's pretrained LeNet5 (``../shared/teachers/kegnet/
mnist.pth.tar``), scripted by our own LeNet5 code into the TorchScript a user
would upload.  Each row is a full ``kegnet_core.pipeline.run`` exactly as
``kegnet compress`` runs it; only the scoring reads the real MNIST test set
(``../shared/datasets/mnist``), which compression never sees.

    python benchmarks/paper_table.py --seeds 0 1 2 --write docs/benchmarks.md
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
from kegnet_core.evaluation import accuracy, mnist_test_set  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402
from kegnet_core.zoo import load_paper_teacher  # noqa: E402

STUDENTS = {1: ("conv3",), 2: ("conv2", "conv3")}
APPROACHES = {
    "tucker": "none",
    "uniform": "uniform",
    "gaussian": "gaussian",
    "strokes": "strokes",
    "kegnet": "kegnet",
}
LABELS = {
    "tucker": "Tucker only (T)",
    "uniform": "T + Uniform",
    "gaussian": "T + Gaussian",
    "strokes": "T + strokes alone",
    "kegnet": "T + KegNet (with strokes)",
}
PAPER = {
    "tucker": ("85.18% (3.62x)", "67.35% (4.10x)"),
    "uniform": ("95.48 ± 0.11%", "88.27 ± 0.07%"),
    "gaussian": ("95.45 ± 0.15%", "87.70 ± 0.12%"),
    "strokes": ("—", "—"),
    "kegnet": ("96.32 ± 0.05%", "90.89 ± 0.11%"),
}


def default_shared() -> Path:
    return Path(os.environ.get("KEGNET_SHARED", ROOT.parent / "shared"))


def script_teacher(shared: Path, folder: Path) -> tuple[Path, torch.nn.Module]:
    teacher = load_paper_teacher(shared / "teachers" / "kegnet" / "mnist.pth.tar")
    path = folder / "lenet5_mnist.pt"
    torch.jit.script(teacher).save(str(path))
    return path, teacher


def run_row(
    teacher_path: Path,
    approach: str,
    student: int,
    seed: int,
    preset: str,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, Any]:
    spec = CompressionSpec(
        input_shape=(1, 32, 32),
        layers=STUDENTS[student],
        ranks="evbmf",
        prior=APPROACHES[approach],
        preset=preset,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        report = run(teacher_path, spec, out, measure_latency=False)
        wall = time.perf_counter() - started
        model = torch.jit.load(str(Path(out) / "student.pt"))
        score = accuracy(model, images, labels)
    return {
        "approach": approach,
        "student": student,
        "seed": seed,
        "accuracy": score,
        "compression_ratio": report.compression_ratio,
        "wall_s": wall,
        "stage_s": report.timings_s,
        "agreement": report.agreement.student_vs_teacher if report.agreement else None,
    }


def summarise(rows: list[dict[str, Any]], approach: str, student: int) -> dict[str, Any] | None:
    chosen = [row for row in rows if row["approach"] == approach and row["student"] == student]
    if not chosen:
        return None
    scores = [row["accuracy"] * 100 for row in chosen]
    times = [row["wall_s"] for row in chosen]
    return {
        "mean": statistics.mean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "ratio": chosen[0]["compression_ratio"],
        "wall_mean": statistics.mean(times),
        "wall_max": max(times),
        "runs": len(chosen),
    }


def table(rows: list[dict[str, Any]], teacher_accuracy: float, preset: str) -> str:
    lines = [
        "| approach | student 1 (`conv3`) | wall time / run | student 2 (`conv2`, `conv3`) "
        "| wall time / run | paper, student 1 | paper, student 2 |",
        "|---|---|---|---|---|---|---|",
        f"| original | {teacher_accuracy * 100:.2f}% | | {teacher_accuracy * 100:.2f}% | | 98.90% | 98.90% |",
    ]
    for approach in APPROACHES:
        cells = []
        for student in (1, 2):
            summary = summarise(rows, approach, student)
            if summary is None:
                cells += ["—", "—"]
                continue
            spread = f" ± {summary['std']:.2f}" if summary["runs"] > 1 else ""
            cells.append(f"{summary['mean']:.2f}{spread}% ({summary['ratio']:.2f}x)")
            cells.append(f"{summary['wall_mean']:.0f} s (max {summary['wall_max']:.0f} s)")
        paper_1, paper_2 = PAPER[approach]
        lines.append(f"| {LABELS[approach]} | {' | '.join(cells)} | {paper_1} | {paper_2} |")
    seeds = sorted({row["seed"] for row in rows})
    lines.append("")
    lines.append(
        f"Preset `{preset}`, seeds {', '.join(map(str, seeds))} (mean ± sample std over seeds); "
        "accuracy on the 10,000 real MNIST test images; wall time is the whole `pipeline.run` "
        "(validation, extraction, Tucker, distillation, export)."
    )
    per_seed = []
    for approach in ("strokes", "kegnet"):
        for student in (1, 2):
            scores = [
                f"{row['accuracy'] * 100:.2f}%"
                for row in sorted(rows, key=lambda row: row["seed"])
                if row["approach"] == approach and row["student"] == student
            ]
            if scores:
                per_seed.append(f"{LABELS[approach]}, student {student}: {', '.join(scores)}")
    if per_seed:
        lines += ["", f"Per seed ({', '.join(map(str, seeds))}): " + "; ".join(per_seed) + "."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=default_shared())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=list(APPROACHES))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--json", type=Path, help="append each row to this JSON-lines file")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args()

    if not (args.shared / "teachers" / "kegnet" / "mnist.pth.tar").exists():
        sys.stderr.write(f"no shared material at {args.shared}; set KEGNET_SHARED or --shared\n")
        return 2
    images, labels = mnist_test_set(args.shared / "datasets" / "mnist")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        teacher_path, teacher = script_teacher(args.shared, Path(scratch))
        teacher_accuracy = accuracy(teacher, images, labels)
        for seed in args.seeds:
            for approach in args.approaches:
                for student in args.students:
                    row = run_row(teacher_path, approach, student, seed, args.preset, images, labels)
                    rows.append(row)
                    sys.stdout.write(json.dumps(row) + "\n")
                    sys.stdout.flush()
                    if args.json:
                        with open(args.json, "a") as handle:
                            handle.write(json.dumps(row) + "\n")
    body = table(rows, teacher_accuracy, args.preset)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU only"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    body = f"Measured {stamp} on {machine} by `benchmarks/paper_table.py`.\n\n{body}"
    sys.stdout.write(body + "\n")
    if args.write:
        write_section(args.write, "paper-table", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
