"""The one job spec: what a user asks for, validated once, for the API, the CLI and the core.

:class:`CompressionSpec` is a frozen pydantic model with ``extra="forbid"``.
The API takes it as the ``spec`` form field (its JSON schema is in
``/openapi.json``, where the dashboard reads the allowed values), the CLI
builds it from options, and the pipeline runs it.  What can be checked
without the model is checked here; what needs the model (layer names,
explicit ranks against channel counts) is checked by the stages, which raise
:class:`~kegnet_core.errors.SpecError` naming the field.

This module imports nothing heavy: the API uses it without torch.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kegnet_core.config import Recipe, get_recipe
from kegnet_core.errors import SpecError


class Prior(StrEnum):
    """Where the student's training samples come from (the keys of the sample-source registry).

    ``auto`` lets the recipe choose from what the teacher shows (see
    :func:`kegnet_core.sources.resolve_prior`).
    """

    AUTO = "auto"
    SYNTHESIS = "synthesis"
    PROCEDURAL = "procedural"
    KEGNET = "kegnet"
    UNIFORM = "uniform"
    GAUSSIAN = "gaussian"
    STROKES = "strokes"
    NONE = "none"


MIN_BUDGET_S = 10.0
# One input may hold at most this many values (a 3 x 2048 x 2048 image fits): each dimension's own
# bound let [3, 65536, 65536] through, and a run would then try to allocate hundreds of GB.
MAX_INPUT_VALUES = 2**24
MAX_BUDGET_S = 7 * 24 * 3600.0


class PresetName(StrEnum):
    QUICK = "quick"
    DEFAULT = "default"
    PAPER = "paper"


class Task(StrEnum):
    COMPRESS = "compress"
    EXTRACT = "extract"
    QUANTIZE = "quantize"  # int8 of the teacher itself, calibrated on the prior's samples


class Quantize(StrEnum):
    """What the student's weights and activations are stored as, besides the float model."""

    NONE = "none"
    INT8 = "int8"


class Stage(StrEnum):
    """The stages of a run, in the order they run (extract jobs skip compressing and distilling)."""

    VALIDATING = "validating"
    EXTRACTING = "extracting"
    COMPRESSING = "compressing"
    DISTILLING = "distilling"
    EXPORTING = "exporting"


