"""How many samples fit at once: batches sized to the device's free memory.

The recipe's batch sizes (256 synthesised inputs optimised together, 128
per distillation step) were chosen for what they do to the result, not for
a device: at 3x224x224 a ResNet-18's activations for one input take tens of
megabytes, so 256 of them would not fit on a small GPU or a CPU box.  Where a
batch does not fit, it is processed in chunks that do and the gradients
are summed (``synthesis.py``, ``distill.py``): the recipe and its result stay
the same, only slower.  One input's memory is measured, not guessed: the
tensors autograd saves for the backward pass during one forward pass of two
inputs and of one (their difference is one input's share; the weights and
whatever else does not grow with the batch cancel out).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

# The share of the free memory a batch may plan to use: the rest is for the
# backward pass's temporaries, the optimiser, caches and other processes.
MEMORY_SHARE = 0.4

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, where there is one."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        used = int((_CGROUP / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(int(limit) - used, 0)


def _meminfo_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_bytes(device: torch.device) -> int | None:
    """Memory free for this process on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    readings = [value for value in (_meminfo_available(), _cgroup_free()) if value is not None]
    if not readings and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            readings.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(readings) if readings else None


def saved_bytes(forward: Callable[[int], object], count: int) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward(count)`` runs."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(count)
    return total


def per_sample_bytes(forward: Callable[[int], object]) -> int:
    """One input's share of what ``forward`` (run on that many inputs) keeps for backward."""
    one = saved_bytes(forward, 1)
    two = saved_bytes(forward, 2)
    return max(two - one, 1)


def fit_chunk(batch: int, sample_bytes: int, free: int | None, share: float = MEMORY_SHARE) -> int:
    """The most of ``batch`` inputs to run at once when each keeps ``sample_bytes``
    (``batch`` itself where memory cannot be read or it fits; never below 1)."""
    if free is None:
        return batch
    return max(1, min(batch, int(free * share) // max(sample_bytes, 1)))


def chunks(count: int, chunk: int) -> list[slice]:
    """``range(count)`` cut into slices of at most ``chunk``."""
    return [slice(start, min(start + chunk, count)) for start in range(0, count, max(chunk, 1))]
