"""Loading TorchScript classifiers as editable models with the same function."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from kegnet_core.archive import ArchiveLimits, inspect_torchscript_archive
from kegnet_core.errors import InvalidModelFileError, ModelRunError, UnsupportedModelError
from kegnet_core.loading import load_classifier
from kegnet_core.zoo import LeNet5, ResNet14, load_paper_teacher

from .models import FunctionalNet, TinyCNN, TinyMLP, TinySignalCNN, randomise_batchnorm, torchscript_bytes

CASES = [
    ("lenet5", LeNet5, (1, 32, 32), ["conv1", "conv2", "conv3", "fc1", "fc2"]),
    ("resnet14", lambda: ResNet14(3), (3, 32, 32), ["conv1", "layers1.0.conv1", "layers3.1.conv2", "linear"]),
    ("tiny_cnn", TinyCNN, (1, 8, 8), ["stem.0", "block.0", "head"]),
    ("functional", FunctionalNet, (3, 5, 5), ["conv", "grouped", "fc"]),
    ("mlp", TinyMLP, (12,), ["net.0", "net.3.0", "net.4"]),
    ("signal", TinySignalCNN, (2, 32), ["conv1", "conv2", "conv3", "head"]),
]


@pytest.mark.parametrize("trace", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize(("name", "factory", "shape", "layers"), CASES, ids=[case[0] for case in CASES])
def test_loaded_model_matches_original(name, factory, shape, layers, trace):
    torch.manual_seed(0)
    original = randomise_batchnorm(factory())
    model = load_classifier(torchscript_bytes(original, shape, trace), shape)
    with torch.no_grad():
        for batch in (1, 4, 9):
            x = torch.randn(batch, *shape)
            assert torch.allclose(model(x), original(x), atol=1e-5, rtol=1e-5)
    modules = dict(model.named_modules())
    for layer in layers:
        assert isinstance(modules[layer], (nn.Conv1d, nn.Conv2d, nn.Linear)), layer
        assert type(modules[layer]).__name__ == type(original.get_submodule(layer)).__name__, layer
    # Weights are parameters again (not buffers), so the model can be trained.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters())


def test_loaded_model_trains():
    model = load_classifier(torchscript_bytes(TinyCNN(), (1, 8, 8)), (1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    head = model.get_submodule("head")
    assert isinstance(head, torch.nn.Linear)
    before = head.weight.detach().clone()
    loss = model(torch.randn(4, 1, 8, 8)).square().mean()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, head.weight)


def test_loaded_model_scripts_with_free_batch():
    model = load_classifier(torchscript_bytes(LeNet5(), (1, 32, 32), trace=True), (1, 32, 32))
    scripted = torch.jit.script(model)
    assert scripted(torch.randn(17, 1, 32, 32)).shape == (17, 10)


def test_paper_teachers_load(shared: Path):
    for name in ("mnist", "svhn", "fashion"):
        teacher = load_paper_teacher(shared / "teachers" / "kegnet" / f"{name}.pth.tar")
        conv1 = teacher.get_submodule("conv1")
        assert isinstance(conv1, torch.nn.Conv2d)
        shape = (conv1.in_channels, 32, 32)
        model = load_classifier(torchscript_bytes(teacher, shape), shape)
        x = torch.randn(3, *shape)
        with torch.no_grad():
            assert torch.allclose(model(x), teacher(x), atol=1e-5)


def _state_dict_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.pt"
    torch.save(LeNet5().state_dict(), path)
    return path


def test_refuses_state_dict(tmp_path):
    with pytest.raises(InvalidModelFileError, match=r"torch\.save checkpoint"):
        load_classifier(_state_dict_file(tmp_path), (1, 32, 32))


def test_refuses_pickle(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InvalidModelFileError, match="pickle"):
        load_classifier(path, (1, 32, 32))


def test_refuses_truncated_archive(tmp_path):
    data = torchscript_bytes(LeNet5(), (1, 32, 32))
    with pytest.raises(InvalidModelFileError, match="truncated or corrupt"):
        load_classifier(data[: len(data) // 2], (1, 32, 32))


@pytest.mark.parametrize("content", [b"", b"hello world, not a model"], ids=["empty", "text"])
def test_refuses_non_zip(content):
    with pytest.raises(InvalidModelFileError, match="expected a TorchScript archive"):
        load_classifier(content, (1, 32, 32))


def test_refuses_zip_bomb():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model/data.pkl", b"\0" * 5_000_000)
    buffer.seek(0)
    with pytest.raises(InvalidModelFileError, match="zip bomb"):
        inspect_torchscript_archive(buffer, ArchiveLimits(max_compression_ratio=100))


def test_refuses_wrong_input_shape():
    data = torchscript_bytes(LeNet5(), (1, 32, 32))
    with pytest.raises(ModelRunError) as caught:
        load_classifier(data, (3, 32, 32))
    assert caught.value.field == "input_shape"


def test_refuses_non_tensor_output():
    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    with pytest.raises(UnsupportedModelError, match="one tensor"):
        load_classifier(torchscript_bytes(TwoOutputs(), (4,)), (4,))


def test_in_place_ops_are_kept_when_their_result_is_unused():
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            y.add_(1.0)  # TorchScript returns y, not add_'s result
            return y

    original = InPlace().eval()
    model = load_classifier(torchscript_bytes(original, (4,)), (4,))
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-6)


class _Everyday(nn.Module):
    """Layers users upload that scripting compiles with branches never taken: in-place
    activations, channel dropout, upsampling by size of a slice of the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mish = nn.Mish(inplace=True)
        self.celu = nn.CELU(inplace=True)
        self.drop = nn.Dropout2d(0.1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.celu(self.mish(self.stem(x))))
        z = nn.functional.relu6(self.mid(y), inplace=True)
        z = nn.functional.interpolate(z, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.head((z + y).mean((2, 3)))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1, enable_nested_tensor=False
        )
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(self.attention(tokens, tokens, tokens)[0].mean(1))


