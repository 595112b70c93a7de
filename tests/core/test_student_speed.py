"""The student saved for speed: BatchNorm folded, weights channels-last, slower layers kept dense."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import kegnet_core.stages as stages
from kegnet_core.checkpoint import Checkpoints
from kegnet_core.export import _BATCH_NORM, fold_batch_norms, save_student
from kegnet_core.loading import load_classifier
from kegnet_core.measure import parameter_count
from kegnet_core.spec import CompressionSpec, Prior
from kegnet_core.tucker import CompressionPlan, TuckerConv, apply_plan, plan_compression, plan_without

from .models import TinyCNN, TinyMLP, randomise_batchnorm, torchscript_bytes

SHAPE = (1, 8, 8)


def _loaded_cnn() -> fx.GraphModule:
    """TinyCNN as the pipeline sees an upload: loaded from TorchScript (functional batch_norm)."""
    torch.manual_seed(0)
    return load_classifier(torchscript_bytes(TinyCNN(), SHAPE), SHAPE)


def _norms(model: fx.GraphModule) -> int:
    return sum(node.op == "call_function" and node.target in _BATCH_NORM for node in model.graph.nodes)


def test_folding_takes_the_batch_norms_into_the_convolutions():
    teacher = _loaded_cnn()
    assert _norms(teacher) == 2
    folded, count = fold_batch_norms(teacher)
    assert count == 2 and _norms(folded) == 0
    assert _norms(teacher) == 2  # a copy: the teacher keeps its BatchNorms
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), teacher(x), rtol=1e-5, atol=1e-5)
    assert all(parameter.requires_grad for parameter in folded.parameters())  # fine-tunable still
    # Each BatchNorm's weight and bias (8 channels) are gone; the convolutions had biases already.
    assert parameter_count(folded) == parameter_count(teacher) - 2 * (8 + 8)


def test_folding_reaches_the_last_convolution_of_a_tucker_twin():
    teacher = _loaded_cnn()
    plan = plan_compression(teacher, layers=["block.0"], ranks={"block.0": [3, 3]})
    student = apply_plan(teacher, plan, n_iter_max=5)
    assert isinstance(student, fx.GraphModule)
    folded, count = fold_batch_norms(student)
    assert count == 2
    twin = folded.get_submodule("block.0")
    assert isinstance(twin, TuckerConv) and twin.last.bias is not None
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), student(x), rtol=1e-5, atol=1e-5)


def test_a_batch_norm_after_anything_but_a_convolution_stays():
    torch.manual_seed(0)
    model = load_classifier(torchscript_bytes(TinyMLP(), (12,)), (12,))
    folded, count = fold_batch_norms(model)
    assert count == 0 and _norms(folded) == _norms(model) == 1


def test_the_student_is_saved_folded_and_channels_last(tmp_path):
    teacher = _loaded_cnn()  # flattens its activations with `view`: made a reshape, so it can
    saved = save_student(teacher, tmp_path / "student.pt", SHAPE)
    assert saved.memory_format == "channels_last" and saved.batch_norms_folded == 2
    weights = [p for p in saved.module.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert "batch_norm" not in saved.module.code
    reloaded = torch.jit.load(str(tmp_path / "student.pt"))
    x = torch.randn(7, *SHAPE)  # plain contiguous inputs, as users send them
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), teacher(x), rtol=1e-4, atol=1e-5)


def test_a_model_that_cannot_run_channels_last_is_saved_as_laid_out(tmp_path):
    # A plain module (no graph to rewrite) whose `view` refuses channels-last activations.
    model = randomise_batchnorm(TinyCNN())
    saved = save_student(model, tmp_path / "student.pt", SHAPE)
    assert saved.memory_format == "contiguous" and saved.batch_norms_folded == 0
    assert save_student(TinyMLP().eval(), tmp_path / "mlp.pt", (12,)).memory_format == "contiguous"


class FourConvs(nn.Module):
    """Four 3x3 convolutions between a stem and a head: room to keep one dense at 2x."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 32, 3, padding=1)
        self.d = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.stem, self.a, self.b, self.c, self.d):
            x = torch.relu(conv(x))
        return self.head(x.mean((2, 3)))


def _validated() -> stages.Validated:
    torch.manual_seed(0)
    teacher = fx.symbolic_trace(FourConvs().eval())
    return stages.Validated(
        teacher=teacher,
        input_shape=SHAPE,
        n_classes=4,
        batch_norms=0,
        macs=100_000,
        prior=Prior.PROCEDURAL,
        plan=plan_compression(teacher),
        plan_ratio=2.0,
    )


def _plan(validated: stages.Validated) -> CompressionPlan:
    assert validated.plan is not None
    return validated.plan


def _timed(slower: set[str]):
    """Stand-in per-layer timings: the named layers twice as slow factorised, the others faster."""

    def timed(teacher, student, names, input_shape, **kwargs):
        assert kwargs["channels_last"] is True
        # The twin timed has the planned ranks' shapes.
        assert all(isinstance(student.get_submodule(name), TuckerConv) for name in names)
        return {name: (1.0, 2.0 if name in slower else 0.5) for name in names}

    return timed


def _spec(**kwargs) -> CompressionSpec:
    """A `default` spec with the layers that time slower factorised kept dense (off in presets)."""
    return CompressionSpec(
        input_shape=SHAPE, preset="default", overrides={"tucker.keep_slower_dense": True}, **kwargs
    )


