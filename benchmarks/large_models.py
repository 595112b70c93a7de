"""Real-size classifiers for ``benchmarks/large.py``: ResNet-18 and MobileNetV2, 3x224x224 in,
1,000 classes out, written out here (no torchvision, no downloaded weights).

The layers are those of torchvision's ``resnet18`` (BasicBlock, BatchNorm, 1x1 downsample
shortcuts; 11,689,512 parameters) and ``mobilenet_v2`` (inverted residuals, ReLU6, width 1.0;
3,504,872 parameters), so the timings and memory are those of the models users deploy.  The
weights are random (seeded); each BatchNorm's running statistics are then set from a few forward
passes over procedural images (dead leaves and 1/f noise), so that the statistics a job matches
are not the trivial zero mean and unit variance of a fresh layer.  What these teachers answer
means nothing: the benchmark measures time and memory, not accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kegnet_core.procedural import dead_leaves, pink_noise

INPUT_SHAPE = (3, 224, 224)
CLASSES = 1000


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18: a 7x7 stem, four stages of two BasicBlocks (64-512 channels)."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))  # (B, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; a shortcut where the shape stays."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(c_in, hidden, 1, 1))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, c_out, 1, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_shortcut:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at width 1.0: 17 inverted residual blocks, a 1280-channel head."""

    # (expansion, channels, repeats, first stride)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        c_in = 32
        for expand, c_out, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if index == 0 else 1, expand))
                c_in = c_out
        layers.append(_conv_bn(c_in, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, 7, 7)
        return self.classifier(torch.flatten(x.mean((2, 3), keepdim=True), 1))


MODELS: dict[str, Callable[[], nn.Module]] = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}


@torch.no_grad()
def settle_batch_norms(model: nn.Module, input_shape: tuple[int, ...], seed: int, batches: int = 4) -> None:
    """Running statistics from ``batches`` forward passes over procedural images (train mode,
    cumulative average), so that every BatchNorm records what its inputs look like."""
    rng = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches
    model.train()
    for index in range(batches):
        draw = dead_leaves if index % 2 == 0 else pink_noise
        model(draw(16, input_shape, rng))
    model.eval()


def make_teacher(name: str, path: Path, *, seed: int = 0, input_shape: tuple[int, ...] = INPUT_SHAPE) -> Path:
    """Build ``name`` with seeded random weights and settled BatchNorm statistics; save it scripted."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    settle_batch_norms(model, input_shape, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(path))
    return path
