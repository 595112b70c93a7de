"""Knowledge extraction: train generators that the teacher reads as each class.

One generator and decoder pair is trained per seed with three losses: the
teacher must classify G(y, z) as y (classifier loss), a decoder must recover
z from G(y, z) (decoder loss, so different z give different samples), and
samples of one batch must differ as much as their noise vectors do (diversity
loss).  A zero-weight loss is not computed at all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kegnet_core.config import ExtractionConfig
from kegnet_core.generators import Decoder, build_generator
from kegnet_core.images import png_bytes, sample_grid
from kegnet_core.losses import classifier_loss, decoder_loss, diversity_loss, smoothness_loss
from kegnet_core.progress import ProgressCallback, ProgressEvent, ignore_progress
from kegnet_core.sampling import noise, seeded_init, training_labels
from kegnet_core.tucker import output_layer


@dataclass
class TrainedGenerator:
    """A trained generator (in eval mode), its seed, its per-epoch losses and,
    when the config asks for them, copies of it along its training (eval mode,
    oldest first, the last one equal to ``generator``)."""

    generator: nn.Module
    seed: int
    history: list[dict[str, float]] = field(default_factory=list)
    snapshots: list[nn.Module] = field(default_factory=list)


class _PenultimateFeatures:
    """Holds the input of the teacher's output layer from the last forward pass."""

    def __init__(self, teacher: nn.Module, name: str) -> None:
        self.value = torch.zeros(())
        self.handle = teacher.get_submodule(name).register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.value = inputs[0]

    def close(self) -> None:
        self.handle.remove()


def train_generator(
    teacher: nn.Module,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    config: ExtractionConfig,
    seed: int,
    device: torch.device,
    progress: ProgressCallback = ignore_progress,
    step_offset: int = 0,
    total_steps: int | None = None,
    label: str = "",
    previews: bool = False,
) -> TrainedGenerator:
    """Train one generator against a frozen teacher.

    ``step_offset`` and ``total_steps`` place this generator's steps within a
    longer stage for progress reporting (several generators in a row).
    """
    with seeded_init(seed):
        generator = build_generator(input_shape, n_classes, config.noise_dim, config.generator_channels)
        decoder = Decoder(input_shape, config.noise_dim, config.decoder_hidden_layers, config.decoder_units)
    generator.to(device).train()
    decoder.to(device).train()
    # A teacher whose last step is not a Linear or Conv2d layer has no
    # features to read: the activation term is then left out, not an error.
    last_layer = output_layer(teacher) if config.activation_weight else None
    features = _PenultimateFeatures(teacher, last_layer) if last_layer is not None else None
    rng = torch.Generator(device).manual_seed(seed)
    optimizer = torch.optim.Adam([*generator.parameters(), *decoder.parameters()], lr=config.learning_rate)
    total = total_steps or config.steps
    history: list[dict[str, float]] = []
    snapshots: list[nn.Module] = []
    every, limit = config.snapshot_every, snapshot_limit(generator)
    sums = torch.zeros(5, device=device)  # classifier, decoder, diversity, total, correct
    for step in range(config.steps):
        labels = training_labels(config.batch_size, n_classes, config.label_mix, rng, device)
        z = noise(config.batch_size, config.noise_dim, rng, device)
        samples = generator(labels, z)
        logits = teacher(samples)
        loss_cls = classifier_loss(logits, labels)
        loss_dec = (
            decoder_loss(decoder(samples), z) * config.decoder_weight
            if config.decoder_weight
            else torch.zeros((), device=device)
        )
        loss_div = (
            diversity_loss(z, samples) * config.diversity_weight
            if config.diversity_weight
            else torch.zeros((), device=device)
        )
        loss_smooth = (
            smoothness_loss(samples) * config.smoothness_weight
            if config.smoothness_weight
            else torch.zeros((), device=device)
        )
        loss = loss_cls + loss_dec + loss_div + loss_smooth
        if features is not None:
            loss = loss - config.activation_weight * features.value.abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if _snapshot_due(config, step + 1, every):
            snapshots.append(copy.deepcopy(generator).eval().requires_grad_(False))
            if len(snapshots) > limit:  # every other one goes, the newest stays; half as many from now
                snapshots = snapshots[(len(snapshots) - 1) % 2 :: 2]
                every *= 2
        with torch.no_grad():
            correct = (logits.argmax(1) == labels.argmax(1)).float().mean()
            sums += torch.stack((loss_cls, loss_dec, loss_div, loss, correct)).detach()
        if (step + 1) % config.batches_per_epoch == 0 or step + 1 == config.steps:
            count = (step % config.batches_per_epoch) + 1
            values = (sums / count).tolist()
            sums.zero_()
            record = {
                "epoch": len(history) + 1,
                "classifier_loss": values[0],
                "decoder_loss": values[1],
                "diversity_loss": values[2],
                "loss": values[3],
                "accuracy": values[4],
            }
            history.append(record)
            preview = _preview(generator, n_classes, config.noise_dim, input_shape) if previews else None
            progress(
                ProgressEvent("extracting", step_offset + step + 1, total, _metrics(record), label, preview)
            )
        else:
            progress(ProgressEvent("extracting", step_offset + step + 1, total, {}, label))
    if features is not None:
        features.close()
    generator.eval()
    return TrainedGenerator(generator=generator, seed=seed, history=history, snapshots=snapshots)


