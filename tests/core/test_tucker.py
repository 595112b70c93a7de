"""Tucker-2 layers, EVBMF ranks and the choice of layers and ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kegnet_core.errors import SpecError
from kegnet_core.evbmf import evbmf_rank
from kegnet_core.loading import load_classifier
from kegnet_core.tucker import (
    TuckerConv2d,
    TuckerLinear,
    apply_plan,
    default_layers,
    factorised_params,
    plan_compression,
)
from kegnet_core.zoo import LeNet5, load_paper_teacher
from tests.core.models import torchscript_bytes


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 10, 3),
        nn.Conv2d(4, 8, 5, stride=2, padding=2, bias=False),
        nn.Conv2d(3, 7, 3, dilation=2, padding="same"),
    ],
    ids=["plain", "strided-nobias", "dilated-same"],
)
def test_conv_at_full_rank_equals_dense(conv):
    torch.manual_seed(0)
    twin = TuckerConv2d.from_conv(conv, (conv.out_channels, conv.in_channels))
    x = torch.randn(2, conv.in_channels, 11, 11)
    with torch.no_grad():
        assert torch.allclose(twin(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_at_full_rank_equals_dense(bias):
    torch.manual_seed(0)
    linear = nn.Linear(9, 5, bias=bias)
    twin = TuckerLinear.from_linear(linear, (5, 9))
    x = torch.randn(3, 9)
    with torch.no_grad():
        assert torch.allclose(twin(x), linear(x), atol=1e-5)


def test_low_rank_conv_is_exact_for_low_rank_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3)
    with torch.no_grad():  # weight of multilinear rank (3, 2) over the channel modes
        core = torch.randn(3, 2, 3, 3)
        conv.weight.copy_(torch.einsum("abkl,oa,ib->oikl", core, torch.randn(12, 3), torch.randn(8, 2)))
    twin = TuckerConv2d.from_conv(conv, (3, 2))
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert torch.allclose(twin(x), conv(x), atol=1e-4)
    assert sum(p.numel() for p in twin.parameters()) == factorised_params(conv, (3, 2))


def test_evbmf_finds_the_rank_of_a_noisy_low_rank_matrix():
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(60, 5, generator=generator) @ torch.randn(5, 200, generator=generator)
    noisy = signal + 0.1 * torch.randn(60, 200, generator=generator)
    assert evbmf_rank(noisy) == 5
    assert evbmf_rank(noisy.T) == 5  # either orientation


def test_evbmf_keeps_nothing_of_pure_noise():
    noise = torch.randn(40, 120, generator=torch.Generator().manual_seed(1))
    assert evbmf_rank(noise) == 0


def test_paper_ratios_for_lenet5(shared: Path):
    teacher = load_paper_teacher(shared / "teachers" / "kegnet" / "mnist.pth.tar")
    student1 = plan_compression(teacher, layers=["conv3"], ranks="evbmf")
    assert student1.ranks == {"conv3": [11, 7]}
    assert round(student1.compression_ratio, 2) == 3.62
    student2 = plan_compression(teacher, layers=["conv2", "conv3"], ranks="evbmf")
    assert round(student2.compression_ratio, 2) == 4.10


def test_plan_counts_parameters_of_the_built_student():
    model = LeNet5()
    plan = plan_compression(model, layers=["conv2", "fc1"], ranks=0.5)
    student = apply_plan(model, plan)
    assert sum(p.numel() for p in student.parameters()) == plan.params_after
    assert isinstance(student.conv2, TuckerConv2d) and isinstance(student.fc1, TuckerLinear)
    assert isinstance(model.conv2, nn.Conv2d)  # the original is left alone


def test_default_layers_skip_the_output_layer_and_unprofitable_ones():
    plan = plan_compression(LeNet5(), ranks=0.25)
    names = [layer.name for layer in plan.layers]
    assert "fc2" not in names
    assert "conv3" in names
    assert all(layer.params_after < layer.params_before for layer in plan.layers)


def test_explicit_ranks_name_their_layers():
    plan = plan_compression(LeNet5(), ranks={"conv3": [10, 8], "fc2": [4, 4]})
    assert plan.ranks == {"conv3": [10, 8], "fc2": [4, 4]}


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"layers": ["conv9"]}, "layers", "not in the model"),
        ({"layers": ["conv3"], "ranks": {"conv3": [121, 4]}}, "ranks", "impossible"),
        ({"layers": ["conv3"], "ranks": {"conv3": [0, 4]}}, "ranks", "impossible"),
        ({"ranks": 1.5}, "ranks", "fraction"),
        ({"ranks": "svd"}, "ranks", "evbmf"),
        ({"target_ratio": 1000.0}, "target_ratio", "out of reach"),
        ({"target_ratio": 0.5}, "target_ratio", "above 1"),
    ],
)
def test_plan_errors_name_the_field(kwargs, field, message):
    with pytest.raises(SpecError, match=message) as caught:
        plan_compression(LeNet5(), **kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize("target", [2.0, 5.0])
def test_target_ratio_is_met(target):
    plan = plan_compression(LeNet5(), target_ratio=target)
    assert plan.compression_ratio >= target
    # ... and not wildly overshot: the search keeps as much as it can.
    assert plan.compression_ratio < target * 1.5


def test_default_layers_skip_the_first_and_the_output_layer():
    lenet = load_classifier(torchscript_bytes(LeNet5(), (1, 32, 32)), (1, 32, 32))
    assert default_layers(lenet) == ["conv2", "conv3", "fc1"]
    plan = plan_compression(lenet)
    assert sorted(layer.name for layer in plan.layers) == ["conv2", "conv3", "fc1"]
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    assert default_layers(two) == ["1"]  # with two layers, the first is the only candidate


def test_auto_ranks_halve_the_model():
    lenet = load_classifier(torchscript_bytes(LeNet5(), (1, 32, 32)), (1, 32, 32))
    plan = plan_compression(lenet)  # ranks="auto" is the default
    assert 2.0 <= plan.compression_ratio < 2.5
    assert {layer.name for layer in plan.layers} <= {"conv2", "conv3", "fc1"}


def test_auto_ranks_take_the_first_layer_when_the_others_cannot_halve_the_model():
    # Almost all parameters sit in the first layer, which the default choice leaves dense.
    wide_first = nn.Sequential(
        nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    with pytest.raises(SpecError, match="out of reach"):
        plan_compression(wide_first, ranks="evbmf", target_ratio=2.0)
    plan = plan_compression(wide_first)
    assert plan.compression_ratio >= 2.0
    assert "0" in plan.ranks and "4" not in plan.ranks
