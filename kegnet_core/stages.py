"""The stages of a run, as plain functions with explicit arguments.

``validate`` loads the teacher and plans the compression; ``extract`` draws
the teacher's knowledge out (generators, synthesised inputs); ``compress``
swaps the planned layers for their Tucker factors; ``distill`` fine-tunes the
student on samples; ``export`` writes the artifacts.  Each returns what the
next needs; :mod:`kegnet_core.pipeline` composes them into the ``compress``
and ``extract`` pipelines, and times them.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from kegnet_core import artifacts as files
from kegnet_core.budget import StepCosts, Work
from kegnet_core.checkpoint import (
    DISTILLATION,
    EXTRACTION,
    PLAN,
    Checkpoints,
    generator_state,
    restore_generator,
)
from kegnet_core.config import DistillConfig, Recipe, fit_distillation, fit_synthesis
from kegnet_core.distill import DistillResult, agreement, distill_student, teacher_logits
from kegnet_core.errors import ModelRunError, SpecError, UnsupportedModelError
from kegnet_core.export import optimised_for_inference, save_generator, save_student
from kegnet_core.extraction import TrainedGenerator, extract_generators
from kegnet_core.images import class_grid, latent_walk, sample_grid, save_png
from kegnet_core.inspection import BatchNormTap, batch_norm_stats
from kegnet_core.loading import load_classifier, train_on_log_probabilities
from kegnet_core.measure import (
    callable_latency_ms,
    count_macs,
    cpu_latency_ms,
    layer_latency_ms,
    measurement_s,
    parameter_count,
)
from kegnet_core.progress import ProgressCallback, ProgressEvent, ignore_progress
from kegnet_core.quality import Probe, assess
from kegnet_core.quantize import (
    CALIBRATION_BATCH_SIZE,
    CALIBRATION_BATCHES,
    calibration_batches,
    export_onnx,
    int8_seconds,
    onnx_forward,
    onnx_session,
    quantisable_form,
    quantize_form,
    quantize_onnx,
    save_int8,
)
from kegnet_core.report import (
    Artifacts,
    Int8Onnx,
    Int8Student,
    KeptDense,
    Latency,
    LayerReport,
    OnnxExport,
    Optimised,
    StudentForm,
)
from kegnet_core.sampling import seeded_init
from kegnet_core.sandbox import SandboxLimits, check_model_in_sandbox
from kegnet_core.sources import (
    PoolSource,
    SourceContext,
    build_source,
    needs_generators,
    needs_synthesis,
    resolve_prior,
)
from kegnet_core.spec import CompressionSpec, Prior, Quantize, Task
from kegnet_core.synthesis import synthesis_chunk, synthesise
from kegnet_core.tucker import (
    AUTO_RATIO,
    CompressionPlan,
    apply_plan,
    grouped_convolutions,
    layer_moments,
    plan_compression,
    plan_on_activations,
    plan_without,
    shape_twin,
)


@dataclass
class Validated:
    """The loaded teacher, what it shows, and (compress jobs) the compression plan."""

    teacher: fx.GraphModule
    input_shape: tuple[int, ...]
    n_classes: int
    batch_norms: int
    macs: int
    prior: Prior  # the spec's prior, ``auto`` resolved against what the teacher shows
    plan: CompressionPlan | None = None
    plan_ratio: float | None = None  # the ratio the plan's ranks were searched for (None: fixed ranks)
    kept_dense: list[KeptDense] = field(default_factory=list)  # planned, but slower factorised
    timing_batch: int | None = None  # the batch the planned layers were timed at (plan_for_speed)
    # "probabilities" where the teacher ends in softmax: it is trained on their logarithm, and
    # every file written answers as the teacher did (kegnet_core.loading.train_on_log_probabilities).
    answers: str = "logits"

    def facts(self) -> dict[str, int | str]:
        return {
            "batch_norm_layers": self.batch_norms,
            "macs": self.macs,
            "classes": self.n_classes,
            "answers": self.answers,
        }


@dataclass
class Extracted:
    """What extraction drew from the teacher: generators (with snapshots), inputs synthesised to
    train on, and held-out synthesised probes for the quality estimate."""

    generators: list[TrainedGenerator] = field(default_factory=list)
    synthesised: torch.Tensor | None = None
    probes: torch.Tensor | None = None
    history: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractionWork:
    """What a job's extraction stage makes, decided before it starts."""

    prior: Prior
    generators: bool
    synthesis: bool
    probes: bool

    @property
    def anything(self) -> bool:
        return self.generators or self.synthesis or self.probes


