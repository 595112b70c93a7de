"""Deliver models as TorchScript that loads anywhere with plain ``torch.jit.load``.

The student is scripted (not traced), so the batch size stays free and the
weights stay parameters that can be fine-tuned further.  Every file is
written to a temporary name, loaded back and compared with the model it came
from, and only then renamed into place.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from kegnet_core.errors import UnsupportedModelError


class GeneratorModule(nn.Module):
    """A trained generator as users receive it: G(y, z) -> x, eval mode.

    ``n_classes`` and ``noise_dim`` ride along as attributes so a user can
    build y and z without knowing the run's settings.
    """

    def __init__(self, generator: nn.Module, n_classes: int, noise_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.n_classes = n_classes
        self.noise_dim = noise_dim

    def forward(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(labels, noise)


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # GraphModule's attributes trigger a harmless TorchScript annotation warning.
        warnings.simplefilter("ignore", UserWarning)
        return torch.jit.script(module)


def atomic_save(module: torch.jit.ScriptModule, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    module.save(str(temporary))
    os.replace(temporary, path)


def save_student(student: nn.Module, path: str | Path, input_shape: Sequence[int]) -> torch.jit.ScriptModule:
    """Script ``student`` (a copy, on the CPU), check it, and save it atomically."""
    path = Path(path)
    model = copy.deepcopy(student).cpu().eval()
    try:
        scripted = _script(model)
    except Exception as exc:
        raise UnsupportedModelError(f"the compressed model could not be scripted: {exc}") from exc
    atomic_save(scripted, path)
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        for batch in (1, 5):
            x = torch.randn(batch, *input_shape)
            expected, actual = model(x), loaded(x)
            if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-5):
                path.unlink(missing_ok=True)
                raise UnsupportedModelError("the saved student does not reproduce the trained one")
    return loaded


def save_generator(generator: nn.Module, path: str | Path, n_classes: int, noise_dim: int) -> Path:
    """Script one trained generator as a standalone G(y, z) -> x and save it."""
    path = Path(path)
    module = GeneratorModule(copy.deepcopy(generator).cpu().eval(), n_classes, noise_dim).eval()
    atomic_save(_script(module), path)
    return path


def optimised_for_inference(saved: Path, input_shape: Sequence[int]) -> tuple[torch.jit.ScriptModule, float]:
    """The TorchScript at ``saved`` as ``torch.jit.optimize_for_inference`` makes it at load time
    (frozen, BatchNorm folded into the convolutions, oneDNN layouts), and the largest output
    difference from the file as saved.

    That form cannot be saved (its oneDNN constants do not serialise), so the report measures it
    and says how to get it; it has no parameters left (docs/benchmarks.md, "Student latency")."""
    reference = torch.jit.load(str(saved), map_location="cpu").eval()
    try:
        optimised = torch.jit.optimize_for_inference(torch.jit.load(str(saved), map_location="cpu").eval())
        difference = 0.0
        with torch.no_grad():
            for batch in (1, 5, 64):
                x = torch.randn(batch, *input_shape)
                difference = max(difference, float((optimised(x) - reference(x)).abs().max()))
    except Exception as exc:
        raise UnsupportedModelError(f"the model could not be optimised for inference: {exc}") from exc
    return optimised, difference
