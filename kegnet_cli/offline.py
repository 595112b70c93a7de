"""``kegnet compress`` and ``kegnet extract``: the whole pipeline on this machine."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from kegnet_cli.options import spec_from_args
from kegnet_cli.progress_bar import ProgressBar
from kegnet_core.errors import KegnetError
from kegnet_core.report import Report


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


def summary_lines(report: Report) -> list[str]:
    """A short before/after table of a compression report, and its quality estimate."""
    lines = []
    if report.task == "compress" and report.params_after is not None:
        rows = [
            ("parameters", f"{report.params_before:,}", f"{report.params_after:,}"),
            ("file size", _human_bytes(report.file_size_before), _human_bytes(report.file_size_after or 0)),
            ("MACs", f"{report.macs_before or 0:,}", f"{report.macs_after or 0:,}"),
        ]
        if report.latency_ms is not None:
            for batch, before in report.latency_ms.before.items():
                after = report.latency_ms.after.get(batch, float("nan"))
                rows.append(
                    (f"CPU latency ({batch.replace('_', ' ')})", f"{before:.3f} ms", f"{after:.3f} ms")
                )
            optimised = report.optimised.latency_ms if report.optimised is not None else None
            for batch, after in (optimised.after if optimised is not None else {}).items():
                before = optimised.before.get(batch, float("nan")) if optimised is not None else float("nan")
                rows.append((f"optimised ({batch.replace('_', ' ')})", f"{before:.3f} ms", f"{after:.3f} ms"))
        lines.append(f"{'':<26}{'before':>16}{'after':>16}")
        lines += [f"{name:<26}{before:>16}{after:>16}" for name, before, after in rows]
        lines.append(
            f"compression ratio: {report.compression_ratio:.2f}x   ranks: {json.dumps(report.ranks)}"
        )
        if report.student_form is not None and report.student_form.summary:
            lines.append(f"student file: {report.student_form.summary}")
        if report.latency_note:
            lines.append(f"note: {report.latency_note}")
        if report.agreement is not None:
            agreement = report.agreement
            student, tucker = agreement.student_vs_teacher * 100, agreement.tucker_only_vs_teacher * 100
            lines.append(
                f"top-1 agreement with the teacher on {agreement.samples} held-out "
                f"{agreement.source} inputs: {student:.2f}% (Tucker only: {tucker:.2f}%)"
            )
        if report.quality is not None:
            quality = report.quality
            if quality.estimated_loss is not None:
                lines.append(
                    f"estimated accuracy loss: {quality.estimated_loss:.2f} points ({quality.reason})"
                )
            else:
                lines.append(f"estimated accuracy loss: {quality.reason}")
        lines += _int8_and_onnx_lines(report)
    elif report.task == "quantize":
        lines += _int8_and_onnx_lines(report)
        if report.quality is not None:
            estimate = report.quality.estimated_loss
            shown = f"{estimate:.2f} points" if estimate is not None else report.quality.reason
            lines.append(f"estimated accuracy loss: {shown}")
    else:
        lines.append(f"generators: {', '.join(report.artifacts.generators)}")
    wall = f"wall time: {report.timings_s.get('total', 0.0):.1f} s"
    if report.budget is not None:
        budget = report.budget
        wall += (
            f" of a {budget['budget_s']:.0f} s budget (estimated {budget['estimated_s']:.0f} s; "
            f"the recipe's steps x{budget['scale']:.2f}"
            + (", synthesis at the most a budget gives it" if budget["capped"] else "")
            + ")"
        )
    lines.append(wall)
    return lines


def _int8_and_onnx_lines(report: Report) -> list[str]:
    lines = []
    if report.int8 is not None:
        int8 = report.int8
        speed = ""
        if int8.latency_ms and report.latency_ms is not None:
            compared = "teacher" if report.task == "quantize" else "float student"
            side = report.latency_ms.before if report.task == "quantize" else report.latency_ms.after
            float_ms, int8_ms = side.get("batch_64"), int8.latency_ms.get("batch_64")
            if float_ms and int8_ms:
                speed = f", {_speed(float_ms, int8_ms)} than the {compared} at batch 64"
        kind = "model" if report.task == "quantize" else "student"
        shape = ""
        if int8.parameters is not None and int8.macs is not None:
            shape = f" ({int8.parameters:,} parameters, {int8.macs / 1e6:.2f} MMACs per input)"
        lines.append(
            f"int8 {kind}: {_human_bytes(int8.file_size)}{shape}{speed}; agrees with the float {kind} on "
            f"{int8.agreement_with_student * 100:.2f}% and with the teacher on "
            f"{int8.agreement.student_vs_teacher * 100:.2f}% of the probes"
        )
        lines += _int8_onnx_lines(report, kind)
    elif report.int8_error:
        lines.append(f"int8 student: none ({report.int8_error})")
    if report.onnx is not None:
        if report.onnx.file:
            lines.append(f"ONNX: {report.onnx.file} (max difference {report.onnx.max_abs_difference:.1e})")
        else:
            lines.append(f"ONNX: none ({report.onnx.error})")
    return lines


def _speed(before_ms: float, after_ms: float) -> str:
    """How much faster (or, plainly, slower) a model of ``after_ms`` runs than one of ``before_ms``."""
    if after_ms <= before_ms:
        return f"{before_ms / after_ms:.2f}x faster"
    return f"{after_ms / before_ms:.2f}x slower"


def _int8_onnx_lines(report: Report, kind: str) -> list[str]:
    onnx = report.int8.onnx if report.int8 is not None else None
    if onnx is None:
        return []
    if onnx.file is None or onnx.file_size is None:
        return [f"int8 ONNX: none ({onnx.error})"]
    smaller = (
        f", {onnx.float_file_size / onnx.file_size:.2f}x smaller than the float ONNX"
        if onnx.float_file_size
        else ""
    )
    speed = ""
    if onnx.latency_ms is not None:
        float_ms, int8_ms = onnx.latency_ms.before.get("batch_64"), onnx.latency_ms.after.get("batch_64")
        if float_ms and int8_ms:
            speed = f", {_speed(float_ms, int8_ms)} than the float ONNX in ONNX Runtime at batch 64"
    agrees = f"{onnx.agreement_with_student * 100:.2f}%" if onnx.agreement_with_student is not None else "?"
    return [
        f"int8 ONNX: {onnx.file} ({_human_bytes(onnx.file_size)}{smaller}{speed}); agrees with the float "
        f"{kind} on {agrees} of the probes"
    ]


def run_offline(args: argparse.Namespace, task: str) -> int:
    """Run the pipeline here; files land beside ``-o`` (compress) or in the ``-o`` folder (extract).

    The run writes into a scratch folder next to the target under its final
    names (:class:`kegnet_core.artifacts.Layout`), and the files are moved
    into place only when it succeeds.
    """
    from kegnet_core.artifacts import DOWNLOADS, REPORT, STUDENT, STUDENT_INT8, Layout
    from kegnet_core.pipeline import run
    from kegnet_core.spec import parse_spec

    output = Path(args.output)
    if task == "extract" and output.suffix == ".pt":
        print("kegnet extract: -o names a folder for the generators, not a .pt file", file=sys.stderr)
        return 2
    beside = task in ("compress", "quantize")  # -o names the model; the rest goes beside it
    model = Path(args.model)
    if not model.is_file():
        print(f"kegnet {task}: no model file at {model}", file=sys.stderr)
        return 2
    if beside and output.suffix != ".pt":
        print(
            f"kegnet {task}: -o names the TorchScript file to write and must end in .pt, got {output}",
            file=sys.stderr,
        )
        return 2
    if beside and output.resolve() == model.resolve():
        print(f"kegnet {task}: -o {output} is the model itself; name another file", file=sys.stderr)
        return 2
    target = output.parent if beside else output
    stem = output.stem if beside else None
    # A quantize job's model is the int8 one: it takes -o's name.
    primary = STUDENT_INT8.file if task == "quantize" else STUDENT.file
    # Known before the run: a download's name that is the model's (the rest is checked after).
    named = {Layout(target, stem, primary).path(artifact.file).resolve() for artifact in DOWNLOADS.values()}
    if model.resolve() in named:
        print(
            f"kegnet {task}: a file of the run would replace the model {model}; name -o elsewhere",
            file=sys.stderr,
        )
        return 2
    bar = ProgressBar()
    try:
        spec = parse_spec(spec_from_args(args, task))
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target, prefix=".kegnet-run-") as scratch:
            layout = Layout(Path(scratch), stem, primary)
            report = run(args.model, spec, layout, progress=bar, device=args.device)
            bar.close()
            placed = sorted(path.name for path in Path(scratch).iterdir() if not path.name.startswith("."))
            if any((target / name).resolve() == model.resolve() for name in placed):
                print(
                    f"kegnet {task}: a file of the run would replace the model {model}; name -o elsewhere",
                    file=sys.stderr,
                )
                return 2
            for name in placed:
                shutil.move(str(Path(scratch) / name), target / name)
    except KegnetError as exc:
        bar.close()
        where = f" ({exc.field})" if exc.field else ""
        print(f"kegnet {task}: {exc.code}{where}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # -o under a file, a folder we may not write, a full disk
        bar.close()
        print(f"kegnet {task}: cannot write {exc.filename or target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for line in summary_lines(report):
        print(line)
    written = output if beside else Layout(output).path(REPORT.file)
    print(f"wrote {written} and {len(placed) - 1} more files beside it")
    return 0
