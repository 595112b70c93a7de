"""A run that stops mid-way and is started again with its checkpoints ends with the student a
straight run gives, bit for bit on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kegnet_core.pipeline import run
from kegnet_core.progress import ProgressEvent
from kegnet_core.spec import CompressionSpec


class Crash(Exception):
    """Stands in for a worker killed mid-job."""


def _stop_at(stage: str, step: int):
    def progress(event: ProgressEvent) -> None:
        if event.stage == stage and event.step >= step:
            raise Crash(f"{stage} {event.step}")

    return progress


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.jit.load(str(path)).state_dict()


SMALL = {"synthesis.samples": 192, "synthesis.steps": 15, "synthesis.batch_size": 64, "distill.steps": 120}


@pytest.mark.parametrize(
    ("prior", "stage", "step"),
    [
        ("auto", "distilling", 70),  # mid-distillation: from the check at step 60
        ("auto", "extracting", 25),  # mid-synthesis: from the first finished batch
        ("kegnet", "extracting", 45),  # mid-extraction with generators: from the first generator
    ],
)
def test_a_stopped_run_resumes_to_the_same_student(tiny_cnn, tmp_path, prior, stage, step):
    overrides = {**SMALL, "extraction.generators": 2} if prior == "kegnet" else SMALL
    spec = CompressionSpec(input_shape=(1, 8, 8), preset="quick", prior=prior, seed=5, overrides=overrides)
    straight = run(tiny_cnn, spec, tmp_path / "straight", measure_latency=False, device="cpu")

    saved = tmp_path / "checkpoints"
    with pytest.raises(Crash):
        run(
            tiny_cnn,
            spec,
            tmp_path / "first",
            measure_latency=False,
            device="cpu",
            checkpoints=saved,
            progress=_stop_at(stage, step),
        )
    assert any(saved.iterdir()), "nothing was saved before the stop"
    steps: list[ProgressEvent] = []
    resumed = run(
        tiny_cnn,
        spec,
        tmp_path / "second",
        measure_latency=False,
        device="cpu",
        checkpoints=saved,
        progress=steps.append,
    )

    first, second = (
        _weights(tmp_path / "straight" / "student.pt"),
        _weights(tmp_path / "second" / "student.pt"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert resumed.history["distillation"] == straight.history["distillation"]
    if stage == "distilling":
        assert resumed.history["resumed_distillation_at"] == 60
        # Distillation picked up after the check at step 60 rather than from step 1.
        assert min(e.step for e in steps if e.stage == "distilling" and e.step > 0) == 61
    else:
        assert resumed.history.get("resumed") is True


def test_a_checkpoint_of_another_run_is_ignored(tiny_cnn, tmp_path):
    spec = CompressionSpec(input_shape=(1, 8, 8), preset="quick", seed=1, overrides=SMALL)
    saved = tmp_path / "checkpoints"
    with pytest.raises(Crash):
        run(
            tiny_cnn,
            spec,
            tmp_path / "a",
            measure_latency=False,
            checkpoints=saved,
            progress=_stop_at("distilling", 70),
        )
    other = CompressionSpec(input_shape=(1, 8, 8), preset="quick", seed=2, overrides=SMALL)
    report = run(tiny_cnn, other, tmp_path / "b", measure_latency=False, checkpoints=saved)
    assert "resumed_distillation_at" not in report.history and "resumed" not in report.history
