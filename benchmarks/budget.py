"""How closely a job keeps its time budget, and what the student scores within it.

Issue 14 asks that a job given ``--budget`` end within 10% of it, on the CPU and the GPU.  For
each (suite teacher, budget) named, this runs ``default`` with ``budget_s`` through
``kegnet_core.pipeline.run`` exactly as the worker does (latency measurement and ONNX export
included) and records the wall time of the whole call against the budget, the recipe's scale
the warm-up chose, the seconds per stage, and the student's real accuracy on the teacher's
held-out test split beside the teacher's.  Rows append to a JSON-lines file; ``--write`` puts the
table into docs/benchmarks.md.

    python benchmarks/budget.py --runs digits-bnres:60 textures-cnn:120 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
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
from benchmarks.suite_teachers import available, load_teacher, score  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "budget.jsonl"


def measure(member: str, budget_s: float, seed: int, device: str, quantize: str = "none") -> dict[str, Any]:
    teacher = load_teacher(member)
    spec = CompressionSpec.model_validate(
        {"input_shape": teacher.member.input_shape, "budget_s": budget_s, "seed": seed, "quantize": quantize}
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        report = run(teacher.path, spec, out, device=device)
        wall = time.perf_counter() - started
        accuracy = score(torch.jit.load(str(Path(out) / "student.pt")), teacher)
    budget = report.budget or {}
    return {
        "member": member,
        "budget_s": budget_s,
        "seed": seed,
        "device": device,
        "quantize": quantize,
        "int8_s": (budget.get("step_costs_s") or {}).get("int8"),
        "wall_s": round(wall, 2),
        "off_by": round(wall / budget_s - 1, 4),
        "estimated_s": budget.get("estimated_s"),
        "scale": budget.get("scale"),
        "warm_up_s": budget.get("warm_up_s"),
        "distill_steps": budget.get("distill_steps"),
        "stage_s": report.timings_s,
        "teacher_accuracy": teacher.accuracy,
        "accuracy": accuracy,
        "compression_ratio": report.compression_ratio,
        "measured_at": datetime.now(UTC).isoformat(timespec="minutes"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| teacher | device | budget | job took | off by | scale | warm-up | distil steps "
        "| teacher | student |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['member']}`{' + int8' if row.get('quantize') == 'int8' else ''} | {row['device']} "
            f"| {row['budget_s']:.0f} s | {row['wall_s']:.1f} s "
            f"| {100 * row['off_by']:+.1f}% | {row['scale']:.2f}x | {row['warm_up_s']:.1f} s "
            f"| {row['distill_steps']} | {100 * row['teacher_accuracy']:.2f}% "
            f"| {100 * row['accuracy']:.2f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="MEMBER:SECONDS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none", help="also an int8 student")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write", type=Path, help="put the table of all results into this markdown file")
    args = parser.parse_args()
    members = set(available())
    for item in args.runs:
        member, _, seconds = item.partition(":")
        if member not in members:
            parser.error(f"{member!r} is not an available suite member ({', '.join(sorted(members))})")
        row = measure(member, float(seconds), args.seed, args.device, args.quantize)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    if args.write:
        rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        head = (
            f"Measured on {machine}, {datetime.now(UTC).date()}; `default` with `budget_s`, seed {args.seed}."
        )
        write_section(args.write, "budget-table", head + "\n\n" + table(rows))


if __name__ == "__main__":
    main()
