"""Sample sources: where the student's training inputs come from, and the registry of priors.

A source draws a batch of teacher inputs from an explicit ``torch.Generator``.
:data:`REGISTRY` maps each :class:`~kegnet_core.spec.Prior` to the factory
that builds its source from what the run has made so far (a
:class:`SourceContext`): its keys are exactly the valid priors, and each
source carries a ``name`` that the report quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from kegnet_core.config import SamplingConfig
from kegnet_core.errors import SpecError
from kegnet_core.procedural import dead_leaves, oscillations, pink_noise, pink_signals, steps
from kegnet_core.sampling import noise, training_labels
from kegnet_core.spec import Prior
from kegnet_core.strokes import stroke_images


class SampleSource(Protocol):
    """Anything that can draw a batch of teacher inputs."""

    name: str

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor: ...


@torch.no_grad()
def draw_from_generators(
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


class GeneratorSource:
    """Samples from trained generators in equal shares, as the paper does."""

    name = "kegnet"

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
        return draw_from_generators(
            self.generators, count, self.n_classes, self.noise_dim, self.label_mix, self.noise_scale, rng
        )


class TrajectorySource:
    """Samples from copies of the generators taken along their training.

    Each call draws ``picks`` snapshots at random from all generators'
    snapshots together and takes equal shares of the batch from them, so over
    many batches every stage of every generator's training is seen.
    """

    name = "kegnet"

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
        return draw_from_generators(
            picked, count, self.n_classes, self.noise_dim, self.label_mix, self.noise_scale, rng
        )


class MixedSource:
    """Each batch takes a share ``share`` from ``extra`` and the rest from ``main``."""

    def __init__(self, main: SampleSource, extra: SampleSource, share: float) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.main = main
        self.extra = extra
        self.share = share
        self.name = f"{main.name} + {extra.name}"

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        taken = round(count * self.share)
        parts = []
        if count - taken:
            parts.append(self.main.sample(count - taken, rng))
        if taken:
            parts.append(self.extra.sample(taken, rng))
        return torch.cat(parts)


class PoolSource:
    """Draws with replacement from a fixed pool of inputs (e.g. ones synthesised against the teacher)."""

    def __init__(self, pool: torch.Tensor, name: str) -> None:
        if len(pool) == 0:
            raise ValueError("PoolSource needs a non-empty pool")
        self.pool = pool
        self.name = name

    def indices(self, count: int, rng: torch.Generator) -> torch.Tensor:
        """Which pool inputs the next ``count`` draws are (what :meth:`sample` returns, by index)."""
        return torch.randint(0, len(self.pool), (count,), generator=rng, device=rng.device).to(
            self.pool.device
        )

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return self.pool[self.indices(count, rng)]


class UniformSource:
    """The paper's T+Uniform baseline: inputs from U(-1, 1)."""

    name = "uniform"

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return torch.rand(count, *self.input_shape, generator=rng, device=rng.device) * 2 - 1


class GaussianSource:
    """The paper's T+Gaussian baseline: inputs from N(0, 1)."""

    name = "gaussian"

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return torch.randn(count, *self.input_shape, generator=rng, device=rng.device)


class ProceduralSource:
    """Inputs drawn from formulas, a third of each batch each: images of pen strokes, dead leaves
    and 1/f noise, or signals of 1/f noise, periodic waves and piecewise levels.

    The ``procedural`` prior, and ``auto``'s choice for image and signal classifiers
    without BatchNorm (docs/design.md, "The default recipe").
    """

    name = "procedural"

    def __init__(self, input_shape: Sequence[int]) -> None:
        if len(input_shape) not in (2, 3):
            raise SpecError(
                "prior 'procedural' draws images or signals: it needs input_shape [C, H, W] or [C, L]",
                field="prior",
            )
        self.input_shape = tuple(int(size) for size in input_shape)
        self.drawers = (
            (stroke_images, pink_noise, dead_leaves)
            if len(input_shape) == 3
            else (pink_signals, oscillations, steps)
        )

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        third = count // 3
        first, second, last = self.drawers
        return torch.cat(
            (
                first(third, self.input_shape, rng),
                second(third, self.input_shape, rng),
                last(count - 2 * third, self.input_shape, rng),
            )
        )


