"""The artifacts a run writes: their names, files and media types, in one place.

The pipeline writes them, the worker uploads them, the API serves them under
``/v1/jobs/{id}/{name}`` and the CLI places them beside the student the user
named.  All of them import this manifest; none spells a file name itself.
This module imports nothing heavy (the API uses it without torch).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    """One downloadable output: ``name`` in the URL, ``file`` in a run's folder."""

    name: str
    file: str
    media_type: str
    summary: str
    attachment: bool  # served as a download (Content-Disposition), not shown inline


STUDENT = Artifact(
    "model", "student.pt", "application/octet-stream", "the compressed TorchScript model", True
)
STUDENT_INT8 = Artifact(
    "model_int8",
    "student_int8.pt",
    "application/octet-stream",
    "the int8 student (TorchScript, x86 kernels), with quantize: int8",
    True,
)
STUDENT_ONNX = Artifact(
    "model.onnx", "student.onnx", "application/octet-stream", "the float student as ONNX (opset 17)", True
)
STUDENT_INT8_ONNX = Artifact(
    "model_int8.onnx",
    "student_int8.onnx",
    "application/octet-stream",
    "the int8 student as ONNX (QDQ, opset 17), with quantize: int8",
    True,
)
REPORT = Artifact("report", "report.json", "application/json", "the compression report (JSON)", False)
SAMPLES = Artifact("samples.png", "samples.png", "image/png", "generated samples, one row per class", False)
LATENT_WALK = Artifact(
    "latent_walk.png", "latent_walk.png", "image/png", "a latent walk from one class to another", False
)
GENERATORS = Artifact(
    "generators",
    "generators.zip",
    "application/zip",
    "the trained generators (TorchScript, zipped) with their sample grids and the latent walk",
    True,
)

DOWNLOADS: dict[str, Artifact] = {
    artifact.name: artifact
    for artifact in (
        STUDENT,
        STUDENT_INT8,
        STUDENT_ONNX,
        STUDENT_INT8_ONNX,
        REPORT,
        SAMPLES,
        LATENT_WALK,
        GENERATORS,
    )
}


# Beside a student the user named (``small.pt``), its other forms are ``small_int8.pt``,
# ``small.onnx`` and ``small_int8.onnx``, not ``small_student_int8.pt``.
_STUDENT_FORMS = {
    STUDENT.file: ".pt",
    STUDENT_INT8.file: "_int8.pt",
    STUDENT_ONNX.file: ".onnx",
    STUDENT_INT8_ONNX.file: "_int8.onnx",
}
# A quantize job names its int8 model (``small.pt``): that model's ONNX form is ``small.onnx``.
_ONNX_TWIN = {STUDENT.file: STUDENT_ONNX.file, STUDENT_INT8.file: STUDENT_INT8_ONNX.file}


def generator_file(index: int) -> str:
    """The TorchScript file of generator ``index``."""
    return f"generator_{index}.pt"


def samples_file(index: int) -> str:
    """The sample grid of generator ``index`` (the first is the ``samples.png`` download)."""
    return SAMPLES.file if index == 0 else f"samples_{index}.png"


@dataclass(frozen=True)
class Layout:
    """Where a run's files go: a folder of manifest names, or beside a student the user named.

    ``Layout(folder)`` writes ``folder/student.pt``, ``folder/report.json``, ...;
    ``Layout.beside(Path("out/small.pt"))`` writes ``out/small.pt``, ``out/small_int8.pt``,
    ``out/small.onnx``, ``out/small_int8.onnx``, ``out/small_report.json``,
    ``out/small_samples.png``, ...
    """

    folder: Path
    stem: str | None = None
    primary: str = STUDENT.file  # the file that takes the user's name (a quantize job's: the int8 one)

    @classmethod
    def beside(cls, student_path: Path) -> Layout:
        return cls(student_path.parent, student_path.stem)

    def path(self, file: str) -> Path:
        if self.stem is None:
            return self.folder / file
        if file == self.primary:
            return self.folder / f"{self.stem}.pt"
        if file == _ONNX_TWIN.get(self.primary):  # the named model's ONNX form: small.onnx
            return self.folder / f"{self.stem}.onnx"
        if file in _STUDENT_FORMS:
            return self.folder / f"{self.stem}{_STUDENT_FORMS[file]}"
        return self.folder / f"{self.stem}_{file}"


def bundle_generators(
    layout: Layout, generator_files: Iterable[str], extra_files: Iterable[str]
) -> Path | None:
    """Zip the generators with their grids and the latent walk into the ``generators`` download."""
    members = [*generator_files]
    if not members:
        return None
    members += [*extra_files]
    target = layout.path(GENERATORS.file)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as bundle:
        for file in members:
            bundle.write(layout.path(file), file)
    return target
