"""The student as optimised at load time, and the note a slower student gets."""

from __future__ import annotations

import pytest
import torch

from kegnet_core.errors import UnsupportedModelError
from kegnet_core.export import optimised_for_inference, save_student
from kegnet_core.report import Latency, Optimised
from kegnet_core.stages import LOAD_OPTIMISED, latency_note

from .models import TinyCNN


def test_the_optimised_form_answers_as_the_saved_student(tmp_path):
    torch.manual_seed(0)
    saved = tmp_path / "student.pt"
    save_student(TinyCNN().eval(), saved, (1, 8, 8))
    optimised, difference = optimised_for_inference(saved, (1, 8, 8))
    assert difference < 1e-4
    reference = torch.jit.load(str(saved))
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        assert torch.allclose(optimised(x), reference(x), rtol=1e-3, atol=1e-4)
    assert not list(optimised.parameters())  # frozen: a form to run, not to fine-tune


def test_a_model_that_cannot_be_optimised_gets_a_clear_error(tmp_path):
    broken = tmp_path / "student.pt"
    broken.write_bytes(b"not a model")
    with pytest.raises((UnsupportedModelError, RuntimeError, ValueError)):
        optimised_for_inference(broken, (1, 8, 8))


def test_only_a_slower_student_gets_a_note_naming_the_optimised_form():
    faster = Latency(before={"batch_1": 1.0, "batch_64": 50.0}, after={"batch_1": 1.1, "batch_64": 40.0})
    assert latency_note(faster, None) is None
    slower = Latency(before={"batch_1": 2.2, "batch_64": 57.1}, after={"batch_1": 2.5, "batch_64": 71.7})
    optimised = Optimised(
        latency_ms=Latency(
            before={"batch_1": 2.7, "batch_64": 49.5}, after={"batch_1": 5.44, "batch_64": 49.6}
        )
    )
    note = latency_note(slower, optimised)
    assert note is not None
    assert "1.26x slower than its teacher at batch 64" in note
    assert LOAD_OPTIMISED in note and "49.6 ms (the teacher, loaded the same way, 49.5 ms)" in note
    assert "5.44 ms against 2.50 ms for one input" in note
    assert LOAD_OPTIMISED not in (latency_note(slower, Optimised(error="no")) or "")


def test_each_layer_is_timed_dense_and_factorised_on_its_own_input():
    from kegnet_core.measure import layer_latency_ms
    from kegnet_core.tucker import apply_plan, plan_compression

    torch.manual_seed(0)
    teacher = torch.fx.symbolic_trace(TinyCNN().eval())
    plan = plan_compression(teacher, layers=["block.0"], ranks={"block.0": (2, 2)}, target_ratio=None)
    student = apply_plan(teacher, plan, n_iter_max=2)
    timed = layer_latency_ms(teacher, student, ["block.0"], (1, 8, 8), repeats=3)
    assert set(timed) == {"block.0"} and all(ms > 0 for ms in timed["block.0"])
    # Hooks are gone: the teacher runs as before.
    assert not teacher.get_submodule("block.0")._forward_pre_hooks


def test_the_note_names_the_factorised_layers_that_got_slower():
    from kegnet_core.report import LayerReport

    def layer(name: str, ms: list[float]) -> LayerReport:
        return LayerReport(
            name=name,
            kind="conv2d",
            weight_shape=[8, 8, 3, 3],
            ranks=[4, 4],
            params_before=1,
            params_after=1,
            latency_ms=ms,
        )

    slower = Latency(before={"batch_64": 10.0}, after={"batch_64": 12.0})
    note = latency_note(slower, None, [layer("a", [1.0, 0.5]), layer("b", [0.4, 0.9])])
    assert note is not None and "b 0.40 -> 0.90 ms" in note and "a 1.00" not in note
