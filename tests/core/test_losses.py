"""Each loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kegnet_core.losses import (
    classifier_loss,
    decoder_loss,
    distillation_loss,
    diversity_loss,
    smoothness_loss,
)


def test_classifier_loss_is_cross_entropy_for_one_hot_labels():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert classifier_loss(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(-math.log(0.75))
    assert classifier_loss(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(-math.log(0.25))


def test_classifier_loss_with_mixed_labels_is_kl():
    logits = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    labels = torch.tensor([[0.25, 0.75]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert classifier_loss(logits, labels).item() == pytest.approx(expected)


def test_decoder_loss_is_mean_squared_error():
    assert decoder_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)


def test_diversity_loss_by_hand():
    # Two samples 2 pixels wide: mean |x1 - x2| = (1 + 3) / 2 = 2.
    samples = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 3.0]]]])
    # Noise of dimension 1: mean (z1 - z2)^2 = 4.  Over the 4 ordered pairs
    # (two of them i == j, distance 0) the mean product is (8 + 8) / 4 = 4.
    noise = torch.tensor([[0.0], [2.0]])
    assert diversity_loss(noise, samples).item() == pytest.approx(math.exp(-4.0))


def test_diversity_loss_matches_the_published_expansion():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(16, 1, 6, 6, generator=generator)
    noise = torch.randn(16, 5, generator=generator)
    flat = samples.flatten(1)
    dist_x = (flat.unsqueeze(0) - flat.unsqueeze(1)).abs().mean(2)
    dist_z = (noise.unsqueeze(0) - noise.unsqueeze(1)).square().mean(2)
    expected = torch.exp(-(dist_x * dist_z).mean())
    assert diversity_loss(noise, samples).item() == pytest.approx(expected.item(), rel=1e-6)


def test_smoothness_loss_by_hand():
    image = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # vertical steps 2, horizontal steps 1
    assert smoothness_loss(image).item() == pytest.approx(4.0 + 1.0)
    assert smoothness_loss(torch.randn(3, 7)).item() == 0.0


def test_distillation_loss_by_hand():
    teacher = torch.tensor([[0.0, 0.0]])
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, math.log(3.0)]])
    # T = 2: student softmax of [0, ln(3)/2] = [1, sqrt(3)] / (1 + sqrt(3)).
    p_small, p_large = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    kl = 0.5 * math.log(0.5 / p_small) + 0.5 * math.log(0.5 / p_large)
    assert distillation_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-6)
