"""The two pipelines, composed from the stages: ``compress`` and ``extract``.

:func:`run` is what the CLI and the worker call.  It reads a TorchScript
teacher from a path, writes every artifact where ``layout`` says (a folder,
or beside a student file the user named), writes the report there too, and
returns the typed :class:`~kegnet_core.report.Report`.  Stages are reported
through the progress callback in the order of :class:`~kegnet_core.spec.Stage`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from kegnet_core import artifacts as files
from kegnet_core import stages
from kegnet_core.budget import BudgetPlan, StepCosts, distill_steps_for, plan_budget, scale_distillation
from kegnet_core.checkpoint import Checkpoints
from kegnet_core.config import Recipe
from kegnet_core.errors import SpecError, UnsupportedModelError
from kegnet_core.images import png_bytes, save_png
from kegnet_core.measure import parameter_count
from kegnet_core.progress import ProgressCallback, ProgressEvent, ignore_progress
from kegnet_core.quality import Probe, assess
from kegnet_core.report import Artifacts, Int8Student, Latency, Report
from kegnet_core.sandbox import SandboxLimits
from kegnet_core.sources import build_source
from kegnet_core.spec import CompressionSpec, Prior, Quantize, Stage, Task

VERSION = "0.2.0"
PROBE_SAMPLES = 2000


def pick_device(requested: str | None = None) -> torch.device:
    """``requested``, else the first CUDA device when there is one, else the CPU."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise SpecError(f"{requested!r} is not a device: use cpu, cuda or cuda:N", field="device") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise SpecError(f"{requested!r} is not available on this machine", field="device")
    if device.type not in ("cpu", "cuda"):
        raise SpecError(f"{requested!r} is not supported: use cpu, cuda or cuda:N", field="device")
    return device


