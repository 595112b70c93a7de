"""The operator allow-list: every architecture the quality suite uses passes, scripted and traced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.suite_teachers import BnResidualCnn, Mlp, PlainCnn, VggBn
from kegnet_core.loading import load_torchscript
from kegnet_core.operators import ALLOWED, ForbiddenOperatorError, check_archive_code, forbidden
from kegnet_core.zoo import LeNet5, ResNet14

from .models import FunctionalNet, TinyCNN, TinyMLP, torchscript_bytes

ARCHITECTURES = [
    ("lenet5", lambda: LeNet5(), (1, 32, 32)),
    ("resnet14", lambda: ResNet14(3, 10), (3, 32, 32)),
    ("bn-residual", lambda: BnResidualCnn(), (1, 16, 16)),
    ("vgg-bn", lambda: VggBn(3, 10), (3, 32, 32)),
    ("plain-cnn", lambda: PlainCnn(1, 8), (1, 32, 32)),
    ("mlp-bn", lambda: Mlp(40, (64, 64), 10, batchnorm=True), (40,)),
    ("mlp", lambda: Mlp(30, (32, 32, 32), 8, batchnorm=False), (30,)),
    ("tiny-cnn", lambda: TinyCNN(), (1, 8, 8)),
    ("functional", lambda: FunctionalNet(), (3, 8, 8)),
    ("tiny-mlp", lambda: TinyMLP(), (12,)),
]


@pytest.mark.parametrize("trace", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize(("name", "make", "shape"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_legitimate_models_pass_both_checks(tmp_path: Path, name, make, shape, trace):
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    path.write_bytes(torchscript_bytes(make().eval(), shape, trace=trace))
    check_archive_code(path)  # the API's check, without torch
    load_torchscript(path)  # the worker's: every graph of every method


def test_the_refusal_names_the_operator_and_why():
    error = forbidden("aten::from_file")
    assert isinstance(error, ForbiddenOperatorError) and error.code == "forbidden_operator"
    assert "aten::from_file" in error.message and "reads a file" in error.message
    assert "extension" in forbidden("mylib::op").message
    assert "aten::from_file" not in ALLOWED and "prim::Print" not in ALLOWED


def test_a_method_forward_never_calls_is_checked_too(tmp_path: Path):
    class Innocent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

        @torch.jit.export
        def leak(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.from_file("/etc/hostname", False, 4).sum()

    path = tmp_path / "innocent.pt"
    torch.jit.script(Innocent()).save(str(path))
    for check in (check_archive_code, load_torchscript):
        with pytest.raises(ForbiddenOperatorError, match=r"aten::from_file.*leak"):
            check(path)


def test_scripted_layers_with_untaken_branches_pass_both_checks(tmp_path: Path):
    """Scripting compiles both sides of ``if inplace:``, F.interpolate's every mode and
    attention's nested-tensor path; every op there is pure and must not be refused."""
    layers = [
        nn.Mish(inplace=True),
        nn.CELU(inplace=True),
        nn.Dropout2d(inplace=True),
        nn.Upsample(scale_factor=2.0, mode="bilinear"),
        nn.MultiheadAttention(8, 2, batch_first=True),
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
    ]
    for index, layer in enumerate(layers):
        path = tmp_path / f"{index}.pt"
        torch.jit.save(torch.jit.script(layer.eval()), str(path))
        check_archive_code(path)
        load_torchscript(path)


def test_a_model_traced_in_training_mode_is_told_to_call_eval(tmp_path: Path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3)).train()
    path = tmp_path / "train.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 1, 8, 8)), str(path))
    with pytest.raises(ForbiddenOperatorError, match=r"training mode: call model\.eval\(\)"):
        load_torchscript(path)
