"""The stroke prior: shapes, standardisation, determinism, and mixing sources."""

from __future__ import annotations

import pytest
import torch

from kegnet_core.errors import SpecError
from kegnet_core.sources import MixedSource, StrokeSource
from kegnet_core.strokes import stroke_images


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 16, 24), (1, 8, 8)])
def test_images_are_standardised_strokes(shape):
    images = stroke_images(64, shape, torch.Generator().manual_seed(0))
    assert images.shape == (64, *shape)
    assert torch.isfinite(images).all()
    flat = images.flatten(2)
    assert torch.allclose(flat.mean(2), torch.zeros(64, shape[0]), atol=1e-4)
    assert torch.allclose(flat.std(2), torch.ones(64, shape[0]), atol=1e-3)
    # Thin strokes on a dark background: most pixels sit below the mean.
    assert (flat < 0).float().mean() > 0.6


def test_strokes_vary_and_follow_the_seed():
    first = stroke_images(16, (1, 32, 32), torch.Generator().manual_seed(1))
    again = stroke_images(16, (1, 32, 32), torch.Generator().manual_seed(1))
    other = stroke_images(16, (1, 32, 32), torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    # No two images of a batch alike.
    distances = torch.cdist(first.flatten(1), first.flatten(1))
    assert distances[~torch.eye(16, dtype=torch.bool)].min() > 1.0


def test_a_single_stroke_is_a_thin_line():
    images = stroke_images(200, (1, 32, 32), torch.Generator().manual_seed(3), max_strokes=1)
    bright = (images > 1.0).float().flatten(1).mean(1)
    # A stroke covers a few percent of a 32 x 32 image, never most of it.
    assert float(bright.min()) > 0.005
    assert float(bright.max()) < 0.2


def test_vectors_have_no_strokes():
    with pytest.raises(SpecError, match="draws images") as caught:
        StrokeSource((12,))
    assert caught.value.field == "prior"
    with pytest.raises(ValueError, match="image shape"):
        stroke_images(4, (12,), torch.Generator())


class _Constant:
    def __init__(self, value: float) -> None:
        self.value = value
        self.name = f"constant {value}"

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return torch.full((count, 2), self.value)


@pytest.mark.parametrize(
    ("count", "share", "extra"), [(10, 0.3, 3), (10, 0.0, 0), (10, 1.0, 10), (4, 0.5, 2)]
)
def test_mixed_source_takes_its_share(count, share, extra):
    batch = MixedSource(_Constant(0.0), _Constant(1.0), share).sample(count, torch.Generator())
    assert batch.shape == (count, 2)
    assert int(batch[:, 0].sum()) == extra


def test_mixed_source_refuses_a_share_outside_0_1():
    with pytest.raises(ValueError, match="share"):
        MixedSource(_Constant(0.0), _Constant(1.0), 1.5)
