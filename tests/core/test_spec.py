"""The spec's own checks: each mistake named by its field with a message that says what to send."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kegnet_core.budget import parse_duration
from kegnet_core.errors import SpecError
from kegnet_core.spec import parse_spec
from kegnet_core.tucker import plan_compression


def _refusal(**fields: object) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec({"input_shape": [1, 8, 8], **fields})
    return caught.value


@pytest.mark.parametrize(
    ("ranks", "words"),
    [
        ("best", "'auto', 'evbmf', a keep fraction"),
        (2, "a keep fraction must be in (0, 1], got 2"),
        (math.nan, "a keep fraction must be in (0, 1]"),
        ({"conv1": [2, 0]}, "ranks for 'conv1' must be [out_rank, in_rank]"),
        ({"conv1": [2]}, "ranks for 'conv1' must be [out_rank, in_rank]"),
        ({"conv1": [2, True]}, "two positive integers"),
        ({"": [2, 2]}, "a layer name must be a non-empty module path"),
        ({}, "at least one layer"),
        ([2, 2], "'auto', 'evbmf', a keep fraction"),
    ],
)
def test_each_kind_of_bad_ranks_gets_its_own_message(ranks, words):
    # A union's first error used to answer "Input should be 'auto' or 'evbmf'" to all of these.
    error = _refusal(ranks=ranks)
    assert error.field == "ranks" and words in error.message, error.message


def test_good_ranks_pass_as_they_are():
    assert parse_spec({"input_shape": [4], "ranks": 0.5}).ranks == 0.5
    assert parse_spec({"input_shape": [4], "ranks": {"a.b": [3, 2]}}).ranks == {"a.b": (3, 2)}


def test_target_ratio_refuses_ranks_it_would_ignore():
    error = _refusal(ranks={"conv2": [2, 2]}, target_ratio=1.5)
    assert error.field == "target_ratio" and "leave ranks at 'auto'" in error.message
    assert _refusal(ranks="evbmf", target_ratio=2).field == "target_ratio"
    assert parse_spec({"input_shape": [1, 8, 8], "target_ratio": 1.5}).target_ratio == 1.5


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_target_ratio_and_budget_must_be_finite(value):
    assert _refusal(target_ratio=value).field == "target_ratio"
    assert _refusal(budget_s=value).field == "budget_s"


def test_a_budget_out_of_bounds_says_seconds():
    error = _refusal(budget_s=5)
    assert error.field == "budget_s" and "10 seconds to 7 days, got 5 seconds" in error.message


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "0m", "0h0s"])
def test_a_duration_is_positive_and_finite(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("600") == 600


def test_an_input_shape_past_the_value_cap_is_refused_before_any_run():
    error = _refusal(input_shape=[3, 65536, 65536])
    assert error.field == "input_shape" and "at most" in error.message
    assert parse_spec({"input_shape": [3, 2048, 2048]}).input_shape == (3, 2048, 2048)


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 400)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x)).flatten(1))


def test_default_ranks_out_of_reach_for_named_layers_blame_ranks_not_an_unset_target_ratio():
    with pytest.raises(SpecError) as caught:
        plan_compression(_Chain(), layers=["conv2"])
    assert caught.value.field == "ranks"
    assert "default ranks ('auto')" in caught.value.message and "'conv2'" in caught.value.message
    # The same layer with ranks named is planned.
    assert plan_compression(_Chain(), layers=["conv2"], ranks=0.5).layers[0].name == "conv2"


def test_explicit_ranks_for_a_layer_the_model_lacks_blame_ranks():
    with pytest.raises(SpecError) as caught:
        plan_compression(_Chain(), ranks={"convX": (2, 2)})
    assert caught.value.field == "ranks" and "'convX' is not in the model" in caught.value.message
    with pytest.raises(SpecError) as caught:
        plan_compression(_Chain(), layers=["convX"], ranks=0.5)
    assert caught.value.field == "layers"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"task": "quantize", "layers": ["conv1"]}, "layers"),
        ({"task": "quantize", "ranks": 0.5}, "ranks"),
        ({"task": "extract", "target_ratio": 3}, "target_ratio"),
        ({"task": "extract", "prior": "gaussian"}, "prior"),
        ({"task": "quantize", "prior": "none"}, "prior"),
    ],
)
def test_a_job_that_factorises_nothing_refuses_options_it_would_ignore(fields, field):
    assert _refusal(**fields).field == field


class _Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.depthwise(x).mean((2, 3)))


def test_a_model_of_depthwise_convolutions_is_told_why_nothing_gets_smaller(tmp_path):
    from kegnet_core import stages
    from tests.core.models import torchscript_bytes

    path = tmp_path / "dw.pt"
    path.write_bytes(torchscript_bytes(_Depthwise().eval(), (8, 6, 6)))
    spec = parse_spec({"input_shape": [8, 6, 6], "ranks": 0.5, "preset": "quick"})
    with pytest.raises(SpecError) as caught:
        stages.validate(path, spec, device=torch.device("cpu"))
    assert (
        caught.value.field == "layers"
        and "depthwise convolutions, 'depthwise' the first" in caught.value.message
    )


class _MostlyGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.grouped = nn.Sequential(*(nn.Conv2d(64, 64, 3, padding=1, groups=4) for _ in range(3)))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grouped(self.stem(x)).mean((2, 3)))


def test_default_ranks_out_of_reach_name_grouped_convolutions_and_offer_no_hint_that_cannot_work():
    with pytest.raises(SpecError) as caught:
        plan_compression(_MostlyGrouped())
    message = caught.value.message
    assert caught.value.field == "ranks"
    assert "grouped or depthwise convolutions, which are never factorised, hold 92%" in message
    assert "name the layers" not in message and "even the output layer too would give only" in message
