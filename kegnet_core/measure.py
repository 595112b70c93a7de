"""Size and speed figures for the report: parameters, MACs, file size, CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one input (FLOPs / 2)."""
    device = next(iter(model.parameters())).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape, device=device))
    return counter.get_total_flops() // 2


@torch.no_grad()
def cpu_latency_ms(
    model: nn.Module | torch.jit.ScriptModule, input_shape: Sequence[int], batch_size: int, repeats: int = 20
) -> float:
    """Median wall time of one CPU forward pass, in milliseconds, after warm-up."""
    x = torch.randn(batch_size, *input_shape)
    for _ in range(5):  # TorchScript's profiling executor optimises during the first runs
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
