"""PNG pictures of what the generators learned, with no imaging dependency.

The sample grid has one row per class, as in the paper's figure; the latent
walk moves the label from one class to another at fixed noise, as in its
"walking from 0 to 5" figure.  PNG is written with zlib directly.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import torch
from torch import nn


def png_bytes(pixels: torch.Tensor) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8 tensor as PNG."""
    if pixels.dtype != torch.uint8 or pixels.dim() not in (2, 3):
        raise ValueError("png_bytes needs an (H, W) or (H, W, 3) uint8 tensor")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.dim() == 2 else 2
    rows = pixels.reshape(height, -1).cpu()
    raw = torch.cat((torch.zeros(height, 1, dtype=torch.uint8), rows), dim=1).numpy().tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _as_images(samples: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) samples, (N, C, L) signals as strips of C rows (each at least 8 pixels
    high together), or (N, D) vectors folded into squares, as (N, 1|3, H, W)."""
    if samples.dim() == 3:
        return samples.unsqueeze(1).repeat_interleave(max(1, 8 // samples.size(1)), 2)
    if samples.dim() == 2:
        side = math.ceil(math.sqrt(samples.size(1)))
        padded = torch.zeros(samples.size(0), side * side, device=samples.device)
        padded[:, : samples.size(1)] = samples
        return padded.view(-1, 1, side, side)
    if samples.size(1) in (1, 3):
        return samples
    return samples.mean(dim=1, keepdim=True)  # other channel counts: show the mean


def grid_image(samples: torch.Tensor, columns: int, padding: int = 2, scale: int = 1) -> torch.Tensor:
    """Tile samples row by row into one uint8 picture; each sample min-max scaled."""
    images = _as_images(samples.detach().float().cpu())
    count, channels, height, width = images.shape
    flat = images.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    images = ((flat - low) / (high - low).clamp_min(1e-8)).view_as(images)
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        height, width = height * scale, width * scale
    rows = math.ceil(count / columns)
    canvas = torch.ones(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        canvas[:, top : top + height, left : left + width] = images[index]
    pixels = (canvas * 255).round().to(torch.uint8)
    return pixels[0] if channels == 1 else pixels.permute(1, 2, 0).contiguous()


def _upscale(shape: tuple[int, ...]) -> int:
    side = shape[-1] if len(shape) in (2, 3) else math.ceil(math.sqrt(shape[0]))
    return max(1, 32 // max(side, 1))


@torch.no_grad()
def sample_grid(
    generator: nn.Module,
    n_classes: int,
    noise_dim: int,
    input_shape: tuple[int, ...],
    columns: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """One row per class, one column per noise vector (the first is z = 0)."""
    device = next(generator.parameters()).device
    rng = torch.Generator(device).manual_seed(seed)
    z = torch.randn(columns, noise_dim, generator=rng, device=device)
    z[0] = 0
    labels = torch.eye(n_classes, device=device).repeat_interleave(columns, 0)  # (K * columns, K)
    samples = generator(labels, z.repeat(n_classes, 1))
    return grid_image(samples, columns, scale=_upscale(input_shape))


def class_grid(
    samples: torch.Tensor,
    classes: torch.Tensor,
    input_shape: tuple[int, ...],
    columns: int = 8,
    rows: int = 10,
) -> torch.Tensor | None:
    """Samples grouped into rows by ``classes`` (the teacher's answers): up to ``rows`` classes.

    Rows go in class order; a class with fewer than ``columns`` samples leaves
    its row's end blank.  None when there are no samples.
    """
    tiles: list[torch.Tensor] = []
    blank = torch.zeros_like(samples[:1])
    for label in torch.unique(classes)[:rows].tolist():
        chosen = samples[classes == label][:columns]
        tiles.extend([chosen, *([blank] * (columns - chosen.size(0)))])
    if not tiles:
        return None
    return grid_image(torch.cat(tiles), columns, scale=_upscale(input_shape))


@torch.no_grad()
def latent_walk(
    generator: nn.Module,
    n_classes: int,
    noise_dim: int,
    input_shape: tuple[int, ...],
    start: int = 0,
    end: int | None = None,
    steps: int = 10,
    rows: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Rows of fixed z; along each row y moves from class ``start`` to ``end``."""
    end = min(5, n_classes - 1) if end is None else end
    device = next(generator.parameters()).device
    rng = torch.Generator(device).manual_seed(seed)
    z = torch.randn(rows, noise_dim, generator=rng, device=device).repeat_interleave(steps, 0)
    weights = torch.linspace(0, 1, steps, device=device).repeat(rows).unsqueeze(1)
    eye = torch.eye(n_classes, device=device)
    labels = (1 - weights) * eye[start] + weights * eye[end]
    return grid_image(generator(labels, z), steps, scale=_upscale(input_shape))


def save_png(pixels: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(png_bytes(pixels))
    return path