def _no_bool(value: Any) -> Any:
    """JSON ``true`` is not a number: refuse it where a number is expected."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number here")
    return value


_RANK_MAP = "{layer: [out_rank, in_rank]}"
Fraction = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=1)]


def _budget_seconds(value: Any) -> Any:
    """A budget's bounds said in seconds (the constraint's own words named only a number)."""
    value = _no_bool(value)
    if isinstance(value, (int, float)) and not MIN_BUDGET_S <= value <= MAX_BUDGET_S:
        raise ValueError(
            f"a budget is {MIN_BUDGET_S:g} seconds to {MAX_BUDGET_S / 86400:g} days, got {value:g} seconds"
        )
    return value


Seconds = Annotated[
    float, BeforeValidator(_budget_seconds), Field(ge=MIN_BUDGET_S, le=MAX_BUDGET_S, allow_inf_nan=False)
]
RankPair = tuple[Annotated[StrictInt, Field(gt=0)], Annotated[StrictInt, Field(gt=0)]]
OverrideValue = StrictInt | float | bool | None | list[StrictInt]


class CompressionSpec(BaseModel):
    """What to do with an uploaded classifier. Only ``input_shape`` is required."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    input_shape: tuple[Annotated[StrictInt, Field(gt=0, le=65_536)], ...] = Field(
        ...,
        description="C, H, W of one image, C, L of a signal (Conv1d models), or D of a feature vector",
        examples=[[1, 32, 32]],
    )
    layers: tuple[Annotated[str, Field(min_length=1, max_length=200)], ...] | None = Field(
        None,
        min_length=1,
        description="module paths to factorise; null: every layer that gets smaller except the first "
        "and the output layer (with ranks 'auto' the first joins them where the others cannot make the "
        "model 2x smaller)",
    )
    ranks: Literal["auto", "evbmf"] | Fraction | dict[str, RankPair] = Field(
        "auto",
        description="'auto' (the whole model 2x smaller, ranks spread by weight energy, or in the default "
        "preset by the energy inputs synthesised against its BatchNorm show in each layer), 'evbmf' "
        "(Bayesian rank selection on the weights alone), a keep fraction in (0, 1], or "
        "{layer: [out_rank, in_rank]}",
    )
    target_ratio: Annotated[float, BeforeValidator(_no_bool), Field(gt=1, allow_inf_nan=False)] | None = (
        Field(None, description="choose ranks so the whole model shrinks at least this much")
    )
    prior: Prior = Field(
        Prior.AUTO,
        description="training samples: auto (synthesis for a teacher with BatchNorm; otherwise "
        "procedural images, or N(0,1) for vectors), synthesis (inputs optimised against the teacher, "
        "matching its BatchNorm statistics where it has any), procedural (pen strokes, dead leaves and "
        "1/f noise), kegnet (KegNet generators, with random strokes for images in the default preset), "
        "U(-1,1), N(0,1), random pen strokes alone, or none (Tucker only)",
    )
    preset: PresetName = PresetName.DEFAULT
    seed: Annotated[StrictInt, Field(ge=0, lt=2**31)] = 0
    task: Task = Field(
        Task.COMPRESS,
        description="'extract' trains the generators only; 'quantize' makes an int8 copy of the teacher "
        "itself (no Tucker), calibrated on the prior's samples",
    )
    quantize: Quantize = Field(
        Quantize.NONE,
        description="int8: also an int8 student (static post-training quantisation, calibrated on the "
        "run's generated samples), served as model_int8",
    )
    budget_s: Seconds | None = Field(
        None,
        description="seconds the whole job may take on its device: the recipe's steps are scaled to "
        "end within it, from a short measured warm-up; null runs the preset as it is",
        examples=[900],
    )
    overrides: dict[str, OverrideValue] = Field(
        default_factory=dict,
        max_length=32,
        description="recipe settings over the preset's, e.g. {'distill.steps': 500}",
        examples=[{"distill.steps": 500}],
    )

    @field_validator("input_shape")
    @classmethod
    def _image_or_vector(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) not in (1, 2, 3):
            raise ValueError(
                f"must be [C, H, W] (images), [C, L] (signals) or [D] (vectors), got {list(shape)}"
            )
        if math.prod(shape) > MAX_INPUT_VALUES:
            raise ValueError(
                f"one input of {list(shape)} holds {math.prod(shape):,} values; at most "
                f"{MAX_INPUT_VALUES:,} are accepted (3 x 2048 x 2048 fits)"
            )
        return shape

    @field_validator("ranks", mode="before")
    @classmethod
    def _ranks_by_kind(cls, ranks: Any) -> Any:
        """One clear message for each kind of bad ``ranks`` (a union's first error named only
        the first kind it tried: "Input should be 'auto' or 'evbmf'" for any mistake)."""
        if isinstance(ranks, str):
            if ranks not in ("auto", "evbmf"):
                raise ValueError(
                    f"must be 'auto', 'evbmf', a keep fraction in (0, 1] or {_RANK_MAP}, got {ranks!r}"
                )
        elif isinstance(ranks, (int, float)) and not isinstance(ranks, bool):
            if not 0 < ranks <= 1:  # NaN fails this too
                raise ValueError(
                    f"a keep fraction must be in (0, 1], got {ranks}; name ranks per layer as {_RANK_MAP}"
                )
        elif isinstance(ranks, dict):
            if not ranks:
                raise ValueError("explicit ranks need at least one layer")
            for layer, pair in ranks.items():
                if not isinstance(layer, str) or not layer:
                    raise ValueError(f"a layer name must be a non-empty module path, got {layer!r}")
                if (
                    not isinstance(pair, (list, tuple))
                    or len(pair) != 2
                    or not all(
                        isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 for rank in pair
                    )
                ):
                    raise ValueError(
                        f"ranks for {layer!r} must be [out_rank, in_rank], two positive integers, "
                        f"got {pair!r}"
                    )
        else:
            raise ValueError(
                f"must be 'auto', 'evbmf', a keep fraction in (0, 1] or {_RANK_MAP}, got {ranks!r}"
            )
        return ranks

    @model_validator(mode="before")
    @classmethod
    def _quantize_jobs_are_int8(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("task") in (Task.QUANTIZE, "quantize")
            and "quantize" not in data
        ):
            return {**data, "quantize": Quantize.INT8}
        return data

    @model_validator(mode="after")
    def _fits(self) -> CompressionSpec:
        # Imported here: the registry names which priors need images.
        if self.prior is Prior.STROKES and len(self.input_shape) != 3:
            raise SpecError("prior 'strokes' draws images: it needs input_shape [C, H, W]", field="prior")
        if self.prior is Prior.PROCEDURAL and len(self.input_shape) == 1:
            raise SpecError(
                "prior 'procedural' draws images or signals: it needs input_shape [C, H, W] or [C, L]",
                field="prior",
            )
        if self.quantize is not Quantize.NONE and self.task is Task.EXTRACT:
            raise SpecError("quantize applies to compress and quantize jobs, not extract", field="quantize")
        if self.task is not Task.COMPRESS:
            job = f"an {self.task.value} job" if self.task is Task.EXTRACT else f"a {self.task.value} job"
            for name, unset in (
                ("layers", self.layers is None),
                ("ranks", self.ranks == "auto"),
                ("target_ratio", self.target_ratio is None),
            ):
                if not unset:
                    raise SpecError(f"{job} factorises no layer: drop {name}", field=name)
        if self.task is Task.EXTRACT and self.prior not in (Prior.AUTO, Prior.KEGNET):
            raise SpecError(
                f"an extract job trains KegNet generators whatever the prior: drop prior "
                f"{self.prior.value!r} (or leave it 'auto')",
                field="prior",
            )
        if self.task is Task.QUANTIZE and self.prior is Prior.NONE:
            raise SpecError(
                "a quantize job calibrates on the prior's samples, and prior 'none' draws none",
                field="prior",
            )
        if self.target_ratio is not None and self.ranks != "auto":
            raise SpecError(
                f"target_ratio chooses the ranks itself (one energy level for all layers): "
                f"leave ranks at 'auto' or drop target_ratio, got ranks {self.ranks!r}",
                field="target_ratio",
            )
        if self.task is Task.QUANTIZE and self.quantize is Quantize.NONE:
            raise SpecError("a quantize job makes an int8 model: quantize must be 'int8'", field="quantize")
        try:
            recipe = self.recipe()
        except (ValueError, TypeError) as exc:
            raise SpecError(str(exc), field="overrides") from exc
        if self.prior is Prior.SYNTHESIS and recipe.synthesis.samples <= 0:
            raise SpecError(
                f"prior 'synthesis' trains on synthesised inputs, and preset '{self.preset.value}' "
                "makes none (synthesis.samples 0): set overrides synthesis.samples or use preset 'default'",
                field="prior",
            )
        return self

    def recipe(self) -> Recipe:
        """The preset's recipe with the ``overrides`` applied."""
        return get_recipe(self.preset.value, self.overrides)

    def to_json_dict(self) -> dict[str, Any]:
        """The spec as the JSON object the API stores and returns."""
        return self.model_dump(mode="json")


