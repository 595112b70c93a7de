"""Where training inputs come from: trained generators, or the paper's baselines.

Every source draws from an explicit ``torch.Generator`` so a seed fixes the
samples; none touches the global random state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed weight initialisation (on the CPU) without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def one_hot_labels(count: int, n_classes: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` one-hot rows, classes uniform at random: (count, n_classes)."""
    classes = torch.randint(0, n_classes, (count,), generator=rng, device=device)
    return torch.nn.functional.one_hot(classes, n_classes).float()


def mixed_labels(count: int, n_classes: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """Rows mixing two random classes with a random weight: points between classes."""
    first = one_hot_labels(count, n_classes, rng, device)
    second = one_hot_labels(count, n_classes, rng, device)
    weight = torch.rand(count, 1, generator=rng, device=device)
    return weight * first + (1 - weight) * second


def training_labels(
    count: int, n_classes: int, mix: float, rng: torch.Generator, device: torch.device
) -> torch.Tensor:
    """One-hot rows, except a share ``mix`` of two-class mixtures (shuffled in)."""
    mixed = round(count * mix)
    labels = one_hot_labels(count - mixed, n_classes, rng, device)
    if mixed:
        labels = torch.cat((labels, mixed_labels(mixed, n_classes, rng, device)))
    return labels


def noise(count: int, dim: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(count, dim, generator=rng, device=device)


class SampleSource(Protocol):
    """Anything that can draw a batch of teacher inputs."""

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor: ...


class GeneratorSource:
    """Samples from trained generators in equal shares, as the paper does."""

    def __init__(
        self,
        generators: Sequence[nn.Module],
        n_classes: int,
        noise_dim: int,
        label_mix: float = 0.0,
        noise_scale: float = 1.0,
    ) -> None:
        if not generators:
            raise ValueError("GeneratorSource needs at least one generator")
        self.generators = list(generators)
        self.n_classes = n_classes
        self.noise_dim = noise_dim
        self.label_mix = label_mix
        self.noise_scale = noise_scale

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return _draw(
            self.generators, count, self.n_classes, self.noise_dim, self.label_mix, self.noise_scale, rng
        )


@torch.no_grad()
def _draw(
    generators: Sequence[nn.Module],
    count: int,
    n_classes: int,
    noise_dim: int,
    label_mix: float,
    noise_scale: float,
    rng: torch.Generator,
) -> torch.Tensor:
    """``count`` samples in equal shares from ``generators`` (the first ones take the remainder)."""
    device = rng.device
    shares = [count // len(generators)] * len(generators)
    for index in range(count - sum(shares)):
        shares[index] += 1
    batches = []
    for generator, share in zip(generators, shares, strict=True):
        if share == 0:
            continue
        labels = training_labels(share, n_classes, label_mix, rng, device)
        batches.append(generator(labels, noise(share, noise_dim, rng, device) * noise_scale))
    return torch.cat(batches)


class TrajectorySource:
    """Samples from copies of the generators taken along their training.

    Each call draws ``picks`` snapshots at random from all generators'
    snapshots together and takes equal shares of the batch from them, so over
    many batches every stage of every generator's training is seen.
    """

    def __init__(
        self,
        snapshots: Sequence[Sequence[nn.Module]],
        n_classes: int,
        noise_dim: int,
        picks: int = 4,
        label_mix: float = 0.0,
        noise_scale: float = 1.0,
    ) -> None:
        self.snapshots = [snapshot for trajectory in snapshots for snapshot in trajectory]
        if not self.snapshots:
            raise ValueError("TrajectorySource needs at least one snapshot")
        if picks < 1:
            raise ValueError("picks must be at least 1")
        self.picks = picks
        self.n_classes = n_classes
        self.noise_dim = noise_dim
        self.label_mix = label_mix
        self.noise_scale = noise_scale

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        chosen = torch.randint(0, len(self.snapshots), (self.picks,), generator=rng, device=rng.device)
        picked = [self.snapshots[index] for index in chosen.tolist()]
        return _draw(picked, count, self.n_classes, self.noise_dim, self.label_mix, self.noise_scale, rng)


class MixedSource:
    """Each batch takes a share ``share`` from ``extra`` and the rest from ``main``.

    The recipe uses it to add the stroke prior to the generators' samples.
    """

    def __init__(self, main: SampleSource, extra: SampleSource, share: float) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.main = main
        self.extra = extra
        self.share = share

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        taken = round(count * self.share)
        parts = []
        if count - taken:
            parts.append(self.main.sample(count - taken, rng))
        if taken:
            parts.append(self.extra.sample(taken, rng))
        return torch.cat(parts)


class UniformSource:
    """The paper's T+Uniform baseline: inputs from U(-1, 1)."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return torch.rand(count, *self.input_shape, generator=rng, device=rng.device) * 2 - 1


class GaussianSource:
    """The paper's T+Gaussian baseline: inputs from N(0, 1)."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return torch.randn(count, *self.input_shape, generator=rng, device=rng.device)
