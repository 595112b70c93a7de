"""Distillation from a fixed pool: the teacher's answers are computed once and give the same student."""

from __future__ import annotations

import pytest
import torch

from kegnet_core import distill
from kegnet_core.config import DistillConfig
from kegnet_core.distill import distill_student
from kegnet_core.sources import PoolSource
from kegnet_core.tucker import apply_plan, plan_compression
from tests.core.models import TinyCNN


def _run(monkeypatch: pytest.MonkeyPatch, cache_bytes: int) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    teacher = TinyCNN().eval()
    student = apply_plan(teacher, plan_compression(teacher, layers=["block.0"], ranks={"block.0": [3, 3]}))
    pool = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    calls = 0
    forward = teacher.forward

    def counted(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return forward(x)

    monkeypatch.setattr(teacher, "forward", counted)
    monkeypatch.setattr(distill, "CACHE_BYTES", cache_bytes)
    config = DistillConfig(
        steps=30,
        batch_size=16,
        learning_rate=1e-2,
        feature_weight=1.0,
        pool_batches=None,
        eval_every=10,
        eval_samples=16,
        patience_evals=None,
        min_steps=0,
    )
    distill_student(
        student,
        teacher,
        PoolSource(pool, "synthesis"),
        config,
        rng=torch.Generator().manual_seed(2),
        matched_layers=["block.0"],
    )
    return student.state_dict(), calls


def test_cached_teacher_answers_train_the_same_student(monkeypatch: pytest.MonkeyPatch) -> None:
    cached, cached_calls = _run(monkeypatch, cache_bytes=1 << 30)
    fresh, fresh_calls = _run(monkeypatch, cache_bytes=0)  # too big to keep: the teacher runs every step
    assert fresh_calls >= 30 and cached_calls < 10
    for name, value in fresh.items():
        torch.testing.assert_close(cached[name], value, rtol=1e-4, atol=1e-5)