def parse_spec(data: Any) -> CompressionSpec:
    """A spec from its JSON form (dict), raising :class:`SpecError` that names the first bad field."""
    if not isinstance(data, dict):
        raise SpecError("the spec must be a JSON object", field=None)
    try:
        return CompressionSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(exc) from None


def parse_spec_json(text: str | bytes) -> CompressionSpec:
    """A spec from JSON text, raising :class:`SpecError` that names the first bad field."""
    try:
        return CompressionSpec.model_validate_json(text)
    except ValidationError as exc:
        raise spec_error(exc) from None


def spec_error(exc: ValidationError) -> SpecError:
    """The first problem of a validation error as a :class:`SpecError` with its field path."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):
        return cause
    parts = [str(part) for part in first["loc"]]
    field = parts[0] if parts else None  # the spec's own field; the rest goes into the message
    inner = [part for part in parts[1:] if not _is_type_tag(part)]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "is required" + (", e.g. [1, 32, 32]" if field == "input_shape" else "")
    elif inner:
        message = f"at {'.'.join(inner)}: {message}"
    return SpecError(message, field=field)


def _is_type_tag(part: str) -> bool:
    return (
        part in ("float", "int", "str", "bool", "none", "list[int]")
        or "[" in part
        or part.startswith(("literal", "function-", "constrained"))
    )
