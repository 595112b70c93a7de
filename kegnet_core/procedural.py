"""Procedural priors, drawn from formulas, never from data: for images dead leaves and 1/f
noise, for signals 1/f noise, periodic waves and piecewise levels.

"Learning to See by Looking at Noise" (Baradad et al., NeurIPS 2021) found
that images with the structure of natural ones (occlusion, edges, a 1/f
spectrum) teach features that transfer, while realism matters little.  For a
teacher without BatchNorm statistics to match, these give the student inputs
with that structure: on a CNN trained on grey textures and photographs,
factorised to half its parameters, distilling on dead leaves kept the student
within 0.2 points of its teacher where pen strokes lost 9 (docs/design.md).

Every image is standardised per channel to zero mean and unit variance, like
the generators' samples and the strokes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kegnet_core.generators import standardise_images


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"procedural images need an image shape (C, H, W), got {tuple(input_shape)}")
    channels, height, width = (int(size) for size in input_shape)
    return channels, height, width


def _colours(count: int, channels: int, rng: torch.Generator) -> torch.Tensor:
    """Random colours, (count, C, 1, 1): partly grey, as natural colours are correlated across channels."""
    colour = torch.rand(count, channels, 1, 1, generator=rng, device=rng.device)
    if channels > 1:
        colour = 0.6 * colour + 0.4 * colour.mean(dim=1, keepdim=True)
    return colour


@torch.no_grad()
def dead_leaves(
    count: int, input_shape: Sequence[int], rng: torch.Generator, shapes: int = 40
) -> torch.Tensor:
    """``count`` dead-leaves images: discs and squares of power-law sizes occluding one another.

    Sizes follow the dead-leaves model (area ~ r^-3 between 1 pixel and 0.4 of
    the image); each shape covers those drawn before it.  All shapes of a
    batch are tested against every pixel at once and each pixel takes the
    colour of the last shape over it.  (count, C, H, W).
    """
    channels, height, width = _image_shape(input_shape)
    device = rng.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=rng, device=device)

    rows = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1)
    cols = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width)
    low, high = 1.0, 0.4 * max(height, width)
    centre_y = (uniform(count, shapes) * height).view(count, shapes, 1, 1)
    centre_x = (uniform(count, shapes) * width).view(count, shapes, 1, 1)
    # Inverse-CDF draw of r with density ~ r^-3 on [low, high].
    radius = ((low**-2 - uniform(count, shapes) * (low**-2 - high**-2)) ** -0.5).view(count, shapes, 1, 1)
    square = (uniform(count, shapes) < 0.3).view(count, shapes, 1, 1)
    dy, dx = rows - centre_y, cols - centre_x  # (N, S, H, 1), (N, S, 1, W)
    disc = dy.square() + dx.square() < radius.square()
    box = (dy.abs() < radius) & (dx.abs() < radius)
    covered = torch.where(square, box, disc)  # (N, S, H, W)
    # The last shape over each pixel, or -1 (the background) where none is.
    # In bytes where the shapes' numbers fit: the (N, S, H, W) product and its max are most of
    # the draw's time, and in int64 they took three to four times as long (the same images).
    order_type = torch.uint8 if shapes < 256 else torch.int64
    order = torch.arange(1, shapes + 1, device=device, dtype=order_type).view(1, shapes, 1, 1)
    top = (covered * order).amax(dim=1).long() - 1  # (N, H, W)
    background = _colours(count, channels, rng).view(count, channels, 1)
    fills = _colours(count * shapes, channels, rng).view(count, shapes, channels).transpose(1, 2)
    palette = torch.cat((background, fills), dim=2)  # (N, C, 1 + S): background first
    index = (top + 1).view(count, 1, height * width).expand(count, channels, height * width)
    images = palette.gather(2, index).view(count, channels, height, width)
    return standardise_images(images)


def _share_channels(samples: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Channels partly common, as a colour image's or a sensor's are: each keeps 50-100% of its
    own values, the rest is the mean over channels.  (N, C, ...) in and out."""
    if samples.size(1) == 1:
        return samples
    shape = (samples.size(0), samples.size(1), *[1] * (samples.dim() - 2))
    own = 0.5 + 0.5 * torch.rand(*shape, generator=rng, device=rng.device)
    return samples * own + samples.mean(dim=1, keepdim=True) * (1 - own)


