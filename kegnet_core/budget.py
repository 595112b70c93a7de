"""The time budget: a job's iterative work scaled so that the whole job ends within the seconds
the user gives (``budget_s`` in the spec, ``--budget 15m`` on the command line).

Nothing here is guessed from the model's size: :func:`kegnet_core.stages.step_costs` times a few
real steps of each kind the job will run (synthesis, generator training, distillation) and one
teacher forward pass, on the device at hand, after validation.  :func:`plan_budget` then finds
the one factor by which every stage's steps are scaled so that the time already spent, the
measured steps and the fixed costs (compressing, exporting, latency measurement) add up to the
budget.  While the job runs, synthesis starts no batch that would eat into the later stages'
time, and distillation is timed (its learning-rate schedule follows the clock to a deadline,
where it stops), so the errors of every earlier estimate are absorbed there.  Without a budget
the recipe runs as it is, work limits included; with one, the budget replaces the work limits.

This module imports nothing heavy: it is arithmetic on measured seconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from kegnet_core.config import DistillConfig, ExtractionConfig, Recipe, SynthesisConfig
from kegnet_core.errors import KegnetError

# A budget never gives synthesis or generators more than this many times the recipe's inputs or
# epochs (the synthesised pool is held in memory); distillation takes whatever time is left. A
# budget too short for the least work below fails the job before its long stages start.
MAX_SCALE = 8.0
MIN_DISTILL_STEPS = 20
# The ONNX export and its check, the final agreement over the probes (up to 2,000 inputs: 31
# passes) and the Tucker factorisation, counted in teacher forward passes at batch 64 on the
# job's device, plus an allowance for files.  The report's CPU latency figures are counted apart
# (StepCosts.measure_s), from one pass timed on the CPU, and so is an int8 copy (StepCosts.int8_s).
FIXED_FORWARDS = 40
FIXED_SECONDS = 2.0


class BudgetError(KegnetError):
    """The budget is shorter than the least this job needs on this device."""

    code = "budget_too_small"
    default_field = "budget_s"


@dataclass(frozen=True)
class StepCosts:
    """Seconds per step of each kind, measured on the device the job runs on (0: not measured,
    the job has no such stage)."""

    synthesis_s: float = 0.0  # one Adam step of one batch of synthesis.batch_size inputs
    generator_s: float = 0.0  # one generator training step
    distill_s: float = 0.0  # one distillation step at the recipe's batch size
    forward_s: float = 0.0  # one teacher forward pass at batch 64
    # The report's CPU latency figures (whole models and planned layers), from one CPU pass.
    measure_s: float = 0.0
    # An int8 copy (``quantize: int8``): calibration, checks and figures, from one CPU pass.
    int8_s: float = 0.0

    @property
    def fixed_s(self) -> float:
        """What compressing and exporting take besides the measured stages."""
        return FIXED_SECONDS + FIXED_FORWARDS * self.forward_s + self.measure_s + self.int8_s

    def check_s(self, eval_samples: int) -> float:
        """One distillation check: the student's KL and agreement over ``eval_samples`` inputs."""
        return 2 * eval_samples / 64 * self.forward_s


@dataclass(frozen=True)
class Work:
    """Which of the budgeted stages the job runs."""

    synthesis: bool = False
    probes: bool = False
    generators: bool = False
    distillation: bool = False


@dataclass(frozen=True)
class BudgetPlan:
    """The recipe scaled to the budget, and what it is expected to take."""

    recipe: Recipe
    distill: DistillConfig  # the distillation config the job's prior uses, scaled
    scale: float
    budget_s: float
    estimated_s: float  # the whole job, from its start, as planned
    planned_s: dict[str, float]  # seconds per budgeted stage
    capped: bool  # synthesis and generators at MAX_SCALE times the recipe's; distillation has the rest
    # Seconds the job needs after its training inputs are synthesised (probes, generators,
    # distillation, the fixed costs): synthesis stops adding inputs that would eat into them.
    after_inputs_s: float

    def to_report(self, costs: StepCosts) -> dict[str, Any]:
        return {
            "budget_s": round(self.budget_s, 1),
            "estimated_s": round(self.estimated_s, 1),
            "scale": round(self.scale, 4),
            "planned_s": {stage: round(seconds, 2) for stage, seconds in self.planned_s.items()},
            "step_costs_s": {
                "synthesis": round(costs.synthesis_s, 5),
                "generator": round(costs.generator_s, 5),
                "distillation": round(costs.distill_s, 5),
                "forward_64": round(costs.forward_s, 5),
                "latency_measurement": round(costs.measure_s, 3),
                "int8": round(costs.int8_s, 3),
            },
            "capped": self.capped,
        }


