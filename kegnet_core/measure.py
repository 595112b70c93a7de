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
    repeats: int = 15,
    channels_last: bool = False,
) -> dict[str, tuple[float, float]]:
    """Each named layer's CPU time in milliseconds, in the teacher and in the student (the
    fastest of ``repeats``, run in turn, after warm-up), on the input the teacher feeds that
    layer at ``batch_size``;
    with ``channels_last``, layers and 4-D inputs in that layout (as the student is saved)."""
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
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for name in names:
        x = inputs[name]
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dense, factorised = (
            copy.deepcopy(model.get_submodule(name)).cpu().eval().to(memory_format=layout)  # type: ignore[call-overload]
            for model in (teacher, student)
        )
        before, after = _paired_fastest_ms(dense, factorised, x, repeats, warm_ups=3)
        timed[name] = (round(before, 4), round(after, 4))
    return timed


def _paired_fastest_ms(
    first: nn.Module, second: nn.Module, x: torch.Tensor, repeats: int, *, warm_ups: int
) -> tuple[float, float]:
    """The fastest of ``repeats`` runs of each module on ``x``, in ms, the two run in turn so that
    a change in the machine's load falls on both alike (the fastest run is the one least
    disturbed by other work; a comparison, not a throughput)."""
    for _ in range(warm_ups):
        first(x)
        second(x)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for module, timed in zip((first, second), times, strict=True):
            start = time.perf_counter()
            module(x)
            timed.append((time.perf_counter() - start) * 1000)
    return min(times[0]), min(times[1])


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
