"""Every hyperparameter of a run, in frozen dataclasses, and the named presets.

``paper`` is the published MNIST recipe exactly; ``default`` is our
recommended recipe (measured in docs/benchmarks.md); ``quick`` finishes in
seconds for tests and demos.  This module imports nothing heavy so the API can
validate specs against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kegnet_core.errors import SpecError

PRIORS = ("kegnet", "uniform", "gaussian", "strokes", "none")
TASKS = ("compress", "extract")


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

    @property
    def steps(self) -> int:
        return self.epochs * self.batches_per_epoch


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
    feature_weight: float = 0.0  # weight of matching the compressed layers' outputs
    train_compressed_only: bool = False  # keep the layers that were not factorised as they are
    pool_batches: int | None = 100
    label_mix: float = 0.0  # share of samples drawn from mixtures of two classes
    noise_scale: float = 1.0  # z ~ N(0, noise_scale^2): wider z reaches more of what G learned
    trajectory_picks: int = 4  # with snapshots: how many random ones share each batch
    # Share of each batch drawn as random pen strokes (kegnet_core.strokes),
    # image inputs only; 0 in the paper.
    stroke_share: float = 0.0
    eval_every: int = 100
    eval_samples: int = 2048
    patience_evals: int | None = 50  # stop after this many checks without improvement
    min_steps: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.stroke_share <= 1:
            raise ValueError(f"distill.stroke_share must be in [0, 1], got {self.stroke_share}")


@dataclass(frozen=True)
class Preset:
    """A named, complete recipe."""

    name: str
    extraction: ExtractionConfig
    distill: DistillConfig
    baseline_distill: DistillConfig
    tucker_iterations: int = 100
    description: str = ""


PAPER = Preset(
    name="paper",
    description="The published MNIST recipe: 5 generators x 200 epochs x 100 batches of 256; "
    "student on 100 fixed batches of 64, Adam 1e-5, up to 400 epochs.",
    extraction=ExtractionConfig(),
    distill=DistillConfig(),
    # The paper's baselines (uniform, Gaussian) use lr 1e-6 and up to 1000 epochs.
    baseline_distill=DistillConfig(steps=100_000, learning_rate=1e-6),
)

DEFAULT = Preset(
    name="default",
    description="Our recipe: 2 generators x 2,000 steps with the teacher-feature activation loss; "
    "student on fresh samples, half from snapshots along the generators' training (z scaled by 4), "
    "half random pen strokes (images only), Adam 1e-4, 2,000 steps.",
    # activation_weight: generators that also excite the teacher's penultimate
    # features give samples nearer the data (docs/benchmarks.md, recipe notes).
    extraction=ExtractionConfig(
        generators=2,
        epochs=20,
        batches_per_epoch=100,
        batch_size=256,
        activation_weight=0.1,
        snapshot_every=100,
        snapshot_from=300,
    ),
    distill=DistillConfig(
        steps=2000,
        batch_size=128,
        learning_rate=1e-4,
        temperature=1.0,
        pool_batches=None,
        noise_scale=4.0,
        # Random pen strokes beside the generators' samples: +2 to 6 points on
        # the LeNet5 students (docs/design.md, "The stroke prior").
        stroke_share=0.5,
        eval_every=100,
        patience_evals=None,
        min_steps=0,
    ),
    baseline_distill=DistillConfig(
        steps=2000,
        batch_size=128,
        learning_rate=1e-4,
        pool_batches=None,
        eval_every=100,
        patience_evals=None,
        min_steps=0,
    ),
)

QUICK = Preset(
    name="quick",
    description="Seconds, for tests and demos: 1 small generator run, 60 student steps.",
    extraction=ExtractionConfig(generators=1, epochs=2, batches_per_epoch=20, batch_size=64),
    distill=DistillConfig(
        steps=60,
        batch_size=64,
        learning_rate=1e-3,
        pool_batches=None,
        eval_every=30,
        eval_samples=256,
        patience_evals=None,
        min_steps=0,
    ),
    baseline_distill=DistillConfig(
        steps=60,
        batch_size=64,
        learning_rate=1e-3,
        pool_batches=None,
        eval_every=30,
        eval_samples=256,
        patience_evals=None,
        min_steps=0,
    ),
    tucker_iterations=20,
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (QUICK, DEFAULT, PAPER)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class CompressionSpec:
    """What the user asks for: the service's job spec and the CLI's options.

    ``layers`` None means every layer where factorising saves parameters
    (except the first and the output layer); ``ranks`` is "evbmf", a keep fraction in
    (0, 1] or {layer: [out_rank, in_rank]}; ``target_ratio`` overrides ranks.
    """

    input_shape: tuple[int, ...]
    layers: tuple[str, ...] | None = None
    ranks: str | float | dict[str, tuple[int, int]] = "evbmf"
    target_ratio: float | None = None
    prior: str = "kegnet"
    preset: str = "default"
    seed: int = 0
    task: str = "compress"
    overrides: dict[str, Any] = field(default_factory=dict)

    def preset_config(self) -> Preset:
        """The preset, with any ``overrides`` (``extraction.epochs`` style keys) applied."""
        preset = get_preset(self.preset)
        for key, value in self.overrides.items():
            section, _, name = key.partition(".")
            if section not in ("extraction", "distill", "baseline_distill") or not name:
                raise ValueError(f"override {key!r} must look like 'extraction.epochs' or 'distill.steps'")
            current = getattr(preset, section)
            if name not in current.__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            preset = replace(preset, **{section: replace(current, **{name: value})})
        return preset


SPEC_FIELDS = (
    "input_shape",
    "layers",
    "ranks",
    "target_ratio",
    "prior",
    "preset",
    "seed",
    "task",
    "overrides",
)


def check_prior_fits(prior: str, input_shape: Sequence[int]) -> None:
    """The stroke prior draws images, so it needs a (C, H, W) input."""
    if prior == "strokes" and len(input_shape) != 3:
        raise SpecError("prior 'strokes' draws images: it needs input_shape [C, H, W]", field="prior")


def _check_ranks(ranks: Any) -> str | float | dict[str, tuple[int, int]]:
    wrong = SpecError(
        f"ranks must be 'evbmf', a fraction in (0, 1] or {{layer: [out, in]}}, got {ranks!r}", field="ranks"
    )
    if isinstance(ranks, str):
        if ranks != "evbmf":
            raise wrong
        return ranks
    if isinstance(ranks, (int, float)) and not isinstance(ranks, bool):
        if not 0 < ranks <= 1:
            raise wrong
        return float(ranks)
    if isinstance(ranks, dict) and ranks:
        checked: dict[str, tuple[int, int]] = {}
        for name, pair in ranks.items():
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in pair)
            ):
                raise SpecError(
                    f"ranks for {name!r} must be [out_rank, in_rank] of positive integers", field="ranks"
                )
            checked[str(name)] = (pair[0], pair[1])
        return checked
    raise wrong


def spec_from_dict(data: dict[str, Any]) -> CompressionSpec:
    """Build a spec from its JSON form, naming the field of any mistake.

    Raises :class:`kegnet_core.errors.SpecError`.
    """
    unknown = sorted(set(data) - set(SPEC_FIELDS))
    if unknown:
        raise SpecError(f"unknown spec fields: {', '.join(unknown)}", field=unknown[0])
    if "input_shape" not in data:
        raise SpecError("input_shape is required, e.g. [1, 32, 32]", field="input_shape")
    shape = data["input_shape"]
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) not in (1, 3)
        or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape)
    ):
        raise SpecError(
            f"input_shape must be [C, H, W] or [D] of positive integers, got {shape!r}", field="input_shape"
        )
    layers = data.get("layers")
    if layers is not None and (
        not isinstance(layers, (list, tuple))
        or not layers
        or not all(isinstance(n, str) and n for n in layers)
    ):
        raise SpecError("layers must be null or a non-empty list of module paths", field="layers")
    ranks = _check_ranks(data.get("ranks", "evbmf"))
    target = data.get("target_ratio")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, (int, float)) or target <= 1
    ):
        raise SpecError(f"target_ratio must be a number above 1, got {target!r}", field="target_ratio")
    for name, allowed in (("prior", PRIORS), ("preset", tuple(PRESETS)), ("task", TASKS)):
        value = data.get(name, CompressionSpec.__dataclass_fields__[name].default)
        if value not in allowed:
            raise SpecError(f"{name} must be one of {', '.join(allowed)}, got {value!r}", field=name)
    check_prior_fits(data.get("prior", "kegnet"), shape)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise SpecError(f"seed must be an integer in [0, 2^31), got {seed!r}", field="seed")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SpecError("overrides must be an object like {'distill.steps': 100}", field="overrides")
    spec = CompressionSpec(
        input_shape=tuple(shape),
        layers=tuple(layers) if layers is not None else None,
        ranks=ranks,
        target_ratio=float(target) if target is not None else None,
        prior=data.get("prior", "kegnet"),
        preset=data.get("preset", "default"),
        seed=seed,
        task=data.get("task", "compress"),
        overrides=dict(overrides),
    )
    try:
        spec.preset_config()
    except (ValueError, TypeError) as exc:
        raise SpecError(str(exc), field="overrides") from exc
    return spec
