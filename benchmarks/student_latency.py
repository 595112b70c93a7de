"""CPU latency of teacher and Tucker student, as saved and frozen for inference.

Issue 14 asks that the student of a teacher of 10 MMACs or more be at least as
fast as its teacher at batch 64 on the CPU.  For each suite teacher named, this
compresses it at the ratio ``default`` chooses with one distillation step (the
student's shape, which is all that latency depends on, is the job's), its
ranks once from the weights (``prior: none``) and once as ``default``
chooses them (``prior: auto``: from synthesised inputs for a BatchNorm image
teacher, from the weights for the others), and times, at batch 1 and 64 (median of 20 after
warm-up, as the report does), the teacher and the student three ways: the
TorchScript file as saved (since 2026-12-02 the student is saved with
BatchNorm folded and weights channels-last), ``torch.jit.freeze`` of it, and
``torch.jit.optimize_for_inference`` of the frozen module (oneDNN layouts).  A
second student with the layers that time slower factorised kept dense
(``tucker.keep_slower_dense``, off in every preset) shows what that adds.  It
also checks that each optimised form gives the saved one's outputs.

Besides the suite's members, ``--large`` times the real-size architectures of
``benchmarks/large_models.py`` (seeded random weights: only their shape
matters here) at the input sizes named, e.g. ``resnet18@32 resnet18@224``.

    python benchmarks/student_latency.py --members photos-vgg photos-resnet14 --write docs/benchmarks.md
    python benchmarks/student_latency.py --members --large resnet18@32 mobilenet_v2@224
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.docs_section import write_section  # noqa: E402
from benchmarks.large_models import MODELS, make_teacher  # noqa: E402
from benchmarks.suite_teachers import MEMBERS, available, load_teacher  # noqa: E402
from kegnet_core.measure import cpu_latency_ms  # noqa: E402
from kegnet_core.pipeline import run  # noqa: E402
from kegnet_core.spec import CompressionSpec  # noqa: E402


def forms(model: torch.jit.ScriptModule) -> dict[str, torch.jit.ScriptModule]:
    """The saved module and its two inference forms (each freezes a copy; ``model`` is untouched)."""
    return {
        "as saved": model,
        "frozen": torch.jit.freeze(model),
        "frozen + optimised": torch.jit.optimize_for_inference(model),
    }


def measure_member(name: str) -> list[str]:
    teacher = load_teacher(name)
    return measure(f"`{name}`", teacher.path, tuple(teacher.member.input_shape))


def large_entry(text: str) -> tuple[str, int]:
    """``model@size`` from the command line, as (model, size)."""
    model, _, size = text.partition("@")
    if model not in MODELS or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected model@size with model one of {', '.join(MODELS)}")
    return model, int(size)


def measure_large(entry: tuple[str, int]) -> list[str]:
    """That architecture at 3 x size x size, with seeded random weights."""
    model, size = entry
    shape = (3, size, size)
    with tempfile.TemporaryDirectory() as folder:
        path = make_teacher(model, Path(folder) / f"{model}.pt", seed=0, input_shape=shape)
        return measure(f"{model} at {shape[1]}x{shape[2]}", path, shape)


def measure(label_of_teacher: str, path: Path, shape: tuple[int, ...]) -> list[str]:
    rows = []
    models = {"teacher": torch.jit.load(str(path)).eval()}
    # No probes (nothing here reads the quality estimate) and one distillation step: the
    # student's shape, all that latency depends on, is the job's.
    quiet = {
        "synthesis.probe_samples": 0,
        "distill.steps": 1,
        "distill.min_steps": 0,
        "distill.floor_steps": 1,
    }
    variants = (
        ("student, ranks from the weights", "none", quiet),
        ("student as `default` makes it", "auto", quiet),
        ("slower layers dense", "none", {**quiet, "tucker.keep_slower_dense": True}),
    )
    for label, prior, overrides in variants:
        spec = CompressionSpec.model_validate(
            {"input_shape": list(shape), "prior": prior, "overrides": overrides}
        )
        with tempfile.TemporaryDirectory() as out:
            report = run(path, spec, out, device="cpu", measure_latency=False)
            laid_out = report.student_form
            kept = len(laid_out.kept_dense) if laid_out else 0
            folded = len(laid_out.factor_forms) if laid_out else 0
            macs = f"{report.macs_after / 1e6:.1f} MMACs" if report.macs_after else "MACs not counted"
            models[
                f"{label} ({report.compression_ratio:.2f}x, {macs}, {folded} folded, {kept} kept dense)"
            ] = torch.jit.load(str(Path(out) / "student.pt")).eval()
    x = torch.randn(64, *shape)
    for label, model in models.items():
        with torch.no_grad():
            reference = model(x)
        for form, variant in forms(model).items():
            with torch.no_grad():
                difference = float((variant(x) - reference).abs().max())
            times = [cpu_latency_ms(variant, shape, batch) for batch in (1, 64)]
            cells = [
                label_of_teacher,
                label,
                form,
                f"{times[0]:.2f} ms",
                f"{times[1]:.2f} ms",
                f"{difference:.1e}",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--members", nargs="*", choices=list(MEMBERS), default=["photos-vgg", "photos-resnet14"]
    )
    parser.add_argument(
        "--large",
        nargs="*",
        default=[],
        type=large_entry,
        help=f"real-size architectures as model@size, model one of {', '.join(MODELS)}",
    )
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args()
    # The suite's members and the real-size models go to tables of their own, so that timing
    # one group does not drop the other's rows from the docs.
    members = available(args.members) if args.members else []
    groups: tuple[tuple[str, list[Callable[[], list[str]]]], ...] = (
        ("student-latency", [partial(measure_member, name) for name in members]),
        ("student-latency-large", [partial(measure_large, entry) for entry in args.large]),
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    for section, jobs in groups:
        if not jobs:
            continue
        lines = [
            "| teacher | model | form | batch 1 | batch 64 | max diff to saved |",
            "|---|---|---|---|---|---|",
        ]
        for job in jobs:
            rows = job()
            lines += rows
            sys.stdout.write("\n".join(rows) + "\n")
            sys.stdout.flush()
        text = f"Measured {stamp} on {machine} by `benchmarks/student_latency.py`.\n\n" + "\n".join(lines)
        if args.write:
            write_section(args.write, section, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
