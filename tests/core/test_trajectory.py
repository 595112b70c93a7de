"""Generator snapshots along training, and distilling from them."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from kegnet_core import extraction
from kegnet_core.config import ExtractionConfig
from kegnet_core.extraction import train_generator
from kegnet_core.generators import build_generator
from kegnet_core.sources import TrajectorySource

from .models import TinyCNN

CONFIG = ExtractionConfig(
    generators=1, epochs=1, batches_per_epoch=50, batch_size=16, snapshot_every=10, snapshot_from=20
)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    teacher = TinyCNN().eval()
    return train_generator(
        teacher, input_shape=(1, 8, 8), n_classes=3, config=CONFIG, seed=0, device=torch.device("cpu")
    )


def _weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([parameter.detach().flatten() for parameter in module.parameters()])


def test_snapshots_are_taken_on_schedule_and_end_at_the_final_generator(trained):
    assert len(trained.snapshots) == 4  # steps 20, 30, 40, 50
    weights = [_weights(snapshot) for snapshot in trained.snapshots]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(weights))
    assert torch.equal(weights[-1], _weights(trained.generator))
    assert all(not snapshot.training for snapshot in trained.snapshots)
    assert all(not p.requires_grad for snapshot in trained.snapshots for p in snapshot.parameters())


def test_no_snapshots_unless_asked():
    teacher = TinyCNN().eval()
    plain = train_generator(
        teacher,
        input_shape=(1, 8, 8),
        n_classes=3,
        config=replace(CONFIG, snapshot_every=0),
        seed=0,
        device=torch.device("cpu"),
    )
    assert plain.snapshots == []


def test_trajectory_source_draws_from_several_snapshots(trained):
    source = TrajectorySource([trained.snapshots], n_classes=3, noise_dim=10, picks=4)
    rng = torch.Generator().manual_seed(0)
    batch = source.sample(32, rng)
    assert batch.shape == (32, 1, 8, 8)
    again = TrajectorySource([trained.snapshots], n_classes=3, noise_dim=10, picks=4)
    assert torch.equal(again.sample(32, torch.Generator().manual_seed(0)), batch)
    # The batch mixes stages of training: the same draws from a trajectory whose
    # snapshots were all the final generator give other samples.
    finals = [trained.generator] * len(trained.snapshots)
    final_only = TrajectorySource([finals], n_classes=3, noise_dim=10, picks=4)
    assert not torch.allclose(final_only.sample(32, torch.Generator().manual_seed(0)), batch)
    with pytest.raises(ValueError, match="snapshot"):
        TrajectorySource([[]], n_classes=3, noise_dim=10)


def test_snapshots_past_the_memory_bound_are_thinned_evenly(monkeypatch):
    # Every 5 steps over 50 would be 10 snapshots; room for 3 keeps every other one (newest
    # kept) each time it fills, and takes them half as often from then on.
    config = replace(CONFIG, snapshot_every=5, snapshot_from=5)

    def train() -> list[torch.Tensor]:
        torch.manual_seed(0)
        trained = train_generator(
            TinyCNN().eval(),
            input_shape=(1, 8, 8),
            n_classes=3,
            config=config,
            seed=0,
            device=torch.device("cpu"),
        )
        return [_weights(snapshot) for snapshot in trained.snapshots]

    every_one = train()
    assert len(every_one) == 10
    generator = build_generator((1, 8, 8), 3, config.noise_dim)
    size = sum(t.numel() * t.element_size() for t in (*generator.parameters(), *generator.buffers()))
    monkeypatch.setattr(extraction, "SNAPSHOT_BYTES", 3 * size + size // 2)
    bounded = train()
    assert len(bounded) == 3
    for kept, step in zip(bounded, (20, 40, 50), strict=True):
        assert torch.equal(kept, every_one[step // 5 - 1])
