"""Generator and decoder networks of KegNet, for images of any size, signals and vectors.

A generator maps a label vector y (one-hot, or a mix of classes) and a noise
vector z to an input the teacher accepts.  Image generators follow the
paper's network: two dense layers, then transposed convolutions doubling
the resolution from 4x4, then Tanh and per-image standardisation.  For a
C x H x W other than 32 x 32 the number of doublings adapts, and a final
resize lands on H x W exactly.  The decoder reads z back from x, which is what
keeps samples of one class varied.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_UPSAMPLE_CHANNELS = (64, 16, 4)


class ImageGenerator(nn.Module):
    """G(y, z) -> (B, C, H, W) images with zero mean and unit std per channel."""

    def __init__(
        self,
        n_classes: int,
        noise_dim: int,
        image_shape: Sequence[int],
        channels: Sequence[int] = PAPER_UPSAMPLE_CHANNELS,
    ) -> None:
        super().__init__()
        n_channels, height, width = (int(size) for size in image_shape)
        self.n_classes = n_classes
        self.noise_dim = noise_dim
        self.height = height
        self.width = width
        self.fc = nn.Sequential(
            nn.Linear(noise_dim + n_classes, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
        )
        # 1x1 -> 4x4, then one doubling per layer until both sides are covered;
        # for 32 x 32 this is the paper's 128 -> 64 -> 16 -> 4 -> C.
        doublings = max(0, math.ceil(math.log2(max(height, width) / 4)))
        hidden = (list(channels) + [channels[-1]] * doublings)[:doublings]
        widths = [128, *hidden, n_channels]
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 0 if index == 0 else 1, bias=False))
            if index < len(widths) - 2:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU()]
        layers.append(nn.Tanh())
        self.conv = nn.Sequential(*layers)

    def forward(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.cat((noise, labels), dim=1))  # (B, 128)
        out = self.conv(out.view(out.size(0), out.size(1), 1, 1))  # (B, C, 4 * 2^n, 4 * 2^n)
        if out.size(2) != self.height or out.size(3) != self.width:
            out = F.interpolate(out, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return standardise_images(out)


def standardise_images(images: torch.Tensor) -> torch.Tensor:
    """Each image and channel rescaled to zero mean and unit standard deviation."""
    flat = images.flatten(2)  # (B, C, H * W)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, keepdim=True, correction=1 if flat.size(2) > 1 else 0).clamp_min(1e-6)
    return ((flat - mean) / std).view_as(images)


class VectorGenerator(nn.Module):
    """G(y, z) -> (B, D) feature vectors, standardised per feature over the batch; with
    ``shape`` (C, L) the same vectors of C * L features as (B, C, L) signals."""

    def __init__(
        self,
        n_classes: int,
        noise_dim: int,
        n_features: int,
        units: int = 120,
        layers: int = 2,
        shape: Sequence[int] | None = None,
    ):
        super().__init__()
        self.shape = tuple(int(size) for size in shape) if shape is not None else (n_features,)
        if math.prod(self.shape) != n_features:
            raise ValueError(f"shape {self.shape} does not hold {n_features} features")
        self.n_classes = n_classes
        self.noise_dim = noise_dim
        blocks: list[nn.Module] = [nn.Linear(noise_dim + n_classes, units), nn.ELU(), nn.BatchNorm1d(units)]
        for _ in range(layers - 1):
            blocks += [nn.Linear(units, units), nn.ELU(), nn.BatchNorm1d(units)]
        blocks.append(nn.Linear(units, n_features))
        self.layers = nn.Sequential(*blocks)
        self.adjust = nn.BatchNorm1d(n_features, affine=False)

    def forward(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.adjust(self.layers(torch.cat((noise, labels), dim=1)))
        return out.view(out.size(0), *self.shape)


# The decoder reads images larger than this on a side average-pooled to it: a 3x224x224 input
# read whole would make its first layer 18 M weights (Adam triples them), where 32x32, the
# paper's size, is what it needs to tell noise vectors apart.
DECODER_SIDE = 32


class Decoder(nn.Module):
    """D(x) -> z: an MLP over the flattened sample (ELU + BatchNorm), images first pooled to at
    most :data:`DECODER_SIDE` on a side."""

    def __init__(
        self, input_shape: Sequence[int], noise_dim: int, hidden_layers: int = 1, units: int = 120
    ) -> None:
        super().__init__()
        shape = [int(size) for size in input_shape]
        self.pooled: tuple[int, int] | None = None
        if len(shape) == 3 and max(shape[1:]) > DECODER_SIDE:
            self.pooled = (min(shape[1], DECODER_SIDE), min(shape[2], DECODER_SIDE))
            shape = [shape[0], *self.pooled]
        n_inputs = math.prod(shape)
        blocks: list[nn.Module] = [nn.Linear(n_inputs, units), nn.ELU(), nn.BatchNorm1d(units)]
        for _ in range(hidden_layers):
            blocks += [nn.Linear(units, units), nn.ELU(), nn.BatchNorm1d(units)]
        blocks.append(nn.Linear(units, noise_dim))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooled is not None:
            x = F.adaptive_avg_pool2d(x, self.pooled)  # (B, C, <=32, <=32)
        return self.layers(x.flatten(1))


def build_generator(
    input_shape: Sequence[int],
    n_classes: int,
    noise_dim: int,
    channels: Sequence[int] = PAPER_UPSAMPLE_CHANNELS,
) -> nn.Module:
    """An image generator for (C, H, W) inputs, a vector generator for (D,) and for (C, L)
    signals (C * L features, shaped)."""
    if len(input_shape) == 3:
        return ImageGenerator(n_classes, noise_dim, input_shape, channels)
    if len(input_shape) in (1, 2):
        return VectorGenerator(n_classes, noise_dim, math.prod(input_shape), shape=input_shape)
    raise ValueError(f"input_shape must be (C, H, W), (C, L) or (D,), got {tuple(input_shape)}")