class _Normalised(nn.Module):
    """Norms other than BatchNorm (scripted F.group_norm copies a list: aten::list, 2026-12-05)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.group = nn.GroupNorm(4, 8)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.instance = nn.InstanceNorm2d(8, affine=True)
        self.layer = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.gelu(self.group(self.stem(x)))
        z = nn.functional.hardswish(self.instance(self.mid(y))) + nn.functional.silu(y)
        return self.head(self.layer(z.mean((2, 3))))


@pytest.mark.parametrize(
    "factory", [_Everyday, _Attention, _Normalised], ids=["everyday", "attention", "normalised"]
)
def test_scripted_everyday_layers_load_and_train(factory):
    torch.manual_seed(0)
    original = factory().eval()
    model = load_classifier(torchscript_bytes(original, (3, 16, 16)), (3, 16, 16))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)
    model.train()
    model(x).square().mean().backward()  # the plain path, not an inference-only fused op
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.get_submodule("head"), nn.Linear)


def test_a_model_traced_at_one_batch_size_is_refused_clearly():
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(2, -1))

    with pytest.raises(ModelRunError, match=r"batch size 1.*reshape"):
        load_classifier(torchscript_bytes(FixedBatch(), (12,), trace=True), (12,))


def test_a_float64_model_is_refused_naming_its_dtype():
    with pytest.raises(UnsupportedModelError, match=r"float64.*model.float"):
        load_classifier(torchscript_bytes(TinyMLP().double(), (12,)), (12,))


def test_a_dict_output_is_refused_as_not_one_tensor():
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(x)}

    with pytest.raises(UnsupportedModelError, match=r"one tensor.*returns dict"):
        load_classifier(torchscript_bytes(Named(), (4,)), (4,))


def test_a_model_gradients_cannot_pass_is_refused_before_training():
    class Fused(nn.Module):
        """Attention through the fused inference-only op, which has no derivative."""

        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 1, batch_first=True)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.attention
            y = torch._native_multi_head_attention(
                x, x, x, 4, 1, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias
            )[0]
            return self.fc(y.mean(1))

    data = torchscript_bytes(Fused().eval(), (3, 4))
    with pytest.raises(UnsupportedModelError, match="cannot train through") as caught:
        load_classifier(data, (3, 4))
    assert caught.value.field == "model"


def test_the_training_check_leaves_no_gradients():
    from kegnet_core.loading import check_trainable

    model = load_classifier(torchscript_bytes(TinyCNN(), (1, 8, 8)), (1, 8, 8))
    check_trainable(model, (1, 8, 8))
    assert all(p.grad is None for p in model.parameters())


class _Probabilities(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc2(torch.relu(self.fc1(x)))
        if self.how == "softmax":
            return torch.softmax(logits, dim=1)
        if self.how == "by hand":
            exp = (logits - logits.max(1, keepdim=True)[0]).exp()
            return exp / exp.sum(1, keepdim=True)
        return logits


@pytest.mark.parametrize("trace", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("how", ["softmax", "by hand"])
def test_a_model_answering_probabilities_trains_on_their_log(how, trace):
    import copy

    from kegnet_core.loading import train_on_log_probabilities, with_original_answers

    torch.manual_seed(0)
    original = _Probabilities(how).eval()
    model = load_classifier(torchscript_bytes(original, (6,), trace), (6,))
    assert train_on_log_probabilities(model, (6,))
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x).log(), atol=1e-5)
        student = copy.deepcopy(model)  # a student is a copy of the teacher's graph
        restored = with_original_answers(student)
        assert torch.allclose(restored(x), original(x), atol=1e-6)
        assert torch.allclose(student(x), original(x).log(), atol=1e-5)  # the copy is untouched
    scripted = torch.jit.script(restored)
    assert torch.allclose(scripted(x), original(x), atol=1e-6)


def test_a_model_answering_logits_is_left_as_it_is():
    from kegnet_core.loading import train_on_log_probabilities, with_original_answers

    model = load_classifier(torchscript_bytes(_Probabilities("logits"), (6,)), (6,))
    assert not train_on_log_probabilities(model, (6,))
    assert with_original_answers(model) is model
