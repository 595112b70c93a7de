"""How many steps a student distils for: grown for a small teacher where every step draws fresh
inputs, never on the fixed pool of synthesised ones."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from kegnet_core import stages
from kegnet_core.config import DistillConfig
from kegnet_core.sources import PoolSource
from kegnet_core.spec import CompressionSpec, Prior
from tests.core.test_student_speed import SHAPE, _validated


def _distilled_config(
    monkeypatch: pytest.MonkeyPatch, validated: stages.Validated, prior: Prior, macs: int
) -> DistillConfig:
    seen: dict[str, Any] = {}

    def capture(student: Any, teacher: Any, source: Any, config: DistillConfig, **kwargs: Any) -> None:
        seen["config"] = config

    monkeypatch.setattr(stages, "distill_student", capture)
    monkeypatch.setattr(stages, "source_context", lambda *args: None)

    # The synthesised inputs are a fixed pool; the other priors draw fresh inputs every step.
    def source(prior: Prior, context: Any, **kwargs: Any) -> Any:
        return PoolSource(torch.zeros(1, *SHAPE), "synthesis") if prior is Prior.SYNTHESIS else None

    monkeypatch.setattr(stages, "build_source", source)
    validated = replace(validated, prior=prior, macs=macs)
    spec = CompressionSpec(input_shape=SHAPE)
    stages.distill(
        validated.teacher,
        validated,
        None,  # type: ignore[arg-type]
        spec,
        spec.recipe(),
        device=torch.device("cpu"),
    )
    return seen["config"]


def test_fresh_inputs_give_a_small_teachers_student_more_steps_and_a_synthesised_pool_does_not(monkeypatch):
    recipe = CompressionSpec(input_shape=SHAPE).recipe()
    validated = _validated()
    procedural = _distilled_config(monkeypatch, validated, Prior.PROCEDURAL, 400_000)
    gaussian = _distilled_config(monkeypatch, validated, Prior.GAUSSIAN, 400_000)
    synthesis = _distilled_config(monkeypatch, validated, Prior.SYNTHESIS, 400_000)
    assert procedural.steps == gaussian.steps > recipe.baseline_distill.steps
    assert synthesis.steps == recipe.distill.steps
    # A bigger teacher's student takes the recipe's steps whatever its inputs.
    bigger = _distilled_config(monkeypatch, validated, Prior.PROCEDURAL, 5_000_000)
    assert bigger.steps == recipe.baseline_distill.steps