class StrokeSource:
    """Random-stroke images (kegnet_core.strokes), the ``strokes`` prior."""

    name = "strokes"

    def __init__(self, input_shape: Sequence[int]) -> None:
        if len(input_shape) != 3:
            raise SpecError("prior 'strokes' draws images: it needs input_shape [C, H, W]", field="prior")
        self.input_shape = tuple(int(size) for size in input_shape)

    def sample(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return stroke_images(count, self.input_shape, rng)


# --------------------------------------------------------------------------
# The registry


@dataclass
class SourceContext:
    """What a source may be built from: the input's shape, the recipe's sampling settings,
    and what earlier stages made (generators with their snapshots, a synthesised pool)."""

    input_shape: tuple[int, ...]
    n_classes: int
    sampling: SamplingConfig
    noise_dim: int = 10
    batch_norms: int = 0  # BatchNorm layers the teacher has (kegnet_core.inspection)
    generators: Sequence[object] = field(default_factory=list)  # extraction.TrainedGenerator
    synthesised: torch.Tensor | None = None

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def _kegnet(context: SourceContext, trajectory: bool) -> SampleSource:
    generators = list(context.generators)
    if not generators:
        raise ValueError("the kegnet prior needs trained generators")
    shared = {"label_mix": context.sampling.label_mix, "noise_scale": context.sampling.noise_scale}
    snapshots = [getattr(trained, "snapshots", []) for trained in generators]
    source: SampleSource
    if trajectory and any(snapshots):
        source = TrajectorySource(
            snapshots, context.n_classes, context.noise_dim, picks=context.sampling.trajectory_picks, **shared
        )
    else:
        finals = [trained.generator for trained in generators]  # type: ignore[attr-defined]
        source = GeneratorSource(finals, context.n_classes, context.noise_dim, **shared)
    if context.sampling.stroke_share and context.is_image:
        return MixedSource(source, StrokeSource(context.input_shape), context.sampling.stroke_share)
    return source


def _synthesis(context: SourceContext, _trajectory: bool) -> SampleSource:
    if context.synthesised is None or len(context.synthesised) == 0:
        raise ValueError("the synthesis prior needs synthesised inputs")
    return PoolSource(context.synthesised, "synthesis")


SourceFactory = Callable[[SourceContext, bool], SampleSource]

REGISTRY: dict[Prior, SourceFactory] = {
    Prior.SYNTHESIS: _synthesis,
    Prior.KEGNET: _kegnet,
    Prior.UNIFORM: lambda context, _trajectory: UniformSource(context.input_shape),
    Prior.GAUSSIAN: lambda context, _trajectory: GaussianSource(context.input_shape),
    Prior.STROKES: lambda context, _trajectory: StrokeSource(context.input_shape),
    Prior.PROCEDURAL: lambda context, _trajectory: ProceduralSource(context.input_shape),
}


def resolve_prior(
    prior: Prior, batch_norms: int, input_shape: Sequence[int], *, synthesises: bool = True
) -> Prior:
    """The prior a run uses; any but ``auto`` is itself.

    ``auto`` adapts to what the teacher shows (docs/design.md, "The default
    recipe"): a vector classifier gets N(0, 1), which its standardised inputs
    make the natural scale (with BatchNorm too: there synthesised vectors lost
    5 points to it); an image or signal classifier with BatchNorm layers
    ``synthesis`` (inputs matched to their running statistics), one without
    ``procedural`` images or signals.  Where the recipe synthesises nothing
    (``synthesises`` False: the ``paper`` preset, ``synthesis.samples`` 0) a
    BatchNorm teacher gets ``procedural`` inputs too.
    """
    if prior is not Prior.AUTO:
        return prior
    if len(input_shape) == 1:
        return Prior.GAUSSIAN
    return Prior.SYNTHESIS if batch_norms > 0 and synthesises else Prior.PROCEDURAL


def needs_generators(prior: Prior) -> bool:
    """Whether the prior's source is built from trained generators."""
    return prior is Prior.KEGNET


def needs_synthesis(prior: Prior) -> bool:
    """Whether the prior's source is built from inputs synthesised against the teacher."""
    return prior is Prior.SYNTHESIS


def build_source(prior: Prior, context: SourceContext, *, trajectory: bool = False) -> SampleSource:
    """The sample source of a resolved ``prior``; ``trajectory`` uses generator snapshots where
    there are any.  ``Prior.NONE`` (Tucker only) trains on nothing and has no source.
    """
    prior = resolve_prior(prior, context.batch_norms, context.input_shape)
    try:
        factory = REGISTRY[prior]
    except KeyError:
        raise SpecError(f"prior {prior.value!r} draws no samples", field="prior") from None
    return factory(context, trajectory)
