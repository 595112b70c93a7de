"""Batches too big for memory run in chunks whose gradients add up to the whole batch's."""

from __future__ import annotations

import io

import torch
from torch import nn

from kegnet_core.config import DistillConfig, SynthesisConfig
from kegnet_core.distill import _LayerOutputs, batch_backward
from kegnet_core.inspection import BatchNormTap
from kegnet_core.loading import script_to_graph_module
from kegnet_core.memory import chunks, fit_chunk, free_bytes, per_sample_bytes
from kegnet_core.synthesis import batch_gradient, synthesis_chunk
from kegnet_core.tucker import apply_plan, plan_compression
from tests.core.models import TinyCNN, randomise_batchnorm


def _teacher() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = randomise_batchnorm(TinyCNN())
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    return script_to_graph_module(torch.jit.load(buffer), (1, 8, 8)).eval()


def test_chunks_cover_the_batch_once() -> None:
    parts = chunks(10, 4)
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 10)]
    assert chunks(3, 8) == [slice(0, 3)]


def test_chunk_is_what_the_free_memory_holds() -> None:
    assert fit_chunk(256, sample_bytes=1_000, free=10_000_000, share=0.5) == 256
    assert fit_chunk(256, sample_bytes=100_000, free=10_000_000, share=0.5) == 50
    assert fit_chunk(256, sample_bytes=10**9, free=10_000_000) == 1  # never below one input
    assert fit_chunk(256, sample_bytes=10**9, free=None) == 256  # unknown: the recipe's batch


def test_one_input_share_grows_with_the_image() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def run(side: int) -> int:
        return per_sample_bytes(lambda count: net(torch.zeros(count, 3, side, side)))

    small, large = run(8), run(16)
    # the first conv's input and the ReLU's output (which is the second conv's input, counted
    # once): 3 + 8 channels of float32
    assert small == (3 + 8) * 8 * 8 * 4
    assert 3.5 < large / small < 4.5
    assert free_bytes(torch.device("cpu")) is not None


def test_synthesis_gradient_in_chunks_is_the_whole_batch_gradient() -> None:
    tap = BatchNormTap(_teacher())
    assert tap.stats
    config = SynthesisConfig(samples=12, batch_size=12, smoothness_weight=0.1)
    target = torch.arange(12) % 3
    grads, losses = [], []
    for chunk in (12, 5):
        x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        class_loss, statistics = batch_gradient(tap, x, target, config, chunk=chunk)
        assert x.grad is not None and statistics is not None
        grads.append(x.grad.clone())
        losses.append((float(class_loss), float(statistics)))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert abs(losses[1][0] - losses[0][0]) < 1e-5 and abs(losses[1][1] - losses[0][1]) < 1e-4
    assert synthesis_chunk(tap, (1, 8, 8), 256, torch.device("cpu")) == 256  # tiny: fits


def test_distillation_gradient_in_chunks_is_the_whole_batch_gradient() -> None:
    teacher = _teacher()
    plan = plan_compression(teacher, layers=["block.0"], ranks={"block.0": [3, 3]})
    config = DistillConfig(batch_size=12, feature_weight=1.0, temperature=2.0)
    inputs = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    teacher_taps = _LayerOutputs(teacher, ["block.0"])
    with torch.no_grad():
        targets = teacher(inputs)
    features = dict(teacher_taps.outputs)
    teacher_taps.close()
    grads, losses = [], []
    for chunk in (12, 5):
        student = apply_plan(teacher, plan, seed=0)
        taps = _LayerOutputs(student, ["block.0"])
        loss = batch_backward(
            student, inputs, targets, config, chunk=chunk, taps=taps, teacher_features=features
        )
        taps.close()
        grads.append({name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None})
        losses.append(float(loss))
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6)
    assert abs(losses[1] - losses[0]) < 1e-5
