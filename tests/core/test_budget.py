"""The time budget: planning from measured step costs, the timed distillation, and a whole run."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from kegnet_core import stages
from kegnet_core.budget import (
    MAX_SCALE,
    MIN_DISTILL_STEPS,
    BudgetError,
    StepCosts,
    Work,
    distill_seconds,
    distill_steps_for,
    parse_duration,
    plan_budget,
    scale_synthesis,
)
from kegnet_core.config import DEFAULT, QUICK
from kegnet_core.distill import distill_student
from kegnet_core.errors import SpecError
from kegnet_core.pipeline import run
from kegnet_core.sources import GaussianSource
from kegnet_core.spec import CompressionSpec, parse_spec

from .models import TinyMLP

COSTS = StepCosts(synthesis_s=0.05, distill_s=0.02, forward_s=0.004)
ALL = Work(synthesis=True, probes=True, distillation=True)


def test_the_plan_fills_the_budget_and_grows_with_it():
    plans = [
        plan_budget(DEFAULT, DEFAULT.distill, ALL, COSTS, budget_s=budget, elapsed_s=3.0)
        for budget in (40.0, 120.0, 400.0)
    ]
    for plan, budget in zip(plans, (40.0, 120.0, 400.0), strict=True):
        assert budget * 0.97 <= plan.estimated_s <= budget
        assert plan.estimated_s == pytest.approx(3.0 + COSTS.fixed_s + sum(plan.planned_s.values()))
        assert plan.recipe.synthesis.work_limit is None and plan.distill.work_limit is None
    scales = [plan.scale for plan in plans]
    assert scales == sorted(scales) and scales[0] < 1 < scales[-1]
    steps = [plan.distill.steps for plan in plans]
    assert steps == sorted(steps) and len(set(steps)) == 3
    # Going down, synthesis keeps its least inputs and steps before anything else goes.
    small = plans[0].recipe.synthesis
    assert small.samples >= DEFAULT.synthesis.min_samples and small.steps >= DEFAULT.synthesis.min_steps


def test_a_budget_beyond_what_helps_is_capped_and_one_too_short_fails_naming_the_least():
    huge = plan_budget(DEFAULT, DEFAULT.distill, ALL, COSTS, budget_s=1e5, elapsed_s=0.0)
    assert huge.capped and huge.estimated_s == pytest.approx(1e5, rel=0.01)
    assert huge.recipe.synthesis.samples == MAX_SCALE * DEFAULT.synthesis.samples
    assert huge.planned_s["distillation"] > 0.99 * (1e5 - huge.planned_s["synthesis"] - COSTS.fixed_s)
    with pytest.raises(BudgetError) as caught:
        plan_budget(DEFAULT, DEFAULT.distill, ALL, COSTS, budget_s=10.0, elapsed_s=2.0)
    assert caught.value.code == "budget_too_small" and caught.value.field == "budget_s"
    # The least: the least synthesis (512 inputs, 128 probes: 3 batches of 100 steps), 20 steps.
    least = (
        2.0
        + COSTS.fixed_s
        + 3 * 100 * 0.05
        + distill_seconds(
            replace(DEFAULT.distill, steps=MIN_DISTILL_STEPS, eval_every=MIN_DISTILL_STEPS), COSTS
        )
    )
    assert f"needs at least {int(least) + 1} s" in caught.value.message


def test_only_the_stages_a_job_runs_take_time():
    vector = plan_budget(QUICK, QUICK.distill, Work(distillation=True), COSTS, budget_s=30.0, elapsed_s=0.0)
    assert set(vector.planned_s) == {"distillation"}
    generators = Work(generators=True)
    extract = plan_budget(
        QUICK, QUICK.distill, generators, replace(COSTS, generator_s=0.01), budget_s=30.0, elapsed_s=0
    )
    assert set(extract.planned_s) == {"generators"}
    assert extract.recipe.extraction.epochs > QUICK.extraction.epochs


def test_synthesis_scales_inputs_before_steps_and_never_asks_for_more_probes():
    config = DEFAULT.synthesis
    up = scale_synthesis(config, 3.0)
    assert up.samples == 3 * config.samples and up.steps == config.steps
    assert up.probe_samples == config.probe_samples
    down = scale_synthesis(config, 0.1)
    assert down.samples == config.min_samples and down.probe_samples == config.probe_samples // 2
    assert down.steps == config.min_steps


def test_distillation_steps_for_the_time_left():
    config = DEFAULT.distill
    steps = distill_steps_for(30.0, config, COSTS)
    assert distill_seconds(replace(config, steps=steps), COSTS) == pytest.approx(30.0, rel=0.02)
    assert distill_steps_for(0.0, config, COSTS) == MIN_DISTILL_STEPS


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900.0), ("1h30m", 5400.0), ("90s", 90.0), ("600", 600.0), (" 2H ", 7200.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "15 minutes", "1.5.2m", "-5m", "5m3h"])
def test_bad_durations_say_what_a_duration_looks_like(text):
    with pytest.raises(ValueError, match="90s, 15m, 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize("budget", [5, True, 8 * 24 * 3600])
def test_the_spec_refuses_budgets_out_of_range(budget):
    with pytest.raises(SpecError) as caught:
        parse_spec({"input_shape": [4], "budget_s": budget})
    assert caught.value.field == "budget_s"


def test_a_timed_distillation_stops_at_its_deadline_and_decays_over_the_time():
    torch.manual_seed(0)
    teacher, student = TinyMLP().eval(), TinyMLP().eval()
    config = replace(
        QUICK.distill, steps=100_000, eval_every=10_000, final_learning_rate=0.0, eval_samples=64
    )
    began = time.perf_counter()
    result = distill_student(
        student,
        teacher,
        GaussianSource((12,)),
        config,
        rng=torch.Generator().manual_seed(0),
        deadline=began + 1.0,
    )
    took = time.perf_counter() - began
    assert 1.0 <= took < 3.0
    assert 0 < result.stopped_at_deadline < config.steps
    (check,) = result.history  # one check: at the deadline
    assert check["step"] == result.stopped_at_deadline
    assert check["lr"] < 0.01 * config.learning_rate  # the cosine ran out with the time


def test_a_budgeted_run_keeps_its_budget_and_reports_the_plan(tiny_cnn, tmp_path):
    budget = 20.0
    # Quick's least work takes a second or two here, so even a busy machine keeps 20 s.
    spec = CompressionSpec(input_shape=(1, 8, 8), preset="quick", budget_s=budget)
    estimates: list[float] = []
    began = time.perf_counter()
    report = run(
        tiny_cnn,
        spec,
        tmp_path / "out",
        progress=lambda event: estimates.append(event.estimate_s) if event.estimate_s else None,
    )
    took = time.perf_counter() - began
    assert report.budget is not None
    assert estimates == [pytest.approx(report.budget["estimated_s"], abs=0.05)]
    assert report.budget["estimated_s"] <= 1.1 * budget  # over only where the least work is
    assert report.budget["step_costs_s"]["distillation"] > 0
    # The time left after synthesis went to distillation: far more steps than quick's own.
    assert report.budget["distill_steps"] > QUICK.distill.steps
    assert report.recipe["synthesis"]["samples"] >= report.history["synthesis"]["samples"] > 0
    assert report.recipe["synthesis"]["work_limit"] is None
    assert 0.8 * budget <= took <= 1.15 * budget, (took, report.timings_s, report.budget)


def test_a_budget_too_short_for_the_measured_steps_fails_before_the_long_stages(
    tiny_cnn, tmp_path, monkeypatch
):
    slow = StepCosts(synthesis_s=1.0, distill_s=1.0, forward_s=0.1)
    monkeypatch.setattr(stages, "step_costs", lambda *args, **kwargs: slow)
    spec = CompressionSpec(input_shape=(1, 8, 8), preset="quick", budget_s=30)
    with pytest.raises(BudgetError, match="too short for this job on this device"):
        run(tiny_cnn, spec, tmp_path / "out", measure_latency=False)
    assert not (tmp_path / "out" / "student.pt").exists()


def test_synthesis_past_its_deadline_stops_after_a_batch_never_before_one(tiny_cnn):
    from kegnet_core.loading import load_classifier
    from kegnet_core.synthesis import synthesise

    teacher = load_classifier(tiny_cnn, (1, 8, 8)).eval()
    config = replace(QUICK.synthesis, samples=256, batch_size=64, steps=2)
    rng = torch.Generator().manual_seed(0)
    late = synthesise(teacher, (1, 8, 8), 3, config, rng=rng, deadline=time.perf_counter() - 1)
    assert late.shape == (64, 1, 8, 8)
    rng = torch.Generator().manual_seed(0)
    ahead = synthesise(teacher, (1, 8, 8), 3, config, rng=rng, deadline=time.perf_counter() + 60)
    assert ahead.shape == (256, 1, 8, 8) and torch.equal(ahead[:64], late)


class _Slow(torch.nn.Module):
    """A model whose every pass takes ``seconds``; counts its passes."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.passes = seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        time.sleep(self.seconds)
        return x


