"""Every hyperparameter of a run, in frozen dataclasses, and the named recipes (presets).

``paper`` is the published MNIST recipe exactly; ``default`` is our
recommended recipe (measured in docs/benchmarks.md); ``quick`` finishes in
seconds for tests and demos.  A recipe has four parts: how generators are
trained (:class:`ExtractionConfig`), how samples are drawn for the student
(:class:`SamplingConfig`), and how the student learns from them
(:class:`DistillConfig`, one for the KegNet prior and one for the plain
baselines).  The user's spec names a recipe and may override single settings
(``{"distill.steps": 500}``): :func:`get_recipe` applies and checks them.

This module imports nothing heavy so the API can validate specs against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


def _check_positive(config: Any, *names: str) -> None:
    for name in names:
        if not getattr(config, name) > 0:
            raise ValueError(f"{_section(config)}.{name} must be above 0, got {getattr(config, name)}")


def _check_at_least(config: Any, low: float, *names: str) -> None:
    for name in names:
        if getattr(config, name) < low:
            raise ValueError(f"{_section(config)}.{name} must be at least {low}, got {getattr(config, name)}")


def _check_share(config: Any, *names: str) -> None:
    for name in names:
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"{_section(config)}.{name} must be in [0, 1], got {getattr(config, name)}")


def _section(config: Any) -> str:
    return {
        ExtractionConfig: "extraction",
        SynthesisConfig: "synthesis",
        SamplingConfig: "sampling",
        DistillConfig: "distill",
        TuckerConfig: "tucker",
    }.get(type(config), type(config).__name__)


@dataclass(frozen=True)
class ExtractionConfig:
    """How the generators are trained (KegNet's knowledge extraction)."""

    generators: int = 5
    epochs: int = 200
    batches_per_epoch: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    noise_dim: int = 10
    decoder_weight: float = 1.0
    diversity_weight: float = 0.0
    smoothness_weight: float = 0.0  # image prior; 0 in the paper
    activation_weight: float = 0.0  # reward strong penultimate teacher features (DAFL); 0 in the paper
    label_mix: float = 0.0  # share of two-class label mixtures; 0 in the paper
    # Copies of the generator kept along its training, every ``snapshot_every``
    # steps from step ``snapshot_from`` on (0: none). Distilling on the whole
    # trajectory instead of the end point alone gives the student the varied
    # samples of a generator still learning (docs/design.md).
    snapshot_every: int = 0
    snapshot_from: int = 0
    decoder_hidden_layers: int = 1
    decoder_units: int = 120
    generator_channels: tuple[int, ...] = (64, 16, 4)

    def __post_init__(self) -> None:
        _check_positive(self, "generators", "epochs", "batches_per_epoch", "batch_size", "noise_dim")
        _check_positive(self, "learning_rate", "decoder_units")
        _check_at_least(self, 0, "decoder_weight", "diversity_weight", "smoothness_weight")
        _check_at_least(self, 0, "activation_weight", "snapshot_every", "snapshot_from")
        _check_share(self, "label_mix")

    @property
    def steps(self) -> int:
        return self.epochs * self.batches_per_epoch


@dataclass(frozen=True)
class SynthesisConfig:
    """Inputs optimised directly against the teacher (kegnet_core.synthesis).

    Each input starts as N(0, 1) noise and is moved by Adam so that the
    teacher reads it as an assigned class (balanced over classes) and, where
    the teacher has BatchNorm, so that each batch's activations have the
    running mean and variance the teacher recorded on its real training data.
    ``samples`` 0 turns synthesis off.
    """

    samples: int = 0
    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 0.1
    class_weight: float = 1.0
    batch_norm_weight: float = 1.0
    smoothness_weight: float = 0.0  # images: squared differences of neighbouring pixels
    # Held-out inputs synthesised the same way for the report's quality estimate
    # (teachers with BatchNorm only; never trained on).
    probe_samples: int = 0
    # At most this many teacher MACs of forward passes (inputs x steps x MACs per
    # input, probes included): big teachers get fewer inputs (not below
    # ``min_samples``), then fewer steps (not below ``min_steps``). None: no limit.
    work_limit: float | None = None
    min_samples: int = 512
    min_steps: int = 100

    def __post_init__(self) -> None:
        _check_at_least(self, 0, "samples", "class_weight", "batch_norm_weight", "smoothness_weight")
        _check_at_least(self, 0, "probe_samples")
        _check_positive(self, "steps", "batch_size", "learning_rate", "min_steps", "min_samples")
        if self.work_limit is not None and self.work_limit <= 0:
            raise ValueError("synthesis.work_limit must be above 0 or null")


@dataclass(frozen=True)
class SamplingConfig:
    """How the student's samples are drawn from the sources (kegnet_core.sources)."""

    noise_scale: float = 1.0  # z ~ N(0, noise_scale^2): wider z reaches more of what G learned
    label_mix: float = 0.0  # share of samples drawn from mixtures of two classes
    trajectory_picks: int = 4  # with snapshots: how many random ones share each batch
    # Share of each batch drawn as random pen strokes (kegnet_core.strokes),
    # image inputs only; 0 in the paper.
    stroke_share: float = 0.0
    # Share of each batch drawn from the synthesised pool, where there is one.
    synthesised_share: float = 0.0

    def __post_init__(self) -> None:
        _check_positive(self, "noise_scale", "trajectory_picks")
        _check_share(self, "label_mix", "stroke_share", "synthesised_share")


@dataclass(frozen=True)
class DistillConfig:
    """How the compressed student learns the teacher's outputs on generated samples.

    With ``pool_batches`` set, samples are drawn once into a fixed pool of
    that many batches (the paper); with ``None``, fresh samples every step.
    The student kept is the one that agrees best with the teacher on a
    held-out set of generated samples, checked every ``eval_every`` steps.
    """

    steps: int = 40_000
    batch_size: int = 64
    learning_rate: float = 1e-5
    final_learning_rate: float | None = None  # cosine decay to this; None keeps it constant
    temperature: float = 1.0
    feature_weight: float = 0.0  # weight of matching the factorised layers' outputs
    pool_batches: int | None = 100
    eval_every: int = 100
    eval_samples: int = 2048
    patience_evals: int | None = 50  # stop after this many checks without improvement
    min_steps: int = 10_000
    # At most this many teacher MACs over the whole run (steps x batch x MACs per
    # input): big teachers get fewer steps, never below ``floor_steps``; where that
    # leaves fewer than ``small_batch_below`` steps, batches of ``small_batch_size``
    # and twice the steps (ResNet14: 86.0% against 84.1%). None: no limit.
    work_limit: float | None = None
    floor_steps: int = 200
    small_batch_size: int = 64
    small_batch_below: int = 1000
    # A small teacher's student takes more steps where they draw fresh inputs: as many as
    # ``grow_work`` teacher MACs buy at its batch size, up to ``max_steps`` (docs/design.md,
    # the default recipe, item 5).  None: ``steps`` as they are.
    grow_work: float | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        _check_positive(self, "steps", "batch_size", "learning_rate", "temperature", "eval_every")
        _check_positive(self, "eval_samples", "floor_steps", "small_batch_size", "small_batch_below")
        if self.work_limit is not None and self.work_limit <= 0:
            raise ValueError("distill.work_limit must be above 0 or null")
        if self.grow_work is not None and self.grow_work <= 0:
            raise ValueError("distill.grow_work must be above 0 or null")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("distill.max_steps must be at least 1 or null")
        _check_at_least(self, 0, "feature_weight", "min_steps")
        if self.pool_batches is not None and self.pool_batches < 1:
            raise ValueError(f"distill.pool_batches must be at least 1 or null, got {self.pool_batches}")
        if self.final_learning_rate is not None and self.final_learning_rate < 0:
            raise ValueError("distill.final_learning_rate must be at least 0 or null")


@dataclass(frozen=True)
class TuckerConfig:
    """How the planned layers are factorised (kegnet_core.tucker).

    Where the student learns from inputs synthesised against the teacher,
    ``activation_samples`` of them show each layer's input and output
    channels, and its factors are chosen for the error they cause there.
    Otherwise, and with 0, the weights alone are factorised (partial Tucker,
    ``iterations`` rounds of HOOI), as the paper does."""

    iterations: int = 100
    activation_samples: int = 0
    # With activation samples and ranks searched for a ratio: ranks chosen again from the
    # activation spectra those samples show, one energy level for all layers.
    activation_ranks: bool = False
    # With ranks searched for a ratio over the default layers: planned layers whose factorised
    # form runs slower on the CPU than the dense one stay dense (kegnet_core.stages.plan_for_speed).
    keep_slower_dense: bool = False

    def __post_init__(self) -> None:
        _check_positive(self, "iterations")
        _check_at_least(self, 0, "activation_samples")


def fit_synthesis(config: SynthesisConfig, macs: int) -> SynthesisConfig:
    """``config`` cut to its work limit: fewer inputs first (down to ``min_samples`` and half the
    probes), then fewer steps (down to ``min_steps``).  Each input's optimisation matters more than
    their number (ResNet14, docs/design.md)."""
    inputs = config.samples + config.probe_samples
    if config.work_limit is None or macs <= 0 or inputs * config.steps * macs <= config.work_limit:
        return config
    scale = config.work_limit / (inputs * config.steps * macs)
    batch = config.batch_size
    samples = config.samples
    if samples:
        samples = min(samples, max(config.min_samples, int(samples * scale) // batch * batch))
    probes = min(config.probe_samples, max(config.probe_samples // 2, int(config.probe_samples * scale)))
    steps = max(config.min_steps, min(config.steps, int(config.work_limit / ((samples + probes) * macs))))
    return replace(config, samples=samples, probe_samples=probes, steps=steps)


def fit_distillation(config: DistillConfig, macs: int, *, grow: bool = True) -> DistillConfig:
    """``config`` with more steps where the teacher is small and ``grow`` (up to ``max_steps``, as
    many as ``grow_work`` buys), fewer (and, when few are left, smaller batches) where the whole
    run would pass its work limit."""
    if macs <= 0:
        return config
    if grow and config.grow_work is not None and config.max_steps is not None:
        grown = min(config.max_steps, int(config.grow_work / (macs * config.batch_size)))
        if grown > config.steps:
            config = replace(config, steps=grown)
    if config.work_limit is None:
        return config
    samples = config.work_limit / macs  # inputs the student may see
    if samples >= config.steps * config.batch_size:
        return config
    batch = config.batch_size
    if samples / batch < config.small_batch_below and config.small_batch_size < batch:
        batch = config.small_batch_size
    steps = max(config.floor_steps, min(config.steps, int(samples / batch)))
    return replace(config, steps=steps, batch_size=batch, eval_every=min(config.eval_every, steps))


@dataclass(frozen=True)
class Recipe:
    """A named, complete recipe."""

    name: str
    extraction: ExtractionConfig
    sampling: SamplingConfig
    distill: DistillConfig
    baseline_distill: DistillConfig
    synthesis: SynthesisConfig = SynthesisConfig()
    tucker: TuckerConfig = TuckerConfig()
    description: str = ""


PAPER = Recipe(
    name="paper",
    description="The published MNIST recipe: 5 generators x 200 epochs x 100 batches of 256; "
    "student on 100 fixed batches of 64, Adam 1e-5, up to 400 epochs.",
    extraction=ExtractionConfig(),
    sampling=SamplingConfig(),
    distill=DistillConfig(),
    # The paper's baselines (uniform, Gaussian) use lr 1e-6 and up to 1000 epochs.
    baseline_distill=DistillConfig(steps=100_000, learning_rate=1e-6),
)

# Work limits of the default recipe, in teacher multiply-accumulates: on a
# 2-core CPU (about 65 GMAC/s with backward passes) synthesis stays within about
# 3 minutes and distillation within about 2, so a teacher of 30 MMACs per input
# finishes in well under 10 minutes (docs/benchmarks.md, the suite's stage times).
DEFAULT_SYNTHESIS_WORK = 4e12
DEFAULT_DISTILL_WORK = 1.2e12
# A student of a teacher this cheap takes more steps than the recipe's 1,500: as many as
# DEFAULT_GROW_WORK buys (LeNet5, 0.42 MMACs: 9,300 steps; a teacher of 2.6 MMACs or more keeps
# 1,500), at most DEFAULT_MAX_STEPS.
DEFAULT_GROW_WORK = 5e11
DEFAULT_MAX_STEPS = 12_000

# feature_weight: each factorised layer's output held to the original layer's on
# the same inputs, beside the KL on logits (docs/design.md).
_DEFAULT_DISTILL = DistillConfig(
    steps=1500,
    batch_size=128,
    learning_rate=1e-3,
    final_learning_rate=0.0,
    temperature=1.0,
    feature_weight=1.0,
    pool_batches=None,
    eval_every=100,
    patience_evals=None,
    min_steps=0,
    work_limit=DEFAULT_DISTILL_WORK,
    floor_steps=300,
    grow_work=DEFAULT_GROW_WORK,
    max_steps=DEFAULT_MAX_STEPS,
)

DEFAULT = Recipe(
    name="default",
    description="Our recipe: for a teacher with BatchNorm, 1,024 inputs synthesised against it (its class "
    "evidence and BatchNorm statistics, 300 Adam steps), the Tucker factors fitted to them, and 256 more "
    "held out as probes for the quality estimate, and the Tucker ranks and factors chosen from what those "
    "inputs show in each layer; without BatchNorm, procedural images (or Gaussian "
    "vectors); the student distilled for 1,500 steps of 128 (KL, Adam 1e-3, cosine); small teachers get "
    "more steps (up to 12,000), big ones fewer, within a fixed amount of work.",
    extraction=ExtractionConfig(
        generators=2,
        epochs=20,
        batches_per_epoch=100,
        batch_size=256,
        activation_weight=0.1,
        snapshot_every=100,
        snapshot_from=300,
    ),
    synthesis=SynthesisConfig(
        samples=1024,
        steps=300,
        batch_size=256,
        learning_rate=0.1,
        probe_samples=256,
        work_limit=DEFAULT_SYNTHESIS_WORK,
        min_samples=512,
        min_steps=100,
    ),
    # For the kegnet prior: random pen strokes beside the generators' samples
    # (docs/design.md, "The stroke prior").
    sampling=SamplingConfig(noise_scale=4.0, stroke_share=0.5),
    distill=_DEFAULT_DISTILL,
    # The baselines (uniform, Gaussian, strokes, procedural) learn the same way.
    baseline_distill=_DEFAULT_DISTILL,
    # Factors chosen for the output error on 512 of the synthesised inputs, and the ranks
    # from the energy those inputs show in each layer (docs/design.md, the default recipe, item 3).
    tucker=TuckerConfig(activation_samples=512, activation_ranks=True),
)


_QUICK_DISTILL = DistillConfig(
    steps=60,
    batch_size=64,
    learning_rate=1e-3,
    pool_batches=None,
    eval_every=30,
    eval_samples=256,
    patience_evals=None,
    min_steps=0,
)

QUICK = Recipe(
    name="quick",
    description="Seconds, for tests and demos: 1 small generator run or 128 inputs synthesised in 20 "
    "steps, 60 student steps.",
    extraction=ExtractionConfig(generators=1, epochs=2, batches_per_epoch=20, batch_size=64),
    synthesis=SynthesisConfig(
        samples=128, steps=20, batch_size=64, probe_samples=64, min_samples=64, min_steps=10
    ),
    sampling=SamplingConfig(),
    distill=_QUICK_DISTILL,
    baseline_distill=_QUICK_DISTILL,
    tucker=TuckerConfig(iterations=20, activation_samples=128),
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (QUICK, DEFAULT, PAPER)}
SECTIONS = ("extraction", "synthesis", "sampling", "distill", "baseline_distill", "tucker")


def get_recipe(name: str, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """The named recipe with ``overrides`` (``{"distill.steps": 500}``) applied.

    Where the preset distils its baselines exactly as its learned priors
    (``default``, ``quick``: one ``distill``), a ``distill.*`` override
    applies to ``baseline_distill`` too, unless that setting is overridden
    there itself; only ``paper`` keeps the paper's separate baseline recipe.

    Raises ``ValueError`` naming the setting for an unknown recipe or setting,
    a value of the wrong type, or one out of range.
    """
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(RECIPES)}") from None
    given = dict(overrides or {})
    if recipe.baseline_distill == recipe.distill:
        for key, value in list(given.items()):
            section, _, setting = key.partition(".")
            if section == "distill":
                given.setdefault(f"baseline_distill.{setting}", value)
    for key, value in given.items():
        section, _, setting = key.partition(".")
        if section not in SECTIONS or not setting:
            raise ValueError(
                f"override {key!r} must look like 'distill.steps' (sections: {', '.join(SECTIONS)})"
            )
        current = getattr(recipe, section)
        fields = {item.name: item for item in dataclasses.fields(current)}
        if setting not in fields:
            raise ValueError(f"unknown setting {key!r}; {section} has {', '.join(fields)}")
        checked = _typed(key, value, getattr(current, setting), fields[setting].type)
        recipe = replace(recipe, **{section: replace(current, **{setting: checked})})
    for section in ("distill", "baseline_distill"):
        # Steps the user names are the steps run (a big teacher's work limit still cuts them).
        growth = {f"{section}.{setting}" for setting in ("grow_work", "max_steps")}
        if f"{section}.steps" in given and not growth & given.keys():
            recipe = replace(recipe, **{section: replace(getattr(recipe, section), max_steps=None)})
    return recipe


def _typed(key: str, value: Any, default: Any, annotation: Any) -> Any:
    """``value`` as the type the setting holds, or ValueError."""
    text = str(annotation)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key} cannot be null")
    if "tuple" in text:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, int) and not isinstance(item, bool) and item > 0 for item in value
        ):
            raise ValueError(f"{key} must be a list of positive integers")
        return tuple(value)
    if text.startswith("bool"):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if text.startswith("int"):
        if not isinstance(value, int) and not float(value).is_integer():
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    return float(value)