@torch.no_grad()
def pink_noise(
    count: int, input_shape: Sequence[int], rng: torch.Generator, exponents: tuple[float, float] = (1.0, 2.5)
) -> torch.Tensor:
    """``count`` images of noise with a 1/f^a amplitude spectrum, a uniform in ``exponents``.

    Natural images have a ~1/f^2 power spectrum; the range covers smoother and
    rougher ones.  Colour channels share part of their noise.  (count, C, H, W).
    """
    channels, height, width = _image_shape(input_shape)
    device = rng.device
    if count == 0:  # the FFT refuses an empty batch; a source's share of a tiny one can be empty
        return torch.empty(0, channels, height, width, device=device)
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    frequency = torch.sqrt(fy.square() + fx.square()).clamp_min(1.0 / max(height, width))
    low, high = exponents
    exponent = low + (high - low) * torch.rand(count, 1, 1, 1, generator=rng, device=device)
    amplitude = frequency.view(1, 1, *frequency.shape) ** (-exponent)
    shape = (count, channels, height, width // 2 + 1)
    real = torch.randn(*shape, generator=rng, device=device)
    imaginary = torch.randn(*shape, generator=rng, device=device)
    images = torch.fft.irfft2(torch.complex(real, imaginary) * amplitude, s=(height, width))
    return standardise_images(_share_channels(images, rng))


# --------------------------------------------------------------------------
# Signals: the same idea in one dimension


def _signal_shape(input_shape: Sequence[int]) -> tuple[int, int]:
    if len(input_shape) != 2:
        raise ValueError(f"procedural signals need a signal shape (C, L), got {tuple(input_shape)}")
    channels, length = (int(size) for size in input_shape)
    return channels, length


def _standardise_signals(signals: torch.Tensor) -> torch.Tensor:
    if signals.numel() == 0:
        return signals
    return standardise_images(signals.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def pink_signals(
    count: int, input_shape: Sequence[int], rng: torch.Generator, exponents: tuple[float, float] = (0.5, 2.5)
) -> torch.Tensor:
    """``count`` signals of noise with a 1/f^a amplitude spectrum, a uniform in ``exponents``:
    from nearly white to a random walk.  (count, C, L)."""
    channels, length = _signal_shape(input_shape)
    device = rng.device
    if count == 0:
        return torch.empty(0, channels, length, device=device)
    frequency = torch.fft.rfftfreq(length, device=device).clamp_min(1.0 / length)
    low, high = exponents
    exponent = low + (high - low) * torch.rand(count, 1, 1, generator=rng, device=device)
    amplitude = frequency.view(1, 1, -1) ** (-exponent)
    shape = (count, channels, length // 2 + 1)
    real = torch.randn(*shape, generator=rng, device=device)
    imaginary = torch.randn(*shape, generator=rng, device=device)
    signals = torch.fft.irfft(torch.complex(real, imaginary) * amplitude, n=length)
    return _standardise_signals(_share_channels(signals, rng))


@torch.no_grad()
def oscillations(
    count: int, input_shape: Sequence[int], rng: torch.Generator, parts: int = 3, harmonics: int = 6
) -> torch.Tensor:
    """``count`` signals, each a sum of up to ``parts`` periodic waves of random fundamental
    (1 cycle to a quarter of the length), phase and random harmonic content (up to
    ``harmonics`` overtones, amplitudes falling as 1/k^a, a uniform in [0.5, 3]), each under a
    random envelope (flat, decaying or rising, or a window) and a random frequency drift, plus a
    little white noise.  (count, C, L)."""
    channels, length = _signal_shape(input_shape)
    device = rng.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=rng, device=device)

    t = torch.linspace(0, 1, length, device=device).view(1, 1, 1, 1, length)
    size = (count, channels, parts, 1, 1)
    cycles = torch.exp(uniform(0.0, math.log(max(length / 4, 2.0)), *size))
    drift = uniform(-0.5, 0.5, *size)  # the frequency changes by up to half over the signal
    angle = 2 * torch.pi * cycles * (t + drift * t * t)
    order = torch.arange(1, harmonics + 2, device=device, dtype=torch.float32).view(1, 1, 1, -1, 1)
    weights = order ** -uniform(0.5, 3.0, *size) * torch.randn(
        count, channels, parts, harmonics + 1, 1, generator=rng, device=device
    )
    phases = uniform(0, 2 * torch.pi, count, channels, parts, harmonics + 1, 1)
    waves = (weights * torch.sin(order * angle + phases)).sum(dim=3)  # (count, C, parts, L)
    t = t.squeeze(3)
    per_wave = size[:4]
    envelope = torch.where(
        uniform(0, 1, *per_wave) < 0.5, torch.ones_like(t), torch.exp(uniform(-5, 5, *per_wave) * (t - 0.5))
    )
    window = torch.exp(-((t - uniform(0, 1, *per_wave)) / uniform(0.1, 1, *per_wave)).square())
    envelope = torch.where(uniform(0, 1, *per_wave) < 0.25, window, envelope)
    kept = torch.randint(1, parts + 1, (count, 1, 1, 1), generator=rng, device=device)
    present = (torch.arange(parts, device=device).view(1, 1, parts, 1) < kept).float()
    signals = (waves * envelope * uniform(0.2, 1, *per_wave) * present).sum(dim=2)
    signals = signals + 0.1 * torch.randn(count, channels, length, generator=rng, device=device)
    return _standardise_signals(_share_channels(signals, rng))


@torch.no_grad()
def steps(count: int, input_shape: Sequence[int], rng: torch.Generator, segments: int = 8) -> torch.Tensor:
    """``count`` piecewise signals: up to ``segments`` pieces of random lengths, each a level or
    a ramp, joined with jumps (pulses, plateaus, sawtooth-like drifts).  (count, C, L)."""
    channels, length = _signal_shape(input_shape)
    device = rng.device
    cuts = torch.rand(count, channels, segments, generator=rng, device=device).sort(dim=2).values
    cuts[:, :, 0] = 0.0
    position = torch.linspace(0, 1, length, device=device).view(1, 1, length)
    piece = (position.unsqueeze(-1) >= cuts.unsqueeze(2)).sum(-1) - 1  # (count, C, L): which piece
    levels = torch.randn(count, channels, segments, generator=rng, device=device)
    slopes = torch.randn(count, channels, segments, generator=rng, device=device) * (
        torch.rand(count, channels, segments, generator=rng, device=device) < 0.5
    )
    start = torch.gather(cuts, 2, piece)
    signals = torch.gather(levels, 2, piece) + torch.gather(slopes, 2, piece) * (position - start) * 4
    signals = signals + 0.05 * torch.randn(count, channels, length, generator=rng, device=device)
    return _standardise_signals(_share_channels(signals, rng))