def test_a_layer_slower_factorised_stays_dense_and_the_others_keep_the_ratio(monkeypatch):
    validated = _validated()
    planned = [layer.name for layer in _plan(validated).layers]
    assert {"c", "d"} <= set(planned)
    monkeypatch.setattr(stages, "layer_latency_ms", _timed({"c"}))
    stages.plan_for_speed(validated, _spec(), _spec().recipe())
    names = [layer.name for layer in _plan(validated).layers]
    assert "c" not in names and "d" in names
    assert _plan(validated).compression_ratio >= 2.0
    assert [(kept.name, kept.latency_ms) for kept in validated.kept_dense] == [("c", [1.0, 2.0])]
    assert validated.timing_batch == 64


def test_the_ratio_comes_first_when_every_layer_is_slower(monkeypatch):
    validated = _validated()
    planned = {layer.name for layer in _plan(validated).layers}
    monkeypatch.setattr(stages, "layer_latency_ms", _timed(planned))
    stages.plan_for_speed(validated, _spec(), _spec().recipe())
    assert _plan(validated).layers and _plan(validated).compression_ratio >= 2.0
    kept = {kept.name for kept in validated.kept_dense}
    assert kept and kept < planned and not kept & {layer.name for layer in _plan(validated).layers}


def test_named_layers_and_recipes_without_it_are_not_timed(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("timed")

    monkeypatch.setattr(stages, "layer_latency_ms", refuse)
    validated = _validated()
    before = validated.plan
    stages.plan_for_speed(validated, _spec(layers=["c", "d"]), _spec().recipe())
    for preset in ("default", "quick"):
        plain = CompressionSpec(input_shape=SHAPE, preset=preset)
        stages.plan_for_speed(validated, plain, plain.recipe())
    assert validated.plan is before and not validated.kept_dense


def test_a_resumed_run_takes_the_saved_choice(monkeypatch, tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints", "run")
    first = _validated()
    monkeypatch.setattr(stages, "layer_latency_ms", _timed({"c"}))
    stages.plan_for_speed(first, _spec(), _spec().recipe(), checkpoints=checkpoints)

    def refuse(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(stages, "layer_latency_ms", refuse)
    again = _validated()
    stages.plan_for_speed(again, _spec(), _spec().recipe(), checkpoints=checkpoints)
    assert again.plan == first.plan and again.kept_dense == first.kept_dense


def test_plan_without_keeps_the_ratio_or_says_it_cannot():
    validated = _validated()
    plan = _plan(validated)
    smaller = plan_without(validated.teacher, plan, ["c"], 2.0)
    assert smaller is not None and smaller.compression_ratio >= 2.0
    assert "c" not in {layer.name for layer in smaller.layers}
    every = [layer.name for layer in plan.layers]
    assert plan_without(validated.teacher, plan, every, 2.0) is None
    assert plan_without(validated.teacher, plan, every[1:], 50.0) is None


@pytest.mark.parametrize("macs, batch", [(26_000_000, 64), (1_800_000_000, 2), (10**12, 1)])
def test_big_teachers_are_timed_on_fewer_inputs(macs, batch):
    assert stages.timing_batch(macs) == batch


def test_the_report_says_in_a_sentence_how_the_file_is_laid_out():
    from kegnet_core.report import KeptDense, StudentForm

    form = StudentForm(
        batch_norms_folded=13,
        memory_format="channels_last",
        parameters=1000,
        kept_dense=[KeptDense(name="layers1.0.conv1", ranks=[11, 11], latency_ms=[2.19, 3.99])],
        timing_batch=64,
    ).described()
    assert "13 BatchNorm layers folded" in form.summary and "channels-last" in form.summary
    assert "at batch 64: layers1.0.conv1 (2.19 ms dense, 3.99 ms factorised)" in form.summary
    plain = StudentForm(batch_norms_folded=0, memory_format="contiguous", parameters=10).described()
    assert "kept dense" not in plain.summary and "as laid out" in plain.summary
    # It survives the report's round trip (the API and CLI read report.json back).
    assert StudentForm.model_validate_json(form.model_dump_json()) == form


class SharedConv(nn.Module):
    """One convolution called twice, a BatchNorm after its first call only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.relu(self.norm(self.conv(x))))
        return self.head(x.mean((2, 3)))


def test_a_convolution_called_twice_keeps_its_batch_norm_apart():
    model = fx.symbolic_trace(randomise_batchnorm(SharedConv()))
    folded, count = fold_batch_norms(model)
    assert count == 0
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_one_busy_round_does_not_keep_a_layer_dense(monkeypatch):
    rounds = iter([_timed({"c"}), _timed(set()), _timed(set())])

    def timed(*args, **kwargs):
        return next(rounds)(*args, **kwargs)

    validated = _validated()
    before = [layer.name for layer in _plan(validated).layers]
    monkeypatch.setattr(stages, "layer_latency_ms", timed)
    stages.plan_for_speed(validated, _spec(), _spec().recipe())
    assert [layer.name for layer in _plan(validated).layers] == before and not validated.kept_dense


class _ScaledInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x))).clone()
        y.mul_(3.0)  # its result unused: only the write matters
        return y.flatten(1)


def test_folding_keeps_an_in_place_op_whose_result_is_unused():
    torch.manual_seed(0)
    model = fx.symbolic_trace(randomise_batchnorm(_ScaledInPlace()).eval())
    for node in model.graph.nodes:  # as the loader marks them
        node.meta["mutates"] = node.target == "mul_"
    folded, count = fold_batch_norms(model)
    assert count == 1
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
