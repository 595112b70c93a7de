"""Checkpoints of a run, so a job that lost its worker resumes where it stopped.

A run given a checkpoint folder writes there after each stage and every
check of its long loops: the synthesised inputs batch by batch, each trained
generator, and the student's distillation every ``eval_every`` steps (model,
optimizer, schedule, random state, best student so far).  Run again with the
same folder, it picks up from the last checkpoint and, on the CPU, ends with
the student a straight run gives, bit for bit.  The worker keeps the folder
in the job's store prefix between attempts.

Files are written whole and renamed into place, and read with
``torch.load(weights_only=True)``: tensors, numbers, strings and lists only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kegnet_core.extraction import TrainedGenerator
from kegnet_core.generators import build_generator

EXTRACTION = "extraction.pt"
DISTILLATION = "distillation.pt"
PLAN = "plan.pt"  # the layers kept dense for speed: timings differ from one attempt to the next
FILES = (PLAN, EXTRACTION, DISTILLATION)


@dataclass(frozen=True)
class Checkpoints:
    """A folder of checkpoints for one run; ``key`` names the run (model and spec), and a
    checkpoint of another run is ignored."""

    folder: Path
    key: str

    @classmethod
    def for_run(cls, folder: Path, model_path: Path, spec_json: str) -> Checkpoints:
        digest = hashlib.sha256()
        with open(model_path, "rb") as model:
            for chunk in iter(lambda: model.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(spec_json.encode())
        return cls(folder, digest.hexdigest())

    def save(self, name: str, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / name
        temporary = target.with_name(f".{name}.tmp")
        torch.save({"key": self.key, "state": state}, temporary)
        os.replace(temporary, target)

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("key") != self.key:
            return None
        state = saved.get("state")
        return state if isinstance(state, dict) else None


def generator_state(trained: TrainedGenerator) -> dict[str, Any]:
    """A trained generator (with its snapshots) as plain tensors and numbers."""
    return {
        "seed": trained.seed,
        "history": trained.history,
        "state": trained.generator.state_dict(),
        "snapshots": [snapshot.state_dict() for snapshot in trained.snapshots],
    }


def restore_generator(
    state: dict[str, Any],
    input_shape: tuple[int, ...],
    n_classes: int,
    noise_dim: int,
    channels: tuple[int, ...],
    device: torch.device,
) -> TrainedGenerator:
    """The generator :func:`generator_state` saved, in evaluation mode, on ``device``."""

    def build(weights: dict[str, torch.Tensor]) -> nn.Module:
        module = build_generator(input_shape, n_classes, noise_dim, channels)
        module.load_state_dict(weights)
        return module.to(device).eval()

    snapshots = [build(weights).requires_grad_(False) for weights in state["snapshots"]]
    return TrainedGenerator(
        generator=build(state["state"]),
        seed=int(state["seed"]),
        history=list(state["history"]),
        snapshots=snapshots,
    )
