"""Procedural priors (images: dead leaves, 1/f noise; signals: 1/f noise, periodic waves, piecewise
levels), the procedural source, and what `auto` resolves to."""

from __future__ import annotations

import pytest
import torch

from kegnet_core import stages
from kegnet_core.errors import SpecError
from kegnet_core.generators import standardise_images
from kegnet_core.procedural import dead_leaves, oscillations, pink_noise, pink_signals, steps
from kegnet_core.sources import ProceduralSource, resolve_prior
from kegnet_core.spec import CompressionSpec, Prior, parse_spec
from tests.core.models import TinyCNN, torchscript_bytes


@pytest.mark.parametrize("draw", [dead_leaves, pink_noise])
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 16, 24)])
def test_images_are_standardised_and_follow_the_seed(draw, shape):
    images = draw(16, shape, torch.Generator().manual_seed(0))
    assert images.shape == (16, *shape) and torch.isfinite(images).all()
    flat = images.flatten(2)
    assert torch.allclose(flat.mean(2), torch.zeros(16, shape[0]), atol=1e-4)
    assert torch.allclose(flat.std(2), torch.ones(16, shape[0]), atol=1e-3)
    assert torch.equal(images, draw(16, shape, torch.Generator().manual_seed(0)))
    assert not torch.allclose(images, draw(16, shape, torch.Generator().manual_seed(1)))


def test_dead_leaves_are_flat_shapes_that_occlude():
    images = dead_leaves(32, (1, 32, 32), torch.Generator().manual_seed(2))
    # Piecewise constant: most horizontal neighbours have the same value...
    same = (images[..., 1:] == images[..., :-1]).float().mean()
    assert same > 0.7
    # ... yet every image holds several shapes (distinct grey levels).
    levels = [len(torch.unique(image)) for image in images]
    assert min(levels) >= 4


@pytest.mark.parametrize("shapes", [40, 300])  # shape numbers in bytes, and past a byte
def test_each_pixel_takes_the_last_shape_drawn_over_it(shapes):
    """The vectorised draw equals painting the shapes one after another on the background."""
    count, height, width = 4, 12, 10
    images = dead_leaves(count, (1, height, width), torch.Generator().manual_seed(5), shapes=shapes)
    # Replay the draw's random numbers in its order, then paint shape by shape.
    rng = torch.Generator().manual_seed(5)
    centre_y = torch.rand(count, shapes, generator=rng) * height
    centre_x = torch.rand(count, shapes, generator=rng) * width
    low, high = 1.0, 0.4 * max(height, width)
    radius = (low**-2 - torch.rand(count, shapes, generator=rng) * (low**-2 - high**-2)) ** -0.5
    square = torch.rand(count, shapes, generator=rng) < 0.3
    background = torch.rand(count, generator=rng)
    fills = torch.rand(count * shapes, generator=rng).view(count, shapes)
    rows = torch.arange(height, dtype=torch.float32).view(height, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, width)
    for n in range(count):
        painted = background[n].expand(height, width).clone()
        for s in range(shapes):
            dy, dx = rows - centre_y[n, s], cols - centre_x[n, s]
            r = radius[n, s]
            inside = (dy.abs() < r) & (dx.abs() < r) if square[n, s] else dy.square() + dx.square() < r * r
            painted[inside] = fills[n, s]
        expected = standardise_images(painted.view(1, 1, height, width))[0, 0]
        # Same grey levels in the same places, up to the standardisation's rounding.
        assert torch.allclose(images[n, 0], expected, atol=1e-4)


def test_pink_noise_has_more_power_at_low_frequencies():
    images = pink_noise(64, (1, 32, 32), torch.Generator().manual_seed(3))
    power = torch.fft.rfft2(images[:, 0]).abs().square().mean(0)  # (32, 17)
    low, high = power[1:4, 1:4].mean(), power[12:16, 12:16].mean()
    assert low > 20 * high


def test_the_procedural_source_draws_a_third_of_each_kind():
    source = ProceduralSource((1, 32, 32))
    batch = source.sample(30, torch.Generator().manual_seed(4))
    strokes, noise, leaves = batch[:10], batch[10:20], batch[20:]
    flat = lambda x: (x[..., 1:] == x[..., :-1]).float().mean()  # noqa: E731
    assert flat(leaves) > 0.7 and flat(noise) < 0.05
    assert (strokes.flatten(1) < 0).float().mean() > 0.6  # thin strokes on a dark ground
    with pytest.raises(SpecError) as caught:
        ProceduralSource((12,))
    assert caught.value.field == "prior"


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_the_procedural_source_draws_batches_of_any_size(count):
    # A batch under three leaves some kinds none (the 1/f noise's FFT refused an empty batch).
    batch = ProceduralSource((1, 16, 16)).sample(count, torch.Generator().manual_seed(6))
    assert batch.shape == (count, 1, 16, 16) and torch.isfinite(batch).all()
    assert pink_noise(0, (3, 8, 8), torch.Generator().manual_seed(6)).shape == (0, 3, 8, 8)


