"""The quality suite: every suite teacher, compressed by every approach, scored on real held-out data.

Each row is a full ``kegnet_core.pipeline.run`` exactly as ``kegnet compress``
runs it, on a teacher from :mod:`benchmarks.suite_teachers`; only the scoring
reads the teacher's test split, which compression never sees.  Rows are kept
one per line in a JSON-lines file (``--results``) so a long run can stop and
go on: rows already there are skipped.  ``--write`` turns all rows into the
table in docs/benchmarks.md.

    python benchmarks/suite.py --seeds 0 1 2 --write docs/benchmarks.md
    python benchmarks/suite.py --members digits-bnres --approaches default --seeds 0
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
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.docs_section import write_section  # noqa: E402
from benchmarks.suite_teachers import MEMBERS, Teacher, available, load_teacher, score  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402

# approach -> spec fields; `default` is the spec's own defaults (prior kegnet, preset default).
APPROACHES: dict[str, dict[str, Any]] = {
    "tucker": {"prior": "none"},
    "uniform": {"prior": "uniform"},
    "gaussian": {"prior": "gaussian"},
    "strokes": {"prior": "strokes"},
    "procedural": {"prior": "procedural"},
    "synthesis": {"prior": "synthesis"},
    "kegnet": {"prior": "kegnet"},
    "default": {},
}
LABELS = {
    "tucker": "Tucker only",
    "uniform": "T + uniform",
    "gaussian": "T + Gaussian",
    "strokes": "T + strokes",
    "procedural": "T + procedural",
    "synthesis": "T + synthesis",
    "kegnet": "T + KegNet",
    "default": "`default`",
}
IMAGE_ONLY = ("strokes",)
IMAGE_OR_SIGNAL = ("procedural",)
# Training generators on the big teachers takes longer than the whole `default` run
# several times over; the KegNet row is measured on teachers up to this many MACs.
KEGNET_MAX_MACS = 10_000_000
DEFAULT_STUDENT = "default"


def default_results() -> Path:
    return Path(os.environ.get("KEGNET_SUITE_RESULTS", ROOT / "benchmarks" / "results" / "suite.jsonl"))


def students(name: str) -> list[tuple[str, dict[str, Any]]]:
    """The students scored for a member: the compression `default` chooses, then its fixed ones."""
    member = MEMBERS[name][0]
    return [(DEFAULT_STUDENT, {}), *member.fixed_students]


def applies(approach: str, teacher: Teacher, macs: int) -> bool:
    rank = len(teacher.member.input_shape)
    if (approach in IMAGE_ONLY and rank != 3) or (approach in IMAGE_OR_SIGNAL and rank == 1):
        return False
    return approach != "kegnet" or macs <= KEGNET_MAX_MACS


def run_row(
    teacher: Teacher, student: str, fields: dict[str, Any], approach: str, seed: int
) -> dict[str, Any]:
    spec = CompressionSpec.model_validate(
        {"input_shape": teacher.member.input_shape, **fields, **APPROACHES[approach], "seed": seed}
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        report = run(teacher.path, spec, out, measure_latency=approach == "default", device="cpu")
        wall = time.perf_counter() - started
        model = torch.jit.load(str(Path(out) / "student.pt"))
        accuracy = score(model, teacher)
    quality = report.quality
    return {
        "member": teacher.member.name,
        "student": student,
        "approach": approach,
        "seed": seed,
        "teacher_accuracy": teacher.accuracy,
        "accuracy": accuracy,
        "loss_points": 100 * (teacher.accuracy - accuracy),
        "estimated_loss": quality.estimated_loss if quality else None,
        "estimate_trusted": quality.trusted if quality else False,
        "estimate_reason": quality.reason if quality else "",
        "prior": report.prior,
        "probe_source": quality.probe_source if quality else None,
        "probe_disagreement": quality.details.get("probe_disagreement") if quality else None,
        "compression_ratio": report.compression_ratio,
        "wall_s": wall,
        "stage_s": report.timings_s,
        "latency_ms": report.latency_ms.model_dump() if report.latency_ms else None,
        "kept_dense": [layer.name for layer in report.student_form.kept_dense] if report.student_form else [],
        "macs": report.macs_before,
        "spec": spec.to_json_dict(),
    }


def teacher_macs(teacher: Teacher) -> int:
    from kegnet_core.loading import load_classifier
    from kegnet_core.measure import count_macs

    return count_macs(load_classifier(teacher.path, teacher.member.input_shape), teacher.member.input_shape)


def _key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return row["member"], row["student"], row["approach"], row["seed"]


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows in ``path``, one per key: a later row (``--rerun`` appends) replaces an earlier one."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list({_key(row): row for row in rows}.values())


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}%"


def _pick(rows: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [row for row in rows if all(row[key] == value for key, value in match.items())]


def table(rows: list[dict[str, Any]]) -> str:
    """One line per member and student: teacher, each approach (mean ± std over seeds), ratio."""
    head = (
        ["teacher", "student", "teacher acc."]
        + [LABELS[a] for a in APPROACHES]
        + ["ratio", "`default` within 1 pt"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [name for name in MEMBERS if any(row["member"] == name for row in rows)]
    for name in order:
        for student, _fields in students(name):
            chosen = _pick(rows, member=name, student=student)
            if not chosen:
                continue
            cells = [f"`{name}`", student, f"{chosen[0]['teacher_accuracy'] * 100:.2f}%"]
            for approach in APPROACHES:
                cells.append(_mean_std([row["accuracy"] * 100 for row in _pick(chosen, approach=approach)]))
            ratios = sorted({round(row["compression_ratio"], 2) for row in chosen})
            cells.append(", ".join(f"{ratio:.2f}x" for ratio in ratios))
            defaults = _pick(chosen, approach="default")
            worst = max((row["loss_points"] for row in defaults), default=None)
            cells.append(
                "—" if worst is None else ("yes" if worst <= 1.0 else "no") + f" (worst {worst:.2f})"
            )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(rows: list[dict[str, Any]]) -> str:
    """Wall time per stage of the `default` runs per member and student: the fastest seed's, since
    on a shared machine a slow run measures the neighbours (each seed does the same work)."""
    stages = ["validating", "extracting", "compressing", "distilling", "exporting", "total"]
    lines = [
        "| teacher | student | MMACs | " + " | ".join(stages) + " |",
        "|" + "---|" * (len(stages) + 3),
    ]
    for name in MEMBERS:
        for student, _fields in students(name):
            chosen = _pick(rows, member=name, student=student, approach="default")
            if not chosen:
                continue
            cells = [f"`{name}`", student, f"{(chosen[0]['macs'] or 0) / 1e6:.2f}"]
            fastest = min(chosen, key=lambda row: row["stage_s"].get("total", float("inf")))
            for stage in stages:
                value = fastest["stage_s"].get(stage)
                cells.append(f"{value:.0f} s" if value is not None else "—")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def estimate_table(rows: list[dict[str, Any]]) -> str:
    """How the report's quality estimate compares with the real loss, over every suite student."""
    rows = [row for row in rows if not row.get("same_as_default")]
    trusted = [row for row in rows if row["estimate_trusted"] and row["estimated_loss"] is not None]
    refused = [row for row in rows if not row["estimate_trusted"]]
    errors = [abs(row["estimated_loss"] - row["loss_points"]) for row in trusted]
    within = sum(error <= 3.0 for error in errors)
    lines = [
        f"Over {len(rows)} students: the report gave an estimate for {len(trusted)} and said it cannot "
        f"tell for {len(refused)}. Of the estimates, {within} are within 3 points of the real loss"
        + (f" (largest error {max(errors):.2f} points)." if errors else "."),
    ]
    misses = sorted(
        (row for row in trusted if abs(row["estimated_loss"] - row["loss_points"]) > 3.0),
        key=lambda row: -abs(row["estimated_loss"] - row["loss_points"]),
    )
    if misses:
        lines.append("")
        lines.append("| teacher | student | approach | seed | real loss | estimate |")
        lines.append("|---|---|---|---|---|---|")
        for row in misses[:20]:
            lines.append(
                f"| `{row['member']}` | {row['student']} | {row['approach']} | {row['seed']} "
                f"| {row['loss_points']:.2f} | {row['estimated_loss']:.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", nargs="+", choices=list(MEMBERS), help="default: all available")
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=list(APPROACHES))
    parser.add_argument("--students", nargs="+", help="only these students (e.g. default, 'student 1')")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=default_results(), help="JSON lines, one per row")
    parser.add_argument("--rerun", action="store_true", help="run rows again even if they are in --results")
    parser.add_argument("--write", type=Path, help="write the tables into this markdown file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = load_rows(args.results)
    done = {_key(row) for row in rows}
    for name in available(args.members):
        teacher = load_teacher(name)
        macs = teacher_macs(teacher)
        for student, fields in students(name):
            if args.students and student not in args.students:
                continue
            for seed in args.seeds:
                # `default` first: a prior that `auto` resolves to is the same run, not run twice.
                for approach in sorted(args.approaches, key=lambda a: a != "default"):
                    key = (name, student, approach, seed)
                    if not applies(approach, teacher, macs) or (key in done and not args.rerun):
                        continue
                    same = [
                        row
                        for row in rows
                        if _key(row) == (name, student, "default", seed)
                        and row["prior"] == APPROACHES[approach].get("prior")
                    ]
                    if same:
                        row = {**same[0], "approach": approach, "same_as_default": True}
                    else:
                        row = run_row(teacher, student, fields, approach, seed)
                    rows = [existing for existing in rows if _key(existing) != key] + [row]
                    with open(args.results, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    sys.stdout.write(
                        f"{name} / {student} / {approach} / seed {seed}: {row['accuracy']:.2%} "
                        f"(teacher {row['teacher_accuracy']:.2%}, {row['compression_ratio']:.2f}x, "
                        f"estimate {row['estimated_loss']}, real loss {row['loss_points']:.2f}, "
                        f"{row['wall_s']:.0f} s)\n"
                    )
                    sys.stdout.flush()
    if args.write:
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU only"
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        seeds = sorted({row["seed"] for row in rows})
        head = (
            f"Measured up to {stamp} on {machine} by `benchmarks/suite.py`, seeds "
            f"{', '.join(map(str, seeds))} (mean ± sample std over seeds); accuracy on each teacher's "
            "held-out real test split, which no compression reads."
        )
        write_section(args.write, "suite-table", f"{head}\n\n{table(rows)}")
        write_section(args.write, "suite-times", timing_table(rows))
        write_section(args.write, "suite-estimates", estimate_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
