"""The whole run: validate, extract, compress, distill, export, report.

``compress`` and ``extract`` are what the CLI and the worker call.  They read
a TorchScript teacher from a path, write every artifact into ``out_dir`` and
return the report (also written as ``report.json``).  Stages are reported
through the progress callback in the order of
:data:`kegnet_core.progress.STAGES`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kegnet_core.config import PRIORS, TASKS, CompressionSpec, Preset, check_prior_fits
from kegnet_core.distill import agreement, distill, teacher_logits
from kegnet_core.errors import ModelRunError, SpecError
from kegnet_core.export import save_generator, save_student
from kegnet_core.extraction import TrainedGenerator, extract_generators
from kegnet_core.images import latent_walk, sample_grid, save_png
from kegnet_core.loading import load_classifier
from kegnet_core.measure import count_macs, cpu_latency_ms, parameter_count
from kegnet_core.progress import ProgressCallback, ProgressEvent, ignore_progress
from kegnet_core.sampling import (
    GaussianSource,
    GeneratorSource,
    MixedSource,
    SampleSource,
    TrajectorySource,
    UniformSource,
    seeded_init,
)
from kegnet_core.sandbox import SandboxLimits, check_model_in_sandbox
from kegnet_core.strokes import StrokeSource
from kegnet_core.tucker import CompressionPlan, apply_plan, plan_compression

STUDENT_FILE = "student.pt"
REPORT_FILE = "report.json"
LATENT_WALK_FILE = "latent_walk.png"
AGREEMENT_SAMPLES = 2000
VERSION = "0.1.0"


def pick_device(requested: str | None = None) -> torch.device:
    """``requested``, else the first CUDA device when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Clock:
    """Wall time per stage, and the stage-start events."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.progress(ProgressEvent(name, 0, 1))
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def _validate_spec(spec: CompressionSpec) -> None:
    if spec.prior not in PRIORS:
        raise SpecError(f"prior must be one of {', '.join(PRIORS)}, got {spec.prior!r}", field="prior")
    if spec.task not in TASKS:
        raise SpecError(f"task must be one of {', '.join(TASKS)}, got {spec.task!r}", field="task")
    if len(spec.input_shape) not in (1, 3) or any(size <= 0 for size in spec.input_shape):
        raise SpecError(
            f"input_shape must be [C, H, W] or [D] with positive sizes, got {list(spec.input_shape)}",
            field="input_shape",
        )
    check_prior_fits(spec.prior, spec.input_shape)
    try:
        spec.preset_config()
    except ValueError as exc:
        raise SpecError(str(exc), field="preset") from exc


def _class_count(teacher: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    with torch.no_grad():
        logits = teacher(torch.randn(4, *input_shape, device=device))
    if logits.dim() != 2 or logits.size(1) < 2:
        raise ModelRunError(
            f"a classifier must return (batch, classes) scores with at least 2 classes; "
            f"on input_shape {list(input_shape)} the model returns {tuple(logits.shape)}",
        )
    if not torch.isfinite(logits).all():
        raise ModelRunError(f"the model returns non-finite scores on input_shape {list(input_shape)}")
    return int(logits.size(1))


def _write_generator_artifacts(
    generators: list[TrainedGenerator],
    out_dir: Path,
    n_classes: int,
    noise_dim: int,
    input_shape: tuple[int, ...],
) -> dict[str, Any]:
    files: dict[str, Any] = {"generators": [], "samples": []}
    for index, trained in enumerate(generators):
        model_name = f"generator_{index}.pt"
        save_generator(trained.generator, out_dir / model_name, n_classes, noise_dim)
        files["generators"].append(model_name)
        grid_name = "samples.png" if index == 0 else f"samples_{index}.png"
        save_png(
            sample_grid(trained.generator, n_classes, noise_dim, input_shape, seed=index), out_dir / grid_name
        )
        files["samples"].append(grid_name)
    walk = latent_walk(generators[0].generator, n_classes, noise_dim, input_shape)
    save_png(walk, out_dir / LATENT_WALK_FILE)
    files["latent_walk"] = LATENT_WALK_FILE
    return files


def _sample_source(
    prior: str,
    generators: list[TrainedGenerator],
    n_classes: int,
    preset: Preset,
    input_shape: tuple[int, ...],
    *,
    trajectory: bool = False,
) -> SampleSource:
    """Where samples come from.

    With ``trajectory``, the generators' snapshots when they have any; for
    images, the recipe's share of random strokes beside the generators.
    """
    if prior == "kegnet":
        shared = {"label_mix": preset.distill.label_mix, "noise_scale": preset.distill.noise_scale}
        source: SampleSource
        if trajectory and any(trained.snapshots for trained in generators):
            snapshots = [trained.snapshots for trained in generators]
            noise_dim, picks = preset.extraction.noise_dim, preset.distill.trajectory_picks
            source = TrajectorySource(snapshots, n_classes, noise_dim, picks=picks, **shared)
        else:
            finals = [trained.generator for trained in generators]
            source = GeneratorSource(finals, n_classes, preset.extraction.noise_dim, **shared)
        if preset.distill.stroke_share and len(input_shape) == 3:
            return MixedSource(source, StrokeSource(input_shape), preset.distill.stroke_share)
        return source
    if prior == "strokes":
        return StrokeSource(input_shape)
    if prior == "uniform":
        return UniformSource(input_shape)
    return GaussianSource(input_shape)


def _size_figures(
    teacher_script: torch.jit.ScriptModule,
    student_script: torch.jit.ScriptModule,
    input_shape: tuple[int, ...],
) -> dict[str, Any]:
    return {
        "latency_ms": {
            "before": {
                f"batch_{b}": round(cpu_latency_ms(teacher_script, input_shape, b), 4) for b in (1, 64)
            },
            "after": {
                f"batch_{b}": round(cpu_latency_ms(student_script, input_shape, b), 4) for b in (1, 64)
            },
        }
    }


def run(
    model_path: str | Path,
    spec: CompressionSpec,
    out_dir: str | Path,
    *,
    progress: ProgressCallback = ignore_progress,
    device: str | None = None,
    measure_latency: bool = True,
    sandbox: SandboxLimits | None = None,
    previews: bool = False,
) -> dict[str, Any]:
    """Run ``spec.task`` ("compress" or "extract") on the TorchScript at ``model_path``.

    With ``sandbox`` limits, the model is first loaded and run once in a
    limited child process (:mod:`kegnet_core.sandbox`), as the service does
    for every upload.  With ``previews``, each extraction epoch also sends a
    PNG of the current samples in its progress event.
    """
    started = time.perf_counter()
    model_path, out_dir = Path(model_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _validate_spec(spec)
    preset = spec.preset_config()
    torch_device = pick_device(device)
    input_shape = tuple(int(size) for size in spec.input_shape)
    clock = _Clock(progress)
    needs_generators = spec.task == "extract" or spec.prior == "kegnet"

    with clock.stage("validating"):
        if sandbox is not None:
            check_model_in_sandbox(str(model_path), input_shape, sandbox)
        teacher = load_classifier(model_path, input_shape).to(torch_device)
        n_classes = _class_count(teacher, input_shape, torch_device)
        plan: CompressionPlan | None = None
        if spec.task == "compress":
            plan = plan_compression(
                teacher,
                layers=list(spec.layers) if spec.layers is not None else None,
                ranks=spec.ranks,
                target_ratio=spec.target_ratio,
            )
            if not plan.layers:
                raise SpecError("no layer would get smaller; name layers or lower the ranks", field="layers")

    report: dict[str, Any] = {
        "kegnet_version": VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": spec.task,
        "spec": _spec_dict(spec),
        "preset": asdict(preset),
        "device": str(torch_device),
        "input_shape": list(input_shape),
        "n_classes": n_classes,
        "params_before": parameter_count(teacher),
        "file_size_before": model_path.stat().st_size,
        "history": {},
        "artifacts": {},
    }
    generators: list[TrainedGenerator] = []
    if needs_generators:
        extraction = preset.extraction
        if spec.task == "extract":
            # Snapshots only feed distillation: extraction alone keeps none in memory.
            extraction = replace(extraction, snapshot_every=0)
        with clock.stage("extracting"):
            generators = extract_generators(
                teacher,
                input_shape=input_shape,
                n_classes=n_classes,
                config=extraction,
                seed=spec.seed,
                device=torch_device,
                progress=progress,
                previews=previews,
            )
        report["history"]["extraction"] = [trained.history for trained in generators]

    if spec.task == "extract":
        with clock.stage("exporting"):
            report["artifacts"].update(
                _write_generator_artifacts(
                    generators, out_dir, n_classes, preset.extraction.noise_dim, input_shape
                )
            )
        return _finish(report, clock, started, out_dir)

    assert plan is not None
    with clock.stage("compressing"):
        with seeded_init(spec.seed):
            student = apply_plan(teacher, plan, n_iter_max=preset.tucker_iterations, seed=spec.seed)
        progress(ProgressEvent("compressing", 1, 1, {"compression_ratio": plan.compression_ratio}))

    rng = torch.Generator(torch_device).manual_seed(spec.seed + 7919)
    eval_prior = spec.prior if spec.prior != "none" else "gaussian"
    eval_source = _sample_source(eval_prior, generators, n_classes, preset, input_shape)
    eval_label = "kegnet + strokes" if isinstance(eval_source, MixedSource) else eval_prior
    eval_inputs = eval_source.sample(
        AGREEMENT_SAMPLES, torch.Generator(torch_device).manual_seed(spec.seed + 104729)
    )
    eval_classes = teacher_logits(teacher, eval_inputs).argmax(1)
    tucker_agreement = agreement(student, eval_inputs, eval_classes)

    if spec.prior != "none":
        with clock.stage("distilling"):
            config = preset.distill if spec.prior == "kegnet" else preset.baseline_distill
            source = _sample_source(spec.prior, generators, n_classes, preset, input_shape, trajectory=True)
            result = distill(student, teacher, source, config, rng=rng, progress=progress)
        report["history"]["distillation"] = result.history

    with clock.stage("exporting"):
        student_script = save_student(student, out_dir / STUDENT_FILE, input_shape)
        teacher_script = torch.jit.load(str(model_path), map_location="cpu").eval()
        report.update(
            {
                "params_after": parameter_count(student),
                "compression_ratio": round(plan.params_before / plan.params_after, 4),
                "layers": [asdict(layer) for layer in plan.layers],
                "ranks": plan.ranks,
                "file_size_after": (out_dir / STUDENT_FILE).stat().st_size,
                "macs_before": count_macs(teacher, input_shape),
                "macs_after": count_macs(student, input_shape),
                "agreement": {
                    "student_vs_teacher": round(agreement(student, eval_inputs, eval_classes), 5),
                    "tucker_only_vs_teacher": round(tucker_agreement, 5),
                    "samples": AGREEMENT_SAMPLES,
                    "source": eval_label,
                },
            }
        )
        if measure_latency:
            report.update(_size_figures(teacher_script, student_script, input_shape))
        report["artifacts"]["student"] = STUDENT_FILE
        if generators:
            report["artifacts"].update(
                _write_generator_artifacts(
                    generators, out_dir, n_classes, preset.extraction.noise_dim, input_shape
                )
            )
    return _finish(report, clock, started, out_dir)


def _spec_dict(spec: CompressionSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["input_shape"] = list(spec.input_shape)
    data["layers"] = list(spec.layers) if spec.layers is not None else None
    return data


def _finish(report: dict[str, Any], clock: _Clock, started: float, out_dir: Path) -> dict[str, Any]:
    report["timings_s"] = {**clock.seconds, "total": round(time.perf_counter() - started, 3)}
    report["artifacts"]["report"] = REPORT_FILE
    temporary = out_dir / f".{REPORT_FILE}.tmp"
    temporary.write_text(json.dumps(_finite(report), indent=2))
    temporary.replace(out_dir / REPORT_FILE)
    return report


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
