"""The quality suite's teachers: varied classifiers trained here, from data that ships in packages.

Each teacher is trained in seconds to a few minutes on the CPU from data
bundled inside installed packages (scikit-learn's digits and sample
photographs, scikit-image's images and textures, scikit-learn's synthetic
problems), saved as the TorchScript a user would upload, and kept in
``benchmarks/teachers`` (``python benchmarks/suite_teachers.py --store``) so
that every machine scores the same teachers; test splits are rebuilt from the
packaged data. Compression never reads a test split or any statistic of
these data sets: only :func:`score` does, after the fact.

The paper's LeNet5 comes from ``../shared`` (``KEGNET_SHARED``) and is skipped
when that folder is absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kegnet_core.evaluation import accuracy, mnist_test_set
from kegnet_core.zoo import ResNet14, load_paper_teacher

ROOT = Path(__file__).resolve().parents[1]
CACHE_VERSION = 2


def default_shared() -> Path:
    return Path(os.environ.get("KEGNET_SHARED", ROOT.parent / "shared"))


def default_cache() -> Path:
    return Path(os.environ.get("KEGNET_SUITE_CACHE", Path.home() / ".cache" / "kegnet" / "suite"))


# --------------------------------------------------------------------------
# Architectures (written out here: users upload TorchScript, we need the classes to make it)


class BnResidualCnn(nn.Module):
    """A small CNN with BatchNorm and one residual block, for 1x16x16 digits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(32)
        self.down1 = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
        self.down1_bn = nn.BatchNorm2d(64)
        self.res_a = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.res_a_bn = nn.BatchNorm2d(64)
        self.res_b = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.res_b_bn = nn.BatchNorm2d(64)
        self.down2 = nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False)
        self.down2_bn = nn.BatchNorm2d(128)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))  # (B, 32, 16, 16)
        x = F.relu(self.down1_bn(self.down1(x)))  # (B, 64, 8, 8)
        y = F.relu(self.res_a_bn(self.res_a(x)))
        x = F.relu(x + self.res_b_bn(self.res_b(y)))
        x = F.relu(self.down2_bn(self.down2(x)))  # (B, 128, 4, 4)
        return self.head(x.mean(dim=(2, 3)))