# Generator snapshots held at once, in bytes of weights: past this, every other one is dropped
# and the rest come half as often, so they still span the whole trajectory.  The paper-sized
# generators of the recipes (under 2 MB at 1,000 classes) never reach it.
SNAPSHOT_BYTES = 256 * 1024**2


def snapshot_limit(generator: nn.Module) -> int:
    """How many copies of ``generator`` fit in :data:`SNAPSHOT_BYTES` (at least two)."""
    size = sum(t.numel() * t.element_size() for t in (*generator.parameters(), *generator.buffers()))
    return max(2, SNAPSHOT_BYTES // max(size, 1))


def _snapshot_due(config: ExtractionConfig, done: int, every: int) -> bool:
    return every > 0 and done >= config.snapshot_from and (done % every == 0 or done == config.steps)


def _preview(generator: nn.Module, n_classes: int, noise_dim: int, input_shape: Sequence[int]) -> bytes:
    """A PNG of the generator's samples right now (eval mode, then back to training)."""
    generator.eval()
    try:
        return png_bytes(sample_grid(generator, n_classes, noise_dim, tuple(input_shape), columns=8))
    finally:
        generator.train()


def _metrics(record: dict[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in record.items() if key != "epoch"}


def extract_generators(
    teacher: nn.Module,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    config: ExtractionConfig,
    seed: int,
    device: torch.device,
    progress: ProgressCallback = ignore_progress,
    previews: bool = False,
    done: Sequence[TrainedGenerator] = (),
    on_generator: Callable[[list[TrainedGenerator]], None] | None = None,
) -> list[TrainedGenerator]:
    """Train ``config.generators`` generators, each with its own seed.

    ``done`` are generators trained before (resuming: each has its own seed,
    so the rest train as they would have); ``on_generator`` is told the
    trained ones after each (checkpoints).
    """
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    trained = list(done)
    total = config.generators * config.steps
    for index in range(len(trained), config.generators):
        trained.append(
            train_generator(
                teacher,
                input_shape=input_shape,
                n_classes=n_classes,
                config=config,
                seed=seed * 1000 + index,
                device=device,
                progress=progress,
                step_offset=index * config.steps,
                total_steps=total,
                label=f"generator {index + 1}/{config.generators}",
                previews=previews,
            )
        )
        if on_generator is not None:
            on_generator(trained)
    return trained