def test_a_slow_model_is_timed_on_a_few_passes_not_twenty_five():
    from kegnet_core.measure import MIN_RUNS, MIN_WARM_UPS, _median_ms, _paired_fastest_ms

    slow = _Slow(0.04)
    assert _median_ms(slow, torch.zeros(1), 20, warm_ups=5, cap_s=0.05) >= 40
    assert slow.passes == MIN_WARM_UPS + MIN_RUNS
    fast = _Slow(0.0)
    _median_ms(fast, torch.zeros(1), 20, warm_ups=5, cap_s=0.05)
    assert fast.passes == 25
    first, second = _Slow(0.03), _Slow(0.001)
    dense, factorised = _paired_fastest_ms(first, second, torch.zeros(1), 15, warm_ups=3, cap_s=0.05)
    assert first.passes == second.passes == MIN_WARM_UPS + MIN_RUNS and dense > factorised


def test_the_latency_figures_a_budget_counts_stop_growing_with_the_model():
    from kegnet_core.measure import TIMING_CAP_S, latency_figure_s, measurement_s

    # A small teacher: every pass of every figure counted (4 x 25 whole-model passes at batch 64
    # and at batch 1, 18 pairs of each planned layer).
    assert measurement_s(0.01, 4) == pytest.approx(0.01 * (4 * 25 * (1 + 1 / 32) + 2 * 18))
    # A 224x224 ResNet-18 on two CPU cores, ~4 s a pass at batch 64: under 50 passes' worth, not
    # 140, most of it the per-layer figures' caps.
    assert measurement_s(4.0, 20) < 50 * 4.0
    assert latency_figure_s(4.0) == pytest.approx(max(5 * 4.0, 2 * (TIMING_CAP_S + 4.0)))


def test_an_int8_copy_is_costed_from_a_cpu_pass_only_when_the_job_makes_one(tiny_cnn):
    cpu = torch.device("cpu")
    costed = {}
    for quantize in ("none", "int8"):
        spec = CompressionSpec(input_shape=(1, 8, 8), preset="quick", quantize=quantize, budget_s=60)
        validated = stages.validate(tiny_cnn, spec, device=cpu)
        work = stages.budgeted_work(validated, spec, spec.recipe())
        costs = stages.step_costs(validated, spec, spec.recipe(), work, device=cpu, measure_latency=False)
        costed[quantize] = costs
    assert costed["none"].int8_s == 0
    # At least the calibration's passes and the fixed seconds, and counted among the fixed costs.
    int8 = costed["int8"]
    assert int8.int8_s > 1.0 + 16 * int8.forward_s
    assert int8.fixed_s - replace(int8, int8_s=0.0).fixed_s == pytest.approx(int8.int8_s)
