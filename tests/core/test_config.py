"""Recipes: overrides are checked like the rest of the spec, and work limits cut big teachers' runs."""

from __future__ import annotations

import pytest

from kegnet_core.config import (
    DistillConfig,
    SynthesisConfig,
    fit_distillation,
    fit_synthesis,
    get_recipe,
)


def test_overrides_change_one_setting_and_keep_their_type():
    recipe = get_recipe("default", {"distill.steps": 7, "sampling.noise_scale": 2, "synthesis.samples": 256})
    assert recipe.distill.steps == 7 and isinstance(recipe.distill.steps, int)
    assert recipe.sampling.noise_scale == 2.0 and isinstance(recipe.sampling.noise_scale, float)
    assert recipe.synthesis.samples == 256
    assert recipe.extraction == get_recipe("default").extraction  # nothing else moved


def test_a_distill_override_reaches_the_baselines_where_the_preset_distils_them_alike():
    # default distils procedural/Gaussian students with the same settings as
    # synthesised ones: one override must change how every prior's student learns.
    recipe = get_recipe("default", {"distill.temperature": 4, "distill.steps": 9})
    assert recipe.baseline_distill.temperature == 4.0 and recipe.baseline_distill.steps == 9
    # ...unless the baseline's own setting is given.
    both = get_recipe("default", {"distill.steps": 9, "baseline_distill.steps": 11})
    assert (both.distill.steps, both.baseline_distill.steps) == (9, 11)
    # The paper's baselines keep their own recipe.
    paper = get_recipe("paper", {"distill.steps": 9})
    assert paper.distill.steps == 9
    assert paper.baseline_distill == get_recipe("paper").baseline_distill


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"distill": 5}, "must look like"),
        ({"distill.stepz": 5}, "unknown setting"),
        ({"distill.steps": "many"}, "must be a number"),
        ({"distill.steps": 2.5}, "must be an integer"),
        ({"distill.steps": 0}, "above 0"),
        ({"sampling.stroke_share": 1.5}, "in [0, 1]"),
        ({"distill.steps": None}, "cannot be null"),
        ({"extraction.generator_channels": [4, -1]}, "positive integers"),
    ],
)
def test_bad_overrides_say_what_is_wrong(overrides, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        get_recipe("default", overrides)


def test_synthesis_within_its_limit_is_left_alone():
    config = SynthesisConfig(samples=1024, probe_samples=256, steps=300, work_limit=4e12)
    assert fit_synthesis(config, 1_000_000) == config


def test_a_big_teacher_gets_fewer_inputs_before_fewer_steps():
    config = SynthesisConfig(
        samples=1024, probe_samples=256, steps=300, batch_size=256, work_limit=4e12, min_samples=512
    )
    macs = 26_400_000
    fitted = fit_synthesis(config, macs)
    assert fitted.samples == 512 and fitted.probe_samples == 128  # the floors, first
    assert 200 < fitted.steps < 300  # then the steps that fit
    assert (fitted.samples + fitted.probe_samples) * fitted.steps * macs <= 4e12
    # A teacher too big for the floors keeps them and the fewest steps.
    huge = fit_synthesis(config, 10**10)
    assert (huge.samples, huge.steps) == (512, config.min_steps)


def test_distillation_steps_shrink_with_the_teacher():
    config = DistillConfig(steps=1500, batch_size=128, work_limit=1.2e12, floor_steps=300, eval_every=100)
    assert fit_distillation(config, 1_000_000).steps == 1500
    # A little over the limit: fewer steps of the same batch.
    trimmed = fit_distillation(config, 7_150_000)
    assert trimmed.batch_size == 128 and 1000 <= trimmed.steps < 1500
    assert trimmed.steps * 128 * 7_150_000 <= 1.2e12
    # Far over: smaller batches, so the student still takes several hundred steps.
    fitted = fit_distillation(config, 26_400_000)
    assert fitted.batch_size == config.small_batch_size and 600 <= fitted.steps < 1000
    assert fitted.steps * fitted.batch_size * 26_400_000 <= 1.2e12
    assert fit_distillation(config, 10**10).steps == config.floor_steps


def test_a_small_teachers_student_takes_more_steps_within_the_growth_work():
    config = DistillConfig(
        steps=1500, batch_size=128, work_limit=1.2e12, floor_steps=300, grow_work=5e11, max_steps=12_000
    )
    lenet = fit_distillation(config, 420_000)  # LeNet5's MACs per input
    assert config.steps < lenet.steps < 12_000
    assert lenet.steps * 128 * 420_000 <= 5e11 < (lenet.steps + 1) * 128 * 420_000
    # A tiny MLP is capped; a teacher the growth work does not stretch keeps its steps.
    assert fit_distillation(config, 80_000).steps == 12_000
    assert fit_distillation(config, 2_900_000).steps == config.steps
    # A big teacher is still cut by the work limit, growth or not.
    big = fit_distillation(config, 26_400_000)
    plain = fit_distillation(
        DistillConfig(steps=1500, batch_size=128, work_limit=1.2e12, floor_steps=300), 26_400_000
    )
    assert (big.steps, big.batch_size) == (plain.steps, plain.batch_size) and big.steps < config.steps


def test_steps_a_user_names_are_not_grown():
    grown = fit_distillation(get_recipe("default").baseline_distill, 420_000)
    assert grown.steps > get_recipe("default").baseline_distill.steps
    for section in ("distill", "baseline_distill"):
        named = get_recipe("default", {"distill.steps": 500})
        assert fit_distillation(getattr(named, section), 420_000).steps == 500
    # Naming the cap as well keeps the growth, up to it.
    capped = get_recipe("default", {"distill.steps": 500, "distill.max_steps": 2000})
    assert fit_distillation(capped.distill, 420_000).steps == 2000


@pytest.mark.parametrize("setting", ["grow_work", "max_steps"])
def test_growth_settings_must_be_positive(setting):
    with pytest.raises(ValueError, match=f"distill.{setting}"):
        DistillConfig(**{setting: 0})
