"""Where a run's files land: manifest names in a folder, or named after the model the user named."""

from __future__ import annotations

from pathlib import Path

from kegnet_core import artifacts as files


def test_a_folder_layout_uses_the_manifest_names():
    layout = files.Layout(Path("out"))
    assert layout.path(files.STUDENT_INT8_ONNX.file) == Path("out/student_int8.onnx")
    assert layout.path(files.REPORT.file) == Path("out/report.json")


def test_beside_a_named_student_its_other_forms_take_the_name():
    layout = files.Layout.beside(Path("out/small.pt"))
    named = {
        artifact.file: layout.path(artifact.file).name
        for artifact in (
            files.STUDENT,
            files.STUDENT_INT8,
            files.STUDENT_ONNX,
            files.STUDENT_INT8_ONNX,
            files.REPORT,
        )
    }
    assert named == {
        "student.pt": "small.pt",
        "student_int8.pt": "small_int8.pt",
        "student.onnx": "small.onnx",
        "student_int8.onnx": "small_int8.onnx",
        "report.json": "small_report.json",
    }


def test_a_quantize_job_names_its_int8_model_and_that_models_onnx_form():
    layout = files.Layout(Path("q"), "tiny8", files.STUDENT_INT8.file)
    assert layout.path(files.STUDENT_INT8.file) == Path("q/tiny8.pt")
    assert layout.path(files.STUDENT_INT8_ONNX.file) == Path("q/tiny8.onnx")


def test_every_download_has_its_own_name_and_file():
    assert len({a.file for a in files.DOWNLOADS.values()}) == len(files.DOWNLOADS)
    assert files.DOWNLOADS["model_int8.onnx"] is files.STUDENT_INT8_ONNX
