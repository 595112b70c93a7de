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
    TuckerConv,
    TuckerLinear,
    apply_plan,
    default_layers,
    factorised_params,
    layer_moments,
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
    twin = TuckerConv.from_conv(conv, (conv.out_channels, conv.in_channels))
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
    twin = TuckerConv.from_conv(conv, (3, 2))
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert torch.allclose(twin(x), conv(x), atol=1e-4)
    assert sum(p.numel() for p in twin.parameters()) == factorised_params(conv, (3, 2))


def _moments_of(layer: nn.Module, x: torch.Tensor):
    return layer_moments(nn.Sequential(layer), ["0"], x)["0"]


def test_layer_moments_are_the_channels_second_moments():
    torch.manual_seed(0)
    linear = nn.Linear(5, 4)
    x = torch.randn(300, 5) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) + 1.0
    moments = layer_moments(nn.Sequential(linear), ["0"], x, batch_size=64)["0"]  # several batches
    with torch.no_grad():
        y = linear(x) - linear.bias
    assert torch.allclose(moments.inputs, (x.T @ x).double() / 300, atol=1e-5)
    assert torch.allclose(moments.outputs, (y.T @ y).double() / 300, atol=1e-4)
    conv = nn.Conv2d(3, 2, 3)
    images = torch.randn(4, 3, 6, 6)
    seen = _moments_of(conv, images)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
    assert torch.allclose(seen.inputs, pixels.T @ pixels / len(pixels))  # every position counts


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_activation_aware_factors_at_full_rank_equal_dense(kind):
    torch.manual_seed(0)
    layer: nn.Module = nn.Conv2d(6, 10, 3) if kind == "conv" else nn.Linear(9, 5)
    x = torch.randn(64, 6, 9, 9) if kind == "conv" else torch.randn(64, 9)
    moments = _moments_of(layer, x)
    if isinstance(layer, nn.Conv2d):
        twin: nn.Module = TuckerConv.from_conv(layer, (10, 6), moments=moments)
    else:
        assert isinstance(layer, nn.Linear)
        twin = TuckerLinear.from_linear(layer, (5, 9), moments=moments)
    with torch.no_grad():
        assert torch.allclose(twin(x), layer(x), atol=1e-4)


def test_activation_aware_factors_fit_the_inputs_the_layer_sees():
    """Inputs that live in 3 of 8 channel directions: 3 input ranks chosen on them lose nothing
    there, while the factors of the weights alone lose much of the output."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, bias=False)
    basis = torch.linalg.qr(torch.randn(8, 8))[0]
    seen = torch.einsum("nchw,dc->ndhw", torch.randn(128, 3, 7, 7), basis[:, 5:])  # the weakest directions
    with torch.no_grad():  # the weights are strongest where the inputs never go
        conv.weight.copy_(torch.einsum("oikl,di->odkl", conv.weight, basis * torch.linspace(3, 0.1, 8)))
    aware = TuckerConv.from_conv(conv, (12, 3), moments=_moments_of(conv, seen))
    plain = TuckerConv.from_conv(conv, (12, 3))
    with torch.no_grad():
        target = conv(seen)
        aware_error = (aware(seen) - target).norm() / target.norm()
        plain_error = (plain(seen) - target).norm() / target.norm()
    assert aware_error < 1e-4
    assert plain_error > 0.5


def test_activation_aware_output_factor_keeps_the_outputs_that_vary():
    torch.manual_seed(0)
    linear = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.diag(torch.tensor([1.0, 1.0, 1.0, 5.0, 5.0, 5.0])))
    x = torch.randn(256, 6) * torch.tensor([10.0, 10.0, 10.0, 0.1, 0.1, 0.1])  # outputs 1-3 dominate
    aware = TuckerLinear.from_linear(linear, (3, 6), moments=_moments_of(linear, x))
    plain = TuckerLinear.from_linear(linear, (3, 6))  # keeps the weight's big outputs 4-6
    with torch.no_grad():
        target = linear(x)
        assert (aware(x) - target).norm() < 0.05 * target.norm()
        assert (plain(x) - target).norm() > 0.9 * target.norm()


def test_unusable_moments_fall_back_to_the_weights():
    torch.manual_seed(0)
    linear = nn.Linear(5, 4)
    moments = _moments_of(linear, torch.zeros(10, 5))  # no signal at all
    twin = TuckerLinear.from_linear(linear, (4, 5), moments=moments)
    x = torch.randn(3, 5)
    with torch.no_grad():
        assert torch.allclose(twin(x), linear(x), atol=1e-5)


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
    assert isinstance(student.conv2, TuckerConv) and isinstance(student.fc1, TuckerLinear)
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


def test_auto_ranks_out_of_reach_say_what_to_ask_for_instead():
    # A wide output layer (many classes) holds most of the parameters: halving is out of reach.
    wide_output = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1000)
    )
    with pytest.raises(SpecError) as caught:
        plan_compression(wide_output)
    assert caught.value.field == "ranks"
    message = caught.value.message
    assert "default ranks ('auto')" in message and "output layer '4'" in message
    reach = float(message.split("target_ratio below ")[1].split(")")[0])
    plan = plan_compression(wide_output, target_ratio=reach * 0.98, layers=["0", "2"])
    assert plan.compression_ratio >= reach * 0.98  # what the message offers is reachable


def test_shared_weights_are_named_as_the_reason_a_layer_cannot_be_factorised():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.c(self.c(x)).mean((2, 3)))

    model = load_classifier(torchscript_bytes(Shared(), (4, 8, 8)), (4, 8, 8))
    with pytest.raises(SpecError, match=r"'c' holds weights.*more than one call"):
        plan_compression(model, layers=["c"], ranks="evbmf")


def test_ranks_from_activations_follow_the_inputs_and_keep_the_ratio():
    from kegnet_core.tucker import plan_on_activations

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    plan = plan_compression(model, layers=["1", "3"], target_ratio=1.3)
    # Inputs in a 3-dimensional subspace: layer 1 sees only 3 input directions.
    narrow = torch.randn(512, 3) @ torch.randn(3, 16)
    moments = layer_moments(model, ["1", "3"], narrow)
    replanned = plan_on_activations(model, plan, moments, 1.3)
    assert replanned.compression_ratio >= 1.3
    assert [layer.name for layer in replanned.layers] == ["1", "3"]
    assert replanned.ranks["1"][1] <= 4 < plan.ranks["1"][1]  # 3 and numerical dust
    # Missing moments: the plan stands.
    assert plan_on_activations(model, plan, {"1": moments["1"]}, 1.3) is plan