def extraction_work(validated: Validated, spec: CompressionSpec, recipe: Recipe) -> ExtractionWork:
    """Extract jobs train generators; compress and quantize jobs make what their prior draws
    from, and, for a teacher with BatchNorm or a synthesis prior, held-out probes for the quality
    estimate."""
    prior = validated.prior
    samples = spec.task in (Task.COMPRESS, Task.QUANTIZE)  # a student or int8 copy is made from them
    return ExtractionWork(
        prior=prior,
        generators=spec.task is Task.EXTRACT or needs_generators(prior),
        synthesis=samples and needs_synthesis(prior) and recipe.synthesis.samples > 0,
        probes=samples
        and (validated.batch_norms > 0 or needs_synthesis(prior))
        and recipe.synthesis.probe_samples > 0,
    )


def offset_progress(progress: ProgressCallback, offset: int, total: int) -> ProgressCallback:
    """A callback that places a sub-task's steps at ``offset`` within a stage of ``total`` steps."""

    def placed(event: ProgressEvent) -> None:
        progress(replace(event, step=offset + event.step, total=total))

    return placed


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


def validate(
    model_path: Path, spec: CompressionSpec, *, device: torch.device, sandbox: SandboxLimits | None = None
) -> Validated:
    """Load the teacher (first in a limited child process, with ``sandbox``), count its classes,
    and for compress jobs plan which layers to factorise at which ranks."""
    input_shape = tuple(int(size) for size in spec.input_shape)
    if sandbox is not None:
        check_model_in_sandbox(str(model_path), input_shape, sandbox)
    teacher = load_classifier(model_path, input_shape)
    macs = count_macs(teacher, input_shape)
    answers = "probabilities" if train_on_log_probabilities(teacher, input_shape) else "logits"
    teacher = teacher.to(device).eval()
    batch_norms = len(batch_norm_stats(teacher))
    validated = Validated(
        teacher=teacher,
        input_shape=input_shape,
        n_classes=_class_count(teacher, input_shape, device),
        batch_norms=batch_norms,
        macs=macs,
        prior=resolve_prior(
            spec.prior, batch_norms, input_shape, synthesises=spec.recipe().synthesis.samples > 0
        ),
        answers=answers,
    )
    if spec.task is Task.COMPRESS:
        plan = plan_compression(
            teacher,
            layers=list(spec.layers) if spec.layers is not None else None,
            ranks=spec.ranks,
            target_ratio=spec.target_ratio,
        )
        if not plan.layers:
            grouped = list(grouped_convolutions(teacher))
            why = (
                f" ({len(grouped)} grouped or depthwise convolutions, {grouped[0]!r} the first, are never"
                " factorised: each of their filters reads few channels already)"
                if grouped
                else ""
            )
            raise SpecError(
                f"no layer would get smaller{why}; name layers or lower the ranks", field="layers"
            )
        validated.plan = plan
        if spec.target_ratio is not None or spec.ranks == "auto":
            validated.plan_ratio = spec.target_ratio or AUTO_RATIO
    return validated


# A planned layer whose factorised form is this much slower than the dense one stays dense, in
# the median of SPEED_ROUNDS timings (docs/design.md: at 0.1 and one round, ResNet14's choice
# changed from run to run with the machine's load).
SPEED_MARGIN = 0.15
SPEED_ROUNDS = 3
# The layers are timed at batch 64, or at fewer inputs where the teacher does more than this
# many multiply-accumulates per batch (a 224x224 ResNet-18: 2).
TIMING_MACS = 4e9


