"""Fine-tune the compressed student to match the teacher on generated samples.

The student learns the teacher's softened outputs (KL divergence) on inputs
from a :class:`~kegnet_core.sampling.SampleSource`.  No labelled data exists,
so the student kept is the one closest to the teacher (lowest KL divergence)
on a held-out set of generated samples.  Top-1 agreement is reported too, but
it saturates at 100% early on generated samples, so it cannot choose.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kegnet_core.config import DistillConfig
from kegnet_core.losses import distillation_loss
from kegnet_core.memory import chunks, fit_chunk, free_bytes, per_sample_bytes
from kegnet_core.progress import ProgressCallback, ProgressEvent, ignore_progress
from kegnet_core.sources import PoolSource, SampleSource

# A fixed pool's teacher outputs (logits and matched layers) are computed once
# and kept when they take at most this many bytes; otherwise every step runs
# the teacher again.
CACHE_BYTES = 2 * 1024**3


@dataclass
class DistillResult:
    """Loss history (one record per check) and the kept check's scores."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_divergence: float = math.inf
    best_agreement: float = 0.0
    resumed_from: int = 0  # the step a checkpoint resumed this run at (0: from the start)
    chunk: int = 0  # inputs per forward pass where a batch did not fit in memory at once (0: it did)
    stopped_at_deadline: int = 0  # the step a time budget's deadline stopped the run at (0: none)


@torch.no_grad()
def agreement(
    student: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    teacher_classes: torch.Tensor,
    batch: int = 512,
) -> float:
    """Share of ``inputs`` on which the student's top-1 class is the teacher's."""
    hits = 0
    for start in range(0, len(inputs), batch):
        hits += int(
            (student(inputs[start : start + batch]).argmax(1) == teacher_classes[start : start + batch]).sum()
        )
    return hits / max(len(inputs), 1)


@torch.no_grad()
def divergence(student: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 512) -> float:
    """Mean KL(teacher || student) over ``inputs``, given the teacher's logits."""
    total = 0.0
    for start in range(0, len(inputs), batch):
        logits = student(inputs[start : start + batch])
        total += float(distillation_loss(logits, targets[start : start + batch])) * len(logits)
    return total / max(len(inputs), 1)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, inputs: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([teacher(inputs[start : start + batch]) for start in range(0, len(inputs), batch)])


class _LayerOutputs:
    """Records the outputs of named submodules during a forward pass."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            model.get_submodule(name).register_forward_hook(self._recorder(name)) for name in names
        ]

    def _recorder(self, name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return record

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def feature_loss(
    student_outputs: dict[str, torch.Tensor],
    teacher_outputs: dict[str, torch.Tensor],
    scales: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean squared error of each compressed layer's output, relative to its variance.

    The factorised layers keep their names, so the student's ``conv3`` output
    can be held to the teacher's ``conv3`` output: a far richer signal per
    sample than the ten class scores.  ``scales`` (the variances) are taken from the targets
    unless given (a batch seen in chunks gives the whole batch's).
    """
    losses = []
    for name, target in teacher_outputs.items():
        scale = target.detach().var().clamp_min(1e-8) if scales is None else scales[name]
        losses.append(torch.nn.functional.mse_loss(student_outputs[name], target.detach()) / scale)
    return torch.stack(losses).mean()


@dataclass
class TeacherCache:
    """The teacher's logits and matched layers' outputs on every input of a fixed pool.

    Distilling from a pool (synthesised inputs) sees each input many times
    over; computing the teacher's answers once saves its forward pass at every
    step (a third of a ResNet14 run's distillation time).
    """

    logits: torch.Tensor  # (pool, classes)
    features: dict[str, torch.Tensor]  # layer name -> (pool, *output shape)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.logits[index], {name: output[index] for name, output in self.features.items()}


@torch.no_grad()
def cache_teacher(
    teacher: nn.Module, pool: torch.Tensor, taps: _LayerOutputs, *, limit: int, batch: int = 256
) -> TeacherCache | None:
    """The teacher's outputs on all of ``pool`` (``taps`` records the layers), or None where
    they would take more than ``limit`` bytes."""
    teacher(pool[:1])
    per_input = sum(output[0].numel() for output in taps.outputs.values()) * pool.element_size()
    if len(pool) * per_input > limit:
        return None
    logits: list[torch.Tensor] = []
    features: dict[str, list[torch.Tensor]] = {name: [] for name in taps.outputs}
    for start in range(0, len(pool), batch):
        logits.append(teacher(pool[start : start + batch]))
        for name, output in taps.outputs.items():
            features[name].append(output.detach())
    return TeacherCache(torch.cat(logits), {name: torch.cat(parts) for name, parts in features.items()})