class VggBn(nn.Module):
    """VGG-style: three stages of two 3x3 conv + BatchNorm + ReLU, max-pool between, for 3x32x32."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (24, 48, 96)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
            if stage < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(channels, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class PlainCnn(nn.Module):
    """Conv + ReLU + max-pool three times, then two Linears; no BatchNorm. For 1x32x32 textures."""

    def __init__(self, in_channels: int = 1, num_classes: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 16, 16, 16)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 8, 8)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (B, 64, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Mlp(nn.Module):
    """Dense layers with ReLU, optionally BatchNorm after each hidden layer."""

    def __init__(self, features: int, hidden: tuple[int, ...], num_classes: int, batchnorm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batchnorm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SignalCnn(nn.Module):
    """Four Conv1d blocks (kernel 5, ReLU, max-pool 2; BatchNorm optional), global average pool,
    two Linears: a 1-D CNN for (C, L) signals."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 8,
        widths: tuple[int, ...] = (32, 64, 96, 128),
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers.append(nn.Conv1d(channels, width, 5, padding=2, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers += [nn.ReLU(), nn.MaxPool1d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(channels, 96), nn.ReLU(), nn.Linear(96, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=2))


# --------------------------------------------------------------------------
# Data (all bundled in installed packages, or made by a formula here; nothing is downloaded)

Split = tuple[torch.Tensor, torch.Tensor]


def _standardise(
    train: torch.Tensor, test: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise both splits with the train split's mean and std (the user's own preprocessing)."""
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _stratified(labels: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_share, random_state=seed, stratify=labels)
    return train, test


def digits_images(size: int = 16) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits, upsampled to ``size`` (bilinear), 70/30 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = _stratified(digits.target, 0.3, seed=0)
    x_train, x_test = _standardise(images[train], images[test], dims=(0, 1, 2, 3))
    return (x_train, labels[train]), (x_test, labels[test])


def digits_vectors() -> tuple[Split, Split]:
    """scikit-learn's digits as 64 features, standardised per feature, 70/30 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = torch.tensor(digits.data, dtype=torch.float32)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = _stratified(digits.target, 0.3, seed=0)
    x_train, x_test = _standardise(data[train], data[test], dims=(0,))
    return (x_train, labels[train]), (x_test, labels[test])


def synthetic_vectors(features: int, informative: int, classes: int, seed: int) -> tuple[Split, Split]:
    """A scikit-learn ``make_classification`` problem, 8,000 points, standardised, 75/25 split."""
    from sklearn.datasets import make_classification

    data, target = make_classification(
        n_samples=8000,
        n_features=features,
        n_informative=informative,
        n_redundant=(features - informative) // 2,
        n_classes=classes,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.0,
        random_state=seed,
    )
    x = torch.tensor(data, dtype=torch.float32)
    y = torch.tensor(target, dtype=torch.long)
    train, test = _stratified(target, 0.25, seed=seed)
    x_train, x_test = _standardise(x[train], x[test], dims=(0,))
    return (x_train, y[train]), (x_test, y[test])


WAVEFORMS = ("sine", "square", "sawtooth", "triangle", "chirp up", "chirp down", "damped", "beating")


def waveforms(count: int, length: int, seed: int) -> Split:
    """``count`` noisy 2-channel signals of ``length`` samples, one of the eight
    :data:`WAVEFORMS` each (the class): random frequency (2-14 cycles), phase, amplitude, offset
    and time shift; the second channel is the first delayed by a random lag and inverted or not,
    and each channel carries its own Gaussian noise.  Made by a formula, like scikit-learn's
    ``make_classification``."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, 1, generator=generator)

    t = torch.linspace(0, 1, length).expand(count, length)
    labels = torch.randint(0, len(WAVEFORMS), (count,), generator=generator)
    cycles, phase = uniform(2, 14), uniform(0, 2 * np.pi)
    angle = 2 * np.pi * cycles * t + phase
    saw = (angle / np.pi) % 2 - 1
    waves = torch.stack(
        [
            torch.sin(angle),
            torch.sign(torch.sin(angle)),
            saw,
            2 * saw.abs() - 1,
            torch.sin(angle + 2 * np.pi * cycles * t * t),  # frequency rising to 3x
            torch.sin(2 * np.pi * cycles * (2 * t - 0.5 * t * t) + phase),  # falling from 2x to 1x
            torch.exp(-uniform(2, 6) * t) * torch.sin(angle),
            torch.sin(angle) * torch.cos(np.pi * uniform(0.5, 2) * t),
        ],
        dim=1,
    )[torch.arange(count), labels]
    waves = uniform(0.4, 1.5) * waves + uniform(-0.5, 0.5)
    lag = torch.randint(0, length // 8, (count,), generator=generator)
    sign = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    second = torch.stack([torch.roll(wave, int(shift)) for wave, shift in zip(waves, lag, strict=True)])
    signals = torch.stack((waves, sign[:, None] * second), dim=1)
    signals = signals + 0.5 * torch.randn(signals.shape, generator=generator)
    return signals, labels


def signals() -> tuple[Split, Split]:
    """8,000 training and 2,000 test :func:`waveforms` (2x256), standardised."""
    (x_train, y_train), (x_test, y_test) = waveforms(8000, 256, seed=21), waveforms(2000, 256, seed=22)
    x_train, x_test = _standardise(x_train, x_test, dims=(0, 2))
    return (x_train, y_train), (x_test, y_test)


def _colour_photos() -> list[np.ndarray]:
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    photos = [
        sk.astronaut(),
        sk.coffee(),
        sk.chelsea(),
        sk.rocket(),
        sk.retina(),
        sk.hubble_deep_field(),
        sk.immunohistochemistry(),
        sk.stereo_motorcycle()[0],
    ]
    photos += list(load_sample_images().images)  # china, flower
    return photos


def _grey_textures() -> list[np.ndarray]:
    import skimage.data as sk

    return [sk.brick(), sk.grass(), sk.gravel(), sk.camera(), sk.moon(), sk.cell(), sk.clock(), sk.coins()]


def _patches(images: list[np.ndarray], per_class: int, size: int, part: int, seed: int) -> Split:
    """Random square windows (a sixth of the shorter side) resized to ``size``; label = source image.

    Each image is cut into a checkerboard of cells two windows wide; windows
    of ``part`` 0 lie wholly inside the "black" cells, of ``part`` 1 inside
    the "white" ones, so the train and test splits never share a pixel but
    come from all over each image.
    """
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for label, image in enumerate(images):
        array = torch.tensor(image, dtype=torch.float32) / 255.0
        array = array.permute(2, 0, 1) if array.dim() == 3 else array.unsqueeze(0)  # (C, H, W)
        _, height, width = array.shape
        window = max(size, min(height, width) // 6)
        cell = 2 * window
        cells = [
            (top, left)
            for top in range(0, height - cell + 1, cell)
            for left in range(0, width - cell + 1, cell)
            if (top // cell + left // cell) % 2 == part
        ]
        for _ in range(per_class):
            top0, left0 = cells[int(rng.integers(0, len(cells)))]
            top = top0 + int(rng.integers(0, cell - window + 1))
            left = left0 + int(rng.integers(0, cell - window + 1))
            crop = array[:, top : top + window, left : left + window].unsqueeze(0)
            out.append(F.interpolate(crop, size=(size, size), mode="area")[0])
            labels.append(label)
    return torch.stack(out), torch.tensor(labels, dtype=torch.long)


def patch_set(images: list[np.ndarray], train_per_class: int, test_per_class: int) -> tuple[Split, Split]:
    """Train and test windows from the two colours of a checkerboard over each image."""
    x_train, y_train = _patches(images, train_per_class, 32, part=0, seed=1)
    x_test, y_test = _patches(images, test_per_class, 32, part=1, seed=2)
    x_train, x_test = _standardise(x_train, x_test, dims=(0, 2, 3))
    return (x_train, y_train), (x_test, y_test)


# --------------------------------------------------------------------------
# Training


def _augment_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (per batch)."""
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(3)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(
    model: nn.Module,
    train: Split,
    *,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    augment: bool = False,
    seed: int = 0,
) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = train
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                continue
            inputs = x[index]
            if augment:
                inputs = _augment_images(inputs, generator)
            loss = F.cross_entropy(model(inputs), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


# --------------------------------------------------------------------------
# The suite


@dataclass(frozen=True)
class Member:
    """One suite teacher: how it is built, and what it is."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    export: str  # "script" or "trace"
    batchnorm: bool
    # Students at a fixed compression (the paper's layers and ranks; for vector
    # teachers one where Tucker alone loses at least 5 points), scored beside
    # the compression `default` chooses: (label, CompressionSpec fields).
    fixed_students: tuple[tuple[str, dict[str, Any]], ...] = ()
    needs_shared: bool = False


@dataclass(frozen=True)
class Teacher:
    member: Member
    path: Path  # the TorchScript file a user would upload
    test: Split
    accuracy: float
    parameters: int


Data = Callable[[], tuple[Split, Split]]  # (train, test)
Fit = Callable[[Split], nn.Module]  # a trained classifier from the train split


def _fit_digits_bnres(train: Split) -> nn.Module:
    return train_classifier(BnResidualCnn(), train, epochs=30, augment=False)


def _photos() -> tuple[Split, Split]:
    return patch_set(_colour_photos(), train_per_class=600, test_per_class=200)


def _textures() -> tuple[Split, Split]:
    return patch_set(_grey_textures(), train_per_class=600, test_per_class=200)


def _fit_textures(train: Split) -> nn.Module:
    return train_classifier(PlainCnn(1, 8), train, epochs=12, augment=True, learning_rate=1.5e-3)


def _fit_mlp(hidden: tuple[int, ...], classes: int, bn: bool, epochs: int) -> Fit:
    def fit(train: Split) -> nn.Module:
        return train_classifier(Mlp(train[0].shape[1], hidden, classes, batchnorm=bn), train, epochs=epochs)

    return fit


def _lenet5_data() -> tuple[Split, Split]:
    empty = (torch.empty(0, 1, 32, 32), torch.empty(0, dtype=torch.long))
    return empty, mnist_test_set(default_shared() / "datasets" / "mnist")


def _fit_lenet5(_train: Split) -> nn.Module:
    return load_paper_teacher(default_shared() / "teachers" / "kegnet" / "mnist.pth.tar")


MEMBERS: dict[str, tuple[Member, Data, Fit]] = {
    member.name: (member, data, fit)
    for member, data, fit in [
        (
            Member(
                "lenet5-mnist",
                "the paper's LeNet5 on MNIST (../shared), 1x32x32",
                (1, 32, 32),
                "script",
                batchnorm=False,
                fixed_students=(
                    ("student 1", {"layers": ("conv3",), "ranks": "evbmf"}),
                    ("student 2", {"layers": ("conv2", "conv3"), "ranks": "evbmf"}),
                ),
                needs_shared=True,
            ),
            _lenet5_data,
            _fit_lenet5,
        ),
        (
            Member(
                "digits-bnres",
                "BatchNorm + residual CNN, scikit-learn digits at 1x16x16",
                (1, 16, 16),
                "trace",
                True,
            ),
            lambda: digits_images(16),
            _fit_digits_bnres,
        ),
        (
            Member(
                "photos-vgg",
                "VGG-style BatchNorm CNN, 10 colour photographs' patches, 3x32x32",
                (3, 32, 32),
                "trace",
                True,
            ),
            _photos,
            lambda train: train_classifier(VggBn(3, 10), train, epochs=15, augment=True),
        ),
        (
            Member(
                "photos-resnet14",
                "the paper's ResNet14 on the same colour patches, 3x32x32",
                (3, 32, 32),
                "script",
                True,
            ),
            _photos,
            lambda train: train_classifier(ResNet14(3, 10), train, epochs=15, augment=True),
        ),
        (
            Member(
                "textures-cnn",
                "CNN without BatchNorm, 8 grey textures and photographs' patches, 1x32x32",
                (1, 32, 32),
                "trace",
                False,
            ),
            _textures,
            _fit_textures,
        ),
        (
            Member(
                "signals-bncnn",
                "1-D CNN with BatchNorm, 8 kinds of noisy 2-channel waveforms, 2x256",
                (2, 256),
                "trace",
                True,
            ),
            signals,
            lambda train: train_classifier(SignalCnn(2, 8, batchnorm=True), train, epochs=12),
        ),
        (
            Member(
                "signals-cnn",
                "1-D CNN without BatchNorm, the same waveforms, 2x256",
                (2, 256),
                "script",
                False,
            ),
            signals,
            lambda train: train_classifier(SignalCnn(2, 8, batchnorm=False), train, epochs=12),
        ),
        (
            Member(
                "digits-mlp",
                "MLP 64-256-256-10, scikit-learn digits as 64 features",
                (64,),
                "script",
                False,
                fixed_students=(("rank 6", {"layers": ("layers.2",), "ranks": {"layers.2": (6, 6)}}),),
            ),
            digits_vectors,
            _fit_mlp((256, 256), 10, bn=False, epochs=60),
        ),
        (
            Member(
                "synth-bn-mlp",
                "MLP with BatchNorm, 40 features, 10 classes (make_classification)",
                (40,),
                "trace",
                True,
                fixed_students=(("3x", {"layers": ("layers.0", "layers.3"), "target_ratio": 3.0}),),
            ),
            lambda: synthetic_vectors(40, 32, 10, seed=11),
            _fit_mlp((256, 256), 10, bn=True, epochs=40),
        ),
        (
            Member(
                "synth-mlp",
                "MLP 30-192-192-192-8, 8 classes (make_classification)",
                (30,),
                "script",
                False,
                fixed_students=(("6x", {"target_ratio": 6.0}),),
            ),
            lambda: synthetic_vectors(30, 24, 8, seed=12),
            _fit_mlp((192, 192, 192), 8, bn=False, epochs=40),
        ),
    ]
}


def _export(model: nn.Module, member: Member, example: torch.Tensor, path: Path) -> None:
    model = model.eval()
    script = torch.jit.script(model) if member.export == "script" else torch.jit.trace(model, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    script.save(str(path))


def available(names: list[str] | None = None) -> list[str]:
    """Suite member names, in order, without those whose ../shared files are absent."""
    chosen = names or list(MEMBERS)
    unknown = sorted(set(chosen) - set(MEMBERS))
    if unknown:
        raise ValueError(f"unknown suite members {unknown}; choose from {list(MEMBERS)}")
    shared_ok = (default_shared() / "teachers" / "kegnet" / "mnist.pth.tar").exists()
    return [name for name in chosen if shared_ok or not MEMBERS[name][0].needs_shared]


def stored_teachers() -> Path:
    """Where trained teachers are kept in the repository (``benchmarks/teachers``).

    CPU training is not bit-for-bit repeatable across machines, so the
    teachers the suite's figures were measured on are kept here, and every
    machine scores the same ones.  The paper's LeNet5 is not: it is made from
    ``../shared`` each time.
    """
    return Path(os.environ.get("KEGNET_SUITE_TEACHERS", ROOT / "benchmarks" / "teachers"))


def load_teacher(name: str, cache: Path | None = None, *, store: Path | None = None) -> Teacher:
    """The stored teacher (``store``, default :func:`stored_teachers`) and its test split.

    A teacher not stored is trained and kept in ``cache``.  Test splits are
    rebuilt from the packaged data and cached there too.
    """
    member, data, fit = MEMBERS[name]
    folder = (cache or default_cache()) / f"v{CACHE_VERSION}" / name
    stored = None if member.needs_shared else (store or stored_teachers()) / f"{name}.pt"
    path = stored if stored is not None and stored.exists() else folder / "teacher.pt"
    test_path = folder / "test.pt"
    if not path.exists() or not test_path.exists():
        train, test = data()
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"x": test[0], "y": test[1]}, test_path)
        if not path.exists():
            torch.set_num_threads(max(1, torch.get_num_threads()))
            _export(fit(train), member, test[0][:2], path)
    split = torch.load(test_path, weights_only=True)
    test = (split["x"], split["y"])
    model = torch.jit.load(str(path))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return Teacher(member, path, test, accuracy(model, test[0], test[1]), parameters)


def store_teacher(teacher: Teacher, store: Path | None = None) -> Path:
    """Copy ``teacher``'s TorchScript into the repository's store; its path there."""
    target = (store or stored_teachers()) / f"{teacher.member.name}.pt"
    if teacher.path != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(teacher.path, target)
    return target


def score(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], teacher: Teacher) -> float:
    """Real accuracy in [0, 1] on the teacher's held-out test split."""
    return accuracy(model, teacher.test[0], teacher.test[1])


if __name__ == "__main__":
    import sys
    import time

    store = "--store" in sys.argv[1:]
    for name in available([arg for arg in sys.argv[1:] if arg != "--store"] or None):
        started = time.perf_counter()
        teacher = load_teacher(name)
        if store and not teacher.member.needs_shared:
            store_teacher(teacher)
        print(
            f"{name}: {teacher.accuracy:.2%} on {len(teacher.test[1])} test inputs, "
            f"{teacher.parameters:,} parameters, {time.perf_counter() - started:.0f} s"
        )
