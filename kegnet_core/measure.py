"""Size and speed figures for the report: parameters, MACs, file size, CPU latency."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
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
    """Median wall time of one CPU forward pass, in milliseconds, after warm-up (both capped:
    :data:`TIMING_CAP_S`)."""
    # TorchScript's profiling executor optimises during the first runs: up to 5 untimed.
    return _median_ms(model, torch.randn(batch_size, *input_shape), repeats, warm_ups=5)


@torch.no_grad()
def callable_latency_ms(
    forward: Callable[[torch.Tensor], object], input_shape: Sequence[int], batch_size: int, repeats: int = 20
) -> float:
    """:func:`cpu_latency_ms` of any function of a CPU batch (an ONNX Runtime session's, say)."""
    return _median_ms(forward, torch.randn(batch_size, *input_shape), repeats, warm_ups=5)


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


# A latency figure stops once its runs have taken this many seconds (after at least MIN_RUNS):
# a 224x224 ResNet-18 takes seconds per pass at batch 64 on a CPU, and 25 passes of each of the
# four models a report times would take minutes of the job.  Warm-ups stop as soon (after
# MIN_WARM_UPS: TorchScript's profiling executor optimises during the first two).
TIMING_CAP_S = 2.0
MIN_RUNS = 3
MIN_WARM_UPS = 2


def latency_figure_s(forward_s: float, runs: int = 25) -> float:
    """About what one latency figure of ``runs`` passes (warm-ups included) costs where one pass
    takes ``forward_s``, with the cap (for a time budget's fixed costs)."""
    return min(runs * forward_s, max((MIN_RUNS + MIN_WARM_UPS) * forward_s, 2 * (TIMING_CAP_S + forward_s)))


def measurement_s(forward_s: float, layers: int) -> float:
    """About what the report's CPU latency figures cost where the teacher's pass at batch 64 takes
    ``forward_s`` on the CPU: four whole-model figures (teacher and student, as saved and as
    optimised for inference) at batch 64 and at batch 1 (counted as 1/32 of a batch-64 pass),
    and ``layers`` planned layers, dense and factorised in turn."""
    pair = 2 * forward_s / layers if layers else 0.0  # one layer's dense and factorised run
    whole = 4 * (latency_figure_s(forward_s) + latency_figure_s(forward_s / 32))
    return whole + layers * latency_figure_s(pair, runs=18)


def _warm_up(modules: Sequence[Any], x: torch.Tensor, warm_ups: int, cap_s: float) -> None:
    start = time.perf_counter()
    for done in range(1, warm_ups + 1):
        for module in modules:
            module(x)
        if done >= MIN_WARM_UPS and time.perf_counter() - start >= cap_s:
            return


def _paired_fastest_ms(
    first: nn.Module,
    second: nn.Module,
    x: torch.Tensor,
    repeats: int,
    *,
    warm_ups: int,
    cap_s: float = TIMING_CAP_S,
) -> tuple[float, float]:
    """The fastest of ``repeats`` runs of each module on ``x``, in ms, the two run in turn so that
    a change in the machine's load falls on both alike (the fastest run is the one least
    disturbed by other work; a comparison, not a throughput).  Fewer runs where they pass
    ``cap_s`` seconds (:data:`TIMING_CAP_S`)."""
    _warm_up((first, second), x, warm_ups, cap_s)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for module, timed in zip((first, second), times, strict=True):
            start = time.perf_counter()
            module(x)
            timed.append((time.perf_counter() - start) * 1000)
        if len(times[0]) >= MIN_RUNS and (sum(times[0]) + sum(times[1])) / 1000 >= cap_s:
            break
    return min(times[0]), min(times[1])


def _median_ms(
    module: nn.Module | torch.jit.ScriptModule | Callable[[torch.Tensor], object],
    x: torch.Tensor,
    repeats: int,
    *,
    warm_ups: int,
    cap_s: float = TIMING_CAP_S,
) -> float:
    """Median wall time of ``module(x)`` over ``repeats`` runs after ``warm_ups`` untimed ones, in
    ms; fewer of each where they pass ``cap_s`` seconds (:data:`TIMING_CAP_S`)."""
    _warm_up((module,), x, warm_ups, cap_s)
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        times.append((time.perf_counter() - start) * 1000)
        if len(times) >= MIN_RUNS and sum(times) / 1000 >= cap_s:
            break
    return statistics.median(times)