def batch_backward(
    student: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: DistillConfig,
    *,
    chunk: int,
    taps: _LayerOutputs | None = None,
    teacher_features: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Add to the student's gradients those of the batch's distillation loss; the loss, detached.

    The loss is KL to the teacher's logits (a mean over the batch) plus, with ``taps`` and
    ``teacher_features``, the matched layers' error relative to their variance over the
    batch.  In chunks of ``chunk`` inputs each chunk's terms are weighed by its share of the
    batch and the variances are the whole batch's, so the gradients add up to the same.
    """
    parts = chunks(len(inputs), chunk)
    if len(parts) == 1:
        loss = distillation_loss(student(inputs), targets, config.temperature)
        if taps is not None and teacher_features is not None:
            loss = loss + config.feature_weight * feature_loss(taps.outputs, teacher_features)
        loss.backward()
        return loss.detach()
    scales = (
        {name: target.detach().var().clamp_min(1e-8) for name, target in teacher_features.items()}
        if teacher_features is not None
        else None
    )
    total = inputs.new_zeros(())
    for part in parts:
        share = (part.stop - part.start) / len(inputs)
        loss = distillation_loss(student(inputs[part]), targets[part], config.temperature)
        if taps is not None and teacher_features is not None:
            chunk_features = {name: target[part] for name, target in teacher_features.items()}
            loss = loss + config.feature_weight * feature_loss(taps.outputs, chunk_features, scales)
        (loss * share).backward()
        total = total + loss.detach() * share
    return total


def _set_cosine_rate(optimizer: torch.optim.Optimizer, config: DistillConfig, fraction: float) -> None:
    """The learning rate ``fraction`` of the way along the run's cosine (constant without
    ``final_learning_rate``)."""
    if config.final_learning_rate is None:
        return
    low, high = config.final_learning_rate, config.learning_rate
    for group in optimizer.param_groups:
        group["lr"] = low + (high - low) * (1 + math.cos(math.pi * fraction)) / 2


def distill_student(
    student: nn.Module,
    teacher: nn.Module,
    source: SampleSource,
    config: DistillConfig,
    *,
    rng: torch.Generator,
    matched_layers: Sequence[str] = (),
    progress: ProgressCallback = ignore_progress,
    resume: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
    chunk: int | None = None,
) -> DistillResult:
    """Train ``student`` in place; on return it holds its best weights.

    With ``config.feature_weight`` > 0, the outputs of ``matched_layers``
    (module paths present in both models) are matched too.  At every check
    ``on_checkpoint`` gets the whole state of the run; given back as
    ``resume`` (with ``rng`` fresh from the same seed), the run goes on from
    there exactly as it would have.

    With a ``deadline`` (a ``time.perf_counter()`` value: a time budget's), the run is timed:
    its learning rate follows the cosine over the time left rather than over the steps, it
    checks the student once more and stops at the deadline, and ``config.steps`` is only the
    most it may take; progress totals are extrapolated from the time used.

    A batch larger than the device's free memory holds (or than ``chunk``) goes through the
    student in chunks whose gradients add up to the whole batch's (:func:`batch_backward`).
    """
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    trainable = []
    for parameter in student.parameters():
        parameter.requires_grad_(parameter.is_floating_point())
        if parameter.is_floating_point():
            trainable.append(parameter)
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    # Cosine decay to ``final_learning_rate`` over the run (None: a constant rate).
    timed = deadline is not None
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(config.steps - 1, 1), eta_min=config.final_learning_rate
        )
        if config.final_learning_rate is not None and not timed
        else None
    )

    held_out = source.sample(config.eval_samples, rng)
    held_out_logits = teacher_logits(teacher, held_out)
    held_out_classes = held_out_logits.argmax(1)
    pool = pool_logits = None
    if config.pool_batches:
        pool = source.sample(config.pool_batches * config.batch_size, rng)
        pool_logits = teacher_logits(teacher, pool)

    use_features = config.feature_weight > 0 and bool(matched_layers) and pool is None
    student_taps = _LayerOutputs(student, matched_layers if use_features else ())
    teacher_taps = _LayerOutputs(teacher, matched_layers if use_features else ())
    cache = (
        cache_teacher(teacher, source.pool, teacher_taps, limit=CACHE_BYTES)
        if isinstance(source, PoolSource) and pool is None
        else None
    )
    result = DistillResult()
    if chunk is None:
        shape, device = held_out.shape[1:], held_out.device
        chunk = fit_chunk(
            config.batch_size,
            per_sample_bytes(lambda count: student(torch.zeros(count, *shape, device=device))),
            free_bytes(device),
        )
    if chunk < config.batch_size:
        result.chunk = chunk
    best_state = copy.deepcopy(student.state_dict())
    result.best_divergence = divergence(student, held_out, held_out_logits)
    result.best_agreement = agreement(student, held_out, held_out_classes)
    checks_without_gain = 0
    running = 0.0
    order = torch.empty(0, dtype=torch.long)
    start = 0
    if resume is not None:
        start = int(resume["done"])
        result.resumed_from = start
        student.load_state_dict(resume["student"])
        optimizer.load_state_dict(resume["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(resume["schedule"])
        rng.set_state(resume["rng"])
        best_state = resume["best_state"]
        result.history = list(resume["history"])
        result.best_step = int(resume["best_step"])
        result.best_divergence = float(resume["best_divergence"])
        result.best_agreement = float(resume["best_agreement"])
        checks_without_gain = int(resume["checks_without_gain"])
        order = resume["order"]
    began = time.perf_counter()
    for step in range(start, config.steps):
        if deadline is not None:
            used = (time.perf_counter() - began) / max(deadline - began, 1e-9)
            _set_cosine_rate(optimizer, config, min(used, 1.0))
        rate = optimizer.param_groups[0]["lr"]
        if pool is not None and pool_logits is not None:
            position = (step * config.batch_size) % len(pool)
            if position == 0:
                order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(step + 1))
            index = order[position : position + config.batch_size].to(pool.device)
            inputs, targets = pool[index], pool_logits[index]
        elif cache is not None and isinstance(source, PoolSource):
            index = source.indices(config.batch_size, rng)
            inputs = source.pool[index]
            targets, teacher_features = cache.take(index)
        else:
            inputs = source.sample(config.batch_size, rng)
            with torch.no_grad():
                targets = teacher(inputs)
            teacher_features = teacher_taps.outputs
        optimizer.zero_grad(set_to_none=True)
        loss = batch_backward(
            student,
            inputs,
            targets,
            config,
            chunk=chunk,
            taps=student_taps if use_features else None,
            teacher_features=teacher_features if use_features else None,
        )
        optimizer.step()
        if schedule is not None:
            schedule.step()
        running += float(loss.detach())
        done = step + 1
        now = time.perf_counter()
        out_of_time = deadline is not None and now > deadline
        total = config.steps
        if deadline is not None:  # the steps the time left allows at the pace so far
            total = min(config.steps, max(done, round(done * (deadline - began) / max(now - began, 1e-9))))
        if done % config.eval_every == 0 or done == config.steps or out_of_time:
            count = (step % config.eval_every) + 1
            held_out_kl = divergence(student, held_out, held_out_logits)
            record = {
                "step": done,
                "loss": running / count,
                "held_out_kl": held_out_kl,
                "agreement": agreement(student, held_out, held_out_classes),
                "lr": rate,
            }
            running = 0.0
            result.history.append(record)
            if held_out_kl < result.best_divergence:
                result.best_divergence, result.best_step = held_out_kl, done
                result.best_agreement = record["agreement"]
                best_state = copy.deepcopy(student.state_dict())
                checks_without_gain = 0
            else:
                checks_without_gain += 1
            if on_checkpoint is not None:
                on_checkpoint(
                    {
                        "done": done,
                        "student": copy.deepcopy(student.state_dict()),
                        "optimizer": copy.deepcopy(optimizer.state_dict()),
                        "schedule": schedule.state_dict() if schedule is not None else None,
                        "rng": rng.get_state(),
                        "best_state": best_state,
                        "history": result.history,
                        "best_step": result.best_step,
                        "best_divergence": result.best_divergence,
                        "best_agreement": result.best_agreement,
                        "checks_without_gain": checks_without_gain,
                        "order": order,
                    }
                )
            progress(ProgressEvent("distilling", done, total, dict(record)))
            if out_of_time:
                result.stopped_at_deadline = done
                break
            if (
                config.patience_evals is not None
                and done >= config.min_steps
                and checks_without_gain >= config.patience_evals
            ):
                break
        else:
            progress(ProgressEvent("distilling", done, total, {}))
    student_taps.close()
    teacher_taps.close()
    student.load_state_dict(best_state)
    return result
