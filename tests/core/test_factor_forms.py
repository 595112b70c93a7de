"""The saved student's factorised layers in their cheapest exact form (tucker.cheapest_exact_form)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kegnet_core.export import fold_factors, save_student
from kegnet_core.loading import load_classifier
from kegnet_core.measure import count_macs, parameter_count
from kegnet_core.report import StudentForm
from kegnet_core.tucker import (
    TuckerConv,
    TuckerLinear,
    apply_plan,
    cheapest_exact_form,
    exact_forms,
    plan_compression,
)

from .models import TinyCNN, torchscript_bytes

CONVS = {
    "3x3": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1),
    "3x3 stride 2": dict(in_channels=6, out_channels=10, kernel_size=3, stride=2, padding=1),
    "1x1 stride 2": dict(in_channels=6, out_channels=10, kernel_size=1, stride=2),
    "5x3 reflect dilated": dict(
        in_channels=6, out_channels=10, kernel_size=(5, 3), padding=2, dilation=(1, 2), padding_mode="reflect"
    ),
}


def _twin(conv: nn.Conv1d | nn.Conv2d, ranks: tuple[int, int]) -> TuckerConv:
    torch.manual_seed(1)
    return TuckerConv.from_conv(conv, ranks, n_iter_max=5)


@pytest.mark.parametrize("geometry", list(CONVS), ids=list(CONVS))
@pytest.mark.parametrize("ranks", [(3, 2), (9, 5)])
def test_every_form_of_a_convolution_computes_the_same_and_counts_its_cost(geometry, ranks):
    torch.manual_seed(0)
    twin = _twin(nn.Conv2d(**CONVS[geometry]), ranks)  # type: ignore[arg-type]
    x = torch.randn(3, 6, 12, 12)
    with torch.no_grad():
        expected = twin(x)
        positions = (x.shape[-2] * x.shape[-1], expected.shape[-2] * expected.shape[-1])
        forms = exact_forms(twin, *positions)
        assert [form.name for form in forms] == ["three", "first folded", "last folded", "dense"]
        for form in forms:
            torch.testing.assert_close(form.module(x), expected, rtol=1e-4, atol=1e-5)
            assert form.params == parameter_count(form.module), form.name
            assert form.macs == count_macs(form.module, (6, 12, 12)), form.name


def test_every_form_of_a_linear_computes_the_same_and_counts_its_cost():
    torch.manual_seed(0)
    twin = TuckerLinear.from_linear(nn.Linear(12, 7), (4, 5), n_iter_max=5)
    x = torch.randn(5, 12)
    with torch.no_grad():
        for form in exact_forms(twin):
            torch.testing.assert_close(form.module(x), twin(x), rtol=1e-4, atol=1e-5)
            assert form.params == parameter_count(form.module)
            assert form.macs == count_macs(form.module, (12,))


def test_ranks_near_the_channel_count_are_stored_dense_and_low_ranks_as_trained():
    conv = nn.Conv2d(24, 24, 3, padding=1, bias=False)
    near_full = cheapest_exact_form(_twin(conv, (23, 23)), 64, 64)
    assert near_full.name == "dense" and near_full.params == conv.weight.numel()
    low = cheapest_exact_form(_twin(conv, (4, 4)), 64, 64)
    assert low.name == "three"
    # A full input rank: its 1x1 is square, and multiplying it into the core saves it.
    assert cheapest_exact_form(_twin(nn.Conv2d(8, 48, 3, padding=1), (16, 8)), 64, 64).name == "first folded"


def test_a_chosen_form_never_holds_more_parameters_than_the_trained_layer():
    torch.manual_seed(0)
    for out_rank, in_rank in [(1, 1), (2, 9), (9, 2), (10, 6), (5, 5)]:
        twin = _twin(nn.Conv2d(6, 10, 3, padding=1), (out_rank, in_rank))
        for positions in [(1, 1), (64, 16), (16, 16)]:
            form = cheapest_exact_form(twin, *positions)
            forms = exact_forms(twin, *positions)
            assert form.params <= parameter_count(twin)
            assert form.macs == min(f.macs for f in forms if f.params <= parameter_count(twin))


def test_a_1x1_convolution_or_a_linear_is_never_stored_as_three():
    for twin in (
        _twin(nn.Conv2d(16, 32, 1), (12, 10)),
        TuckerLinear.from_linear(nn.Linear(16, 32), (12, 10), n_iter_max=5),
    ):
        assert cheapest_exact_form(twin, 16, 16).name != "three"


class TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(3, 24, 3, padding=1)
        self.near_full = nn.Conv2d(24, 24, 3, padding=1)
        self.low = nn.Conv2d(24, 24, 3, stride=2, padding=1)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.low(torch.relu(self.near_full(torch.relu(self.wide(x))))))
        return self.head(x.mean((2, 3)))


def _student() -> nn.Module:
    torch.manual_seed(0)
    model = TwoStage().eval()
    model.set_submodule("near_full", _twin(model.near_full, (23, 23)))
    model.set_submodule("low", _twin(model.low, (4, 4)))
    return model


def test_fold_factors_swaps_only_the_layers_a_cheaper_form_serves():
    student = _student()
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        expected = student(x)
        folded, forms = fold_factors(_student(), (3, 10, 10))
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    assert forms == {"near_full": "dense"}
    assert isinstance(folded.get_submodule("near_full"), nn.Conv2d)
    assert isinstance(folded.get_submodule("low"), TuckerConv)
    assert parameter_count(folded) < parameter_count(student)
    assert count_macs(folded, (3, 10, 10)) < count_macs(student, (3, 10, 10))


def test_the_saved_student_holds_the_cheaper_form_and_says_so(tmp_path):
    student = _student()
    saved = save_student(student, tmp_path / "student.pt", (3, 10, 10))
    assert saved.factor_forms == {"near_full": "dense"}
    assert saved.inference is not None and count_macs(saved.inference, (3, 10, 10)) < count_macs(
        student, (3, 10, 10)
    )
    reloaded = torch.jit.load(str(tmp_path / "student.pt"))
    assert parameter_count(reloaded) < parameter_count(student)
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), student(x), rtol=1e-4, atol=1e-5)
    form = StudentForm(
        batch_norms_folded=0, memory_format=saved.memory_format, parameters=1, factor_forms=saved.factor_forms
    ).described()
    assert "fewer operations: near_full dense" in form.summary
    assert StudentForm.model_validate_json(form.model_dump_json()) == form


def test_an_output_rank_at_the_channel_count_multiplies_the_output_1x1_into_the_core():
    # (8 of 8 outputs, 16 of 48 inputs): the output 1x1 is square, and the core can take it.
    assert cheapest_exact_form(_twin(nn.Conv2d(48, 8, 3, padding=1), (8, 16)), 64, 64).name == "last folded"


def test_an_uploaded_student_is_saved_with_batch_norm_and_factors_folded(tmp_path):
    # The pipeline's path: a loaded (fx) teacher, its BatchNorm folded into the twin's last 1x1,
    # then that twin multiplied out at a dotted path, scripted and checked.
    teacher = load_classifier(torchscript_bytes(TinyCNN(), (1, 8, 8)), (1, 8, 8))
    plan = plan_compression(teacher, layers=["block.0"], ranks={"block.0": [8, 8]})
    student = apply_plan(teacher, plan, n_iter_max=5)
    saved = save_student(student, tmp_path / "student.pt", (1, 8, 8))
    assert saved.factor_forms == {"block.0": "dense"} and saved.batch_norms_folded == 2
    assert saved.memory_format == "channels_last"
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(saved.module(x), student(x), rtol=1e-4, atol=1e-5)


class VectorNet(nn.Module):
    """A factorised Linear, a dense head, and a factorised layer that forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.first = TuckerLinear.from_linear(nn.Linear(12, 16), (10, 4), n_iter_max=5)
        self.head = nn.Linear(16, 3)
        self.spare = TuckerLinear.from_linear(nn.Linear(4, 4), (2, 2), n_iter_max=5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.first(x)))