def scale_synthesis(config: SynthesisConfig, scale: float) -> SynthesisConfig:
    """``config`` with ``scale`` times its input-steps: more or fewer inputs first, then (going
    down, past ``min_samples``) fewer steps, down to ``min_steps``; probes never more than
    asked, never fewer than half."""
    batch = config.batch_size
    work = scale * (config.samples + config.probe_samples) * config.steps
    samples = config.samples
    if samples:
        low = min(samples, config.min_samples)
        wanted = min(samples * scale, samples * MAX_SCALE)
        samples = max(low, int(wanted) // batch * batch if wanted >= batch else low)
    probes = config.probe_samples
    if probes:
        probes = min(probes, max(probes // 2, int(probes * scale)))
    inputs = samples + probes
    steps = config.steps if not inputs else max(config.min_steps, min(config.steps, int(work / inputs)))
    return replace(config, samples=samples, probe_samples=probes, steps=steps, work_limit=None)


def scale_extraction(config: ExtractionConfig, scale: float) -> ExtractionConfig:
    """``config`` with ``scale`` times its epochs (at least one); snapshots start as far in."""
    epochs = max(1, min(round(config.epochs * scale), math.floor(config.epochs * MAX_SCALE)))
    ratio = epochs / config.epochs
    return replace(config, epochs=epochs, snapshot_from=int(config.snapshot_from * ratio))


def scale_distillation(config: DistillConfig, steps: int) -> DistillConfig:
    """``config`` run for ``steps`` steps (its schedule, checks and patience fitted to them)."""
    return replace(
        config,
        steps=steps,
        eval_every=min(config.eval_every, steps),
        min_steps=min(config.min_steps, steps),
        work_limit=None,
    )


def _synthesis_s(config: SynthesisConfig, work: Work, costs: StepCosts) -> float:
    # A smaller last batch is counted whole: on a small teacher it costs about as much.
    inputs = (config.samples if work.synthesis else 0, config.probe_samples if work.probes else 0)
    batches = sum(-(-count // config.batch_size) for count in inputs)
    return batches * config.steps * costs.synthesis_s


def _generators_s(config: ExtractionConfig, work: Work, costs: StepCosts) -> float:
    return config.generators * config.steps * costs.generator_s if work.generators else 0.0


def distill_seconds(config: DistillConfig, costs: StepCosts) -> float:
    """What ``config`` takes: its steps and its checks."""
    checks = -(-config.steps // config.eval_every)
    return config.steps * costs.distill_s + checks * costs.check_s(config.eval_samples)


def distill_steps_for(seconds: float, config: DistillConfig, costs: StepCosts) -> int:
    """The most distillation steps of ``config`` (checks included) that fit in ``seconds``, at
    least :data:`MIN_DISTILL_STEPS`."""
    per_step = costs.distill_s + costs.check_s(config.eval_samples) / config.eval_every
    fitting = int(max(seconds, 0.0) / per_step) if per_step > 0 else config.steps
    return max(MIN_DISTILL_STEPS, fitting)


def _scaled(
    recipe: Recipe, distill: DistillConfig, work: Work, costs: StepCosts, scale: float
) -> tuple[Recipe, DistillConfig, dict[str, float]]:
    synthesis = scale_synthesis(recipe.synthesis, scale)
    extraction = scale_extraction(recipe.extraction, scale)
    steps = max(MIN_DISTILL_STEPS, round(distill.steps * scale))
    scaled_distill = scale_distillation(distill, steps)
    planned = {}
    if work.synthesis or work.probes:
        planned["synthesis"] = _synthesis_s(synthesis, work, costs)
    if work.generators:
        planned["generators"] = _generators_s(extraction, work, costs)
    if work.distillation:
        planned["distillation"] = distill_seconds(scaled_distill, costs)
    return replace(recipe, synthesis=synthesis, extraction=extraction), scaled_distill, planned


def plan_budget(
    recipe: Recipe,
    distill: DistillConfig,
    work: Work,
    costs: StepCosts,
    *,
    budget_s: float,
    elapsed_s: float,
) -> BudgetPlan:
    """The largest scale of the recipe's steps whose planned time, with the ``elapsed_s`` already
    spent and the fixed costs, stays within ``budget_s`` (synthesis and generators at most
    ``MAX_SCALE`` times the recipe's, distillation as many steps as the rest of the time allows).

    Raises :class:`BudgetError` naming the least budget that would do, when even the least work
    (:data:`MIN_DISTILL_STEPS`, synthesis at its minimum inputs and steps, one generator epoch)
    would run more than 10% past the budget.
    """

    def total(scale: float) -> tuple[float, Recipe, DistillConfig, dict[str, float]]:
        scaled, scaled_distill, planned = _scaled(recipe, distill, work, costs, scale)
        return elapsed_s + costs.fixed_s + sum(planned.values()), scaled, scaled_distill, planned

    least = total(1e-6)
    if least[0] > 1.1 * budget_s:
        raise BudgetError(
            f"a budget of {budget_s:.0f} s is too short for this job on this device: it needs at "
            f"least {math.ceil(least[0])} s ({elapsed_s:.0f} s were spent loading and measuring)"
        )
    low, high = 1e-6, 1e6
    for _ in range(80):  # the total only grows with the scale
        middle = math.sqrt(low * high)
        if total(middle)[0] <= budget_s:
            low = middle
        else:
            high = middle
    estimated, scaled, scaled_distill, planned = total(low)
    probes = Work(probes=work.probes)
    after_inputs = costs.fixed_s + sum(planned.values()) - planned.get("synthesis", 0.0)
    after_inputs += _synthesis_s(scaled.synthesis, probes, costs)
    return BudgetPlan(
        recipe=scaled,
        distill=scaled_distill,
        scale=low,
        budget_s=budget_s,
        estimated_s=estimated,
        planned_s=planned,
        capped=low >= MAX_SCALE,
        after_inputs_s=after_inputs,
    )


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """``"15m"`` -> 900.0; ``"90s"``, ``"1h30m"``, ``"2h"``, or plain seconds (``"600"``).

    Raises ValueError naming the accepted forms."""
    stripped = text.strip().lower()
    try:
        value = float(stripped)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"a duration is a positive number of seconds or 90s, 15m, 1h30m, got {text!r}")
        return value
    match = _DURATION.fullmatch(stripped)
    if not stripped or match is None or not any(match.groups()):
        raise ValueError(f"a duration looks like 90s, 15m, 1h30m or 600 (seconds), got {text!r}")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"a duration must be longer than zero, got {text!r}")
    return total