class _Clock:
    """Wall time per stage, and the stage-start events."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        self.progress(ProgressEvent(stage.value, 0, 1))
        start = time.perf_counter()
        yield
        self.seconds[stage.value] = round(time.perf_counter() - start, 3)


@dataclass(frozen=True)
class _Budget:
    """A time budget's plan, its measured step costs, and when the job must end
    (``time.perf_counter()``)."""

    plan: BudgetPlan
    costs: StepCosts
    ends_at: float


@dataclass(frozen=True)
class _Run:
    """What every part of one run reads: its spec and recipe, where it writes, how it reports."""

    spec: CompressionSpec
    recipe: Recipe
    model_path: Path
    layout: files.Layout
    device: torch.device
    report: Report
    clock: _Clock
    progress: ProgressCallback
    previews: bool
    measure_latency: bool
    checkpoints: Checkpoints | None
    budget: _Budget | None = None


def _new_report(spec: CompressionSpec, recipe: Recipe, device: torch.device, model_path: Path) -> Report:
    return Report(
        kegnet_version=VERSION,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        task=spec.task.value,
        spec=spec.to_json_dict(),
        recipe=asdict(recipe),
        device=str(device),
        input_shape=list(spec.input_shape),
        n_classes=0,
        params_before=0,
        file_size_before=model_path.stat().st_size,
    )


def run(
    model_path: str | Path,
    spec: CompressionSpec,
    out: str | Path | files.Layout,
    *,
    progress: ProgressCallback = ignore_progress,
    device: str | None = None,
    measure_latency: bool = True,
    sandbox: SandboxLimits | None = None,
    previews: bool = False,
    checkpoints: str | Path | None = None,
) -> Report:
    """Run ``spec.task`` on the TorchScript at ``model_path``; write artifacts and report to ``out``.

    ``out`` is a folder or a :class:`~kegnet_core.artifacts.Layout`.  With
    ``sandbox`` limits the model is first loaded and run once in a limited
    child process (:mod:`kegnet_core.sandbox`), as the service does for every
    upload.  With ``previews``, each extraction epoch also sends a PNG of the
    current samples in its progress event.  With a ``checkpoints`` folder,
    the run saves its progress there and resumes from what it finds
    (:mod:`kegnet_core.checkpoint`).
    """
    started = time.perf_counter()
    model_path = Path(model_path)
    layout = out if isinstance(out, files.Layout) else files.Layout(Path(out))
    layout.folder.mkdir(parents=True, exist_ok=True)
    recipe = spec.recipe()
    torch_device = pick_device(device)
    clock = _Clock(progress)
    report = _new_report(spec, recipe, torch_device, model_path)
    saved = (
        Checkpoints.for_run(Path(checkpoints), model_path, spec.model_dump_json())
        if checkpoints is not None
        else None
    )

    with clock.stage(Stage.VALIDATING):
        validated = stages.validate(model_path, spec, device=torch_device, sandbox=sandbox)
        stages.plan_for_speed(validated, spec, recipe, checkpoints=saved)
    report.n_classes = validated.n_classes
    report.params_before = parameter_count(validated.teacher)
    report.teacher = validated.facts()
    if spec.task is not Task.EXTRACT:
        report.prior = validated.prior.value

    budget = None
    if spec.budget_s is not None:
        warm_up = time.perf_counter()
        budget = _plan_budget(validated, spec, recipe, torch_device, started, progress, measure_latency)
        recipe = budget.plan.recipe
        report.budget = budget.plan.to_report(budget.costs)
        report.budget["warm_up_s"] = round(time.perf_counter() - warm_up, 2)
        report.recipe = asdict(recipe)
    context = _Run(
        spec,
        recipe,
        model_path,
        layout,
        torch_device,
        report,
        clock,
        progress,
        previews,
        measure_latency,
        saved,
        budget,
    )
    if spec.task is Task.EXTRACT:
        _extract_pipeline(validated, context)
    elif spec.task is Task.QUANTIZE:
        _quantize_pipeline(validated, context)
    else:
        _compress_pipeline(validated, context)
    report.timings_s = {**clock.seconds, "total": round(time.perf_counter() - started, 3)}
    report.artifacts.report = layout.path(files.REPORT.file).name
    _write_report(report, layout)
    return report


def _plan_budget(
    validated: stages.Validated,
    spec: CompressionSpec,
    recipe: Recipe,
    device: torch.device,
    started: float,
    progress: ProgressCallback,
    measure_latency: bool,
) -> _Budget:
    """Time a few steps of each kind the job runs, scale the recipe to ``spec.budget_s``, and
    tell the caller the estimated duration."""
    assert spec.budget_s is not None
    work = stages.budgeted_work(validated, spec, recipe)
    costs = stages.step_costs(validated, spec, recipe, work, device=device, measure_latency=measure_latency)
    plan = plan_budget(
        recipe,
        stages.prior_distill_config(validated, recipe),
        work,
        costs,
        budget_s=spec.budget_s,
        elapsed_s=time.perf_counter() - started,
    )
    detail = f"estimated {plan.estimated_s:.0f} s of a {spec.budget_s:.0f} s budget"
    progress(ProgressEvent(Stage.VALIDATING.value, 1, 1, detail=detail, estimate_s=plan.estimated_s))
    return _Budget(plan=plan, costs=costs, ends_at=started + spec.budget_s)


def _extracting(validated: stages.Validated, run: _Run) -> stages.Extracted:
    """The extracting stage, timed, its history into the report."""
    with run.clock.stage(Stage.EXTRACTING):
        extracted = stages.extract(
            validated,
            run.spec,
            run.recipe,
            device=run.device,
            progress=run.progress,
            previews=run.previews,
            checkpoints=run.checkpoints,
            inputs_deadline=run.budget.ends_at - run.budget.plan.after_inputs_s
            if run.budget is not None
            else None,
        )
    run.report.history.update(extracted.history)
    return extracted


def _extract_pipeline(validated: stages.Validated, run: _Run) -> None:
    extracted = _extracting(validated, run)
    with run.clock.stage(Stage.EXPORTING):
        run.report.artifacts = stages.export_generators(extracted, validated, run.recipe, run.layout)


def _extracting_if_needed(validated: stages.Validated, run: _Run) -> stages.Extracted:
    """What the job's prior draws from (nothing for priors that need no extraction)."""
    if stages.extraction_work(validated, run.spec, run.recipe).anything:
        return _extracting(validated, run)
    return stages.Extracted()


