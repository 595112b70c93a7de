"""``kegnet compress`` and ``kegnet extract``: the whole pipeline on this machine."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kegnet_cli.options import spec_from_args
from kegnet_cli.progress_bar import ProgressBar
from kegnet_core.errors import KegnetError


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short before/after table of a compression report."""
    lines = []
    if report.get("task") == "compress":
        latency = report.get("latency_ms", {})
        before_l, after_l = latency.get("before", {}), latency.get("after", {})
        rows = [
            ("parameters", f"{report['params_before']:,}", f"{report['params_after']:,}"),
            ("file size", _human_bytes(report["file_size_before"]), _human_bytes(report["file_size_after"])),
            ("MACs", f"{report['macs_before']:,}", f"{report['macs_after']:,}"),
        ]
        for batch in ("batch_1", "batch_64"):
            if batch in before_l:
                rows.append(
                    (
                        f"CPU latency ({batch.replace('_', ' ')})",
                        f"{before_l[batch]:.3f} ms",
                        f"{after_l[batch]:.3f} ms",
                    )
                )
        lines.append(f"{'':<26}{'before':>16}{'after':>16}")
        lines += [f"{name:<26}{before:>16}{after:>16}" for name, before, after in rows]
        agreement = report["agreement"]
        lines.append(
            f"compression ratio: {report['compression_ratio']:.2f}x   ranks: {json.dumps(report['ranks'])}"
        )
        student, tucker = agreement["student_vs_teacher"] * 100, agreement["tucker_only_vs_teacher"] * 100
        lines.append(
            f"top-1 agreement with the teacher on {agreement['samples']} fresh "
            f"{agreement['source']} samples: {student:.2f}% (Tucker only: {tucker:.2f}%)"
        )
    else:
        lines.append(f"generators: {', '.join(report['artifacts']['generators'])}")
    lines.append(f"wall time: {report['timings_s']['total']:.1f} s")
    return lines


def _place_outputs(run_dir: Path, output: Path, report: dict[str, Any]) -> dict[str, str]:
    """Move the run's files beside ``output``: the student as named, the rest prefixed."""
    placed: dict[str, str] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith("."):
            continue
        target = output if path.name == "student.pt" else output.with_name(f"{output.stem}_{path.name}")
        shutil.move(str(path), target)
        placed[path.name] = target.name
    return placed


def run_offline(args: argparse.Namespace, task: str) -> int:
    from kegnet_core.config import spec_from_dict
    from kegnet_core.pipeline import run

    output = Path(args.output)
    if task == "extract" and output.suffix == ".pt":
        print("kegnet extract: -o names a folder for the generators, not a .pt file", file=sys.stderr)
        return 2
    bar = ProgressBar()
    try:
        spec = spec_from_dict(spec_from_args(args, task))
        target_parent = output.parent if task == "compress" else output
        target_parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target_parent, prefix=".kegnet-run-") as scratch:
            report = run(args.model, spec, scratch, progress=bar, device=args.device)
            bar.close()
            if task == "compress":
                placed = _place_outputs(Path(scratch), output, report)
            else:
                placed = {}
                for path in Path(scratch).iterdir():
                    if not path.name.startswith("."):
                        shutil.move(str(path), output / path.name)
                        placed[path.name] = path.name
        report["artifacts"] = {
            key: (
                [placed.get(name, name) for name in value]
                if isinstance(value, list)
                else placed.get(value, value)
            )
            for key, value in report["artifacts"].items()
        }
        report_path = (
            output.with_name(f"{output.stem}_report.json") if task == "compress" else output / "report.json"
        )
        report_path.write_text(json.dumps(report, indent=2))
    except KegnetError as exc:
        bar.close()
        where = f" ({exc.field})" if exc.field else ""
        print(f"kegnet {task}: {exc.code}{where}: {exc.message}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    written = output if task == "compress" else output / "report.json"
    print(f"wrote {written} and {len(placed) - 1} more files beside it")
    return 0
