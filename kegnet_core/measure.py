"""Size and speed figures for the report: parameters, MACs, file size, CPU latency."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

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
    # TorchScript's profiling executor optimises during the first runs: 5 untimed.
    return _median_ms(model, torch.randn(batch_size, *input_shape), repeats, warm_ups=5)


@torch.no_grad()
def layer_latency_ms(
    teacher: nn.Module,
    student: nn.Module,
    names: Sequence[str],
    input_shape: Sequence[int],
    *,
    batch_size: int = 64,
    repeats: int = 10,
) -> dict[str, tuple[float, float]]:
    """Each named layer's CPU time in milliseconds, in the teacher and in the student (median
    of ``repeats`` after warm-up), on the input the teacher feeds that layer at ``batch_size``."""
    device = next(iter(teacher.parameters())).device
    inputs: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Any:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs.setdefault(name, args[0].detach().cpu())

        return record

    hooks = [teacher.get_submodule(name).register_forward_pre_hook(recorder(name)) for name in names]
    try:
        teacher(torch.randn(batch_size, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    timed = {}
    for name in names:
        x = inputs[name]
        before, after = (
            _median_ms(copy.deepcopy(model.get_submodule(name)).cpu().eval(), x, repeats, warm_ups=3)
            for model in (teacher, student)
        )
        timed[name] = (round(before, 4), round(after, 4))
    return timed


def _median_ms(
    module: nn.Module | torch.jit.ScriptModule, x: torch.Tensor, repeats: int, *, warm_ups: int
) -> float:
    """Median wall time of ``module(x)`` over ``repeats`` runs after ``warm_ups`` untimed ones, in ms."""
    for _ in range(warm_ups):
        module(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
