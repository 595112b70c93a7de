"""The report of a run: one typed model, written as ``report.json`` and stored on the job row.

The pipeline's stages fill it, the worker stores it, the API returns it in
``JobPublic.report`` and the CLI prints its summary.  Torch-free, so the API
and the CLI read it without loading the core.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LayerReport(_Model):
    """One factorised layer."""

    name: str
    kind: str  # "conv2d", "conv1d" or "linear"
    weight_shape: list[int]
    ranks: list[int]  # [out_rank, in_rank]
    params_before: int
    params_after: int
    latency_ms: list[float] | None = Field(
        None,
        description="[dense, as saved] CPU time of this layer alone at batch 64, on its own input",
    )
    stored_as: str | None = Field(
        None,
        description="how the file holds this layer where not as its three factors: 'first folded', "
        "'last folded' (an outer 1x1 multiplied into the core) or 'dense' (all three multiplied out)",
    )


class Agreement(_Model):
    """Top-1 agreement of student and Tucker-only student with the teacher on fresh samples."""

    student_vs_teacher: float
    tucker_only_vs_teacher: float
    samples: int
    source: str


class Quality(_Model):
    """The report's estimate of how much real accuracy the student loses, or why it cannot tell.

    ``estimated_loss`` is in percentage points of top-1 accuracy; it is null
    when the probe inputs say nothing about real inputs (``trusted`` false,
    ``reason`` says why).
    """

    estimated_loss: float | None
    tucker_only_estimated_loss: float | None
    trusted: bool
    reason: str
    probe_source: str
    probe_samples: int
    class_balance: float = Field(description="normalised entropy of the teacher's classes on the probes")
    details: dict[str, float] = Field(default_factory=dict)


class Latency(_Model):
    before: dict[str, float]
    after: dict[str, float]


class Int8Onnx(_Model):
    """The int8 student as ONNX, or why there is none: the float ONNX file quantised by ONNX
    Runtime on the same calibration samples, in the QDQ form (int8 weights per output channel,
    uint8 activations per tensor) that ONNX Runtime and OpenVINO read."""

    file: str | None = None
    file_size: int | None = None
    float_file_size: int | None = Field(None, description="the float ONNX file it was quantised from")
    agreement_with_student: float | None = Field(
        None, description="top-1 agreement with the float model on the probes"
    )
    agreement: Agreement | None = None
    quality: Quality | None = None
    latency_ms: Latency | None = Field(
        None, description="ONNX Runtime on the CPU: before is the float ONNX file, after the int8 one"
    )
    error: str | None = None


class Int8Student(_Model):
    """The int8 student beside the float one (``quantize: int8``)."""

    file: str
    file_size: int
    parameters: int | None = Field(
        None, description="weights and biases it holds (stored as int8 and float32), in the form quantised"
    )
    macs: int | None = Field(None, description="multiply-accumulates per input, in the form quantised")
    calibration: str = Field(description="the samples its activation ranges were measured on")
    agreement_with_student: float = Field(description="top-1 agreement with the float student on the probes")
    agreement: Agreement
    quality: Quality
    latency_ms: dict[str, float] | None = None
    onnx: Int8Onnx | None = None


class OnnxExport(_Model):
    """The float student as ONNX, checked with ONNX Runtime; or why there is none."""

    file: str | None = None
    max_abs_difference: float | None = Field(
        None, description="largest difference from the TorchScript student's outputs (random inputs)"
    )
    error: str | None = None


class Optimised(_Model):
    """CPU latency of teacher and student loaded with ``torch.jit.optimize_for_inference`` (frozen,
    BatchNorm folded, oneDNN layouts): a form made at load time, not a file; or why there is none."""

    latency_ms: Latency | None = None
    max_abs_difference: float | None = Field(
        None, description="largest difference of the optimised student from the saved one (random inputs)"
    )
    error: str | None = None


class KeptDense(_Model):
    """A layer the plan would have factorised but kept dense, its factorised form being slower."""

    name: str
    ranks: list[int] = Field(description="[out_rank, in_rank] it would have had")
    latency_ms: list[float] = Field(
        description="[dense, factorised] CPU time of the layer alone on its input, channels-last"
    )


class StudentForm(_Model):
    """How the student file is laid out for speed."""

    batch_norms_folded: int = Field(description="BatchNorm layers folded into the convolutions before them")
    memory_format: str = Field(description="channels_last or contiguous: how the 4-D weights are stored")
    parameters: int = Field(description="parameters in the file (folding takes the BatchNorm ones)")
    kept_dense: list[KeptDense] = Field(
        default_factory=list, description="layers left dense because their factorised form was slower"
    )
    factor_forms: dict[str, str] = Field(
        default_factory=dict,
        description="factorised layers stored in a form that computes the same with fewer operations "
        "(layer -> 'first folded', 'last folded' or 'dense')",
    )
    timing_batch: int | None = Field(None, description="the batch the layers were timed at for that choice")
    summary: str = Field("", description="the above in a sentence, for the job page and the CLI")

    def described(self) -> StudentForm:
        """This form with its ``summary`` written from its fields."""
        parts = [
            f"{self.batch_norms_folded} BatchNorm layer{'s' if self.batch_norms_folded != 1 else ''} "
            "folded into the convolutions before them"
            if self.batch_norms_folded
            else "no BatchNorm to fold",
            "weights stored channels-last, which PyTorch's CPU convolutions run faster"
            if self.memory_format == "channels_last"
            else "weights stored as laid out",
        ]
        if self.factor_forms:
            layers = ", ".join(f"{name} {form}" for name, form in self.factor_forms.items())
            parts.append(f"factors multiplied together, the same function in fewer operations: {layers}")
        if self.kept_dense:
            layers = ", ".join(
                f"{layer.name} ({layer.latency_ms[0]:.2f} ms dense, {layer.latency_ms[1]:.2f} ms factorised)"
                for layer in self.kept_dense
            )
            parts.append(
                f"kept dense, as their factorised form ran slower on the CPU at batch {self.timing_batch}: "
                f"{layers}"
            )
        return self.model_copy(update={"summary": "; ".join(parts)})


class Artifacts(_Model):
    """File names of what the run wrote (see :mod:`kegnet_core.artifacts`)."""

    student: str | None = None
    student_int8: str | None = None
    student_onnx: str | None = None
    student_int8_onnx: str | None = None
    report: str | None = None
    generators: list[str] = Field(default_factory=list)
    samples: list[str] = Field(default_factory=list)
    latent_walk: str | None = None


class Report(_Model):
    kegnet_version: str
    created_at: str
    task: str
    spec: dict[str, Any]
    recipe: dict[str, Any]
    device: str
    input_shape: list[int]
    n_classes: int
    params_before: int
    file_size_before: int
    teacher: dict[str, Any] = Field(
        default_factory=dict, description="what the teacher shows: its layers, BatchNorm, classes"
    )
    prior: str | None = Field(None, description="the prior the run used (what 'auto' became)")
    history: dict[str, Any] = Field(default_factory=dict)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    timings_s: dict[str, float] = Field(default_factory=dict)
    # Compress jobs only:
    params_after: int | None = None
    compression_ratio: float | None = None
    layers: list[LayerReport] = Field(default_factory=list)
    ranks: dict[str, list[int]] = Field(default_factory=dict)
    file_size_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    agreement: Agreement | None = None
    quality: Quality | None = None
    latency_ms: Latency | None = None
    int8: Int8Student | None = None
    int8_error: str | None = Field(None, description="why quantize: int8 gave no int8 student")
    onnx: OnnxExport | None = None
    optimised: Optimised | None = None
    student_form: StudentForm | None = None
    latency_note: str | None = Field(
        None, description="where the student is slower than its teacher on the CPU, what to use instead"
    )
    budget: dict[str, Any] | None = Field(
        None,
        description="with budget_s: the measured seconds per step, the scale applied to the recipe's "
        "steps, the seconds planned per stage and the estimated total",
    )

    @field_serializer("history")
    def _finite_history(self, history: dict[str, Any]) -> Any:
        return _finite(history)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=False)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
