"""The paper's teacher architectures, rebuilt so its checkpoints can be scripted.

The KegNet paper publishes state dicts for a LeNet5 (MNIST) and a ResNet14
(SVHN, Fashion-MNIST).  Users upload TorchScript, never Python classes; these
modules exist so benchmarks and tests can turn those checkpoints into the
TorchScript a user would upload.  Layer names match the checkpoints exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class LeNet5(nn.Module):
    """LeNet5 for 1x32x32 inputs, 61,706 parameters."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)  # (B, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)  # (B, 16, 5, 5)
        x = F.relu(self.conv3(x)).flatten(1)  # (B, 120)
        return self.fc2(F.relu(self.fc1(x)))


class ResidualBlock(nn.Module):
    """Two 3x3 convs; the shortcut zero-pads channels and subsamples by stride."""

    def __init__(self, in_channels: int, filters: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(filters)
        self.pad = filters - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad > 0:
            shortcut = F.pad(x, (0, 0, 0, 0, 0, self.pad))  # pad the channel axis
        if self.stride > 1:
            shortcut = F.max_pool2d(shortcut, 1, self.stride)
        return F.relu(out + shortcut)


class ResNet14(nn.Module):
    """The paper's ResNet14 for Cx32x32 inputs (SVHN: C=3, Fashion-MNIST: C=1)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(16)
        self.layers1 = nn.Sequential(ResidualBlock(16, 16, 1), ResidualBlock(16, 16, 1))
        self.layers2 = nn.Sequential(ResidualBlock(16, 32, 2), ResidualBlock(32, 32, 1))
        self.layers3 = nn.Sequential(ResidualBlock(32, 64, 2), ResidualBlock(64, 64, 1))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.layers3(self.layers2(self.layers1(out)))  # (B, 64, 8, 8)
        out = F.avg_pool2d(out, 8).flatten(1)
        return self.linear(out)


def load_paper_teacher(path: str | Path) -> nn.Module:
    """Build the architecture that fits a checkpoint of the KegNet paper and load it.

    The file name tells the architecture: ``mnist*`` is LeNet5, anything else
    ResNet14 with as many input channels as its first conv has.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    model: nn.Module
    if Path(path).name.startswith("mnist"):
        model = LeNet5()
    else:
        model = ResNet14(in_channels=state["conv1.weight"].shape[1])
    model.load_state_dict(state)
    return model.eval()
