"""Procedural image priors: dead leaves and 1/f noise, drawn from formulas, never from data.

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
    if channels > 1:
        own = 0.5 + 0.5 * torch.rand(count, channels, 1, 1, generator=rng, device=device)
        images = images * own + images.mean(dim=1, keepdim=True) * (1 - own)
    return standardise_images(images)
