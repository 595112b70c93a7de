"""Random draws that every part of a run shares: labels, noise and seeded initialisation.

Everything draws from an explicit ``torch.Generator`` so a seed fixes the
samples; nothing touches the global random state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
