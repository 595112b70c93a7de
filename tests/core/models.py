"""Small classifiers of varied topology, for loader and pipeline tests."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """Conv, BN, residual add, pooling and flatten on 1x8x8 inputs, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.block(x) + x)
        x = F.max_pool2d(x, 2)
        return self.head(x.view(x.size(0), -1))


class FunctionalNet(nn.Module):
    """Functional calls, in-place ops, dropout, 'same' padding and a device-made tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding="same")
        self.grouped = nn.Conv2d(6, 6, 3, groups=2, stride=2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x), inplace=True)
        y = y + torch.zeros(y.shape, device=x.device)
        y = self.grouped(y)
        y = F.adaptive_avg_pool2d(y, (2, 2))
        y = self.drop(torch.flatten(y, 1))
        return self.fc(y)


class TinyMLP(nn.Module):
    """Nested Sequentials with BatchNorm1d over 12 features, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(12, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Sequential(nn.Linear(32, 16), nn.ReLU()),
            nn.Linear(16, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinySignalCNN(nn.Module):
    """A 1-D CNN with BatchNorm for (2, 32) signals, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(16)
        self.conv3 = nn.Conv1d(16, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.relu(self.bn1(self.conv1(x))), 2)  # (B, 8, 16)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(F.relu(self.conv3(x)).mean(dim=2))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so eval mode matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def torchscript_bytes(model: nn.Module, input_shape: tuple[int, ...], trace: bool = False) -> bytes:
    model = randomise_batchnorm(model)
    with torch.no_grad():
        module = torch.jit.trace(model, torch.randn(2, *input_shape)) if trace else torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()