def timing_batch(macs: int) -> int:
    """The batch the planned layers are timed at for a teacher of ``macs`` per input."""
    return max(1, min(64, int(TIMING_MACS // max(macs, 1))))


def plan_for_speed(
    validated: Validated, spec: CompressionSpec, recipe: Recipe, *, checkpoints: Checkpoints | None = None
) -> None:
    """Keep dense the planned layers whose factorised form runs slower on the CPU.

    Only where ``recipe.tucker.keep_slower_dense`` is set and the ranks were searched for a
    ratio over layers the user did not name.  Each planned layer is timed alone on the input the
    teacher feeds it, dense and as an (untrained) factorised twin of its planned ranks, both
    channels-last as the student is saved (:func:`kegnet_core.export.save_student`), in
    :data:`SPEED_ROUNDS` rounds.  Those slower by more than :data:`SPEED_MARGIN` in their median
    round are dropped from the plan, the slowest first, for as
    long as the other layers' ranks, searched again, still make the model ``plan_ratio`` times
    smaller.  A layer of few channels on a large image (ResNet14's first stage: 16 channels at
    32x32) runs 1.2-1.5x slower as three convolutions than as one (docs/benchmarks.md).  With
    ``checkpoints``, the choice is saved, and a resumed run takes it instead of timing again."""
    plan, ratio = validated.plan, validated.plan_ratio
    if plan is None or ratio is None or spec.layers is not None or not recipe.tucker.keep_slower_dense:
        return
    names = [layer.name for layer in plan.layers]
    saved = checkpoints.load(PLAN) if checkpoints is not None else None
    if saved is not None and list(saved["names"]) == names:
        batch, dropped = int(saved["batch"]), [str(name) for name in saved["dropped"]]
        timed = {
            name: (float(dense), float(factorised))
            for name, (dense, factorised) in zip(names, saved["latency_ms"], strict=True)
        }
        kept = plan_without(validated.teacher, plan, dropped, ratio) if dropped else None
        if kept is None:
            dropped = []
        else:
            validated.plan = kept
    else:
        batch = timing_batch(validated.macs)
        twin = shape_twin(validated.teacher, plan)
        rounds = [
            layer_latency_ms(
                validated.teacher, twin, names, validated.input_shape, batch_size=batch, channels_last=True
            )
            for _ in range(SPEED_ROUNDS)
        ]
        # Each layer's round of median slowdown: one busy moment does not decide.
        timed = {
            name: sorted((round_[name] for round_ in rounds), key=lambda pair: pair[1] / pair[0])[
                len(rounds) // 2
            ]
            for name in names
        }
        slower = sorted(
            (name for name in names if timed[name][1] > timed[name][0] * (1 + SPEED_MARGIN)),
            key=lambda name: timed[name][0] - timed[name][1],
        )
        dropped = []
        for name in slower:
            candidate = plan_without(validated.teacher, plan, [*dropped, name], ratio)
            if candidate is not None:
                dropped.append(name)
                validated.plan = candidate
        if checkpoints is not None:
            state = {
                "names": names,
                "batch": batch,
                "dropped": dropped,
                "latency_ms": [list(timed[n]) for n in names],
            }
            checkpoints.save(PLAN, state)
    validated.timing_batch = batch
    validated.kept_dense = [
        KeptDense(name=layer.name, ranks=list(layer.ranks), latency_ms=list(timed[layer.name]))
        for layer in plan.layers
        if layer.name in dropped
    ]


def extract(
    validated: Validated,
    spec: CompressionSpec,
    recipe: Recipe,
    *,
    device: torch.device,
    progress: ProgressCallback = ignore_progress,
    previews: bool = False,
    checkpoints: Checkpoints | None = None,
    inputs_deadline: float | None = None,
) -> Extracted:
    """Synthesise inputs and probes and train generators, as :func:`extraction_work` decides.

    With ``inputs_deadline`` (a time budget's ``time.perf_counter()`` value), the training inputs
    stop at the last batch that ends before it; probes and generators are made in full.

    Extract jobs train generators without snapshots (those only feed
    distillation).  Synthesis is cut to its work limit for big teachers.
    With ``checkpoints``, each finished batch of inputs and each trained
    generator is saved, and a run that finds them there goes on from them.
    """
    work = extraction_work(validated, spec, recipe)
    extracted = Extracted()
    extraction = recipe.extraction
    if spec.task is Task.EXTRACT:
        extraction = replace(extraction, snapshot_every=0)
    synthesis = fit_synthesis(recipe.synthesis, validated.macs)
    train_inputs = synthesis.samples if work.synthesis else 0
    probe_inputs = synthesis.probe_samples if work.probes else 0
    per_batch = synthesis.steps
    train_steps = -(-train_inputs // synthesis.batch_size) * per_batch
    probe_steps = -(-probe_inputs // synthesis.batch_size) * per_batch
    generator_steps = extraction.generators * extraction.steps if work.generators else 0
    total = train_steps + probe_steps + generator_steps
    saved: dict[str, Any] = (checkpoints.load(EXTRACTION) if checkpoints else None) or {}
    if saved:
        extracted.history["resumed"] = True

    chunk = synthesis.batch_size
    if train_inputs or probe_inputs:
        tap = BatchNormTap(validated.teacher)
        chunk = synthesis_chunk(tap, validated.input_shape, synthesis.batch_size, device)

    def synthesised(
        part: str, inputs: int, seed: int, offset: int, detail: str, deadline: float | None = None
    ) -> torch.Tensor:
        rng = torch.Generator(device).manual_seed(seed)
        before = saved.get(part, {})
        if before:
            rng.set_state(before["rng"])

        def keep(batches: list[torch.Tensor]) -> None:
            if checkpoints is not None:
                saved[part] = {"batches": list(batches), "rng": rng.get_state()}
                checkpoints.save(EXTRACTION, saved)

        return synthesise(
            validated.teacher,
            validated.input_shape,
            validated.n_classes,
            replace(synthesis, samples=inputs),
            rng=rng,
            progress=offset_progress(progress, offset, total),
            detail=detail,
            finished=[batch.to(device) for batch in before.get("batches", [])],
            on_batch=keep,
            deadline=deadline,
            chunk=chunk,
        )

    if train_inputs:
        extracted.synthesised = synthesised(
            "synthesis", train_inputs, spec.seed + 31337, 0, "synthesising inputs", inputs_deadline
        )
        record = {"samples": len(extracted.synthesised), "steps": per_batch}
        if chunk < synthesis.batch_size:  # a batch did not fit in memory at once
            record["chunk"] = chunk
        extracted.history["synthesis"] = record
    if probe_inputs:
        extracted.probes = synthesised(
            "probes", probe_inputs, spec.seed + 271828, train_steps, "synthesising probes"
        )
    if work.generators:
        shape, noise_dim, channels = (
            validated.input_shape,
            extraction.noise_dim,
            extraction.generator_channels,
        )
        done = [
            restore_generator(state, shape, validated.n_classes, noise_dim, channels, device)
            for state in saved.get("generators", [])
        ]

        def keep_generators(trained: list[TrainedGenerator]) -> None:
            if checkpoints is not None:
                saved["generators"] = [generator_state(generator) for generator in trained]
                checkpoints.save(EXTRACTION, saved)

        extracted.generators = extract_generators(
            validated.teacher,
            input_shape=validated.input_shape,
            n_classes=validated.n_classes,
            config=extraction,
            seed=spec.seed,
            device=device,
            progress=offset_progress(progress, train_steps + probe_steps, total),
            previews=previews,
            done=done,
            on_generator=keep_generators,
        )
        extracted.history["extraction"] = [trained.history for trained in extracted.generators]
    return extracted


def budgeted_work(validated: Validated, spec: CompressionSpec, recipe: Recipe) -> Work:
    """Which stages a time budget shares out for this job."""
    work = extraction_work(validated, spec, recipe)
    return Work(
        synthesis=work.synthesis,
        probes=work.probes,
        generators=work.generators,
        distillation=spec.task is Task.COMPRESS and validated.prior is not Prior.NONE,
    )


def prior_distill_config(validated: Validated, recipe: Recipe) -> DistillConfig:
    """The distillation settings the job's prior learns with (the learned priors' or the
    baselines'), before any work limit."""
    return recipe.distill if validated.prior in (Prior.KEGNET, Prior.SYNTHESIS) else recipe.baseline_distill


WARM_UP_STEPS = 4  # timed steps of each kind
# A CPU runs the first second or so of heavy work slower (threads waking, the allocator
# growing): steps are timed only after this much work of their kind, at most WARM_UP_MOST steps.
WARM_UP_S = 1.5
WARM_UP_MOST = 200


def _step_gaps(run: Callable[[int, ProgressCallback], object], steps: int, stage: str) -> list[float]:
    """Seconds between the step events of ``stage`` that ``run(steps, callback)`` sends."""
    stamps: list[float] = []

    def record(event: ProgressEvent) -> None:
        if event.stage == stage:
            stamps.append(time.perf_counter())

    run(steps, record)
    return [later - earlier for earlier, later in itertools.pairwise(stamps)]


def _seconds_per_step(run: Callable[[int, ProgressCallback], object], stage: str) -> float:
    """Median seconds per step of ``run(steps, callback)`` once warm: a short run first; where it
    took under :data:`WARM_UP_S`, a longer one whose last steps are timed."""
    first = _step_gaps(run, WARM_UP_STEPS + 1, stage)
    if not first:
        return 0.0
    rough = statistics.median(first[1:] or first)
    if sum(first) >= WARM_UP_S:
        return rough
    extra = min(WARM_UP_MOST, math.ceil((WARM_UP_S - sum(first)) / max(rough, 1e-5)))
    gaps = _step_gaps(run, extra + WARM_UP_STEPS + 1, stage)
    return statistics.median(gaps[-WARM_UP_STEPS:])


def step_costs(
    validated: Validated,
    spec: CompressionSpec,
    recipe: Recipe,
    work: Work,
    *,
    device: torch.device,
    measure_latency: bool = True,
) -> StepCosts:
    """A few real steps of each kind ``work`` holds, timed on ``device`` (a time budget's warm-up).

    Each runs the same code as the job (a synthesis batch, a generator, a distillation on a
    student factorised from the weights in one HOOI round), on its own random state: the
    job's results do not change.  Distillation on a synthesised pool is timed on a pool of
    noise of that size, with the teacher's answers cached as the job caches them.  With
    ``measure_latency``, the report's CPU latency figures are costed from one teacher pass at
    batch 64 on the CPU (the job's own where it runs there)."""
    teacher, shape, classes = validated.teacher, validated.input_shape, validated.n_classes
    costs = StepCosts()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        with torch.no_grad():
            probe = torch.randn(64, *shape, device=device)
            passes = []
            for _ in range(4):
                start = time.perf_counter()
                teacher(probe)
                passes.append(time.perf_counter() - start)
            costs = replace(costs, forward_s=min(passes[1:]))
            int8 = spec.quantize is Quantize.INT8
            if (measure_latency and validated.plan is not None) or int8:
                cpu_forward_s = costs.forward_s if device.type == "cpu" else _cpu_forward_s(teacher, shape)
                if measure_latency and validated.plan is not None:
                    layers = len(validated.plan.layers)
                    costs = replace(costs, measure_s=measurement_s(cpu_forward_s, layers))
                if int8:
                    int8_s = int8_seconds(cpu_forward_s, measure_latency=measure_latency)
                    costs = replace(costs, int8_s=int8_s)
        if work.synthesis or work.probes:
            config = replace(recipe.synthesis, samples=recipe.synthesis.batch_size)
            rng = torch.Generator(device).manual_seed(spec.seed)
            seconds = _seconds_per_step(
                lambda steps, record: synthesise(
                    teacher, shape, classes, replace(config, steps=steps), rng=rng, progress=record
                ),
                "extracting",
            )
            costs = replace(costs, synthesis_s=seconds)
        if work.generators:
            extraction = replace(recipe.extraction, generators=1, epochs=1, snapshot_every=0)
            seconds = _seconds_per_step(
                lambda steps, record: extract_generators(
                    teacher,
                    input_shape=shape,
                    n_classes=classes,
                    config=replace(extraction, batches_per_epoch=steps),
                    seed=spec.seed,
                    device=device,
                    progress=record,
                ),
                "extracting",
            )
            costs = replace(costs, generator_s=seconds)
        if work.distillation and validated.plan is not None:
            costs = replace(costs, distill_s=_distill_step_s(validated, recipe, device=device))
    return costs


def _cpu_forward_s(teacher: nn.Module, input_shape: Sequence[int]) -> float:
    """One pass of a CPU copy of ``teacher`` at batch 64 (the second; the first warms up)."""
    model, x = copy.deepcopy(teacher).cpu(), torch.randn(64, *input_shape)
    model(x)
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def _distill_step_s(validated: Validated, recipe: Recipe, *, device: torch.device) -> float:
    assert validated.plan is not None
    teacher = validated.teacher
    config = prior_distill_config(validated, recipe)
    config = replace(config, eval_samples=64, work_limit=None, pool_batches=None, patience_evals=None)
    config = replace(config, min_steps=0, eval_every=WARM_UP_MOST * 2)
    with seeded_init(0):
        student = apply_plan(teacher, validated.plan, n_iter_max=1, seed=0)
    rng = torch.Generator(device).manual_seed(0)
    source: Any
    if needs_synthesis(validated.prior):
        source = PoolSource(torch.randn(1024, *validated.input_shape, device=device), "timing")
    else:
        prior = Prior.GAUSSIAN if validated.prior is Prior.KEGNET else validated.prior
        source = build_source(prior, source_context(validated, Extracted(), recipe))
    matched = [layer.name for layer in validated.plan.layers] if needs_synthesis(validated.prior) else []
    return _seconds_per_step(
        lambda steps, record: distill_student(
            student,
            teacher,
            source,
            replace(config, steps=steps),
            rng=rng,
            matched_layers=matched,
            progress=record,
        ),
        "distilling",
    )


def compress(validated: Validated, extracted: Extracted, recipe: Recipe, seed: int) -> nn.Module:
    """The teacher with each planned layer swapped for its Tucker-2 twin (a new module).

    With ``tucker.activation_samples`` and inputs synthesised against the teacher's BatchNorm
    statistics, the factors are chosen for each layer's output error on the first that many of
    them (the pool the student will learn from); otherwise from the weights alone (the other priors'
    inputs do not look like the teacher's real ones inside it, docs/design.md)."""
    assert validated.plan is not None, "compress needs a plan from validate"
    config = recipe.tucker
    moments = None
    pool = extracted.synthesised
    if config.activation_samples and needs_synthesis(validated.prior) and pool is not None:
        layers = [layer.name for layer in validated.plan.layers]
        moments = layer_moments(validated.teacher, layers, pool[: config.activation_samples])
        if config.activation_ranks and validated.plan_ratio is not None:
            validated.plan = plan_on_activations(
                validated.teacher, validated.plan, moments, validated.plan_ratio
            )
    with seeded_init(seed):
        return apply_plan(
            validated.teacher, validated.plan, n_iter_max=config.iterations, seed=seed, moments=moments
        )


def source_context(validated: Validated, extracted: Extracted, recipe: Recipe) -> SourceContext:
    return SourceContext(
        input_shape=validated.input_shape,
        n_classes=validated.n_classes,
        sampling=recipe.sampling,
        noise_dim=recipe.extraction.noise_dim,
        batch_norms=validated.batch_norms,
        generators=extracted.generators,
        synthesised=extracted.synthesised,
    )


def distill(
    student: nn.Module,
    validated: Validated,
    extracted: Extracted,
    spec: CompressionSpec,
    recipe: Recipe,
    *,
    device: torch.device,
    progress: ProgressCallback = ignore_progress,
    checkpoints: Checkpoints | None = None,
    config: DistillConfig | None = None,
    deadline: float | None = None,
) -> DistillResult | None:
    """Fine-tune ``student`` in place on the prior's samples; nothing for ``Prior.NONE``.

    The factorised layers' outputs are held to the teacher's (``feature_weight``) only on inputs
    synthesised against its BatchNorm statistics: on the other priors' inputs, which do not
    look like the real ones inside the teacher, matching each layer spends the student's few
    directions on what real inputs never excite (docs/design.md, the default recipe, item 4).
    With ``checkpoints``, the run's state is saved at every check, and a run
    that finds it there goes on from it.  A time budget passes its own ``config`` (steps fitted to
    the time left) and the ``deadline`` the run stops at; otherwise the prior's settings are fitted
    to the teacher's size: cut to their work limit, and, where every step draws fresh inputs
    (not the fixed pool of synthesised ones), grown for a small teacher."""
    prior = validated.prior
    if prior is Prior.NONE:
        return None
    assert validated.plan is not None
    source = build_source(prior, source_context(validated, extracted, recipe), trajectory=True)
    if config is None:
        config = fit_distillation(
            prior_distill_config(validated, recipe), validated.macs, grow=not isinstance(source, PoolSource)
        )
    rng = torch.Generator(device).manual_seed(spec.seed + 7919)
    return distill_student(
        student,
        validated.teacher,
        source,
        config,
        rng=rng,
        matched_layers=[layer.name for layer in validated.plan.layers] if needs_synthesis(prior) else (),
        progress=progress,
        resume=checkpoints.load(DISTILLATION) if checkpoints is not None else None,
        on_checkpoint=(lambda state: checkpoints.save(DISTILLATION, state))
        if checkpoints is not None
        else None,
        deadline=deadline,
    )


def export_generators(
    extracted: Extracted, validated: Validated, recipe: Recipe, layout: files.Layout
) -> Artifacts:
    """Each generator as TorchScript with its sample grid, and a latent walk of the first.

    The names recorded are the files as ``layout`` named them.
    """
    written = Artifacts()
    if not extracted.generators:
        return written
    noise_dim, n_classes, shape = recipe.extraction.noise_dim, validated.n_classes, validated.input_shape
    for index, trained in enumerate(extracted.generators):
        model_path = save_generator(
            trained.generator, layout.path(files.generator_file(index)), n_classes, noise_dim
        )
        written.generators.append(model_path.name)
        grid = sample_grid(trained.generator, n_classes, noise_dim, shape, seed=index)
        written.samples.append(save_png(grid, layout.path(files.samples_file(index))).name)
    walk = latent_walk(extracted.generators[0].generator, n_classes, noise_dim, shape)
    written.latent_walk = save_png(walk, layout.path(files.LATENT_WALK.file)).name
    return written


@torch.no_grad()
def prior_sample_grid(
    validated: Validated,
    extracted: Extracted,
    spec: CompressionSpec,
    recipe: Recipe,
    *,
    device: torch.device,
    count: int = 256,
) -> torch.Tensor | None:
    """A grid of the inputs a generator-free prior feeds distillation, one row per teacher class.

    What the student learns from is worth seeing whatever the prior; the
    KegNet prior has its own per-generator grids.  Images only.
    """
    prior = validated.prior
    if prior in (Prior.NONE, Prior.KEGNET) or len(validated.input_shape) != 3:
        return None
    source = build_source(prior, source_context(validated, extracted, recipe))
    rng = torch.Generator(device).manual_seed(spec.seed)
    samples = torch.cat([source.sample(64, rng) for _ in range(count // 64)])
    classes = torch.cat([validated.teacher(batch).argmax(1) for batch in samples.split(64)])
    return class_grid(samples, classes, validated.input_shape)


def drawable_prior(validated: Validated, extracted: Extracted) -> Prior:
    """The run's prior where it can draw fresh samples, else Gaussian (Tucker only, or a
    synthesis prior whose inputs were not made)."""
    prior = validated.prior
    if prior is Prior.NONE or (prior is Prior.SYNTHESIS and extracted.synthesised is None):
        return Prior.GAUSSIAN
    return prior


def optimised_latency(model_path: Path, student_path: Path, input_shape: Sequence[int]) -> Optimised:
    """Teacher and student as ``torch.jit.optimize_for_inference`` makes them at load time, timed
    on the CPU at batch 1 and 64; a line instead where either cannot be optimised."""
    try:
        teacher, _ = optimised_for_inference(model_path, input_shape)
        student, difference = optimised_for_inference(student_path, input_shape)
    except UnsupportedModelError as exc:
        return Optimised(error=exc.message)
    return Optimised(
        latency_ms=Latency(before=_latency(teacher, input_shape), after=_latency(student, input_shape)),
        max_abs_difference=float(f"{difference:.3g}"),
    )


def teacher_latency(model_path: Path, input_shape: Sequence[int]) -> dict[str, float]:
    """The uploaded TorchScript's CPU latency at batch 1 and 64, in ms."""
    return _latency(torch.jit.load(str(model_path), map_location="cpu").eval(), input_shape)


@dataclass
class Exported:
    artifacts: Artifacts
    params_after: int
    file_size_after: int
    macs_after: int
    layers: list[LayerReport]
    latency: Latency | None
    form: StudentForm | None = None
    optimised: Optimised | None = None
    latency_note: str | None = None


def _latency(model: torch.jit.ScriptModule, input_shape: Sequence[int]) -> dict[str, float]:
    return {f"batch_{b}": round(cpu_latency_ms(model, input_shape, b), 4) for b in (1, 64)}


LOAD_OPTIMISED = "torch.jit.optimize_for_inference(torch.jit.load(path))"


def latency_note(
    latency: Latency, optimised: Optimised | None, layers: Sequence[LayerReport] = ()
) -> str | None:
    """Where the student is slower than its teacher at batch 64, a line saying so, which
    factorised layers are slower than the dense ones they replace, and what the optimised form
    does instead; None where it is not."""
    before, after = latency.before.get("batch_64"), latency.after.get("batch_64")
    if before is None or after is None or after <= before:
        return None
    note = (
        f"the student is {after / before:.2f}x slower than its teacher at batch 64 on this CPU "
        f"({after:.1f} against {before:.1f} ms): each factorised layer runs as two or three smaller ones"
    )
    slower = [
        layer
        for layer in layers
        if layer.latency_ms and layer.latency_ms[1] > layer.latency_ms[0] and layer.stored_as != "dense"
    ]
    if slower:
        shown = ", ".join(
            f"{layer.name} {layer.latency_ms[0]:.2f} -> {layer.latency_ms[1]:.2f} ms"
            for layer in slower
            if layer.latency_ms
        )
        note += f"; slower than the dense layer: {shown} (name the others in `layers` to keep these dense)"
    if optimised is not None and optimised.latency_ms is not None:
        fast = optimised.latency_ms.after.get("batch_64")
        teacher = optimised.latency_ms.before.get("batch_64")
        if fast is not None and teacher is not None:
            note += (
                f"; loaded with {LOAD_OPTIMISED} it takes {fast:.1f} ms "
                f"(the teacher, loaded the same way, {teacher:.1f} ms)"
            )
            one, one_before = optimised.latency_ms.after.get("batch_1"), latency.after.get("batch_1")
            if one is not None and one_before is not None and one > one_before:
                note += f", but {one:.2f} ms against {one_before:.2f} ms for one input"
    return note


def export_student(
    student: nn.Module,
    model_path: Path,
    validated: Validated,
    layout: files.Layout,
    *,
    measure_latency: bool = True,
) -> Exported:
    """Script and save the student (checked against the trained one); measure its size and speed."""
    assert validated.plan is not None
    path = layout.path(files.STUDENT.file)
    saved = save_student(student, path, validated.input_shape)
    student_script = saved.module
    # Layers are timed, and MACs counted, as saved (factors multiplied together where cheaper).
    inference = saved.inference if saved.inference is not None else student
    layers = [
        LayerReport(
            name=layer.name,
            kind=layer.kind,
            weight_shape=list(layer.weight_shape),
            ranks=list(layer.ranks),
            params_before=layer.params_before,
            params_after=layer.params_after,
            stored_as=saved.factor_forms.get(layer.name),
        )
        for layer in validated.plan.layers
    ]
    latency = optimised = note = None
    if measure_latency:
        latency = Latency(
            before=teacher_latency(model_path, validated.input_shape),
            after=_latency(student_script, validated.input_shape),
        )
        optimised = optimised_latency(model_path, path, validated.input_shape)
        timed = layer_latency_ms(
            validated.teacher,
            inference,
            [layer.name for layer in layers],
            validated.input_shape,
            channels_last=saved.memory_format == "channels_last",
        )
        for layer in layers:
            layer.latency_ms = list(timed[layer.name])
        note = latency_note(latency, optimised, layers)
    return Exported(
        artifacts=Artifacts(student=path.name),
        form=StudentForm(
            batch_norms_folded=saved.batch_norms_folded,
            memory_format=saved.memory_format,
            parameters=parameter_count(student_script),
            factor_forms=saved.factor_forms,
            kept_dense=validated.kept_dense,
            timing_batch=validated.timing_batch,
        ).described(),
        optimised=optimised,
        latency_note=note,
        params_after=parameter_count(student),
        file_size_after=path.stat().st_size,
        macs_after=count_macs(inference, validated.input_shape),
        layers=layers,
        latency=latency,
    )


def export_onnx_student(validated: Validated, layout: files.Layout) -> OnnxExport:
    """The float student as ONNX, exported from its TorchScript file (written first) and checked
    against it with ONNX Runtime.  A student the exporter cannot take gets a line in the
    report, not a failed job."""
    path = layout.path(files.STUDENT_ONNX.file)
    scripted = torch.jit.load(str(layout.path(files.STUDENT.file)), map_location="cpu").eval()
    try:
        difference = export_onnx(scripted, path, validated.input_shape, scripted)
    except UnsupportedModelError as exc:
        return OnnxExport(error=exc.message)
    return OnnxExport(file=path.name, max_abs_difference=float(f"{difference:.3g}"))


def teacher_onnx(model_path: Path, validated: Validated, folder: Path) -> tuple[Path | None, str | None]:
    """The teacher's TorchScript file as a float ONNX file in ``folder`` (hidden, for a quantize
    job's int8 ONNX file to be made from), or why there is none."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".teacher-", suffix=".onnx")
    os.close(fd)
    path = Path(name)
    scripted = torch.jit.load(str(model_path), map_location="cpu").eval()
    try:
        export_onnx(scripted, path, validated.input_shape, scripted)
    except UnsupportedModelError as exc:
        path.unlink(missing_ok=True)
        return None, exc.message
    return path, None


def quantize_student(
    student: nn.Module,
    validated: Validated,
    extracted: Extracted,
    spec: CompressionSpec,
    recipe: Recipe,
    layout: files.Layout,
    probe: Probe,
    baseline_agreement: float,
    *,
    device: torch.device,
    measure_latency: bool = True,
    float_onnx: Path | None = None,
    onnx_error: str | None = None,
) -> Int8Student:
    """An int8 copy of ``student`` (the teacher itself for quantize jobs), calibrated on the run's
    own sample source (Gaussian for Tucker only), saved as TorchScript and judged on the same
    probes as the float model; ``baseline_agreement`` (Tucker only's, or 1 for the teacher) is
    the estimate's point of comparison.  With ``float_onnx`` (the same model as a float ONNX
    file) an int8 ONNX file is made from it on the same calibration samples and judged the same
    way; where it cannot be, the report says why (``onnx_error``: why there is no float file)."""
    source = build_source(drawable_prior(validated, extracted), source_context(validated, extracted, recipe))
    calibration = calibration_batches(source, seed=spec.seed, device=device)
    # The float form quantised (BatchNorm folded, factors in their cheapest exact form): what the
    # int8 file holds and computes.
    form, _ = quantisable_form(student, validated.input_shape)
    quantized = quantize_form(form, calibration)
    path = layout.path(files.STUDENT_INT8.file)
    script = save_int8(quantized, path, validated.input_shape)
    inputs = probe.inputs.detach().cpu()
    with torch.no_grad():
        float_classes = teacher_logits(copy.deepcopy(student).cpu().eval(), inputs).argmax(1)
        int8_agreement = agreement(script, inputs, probe.classes.cpu())
        with_student = agreement(script, inputs, float_classes)
    block, quality = assess(probe, int8_agreement, baseline_agreement)
    latency = None
    if measure_latency:
        latency = {f"batch_{b}": round(cpu_latency_ms(script, validated.input_shape, b), 4) for b in (1, 64)}
    if float_onnx is None:
        onnx = Int8Onnx(error=onnx_error or "there is no float ONNX file to quantise")
    else:
        onnx = _int8_onnx(
            float_onnx,
            layout.path(files.STUDENT_INT8_ONNX.file),
            calibration,
            probe,
            float_classes,
            baseline_agreement,
            validated.input_shape,
            measure_latency=measure_latency,
        )
    return Int8Student(
        file=path.name,
        file_size=path.stat().st_size,
        parameters=parameter_count(form),
        macs=count_macs(form, validated.input_shape),
        calibration=f"{CALIBRATION_BATCHES * CALIBRATION_BATCH_SIZE} {source.name} samples",
        agreement_with_student=round(with_student, 5),
        agreement=block,
        quality=quality,
        latency_ms=latency,
        onnx=onnx,
    )


def _int8_onnx(
    float_onnx: Path,
    path: Path,
    calibration: list[torch.Tensor],
    probe: Probe,
    float_classes: torch.Tensor,
    baseline_agreement: float,
    input_shape: Sequence[int],
    *,
    measure_latency: bool,
) -> Int8Onnx:
    """The int8 ONNX file of the model in ``float_onnx``, judged on ``probe`` like the TorchScript
    one; an error in the report where ONNX Runtime cannot quantise it."""
    try:
        forward = quantize_onnx(float_onnx, path, calibration)
    except UnsupportedModelError as exc:
        return Int8Onnx(error=exc.message)
    inputs = probe.inputs.detach().cpu()
    with torch.no_grad():
        teacher_agreement = agreement(forward, inputs, probe.classes.cpu())
        with_student = agreement(forward, inputs, float_classes)
    block, quality = assess(probe, teacher_agreement, baseline_agreement)
    latency = None
    if measure_latency:  # as many threads as torch's figures use, so the two compare
        threads = torch.get_num_threads()
        sides = {
            "before": onnx_forward(onnx_session(float_onnx, threads)),
            "after": onnx_forward(onnx_session(path, threads)),
        }
        latency = Latency(
            **{
                side: {f"batch_{b}": round(callable_latency_ms(run, input_shape, b), 4) for b in (1, 64)}
                for side, run in sides.items()
            }
        )
    return Int8Onnx(
        file=path.name,
        file_size=path.stat().st_size,
        float_file_size=float_onnx.stat().st_size,
        agreement_with_student=round(with_student, 5),
        agreement=block,
        quality=quality,
        latency_ms=latency,
    )