@pytest.mark.parametrize(
    ("batch_norms", "shape", "expected"),
    [
        (3, (3, 32, 32), Prior.SYNTHESIS),
        (1, (40,), Prior.GAUSSIAN),
        (0, (1, 32, 32), Prior.PROCEDURAL),
        (0, (64,), Prior.GAUSSIAN),
        (2, (2, 256), Prior.SYNTHESIS),
        (0, (1, 128), Prior.PROCEDURAL),
    ],
)
def test_auto_adapts_to_what_the_teacher_shows(batch_norms, shape, expected):
    assert resolve_prior(Prior.AUTO, batch_norms, shape) is expected
    # A prior the user names is never replaced.
    assert resolve_prior(Prior.UNIFORM, batch_norms, shape) is Prior.UNIFORM


def test_a_vector_spec_cannot_ask_for_images():
    with pytest.raises(SpecError) as caught:
        CompressionSpec(input_shape=(12,), prior="procedural")
    assert caught.value.field == "prior"


@pytest.mark.parametrize("draw", [pink_signals, oscillations, steps])
@pytest.mark.parametrize("shape", [(1, 64), (3, 100)])
def test_signals_are_standardised_and_follow_the_seed(draw, shape):
    signals = draw(16, shape, torch.Generator().manual_seed(0))
    assert signals.shape == (16, *shape) and torch.isfinite(signals).all()
    assert torch.allclose(signals.mean(2), torch.zeros(16, shape[0]), atol=1e-4)
    assert torch.allclose(signals.std(2), torch.ones(16, shape[0]), atol=1e-3)
    assert torch.equal(signals, draw(16, shape, torch.Generator().manual_seed(0)))
    assert not torch.allclose(signals, draw(16, shape, torch.Generator().manual_seed(1)))
    assert draw(0, shape, torch.Generator()).shape == (0, *shape)


def test_each_kind_of_signal_has_its_own_character():
    rng = torch.Generator().manual_seed(7)
    pink, waves, levels = (
        pink_signals(64, (1, 256), rng),
        oscillations(64, (1, 256), rng),
        steps(64, (1, 256), rng),
    )
    # 1/f noise: more power at low frequencies than at high ones.
    power = torch.fft.rfft(pink[:, 0]).abs().square().mean(0)
    assert power[1:8].mean() > 20 * power[64:].mean()

    # Periodic waves: a signal correlates with itself one period on far more than noise does with
    # itself at the same lag (peaks of the autocorrelation past lag 0).
    def best_repeat(signals: torch.Tensor) -> float:
        x = signals[:, 0]
        lags = range(4, 64)
        return float(torch.stack([(x[:, lag:] * x[:, :-lag]).mean(1) for lag in lags]).max(0).values.median())

    assert best_repeat(waves) > 0.5 > best_repeat(torch.randn(64, 1, 256))
    # Piecewise levels and ramps: most neighbouring samples differ by little, a few jump.
    steps_between = (levels[..., 1:] - levels[..., :-1]).abs()
    assert float(steps_between.median()) < 0.1 and float(steps_between.max()) > 1.0


def test_the_procedural_source_draws_signals_for_a_signal_shape():
    batch = ProceduralSource((2, 64)).sample(31, torch.Generator().manual_seed(8))
    assert batch.shape == (31, 2, 64) and torch.isfinite(batch).all()
    CompressionSpec(input_shape=(2, 64), prior="procedural")  # allowed for signals
    with pytest.raises(ValueError, match=r"\[C, L\] \(signals\)"):
        CompressionSpec(input_shape=(1, 2, 3, 4))
    with pytest.raises(SpecError) as caught:
        CompressionSpec(input_shape=(2, 64), prior="strokes")
    assert caught.value.field == "prior"


def test_a_recipe_that_synthesises_nothing_gives_a_batchnorm_image_teacher_procedural_inputs(tmp_path):
    # The paper preset makes no synthesised inputs: `auto` used to pick synthesis for a
    # BatchNorm teacher all the same, and the run died building a source from nothing.
    assert resolve_prior(Prior.AUTO, 3, (3, 32, 32), synthesises=False) is Prior.PROCEDURAL
    path = tmp_path / "bn.pt"
    path.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    paper = parse_spec({"input_shape": [1, 8, 8], "preset": "paper"})
    validated = stages.validate(path, paper, device=torch.device("cpu"))
    assert validated.batch_norms > 0 and validated.prior is Prior.PROCEDURAL
    default = parse_spec({"input_shape": [1, 8, 8]})
    assert stages.validate(path, default, device=torch.device("cpu")).prior is Prior.SYNTHESIS


def test_naming_synthesis_where_the_recipe_synthesises_nothing_is_refused_naming_prior():
    with pytest.raises(SpecError) as caught:
        parse_spec({"input_shape": [1, 8, 8], "preset": "paper", "prior": "synthesis"})
    assert caught.value.field == "prior" and "synthesis.samples" in str(caught.value)
    with pytest.raises(SpecError) as caught:
        parse_spec({"input_shape": [1, 8, 8], "prior": "synthesis", "overrides": {"synthesis.samples": 0}})
    assert caught.value.field == "prior"
    parse_spec(
        {
            "input_shape": [1, 8, 8],
            "preset": "paper",
            "prior": "synthesis",
            "overrides": {"synthesis.samples": 64},
        }
    )