def _int8(
    model: torch.nn.Module,
    baseline_agreement: float,
    validated: stages.Validated,
    extracted: stages.Extracted,
    probe: Probe,
    run: _Run,
    *,
    float_onnx: Path | None,
    onnx_error: str | None,
) -> Int8Student:
    """``model`` to int8 with the run's own calibration, judged on its probes; the same for its
    float ONNX file, where there is one."""
    return stages.quantize_student(
        model,
        validated,
        extracted,
        run.spec,
        run.recipe,
        run.layout,
        probe,
        baseline_agreement,
        device=run.device,
        measure_latency=run.measure_latency,
        float_onnx=float_onnx,
        onnx_error=onnx_error,
    )


def _quantize_pipeline(validated: stages.Validated, run: _Run) -> None:
    """The teacher itself to int8 (no Tucker), calibrated on the prior's samples."""
    spec, recipe, report = run.spec, run.recipe, run.report
    extracted = _extracting_if_needed(validated, run)
    probe = _probe(validated, extracted, spec, recipe, run.device)
    with run.clock.stage(Stage.EXPORTING):
        float_onnx, onnx_error = stages.teacher_onnx(run.model_path, validated, run.layout.folder)
        try:  # judged against itself
            int8 = _int8(
                validated.teacher,
                1.0,
                validated,
                extracted,
                probe,
                run,
                float_onnx=float_onnx,
                onnx_error=onnx_error,
            )
        finally:
            if float_onnx is not None:
                float_onnx.unlink(missing_ok=True)
        if run.measure_latency and int8.latency_ms is not None:
            report.latency_ms = Latency(
                before=stages.teacher_latency(run.model_path, validated.input_shape), after=int8.latency_ms
            )
    report.int8 = int8
    report.agreement, report.quality = int8.agreement, int8.quality
    report.artifacts = Artifacts(
        student_int8=int8.file, student_int8_onnx=int8.onnx.file if int8.onnx is not None else None
    )
    report.file_size_after = int8.file_size
    report.macs_before = validated.macs


