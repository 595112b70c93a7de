"""Scoring students on real data, for benchmarks and tests only.

Compression itself never sees data; these helpers read the MNIST test set
(IDX files) to measure how well a data-free student really does.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kegnet_core.distill import agreement
from kegnet_core.zoo import MNIST_MEAN, MNIST_STD


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX array (optionally gzipped) as a uint8 tensor."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def mnist_test_set(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 MNIST test images as the paper's LeNet5 sees them: (N, 1, 32, 32).

    28x28 images are resized to 32x32 (bilinear), scaled to [0, 1] and
    normalised with the MNIST mean and standard deviation.
    """
    directory = Path(directory)
    images = read_idx(directory / "t10k-images-idx3-ubyte.gz").float().unsqueeze(1)
    labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz").long()
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255) / 255.0  # as an 8-bit image resize would store it
    return (images - MNIST_MEAN) / MNIST_STD, labels


@torch.no_grad()
def accuracy(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
) -> float:
    """Top-1 accuracy of ``model`` (or any function of a batch, an ONNX Runtime session's, say)
    on a labelled set, in [0, 1]."""
    # A frozen int8 model has no parameters, nor has a function: they run on the CPU.
    first = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    device = first.device if first is not None else torch.device("cpu")
    return agreement(lambda batch: model(batch.to(device)).cpu(), images, labels, batch=batch_size)