def test_a_vector_student_gets_its_linears_multiplied_out_and_unreached_layers_stay():
    torch.manual_seed(0)
    student = VectorNet()
    spare = student.spare
    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = student(x)
        folded, forms = fold_factors(student, (12,))
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    assert forms == {"first": "last folded"}
    assert folded.get_submodule("spare") is spare


CONVS_1D = {
    "k5": dict(in_channels=6, out_channels=10, kernel_size=5, padding=2),
    "k3 stride 2 dilated": dict(
        in_channels=6, out_channels=10, kernel_size=3, stride=2, padding=2, dilation=2
    ),
    "k1 stride 2": dict(in_channels=6, out_channels=10, kernel_size=1, stride=2),
}


@pytest.mark.parametrize("geometry", list(CONVS_1D), ids=list(CONVS_1D))
def test_every_form_of_a_signal_convolution_computes_the_same_and_counts_its_cost(geometry):
    torch.manual_seed(0)
    twin = _twin(nn.Conv1d(**CONVS_1D[geometry]), (4, 3))  # type: ignore[arg-type]
    assert all(type(part) is nn.Conv1d for part in (twin.first, twin.core, twin.last))
    x = torch.randn(3, 6, 40)
    with torch.no_grad():
        expected = twin(x)
        forms = exact_forms(twin, x.shape[-1], expected.shape[-1])
        for form in forms:
            torch.testing.assert_close(form.module(x), expected, rtol=1e-4, atol=1e-5)
            assert form.params == parameter_count(form.module), form.name
            assert form.macs == count_macs(form.module, (6, 40)), form.name


def test_a_signal_convolution_at_full_ranks_is_reproduced():
    torch.manual_seed(0)
    conv = nn.Conv1d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(_twin(conv, (7, 5))(x), conv(x), rtol=1e-4, atol=1e-5)