def _compress_pipeline(validated: stages.Validated, run: _Run) -> None:
    assert validated.plan is not None
    spec, recipe, report, device = run.spec, run.recipe, run.report, run.device
    extracted = _extracting_if_needed(validated, run)
    with run.clock.stage(Stage.COMPRESSING):
        student = stages.compress(validated, extracted, recipe, spec.seed)
        run.progress(
            ProgressEvent(
                Stage.COMPRESSING.value, 1, 1, {"compression_ratio": validated.plan.compression_ratio}
            )
        )
    probe = _probe(validated, extracted, spec, recipe, device)
    tucker_agreement = probe.agreement(student)
    grid = stages.prior_sample_grid(validated, extracted, spec, recipe, device=device)
    if validated.prior is not Prior.NONE:
        with run.clock.stage(Stage.DISTILLING):
            if run.previews and grid is not None:  # what the student will learn from, for the live view
                run.progress(ProgressEvent(Stage.DISTILLING.value, 0, 1, preview=png_bytes(grid)))
            config, deadline = None, None
            if run.budget is not None:  # timed: it runs until the export's share of the budget
                costs, planned = run.budget.costs, run.budget.plan.distill
                deadline = run.budget.ends_at - costs.fixed_s
                expected = distill_steps_for(deadline - time.perf_counter(), planned, costs)
                # Steps are only a ceiling here (the deadline ends the run): far above the plan.
                config = scale_distillation(planned, 10 * expected)
                report.budget = {**(report.budget or {}), "distill_steps_expected": expected}
            result = stages.distill(
                student,
                validated,
                extracted,
                spec,
                recipe,
                device=device,
                progress=run.progress,
                checkpoints=run.checkpoints,
                config=config,
                deadline=deadline,
            )
        if result is not None:
            report.history["distillation"] = result.history
            if result.resumed_from:
                report.history["resumed_distillation_at"] = result.resumed_from
            if result.stopped_at_deadline:
                report.history["stopped_at_deadline"] = result.stopped_at_deadline
            if result.chunk:
                report.history["distillation_chunk"] = result.chunk
            if run.budget is not None:
                report.budget = {
                    **(report.budget or {}),
                    "distill_steps": result.history[-1]["step"] if result.history else 0,
                }
    with run.clock.stage(Stage.EXPORTING):
        exported = stages.export_student(
            student, run.model_path, validated, run.layout, measure_latency=run.measure_latency
        )
        report.onnx = stages.export_onnx_student(validated, run.layout)
        if spec.quantize is Quantize.INT8:
            try:
                float_onnx = run.layout.path(files.STUDENT_ONNX.file) if report.onnx.file else None
                report.int8 = _int8(
                    student,
                    tucker_agreement,
                    validated,
                    extracted,
                    probe,
                    run,
                    float_onnx=float_onnx,
                    onnx_error=report.onnx.error,
                )
            except UnsupportedModelError as exc:  # the float student stands; the report says why
                report.int8_error = exc.message
        generator_files = stages.export_generators(extracted, validated, recipe, run.layout)
        if grid is not None and not generator_files.samples:
            generator_files.samples = [save_png(grid, run.layout.path(files.samples_file(0))).name]
    report.agreement, report.quality = assess(probe, probe.agreement(student), tucker_agreement)
    report.artifacts = Artifacts(
        student=exported.artifacts.student,
        student_int8=report.int8.file if report.int8 is not None else None,
        student_onnx=report.onnx.file,
        student_int8_onnx=report.int8.onnx.file if report.int8 is not None and report.int8.onnx else None,
        generators=generator_files.generators,
        samples=generator_files.samples,
        latent_walk=generator_files.latent_walk,
    )
    plan = validated.plan
    report.params_after = exported.params_after
    report.compression_ratio = round(plan.params_before / plan.params_after, 4)
    report.layers = exported.layers
    report.ranks = plan.ranks
    report.file_size_after = exported.file_size_after
    report.macs_before = validated.macs
    report.macs_after = exported.macs_after
    report.latency_ms = exported.latency
    report.optimised = exported.optimised
    report.student_form = exported.form
    report.latency_note = exported.latency_note


def _probe(
    validated: stages.Validated,
    extracted: stages.Extracted,
    spec: CompressionSpec,
    recipe: Recipe,
    device: torch.device,
) -> Probe:
    """Held-out inputs for the agreement figures, never trained on: synthesised ones where the
    extraction made them (matched to the teacher's BatchNorm statistics where it has any), else
    fresh draws from the prior's source (Gaussian for Tucker only)."""
    if extracted.probes is not None:
        matched = validated.batch_norms > 0
        name = "BatchNorm-matched synthesised" if matched else "synthesised"
        # On signals such probes were measured to say little about real inputs (a 1-D CNN with
        # BatchNorm: Tucker alone 0.4% disagreement on them, 8.5 points lost on real signals;
        # docs/design.md), so only images' and vectors' stand for real inputs.
        signal = len(validated.input_shape) == 2
        return Probe(
            validated.teacher,
            extracted.probes,
            name,
            validated.n_classes,
            data_like=matched and not signal,
            unlike_why=(
                f"on signal classifiers agreement on {name} inputs was measured to understate the loss "
                "on real signals by several points"
                if matched and signal
                else ""
            ),
        )
    prior = stages.drawable_prior(validated, extracted)
    source = build_source(prior, stages.source_context(validated, extracted, recipe))
    rng = torch.Generator(device).manual_seed(spec.seed + 104729)
    inputs = source.sample(PROBE_SAMPLES, rng)
    return Probe(validated.teacher, inputs, source.name, validated.n_classes)


def _write_report(report: Report, layout: files.Layout) -> None:
    target = layout.path(files.REPORT.file)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(report.to_json())
    temporary.replace(target)
