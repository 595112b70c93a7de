"""A procedural image prior: random pen strokes on a dark background.

KegNet's generators learn inputs the teacher reads confidently as each
class, and on a digit classifier these are textures that look like no digit
(docs/design.md). A student distilled on them alone learns the teacher only
where those textures lie. Random strokes are a prior about images, not data:
smooth curves of a few pixels' width, the stuff handwriting, outlines and
edges are made of. The teacher labels them as it likes, and the student sees
how the teacher answers on plain shapes that the generators never draw.
Mixed into each distillation batch they lift the paper's LeNet5 students by
2 to 6 points (docs/benchmarks.md).

Each stroke is a quadratic Bezier curve drawn with a Gaussian brush. The
brush is separable, so an image is one (H x P) @ (P x W) product over the
curve's P points: no (count x P x H x W) tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kegnet_core.generators import standardise_images

POINTS_PER_STROKE = 24


@torch.no_grad()
def stroke_images(
    count: int,
    input_shape: Sequence[int],
    rng: torch.Generator,
    max_strokes: int = 3,
) -> torch.Tensor:
    """``count`` images of 1 to ``max_strokes`` random strokes: (count, C, H, W).

    Each image and channel is standardised to zero mean and unit variance,
    like the generators' samples. With several channels each stroke gets a
    random colour.
    """
    channels, height, width = _image_shape(input_shape)
    device = rng.device
    size = torch.tensor([width, height], dtype=torch.float32, device=device)
    points = POINTS_PER_STROKE

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=rng, device=device)

    # Control points inside the central 3/4 of the image, where objects sit.
    control = (uniform(count, max_strokes, 3, 2) * 0.75 + 0.125) * (size - 1)  # (N, S, 3, xy)
    t = torch.linspace(0, 1, points, device=device).view(1, 1, points, 1)
    start, middle, end = control[:, :, 0:1], control[:, :, 1:2], control[:, :, 2:3]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * middle + t**2 * end  # (N, S, P, xy)
    curve = curve.reshape(count, max_strokes * points, 2)
    # How many strokes each image keeps (1 to max_strokes), and which.
    kept = torch.randint(1, max_strokes + 1, (count, 1), generator=rng, device=device)
    active = (uniform(count, max_strokes).argsort(dim=1) < kept).float()  # (N, S)
    if channels > 1:
        colour = 0.2 + 0.8 * uniform(count, max_strokes, channels)  # (N, S, C)
    else:
        colour = torch.ones(count, max_strokes, 1, device=device)
    # Brush width: 0.8 to 1.6 pixels at 32 x 32, in proportion for other sizes.
    scale = max(min(height, width) / 32, 0.5)
    sigma = (0.8 + 0.8 * uniform(count, 1, 1)) * scale  # (N, 1, 1)
    across_x = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    across_y = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height)
    brush_x = torch.exp(-((across_x - curve[:, :, 0:1]) ** 2) / (2 * sigma**2))  # (N, SP, W)
    brush_y = torch.exp(-((across_y - curve[:, :, 1:2]) ** 2) / (2 * sigma**2))  # (N, SP, H)
    tint = (colour * active.unsqueeze(2)).repeat_interleave(points, dim=1)  # (N, SP, C)
    tinted = brush_x.unsqueeze(1) * tint.permute(0, 2, 1).unsqueeze(3)  # (N, C, SP, W)
    ink = torch.matmul(brush_y.transpose(1, 2).unsqueeze(1), tinted)  # (N, C, H, W)
    peak = ink.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return standardise_images(torch.tanh(2 * ink / peak))


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"strokes need an image shape (C, H, W), got {tuple(input_shape)}")
    channels, height, width = (int(size) for size in input_shape)
    return channels, height, width
