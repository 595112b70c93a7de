"""Turn any TorchScript classifier into an editable, trainable ``torch.fx`` model.

TorchScript submodules cannot be swapped and ``torch.fx`` cannot trace a
ScriptModule, so we read the TorchScript graph itself: inline every method,
then replay it node by node into an fx graph of ``torch.ops.aten`` calls.
Why this route and not ``torch.export`` is in docs/design.md; in short, it
keeps the batch dimension dynamic (``aten::size`` stays an op), keeps the
weights as parameters under their original module paths, and uses no private
export API.

While building, every fx node is also evaluated on an example input, so that
shape checks and branches the graph takes on ``self.training`` or on tensor
ranks can be resolved to the branch the model really runs in eval mode.
Afterwards each ``conv1d`` / ``conv2d`` / ``linear`` call whose weights belong to it
alone is lifted back into a real ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` at its module path
(``layers3.0.conv1``), so compression can swap modules by name.
"""

from __future__ import annotations

import copy
import io
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import fx, nn

from kegnet_core.archive import ArchiveLimits, inspect_torchscript_archive
from kegnet_core.errors import InvalidModelFileError, ModelRunError, UnsupportedModelError
from kegnet_core.operators import check_script_module

ATEN = torch.ops.aten
MAX_UNROLL = 10_000


@dataclass(frozen=True)
class _ModuleRef:
    """A (sub)module of the ScriptModule and its dotted path ('' is the root)."""

    path: str
    module: torch.jit.ScriptModule


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _format(fmt: str, *args: Any) -> str:
    return fmt.format(*args)


# Scalar TorchScript ops, evaluated in Python (when their inputs are known) or
# emitted as Python operators (when they depend on a runtime shape), because
# ``torch.ops.aten.add(1, 2)`` picks a Tensor overload when called eagerly.
_SCALAR_OPS: dict[str, Callable[..., Any]] = {
    "aten::add": operator.add,
    "aten::sub": operator.sub,
    "aten::mul": operator.mul,
    "aten::div": operator.truediv,
    "aten::floordiv": operator.floordiv,
    "aten::remainder": operator.mod,
    "aten::pow": operator.pow,
    "aten::neg": operator.neg,
    "aten::eq": operator.eq,
    "aten::ne": operator.ne,
    "aten::lt": operator.lt,
    "aten::le": operator.le,
    "aten::gt": operator.gt,
    "aten::ge": operator.ge,
    "aten::__and__": operator.and_,
    "aten::__or__": operator.or_,
    "aten::__xor__": operator.xor,
    "aten::__not__": operator.not_,
    "aten::__is__": operator.is_,
    "aten::__isnot__": operator.is_not,
    "aten::__contains__": operator.contains,
    "aten::__getitem__": operator.getitem,
    "aten::len": len,
    "aten::list": list,  # a copy of a list (scripted F.group_norm: list(input.size()[2:]))
    "aten::Int": int,
    "aten::Float": float,
    "aten::Bool": bool,
    "aten::floor": math.floor,
    "aten::ceil": math.ceil,
    "aten::sqrt": math.sqrt,
    "aten::format": _format,
    "aten::str": str,
    "prim::min": min,
    "prim::max": max,
    "prim::abs": abs,
}

# Ops whose value can always be read off the example, because it does not
# depend on the batch size: ranks, dtypes, layouts.
_STATIC_OF_EXAMPLE = {"aten::dim", "prim::dtype", "prim::layout", "prim::is_cuda", "prim::requires_grad"}

# Ops that only warn or check and have no result we need.
_IGNORED = {"aten::warn", "prim::AutogradAllZero", "aten::_assert_tensor_metadata"}

# Queries of the autograd state, answered as the student will be trained: with gradients on, so a
# layer with a fused inference-only path (nn.MultiheadAttention's, whose fused op has no
# derivative) takes its plain, differentiable one.
_TRAINING_STATE = {"aten::is_grad_enabled": True, "aten::is_autocast_enabled": False}


def _contains_node(value: Any) -> bool:
    if isinstance(value, fx.Node):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_node(item) for item in value)
    return False


class _GraphBuilder:
    """Replays an inlined TorchScript graph into an fx graph, tracking examples.

    TorchScript values are in SSA form, so one environment (TorchScript value
    -> fx node or Python constant) serves the graph and all nested blocks.
    """

    def __init__(self, script: torch.jit.ScriptModule, example: torch.Tensor) -> None:
        self.script = script
        self.example = example
        self.graph = fx.Graph()
        self.env: dict[torch._C.Value, Any] = {}
        self.examples: dict[fx.Node, Any] = {}
        self.parameters = {name for name, _ in script.named_parameters()}
        self.tensors: dict[str, tuple[torch.Tensor, bool]] = {}
        self.attr_nodes: dict[str, fx.Node] = {}
        self.input_node = self.graph.placeholder("x")
        self.examples[self.input_node] = example
        self.device_node: fx.Node | None = None
        self.constant_count = 0
        self.handlers: dict[str, Callable[[torch._C.Node, list[Any]], list[Any]]] = {
            "prim::Constant": self._prim_constant,
            "prim::GetAttr": self._prim_get_attr,
            "prim::ListConstruct": self._prim_list_construct,
            "prim::TupleConstruct": self._prim_tuple_construct,
            "prim::ListUnpack": self._prim_list_unpack,
            "prim::TupleIndex": self._prim_tuple_index,
            "aten::append": self._aten_append,
            "prim::Uninitialized": self._prim_uninitialized,
            "prim::unchecked_cast": self._prim_unchecked_cast,
            "prim::device": self._prim_device,
            "prim::RaiseException": self._prim_raise_exception,
            "prim::If": self._prim_if,
            "prim::Loop": self._prim_loop,
            "prim::TupleUnpack": self._prim_list_unpack,
            "prim::DictConstruct": self._prim_dict_construct,
        }

    # -- values -------------------------------------------------------------
    def concrete(self, value: Any) -> Any:
        """``value`` with every fx node replaced by its example value."""
        if isinstance(value, fx.Node):
            return self.examples[value]
        if isinstance(value, list):
            return [self.concrete(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.concrete(item) for item in value)
        return value

    def concrete_dict(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: self.concrete(value) for name, value in values.items()}

    def emit(
        self, target: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any] | None = None
    ) -> fx.Node:
        args = tuple(self._portable(arg) for arg in args)
        kwargs = {name: self._portable(value) for name, value in (kwargs or {}).items()}
        node = self.graph.call_function(target, args, kwargs)
        try:
            self.examples[node] = target(*self.concrete(args), **self.concrete_dict(kwargs))
        except Exception as exc:  # the model itself fails on the example
            raise ModelRunError(
                f"the model failed on an input of shape {tuple(self.example.shape[1:])} "
                f"in {getattr(target, '__name__', target)}: {exc}",
                field="input_shape",
            ) from exc
        return node

    def _portable(self, value: Any) -> Any:
        """Replace a fixed device (baked in by torch.jit.trace) by the input's."""
        if isinstance(value, torch.device):
            if self.device_node is None:
                self.device_node = self.graph.call_function(torch.ops.prim.device, (self.input_node,))
                self.examples[self.device_node] = self.example.device
            return self.device_node
        if isinstance(value, list):
            return [self._portable(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self._portable(item) for item in value)
        return value

    def tensor_attr(self, path: str, tensor: torch.Tensor, is_param: bool) -> fx.Node:
        node = self.attr_nodes.get(path)
        if node is None:
            self.tensors[path] = (tensor, is_param)
            node = self.graph.get_attr(path)
            # A parameter's example requires grad, as the student's will when it trains.
            example = tensor.detach().clone()
            self.examples[node] = example.requires_grad_(is_param and tensor.is_floating_point())
            self.attr_nodes[path] = node
        return node

    # -- graph walking --------------------------------------------------------
    def run(self, graph: torch._C.Graph) -> fx.Node:
        inputs = list(graph.inputs())
        if len(inputs) != 2:
            raise UnsupportedModelError(
                f"forward must take exactly one tensor input, it takes {len(inputs) - 1}",
                field="model",
            )
        self.env[inputs[0]] = _ModuleRef("", self.script)
        self.env[inputs[1]] = self.input_node
        for node in graph.nodes():
            self.run_node(node)
        outputs = [self.env[value] for value in graph.return_node().inputs()]
        result = outputs[0] if len(outputs) == 1 else tuple(outputs)
        if not isinstance(result, fx.Node) or not isinstance(self.examples[result], torch.Tensor):
            raise UnsupportedModelError(
                "the model must return one tensor of class scores (logits); "
                f"it returns {type(self.concrete(result)).__name__}",
                field="model",
            )
        return result

    def run_block(self, block: torch._C.Block, args: Sequence[Any]) -> list[Any]:
        for value, arg in zip(block.inputs(), args, strict=True):
            self.env[value] = arg
        for node in block.nodes():
            self.run_node(node)
        return [self.env[value] for value in block.returnNode().inputs()]

    def run_node(self, node: torch._C.Node) -> None:
        kind = node.kind()
        inputs = [self.env[value] for value in node.inputs()]
        outputs = list(node.outputs())
        handler = self.handlers.get(kind)
        if handler is not None:
            results = handler(node, inputs)
        elif kind in _TRAINING_STATE:
            results = [_TRAINING_STATE[kind]]
        elif kind in _IGNORED:
            results = [None] * len(outputs)
        elif kind in _STATIC_OF_EXAMPLE:
            results = [_static_of_example(kind, self.concrete(inputs[0]))]
        elif kind in ("aten::__is__", "aten::__isnot__"):
            # Identity (``x is None`` on an Optional[Tensor]) is known when the graph is built.
            left, right = self.concrete(inputs[0]), self.concrete(inputs[1])
            results = [(left is right) if kind == "aten::__is__" else (left is not right)]
        elif kind == "aten::slice" and isinstance(self.concrete(inputs[0]), (list, tuple)):
            results = [self.emit(_list_slice, inputs) if _contains_node(inputs) else _list_slice(*inputs)]
        elif kind in _SCALAR_OPS and not any(_is_tensor_value(value) for value in node.inputs()):
            function = _SCALAR_OPS[kind]
            results = [self.emit(function, inputs) if _contains_node(inputs) else function(*inputs)]
        elif kind.startswith(("aten::", "prim::")):
            results = self._op_generic(node, inputs, len(outputs))
        else:
            raise UnsupportedModelError(f"the model uses {kind}, which kegnet cannot rewrite{_where(node)}")
        for value, result in zip(outputs, results, strict=True):
            self.env[value] = result

    def _op_generic(self, node: torch._C.Node, inputs: list[Any], n_out: int) -> list[Any]:
        namespace, name = node.kind().split("::", 1)
        packet = getattr(getattr(torch.ops, namespace), name, None)
        if packet is None:
            raise UnsupportedModelError(
                f"the model uses {node.kind()}, which kegnet cannot rewrite{_where(node)}"
            )
        args, kwargs = _split_keyword_only(node, inputs)
        if not _contains_node(inputs) and not any(_is_tensor_value(value) for value in node.outputs()):
            try:
                result = packet(*args, **kwargs)
            except Exception as exc:
                raise UnsupportedModelError(
                    f"the model uses {node.kind()} in a way kegnet cannot rewrite{_where(node)}: "
                    f"{_last_line(exc)}",
                    field="model",
                ) from exc
        else:
            result = self.emit(packet, args, kwargs)
            if _mutates(node):
                result.meta["mutates"] = True  # in-place: kept even when its result is unused
        if n_out == 1:
            return [result]
        if isinstance(result, fx.Node):
            return [self.emit(operator.getitem, [result, index]) for index in range(n_out)]
        return list(result)

    # -- prim ops --------------------------------------------------------------
    def _prim_constant(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        value = node.output().toIValue()
        if isinstance(value, torch.Tensor):
            self.constant_count += 1
            return [self.tensor_attr(f"_tensor_constant{self.constant_count}", value, False)]
        return [value]

    def _prim_get_attr(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        owner, name = inputs[0], node.s("name")
        if not isinstance(owner, _ModuleRef):
            raise UnsupportedModelError(f"attribute {name!r} of a non-module{_where(node)}")
        if name == "training":
            return [False]  # the teacher is read, and the student tuned, in eval mode
        path = _join(owner.path, name)
        value = getattr(owner.module, name)
        if isinstance(value, torch.jit.ScriptModule):
            return [_ModuleRef(path, value)]
        if isinstance(value, torch.Tensor):
            return [self.tensor_attr(path, value, path in self.parameters)]
        if value is None or isinstance(
            value, (bool, int, float, str, list, tuple, torch.device, torch.dtype)
        ):
            return [value]
        raise UnsupportedModelError(
            f"attribute {path!r} is a {type(value).__name__}, which kegnet cannot rewrite"
        )

    def _prim_list_construct(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        return [list(inputs)]

    def _prim_dict_construct(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        return [dict(zip(inputs[::2], inputs[1::2], strict=True))]

    def _prim_tuple_construct(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        return [tuple(inputs)]

    def _prim_list_unpack(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        container = inputs[0]
        if isinstance(container, fx.Node):
            count = len(list(node.outputs()))
            return [self.emit(operator.getitem, [container, index]) for index in range(count)]
        return list(container)

    def _prim_tuple_index(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        if _contains_node(inputs):
            return [self.emit(operator.getitem, inputs)]
        return [inputs[0][inputs[1]]]

    def _aten_append(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        container, item = inputs
        if not isinstance(container, list):
            raise UnsupportedModelError(f"append to a runtime list{_where(node)}")
        container.append(item)
        return [container]

    def _prim_uninitialized(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        return [None]

    def _prim_unchecked_cast(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        return [inputs[0]]

    def _prim_device(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        return [self.emit(torch.ops.prim.device, inputs)]

    def _prim_raise_exception(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        message = self.concrete(inputs[0]) if inputs else "an exception"
        raise ModelRunError(
            f"the model raised on an input of shape {tuple(self.example.shape[1:])}: {message}",
            field="input_shape",
        )

    def _prim_if(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        # A condition known only at run time takes the branch the example
        # takes.  That is exact for shape guards (a wrong shape raises either
        # way); value-dependent branches are caught by the output comparison
        # that follows the conversion.
        condition = bool(self.concrete(inputs[0]))
        then_block, else_block = node.blocks()
        return self.run_block(then_block if condition else else_block, [])

    def _prim_loop(self, node: torch._C.Node, inputs: list[Any]) -> list[Any]:
        trip_count, condition, *carried = self.concrete(inputs[:2]) + inputs[2:]
        if trip_count > MAX_UNROLL:
            raise UnsupportedModelError(f"a loop runs {trip_count} times, over {MAX_UNROLL}{_where(node)}")
        (body,) = node.blocks()
        iteration = 0
        while condition and iteration < trip_count:
            results = self.run_block(body, [iteration, *carried])
            condition, carried = bool(self.concrete(results[0])), results[1:]
            iteration += 1
        return carried


def _split_keyword_only(node: torch._C.Node, inputs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for calling the op of ``node`` from Python."""
    try:
        schema = torch._C.parse_schema(node.schema())
    except RuntimeError:  # "(no schema)": every argument is positional
        return inputs, {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for argument, value in zip(schema.arguments, inputs, strict=False):
        if argument.kwarg_only:
            kwargs[argument.name] = value
        else:
            args.append(value)
    return args, kwargs


def _mutates(node: torch._C.Node) -> bool:
    """Whether the op writes to one of its inputs (``add_``, ``copy_``, ``out=`` forms)."""
    try:
        return bool(torch._C.parse_schema(node.schema()).is_mutable)
    except RuntimeError:
        return node.kind().endswith("_")


def _is_tensor_value(value: torch._C.Value) -> bool:
    jit_type = value.type()
    if isinstance(jit_type, torch._C.OptionalType):
        jit_type = jit_type.getElementType()
    return isinstance(jit_type, torch._C.TensorType)


def _static_of_example(kind: str, tensor: torch.Tensor) -> Any:
    if kind == "aten::dim":
        return tensor.dim()
    if kind == "prim::dtype":
        return tensor.dtype
    if kind == "prim::layout":
        return tensor.layout
    if kind == "prim::is_cuda":
        return tensor.is_cuda
    return tensor.requires_grad


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1].strip() if lines else type(exc).__name__


def _list_slice(
    values: list[int], start: int | None = None, end: int | None = None, step: int = 1
) -> list[int]:
    """``aten::slice.t``: a slice of a list of sizes (``x.shape[2:]``), which
    ``torch.ops.aten.slice`` cannot take from Python.  Typed for TorchScript, which compiles it
    with the rest of the student."""
    return values[start:end:step]


def _where(node: torch._C.Node) -> str:
    lines = str(node.sourceRange()).strip().splitlines()
    return f" (at: {lines[0].strip()})" if lines else ""


def _build_root(tensors: dict[str, tuple[torch.Tensor, bool]]) -> nn.Module:
    """A plain module tree holding each tensor at its dotted path."""
    root = nn.Module()
    for path, (tensor, is_param) in tensors.items():
        *parents, leaf = path.split(".")
        owner = root
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        data = tensor.detach().clone()
        if is_param:
            owner.register_parameter(leaf, nn.Parameter(data, requires_grad=data.is_floating_point()))
        else:
            owner.register_buffer(leaf, data)
    return root


def _constant_args(node: fx.Node, start: int) -> bool:
    return not _contains_node(list(node.args[start:]))


def _owned_attr(node: Any, gm: fx.GraphModule, user: fx.Node) -> str | None:
    """The get_attr target of ``node`` if it is a parameter used only by ``user``."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or set(node.users) != {user}:
        return None
    target = str(node.target)
    *_, leaf = target.split(".")
    owner = gm.get_submodule(target.rsplit(".", 1)[0]) if "." in target else gm
    return target if leaf in owner._parameters else None


def _module_path(weight_target: str) -> str:
    """Where a lifted layer goes: its weight's owner (``conv3.weight`` -> ``conv3``)."""
    if weight_target.endswith(".weight"):
        return weight_target[: -len(".weight")]
    return weight_target + "_module"


def _submodule_or_none(gm: fx.GraphModule, path: str) -> nn.Module | None:
    try:
        return gm.get_submodule(path)
    except AttributeError:
        return None


def _lift_layer(gm: fx.GraphModule, node: fx.Node) -> None:
    """Replace a functional conv1d / conv2d / linear call by a real module at its path."""
    target = node.target
    args = list(node.args)
    weight_target = _owned_attr(args[1], gm, node)
    if weight_target is None:
        return
    bias_target: str | None = None
    if len(args) > 2 and args[2] is not None:
        bias_target = _owned_attr(args[2], gm, node)
        if bias_target is None:
            return
    weight = gm.get_parameter(weight_target)
    bias = gm.get_parameter(bias_target) if bias_target else None
    module: nn.Linear | nn.Conv1d | nn.Conv2d
    if target is ATEN.linear:
        if weight.dim() != 2:
            return
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        if weight.dim() not in (3, 4) or not _constant_args(node, 3):
            return
        options: list[Any] = list(args[3:7])  # stride, padding, dilation, groups
        if target not in (ATEN.conv1d, ATEN.conv2d, ATEN._convolution_mode):
            # aten::_convolution / aten::convolution (torch.jit.trace): stride, padding,
            # dilation, transposed, output_padding, groups
            if args[6]:
                return  # a transposed convolution
            options = [args[3], args[4], args[5], args[8]]
        stride, padding, dilation, groups = options
        module = (nn.Conv1d if weight.dim() == 3 else nn.Conv2d)(
            int(weight.shape[1]) * int(groups),
            int(weight.shape[0]),
            tuple(int(size) for size in weight.shape[2:]),  # type: ignore[arg-type]
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias is not None,
        )
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None and module.bias is not None:
            module.bias.copy_(bias)
    path = _module_path(weight_target)
    owned = {weight_target, bias_target} - {None}
    existing = _submodule_or_none(gm, path)
    if existing is not None:
        tensors = [f"{path}.{name}" for name, _ in existing.named_parameters()]
        tensors += [f"{path}.{name}" for name, _ in existing.named_buffers()]
        if set(tensors) - owned:
            return  # the path holds other tensors too; keep the functional call
    for attr in owned:
        owner_path, _, leaf = str(attr).rpartition(".")
        delattr(gm.get_submodule(owner_path) if owner_path else gm, leaf)
    if existing is not None:
        gm.set_submodule(path, module)
    else:
        _add_module(gm, path, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, (args[0],))
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    for attr_node in args[1:3]:
        if isinstance(attr_node, fx.Node) and not attr_node.users:
            gm.graph.erase_node(attr_node)


def _add_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    owner: nn.Module = gm
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    owner.add_module(leaf, module)


LIFTABLE = (
    ATEN.conv1d,
    ATEN.conv2d,
    ATEN._convolution_mode,
    ATEN._convolution,
    ATEN.convolution,
    ATEN.linear,
)


def script_to_graph_module(script: torch.jit.ScriptModule, input_shape: Sequence[int]) -> fx.GraphModule:
    """Convert a loaded ScriptModule into an equivalent editable GraphModule."""
    script = script.eval()
    graph = script.graph.copy()
    torch._C._jit_pass_inline(graph)
    example = torch.randn(2, *input_shape)
    builder = _GraphBuilder(script, example)
    with torch.no_grad():
        output = builder.run(graph)
    builder.graph.output(output)
    builder.graph.eliminate_dead_code(
        is_impure_node=lambda node: node.is_impure() or node.meta.get("mutates", False)
    )
    gm = fx.GraphModule(_build_root(builder.tensors), builder.graph, class_name="Classifier")
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in LIFTABLE:
            _lift_layer(gm, node)
    gm.graph.lint()
    gm.recompile()
    return gm


def load_torchscript(
    source: str | Path | bytes | BinaryIO, limits: ArchiveLimits | None = None
) -> torch.jit.ScriptModule:
    """Load a TorchScript archive on the CPU after checking its layout, and refuse it if any of its
    methods uses an operator outside the allow-list (:mod:`kegnet_core.operators`).

    Loading compiles the code but runs none of it; the check comes before any call.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    inspect_torchscript_archive(source, limits)
    try:
        module = torch.jit.load(source, map_location="cpu")
    except Exception as exc:
        raise InvalidModelFileError(f"torch.jit.load could not read the model: {exc}", field="model") from exc
    check_script_module(module)
    return module.eval()


def check_same_function(
    reference: nn.Module | torch.jit.ScriptModule,
    candidate: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: float = 1e-5,
    seed: int = 0,
) -> float:
    """Compare two models on random inputs; return the largest difference.

    The difference is relative to the largest output magnitude (at least 1),
    so that big logits are held to the same number of significant digits.
    """
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for batch in batch_sizes:
            x = torch.randn(batch, *input_shape, generator=generator)
            try:
                expected = reference(x)
            except Exception as exc:  # e.g. traced with its example's batch size baked into a reshape
                raise ModelRunError(
                    f"the model fails at batch size {batch} (it ran at batch size 2): {_last_line(exc)}; "
                    "a model traced with torch.jit.trace may have its example's batch size fixed in a "
                    "reshape (use x.flatten(1) or x.view(x.size(0), -1)), or script it",
                    field="model",
                ) from exc
            actual = candidate(x)
            if not isinstance(expected, torch.Tensor) or expected.shape != actual.shape:
                raise UnsupportedModelError(
                    f"the rewritten model's output shape {tuple(actual.shape)} differs from the "
                    f"original's at batch size {batch}"
                )
            scale = max(1.0, float(expected.abs().max()))
            worst = max(worst, float((expected - actual).abs().max()) / scale)
    if not worst <= tolerance:
        raise UnsupportedModelError(
            f"the rewritten model differs from the original by {worst:.3g} (limit {tolerance:g}); "
            "it may branch on its input's values"
        )
    return worst


def load_classifier(
    source: str | Path | bytes | BinaryIO,
    input_shape: Sequence[int],
    *,
    limits: ArchiveLimits | None = None,
) -> fx.GraphModule:
    """Load a TorchScript classifier as an editable model with the same function.

    Raises :class:`InvalidModelFileError` for files that are not TorchScript,
    :class:`ModelRunError` when the model fails on ``input_shape`` and
    :class:`UnsupportedModelError` when its graph cannot be rewritten.
    """
    if not input_shape or any(int(size) <= 0 for size in input_shape):
        raise ModelRunError(
            f"input_shape must be positive sizes, got {list(input_shape)}", field="input_shape"
        )
    script = load_torchscript(source, limits)
    kinds = sorted({str(p.dtype).removeprefix("torch.") for p in script.parameters()} - {"float32"})
    if kinds:
        raise UnsupportedModelError(
            f"the model's weights are {', '.join(kinds)}; kegnet compresses float32 models "
            "(save it after model.float())",
            field="model",
        )
    gm = script_to_graph_module(script, input_shape)
    check_same_function(script, gm, input_shape)
    check_trainable(gm, input_shape)
    return gm


def check_trainable(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Refuse a model that gradients cannot pass through, before any training.

    Synthesis differentiates the teacher with respect to its input and distillation the student
    with respect to its weights; one backward pass on two random inputs finds an operator with
    no derivative now rather than minutes into the job.  The model's gradients are left clear."""
    x = torch.randn(2, *input_shape, requires_grad=True)
    try:
        with torch.enable_grad():
            output = model(x)
            if output.requires_grad:
                output.float().sum().backward()
    except RuntimeError as exc:
        raise UnsupportedModelError(
            f"kegnet cannot train through the model: {_last_line(exc)}", field="model"
        ) from exc
    finally:
        for parameter in model.parameters():
            parameter.grad = None


# A classifier that answers in probabilities (it ends in softmax) is trained on their logarithm:
# the losses and the quality estimate read a model's answers as logits, and the softmax of
# probabilities is nearly flat (a textures CNN with a softmax appended learned nothing in
# distillation: docs/design.md).  The nodes that say so carry this mark, and every file written
# of the model has its answers as the user's model gave them.
_LOG_OF_PROBABILITIES = "kegnet_log_of_probabilities"
_LOG_FORMS = {ATEN.softmax: ATEN.log_softmax, ATEN._softmax: ATEN._log_softmax}
_PROBABILITY_FLOOR = 1e-30


def answers_probabilities(model: nn.Module, input_shape: Sequence[int], *, seed: int = 0) -> bool:
    """Whether ``model``'s answers on random inputs are probabilities: in [0, 1], each row
    summing to 1."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, *input_shape, generator=generator)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        answers = model(x.to(device)).float()
    if answers.dim() != 2 or answers.size(1) < 2:
        return False
    sums = answers.sum(1)
    return bool(answers.min() >= 0 and answers.max() <= 1 and (sums - 1).abs().max() <= 1e-4)


def train_on_log_probabilities(model: fx.GraphModule, input_shape: Sequence[int]) -> bool:
    """Where ``model`` answers in probabilities, make it answer their logarithm, in place: its
    final softmax becomes log-softmax, or a log is appended.  Returns whether it did.
    :func:`with_original_answers` undoes it."""
    if not answers_probabilities(model, input_shape):
        return False
    output = next(node for node in model.graph.nodes if node.op == "output")
    result = output.args[0]
    assert isinstance(result, fx.Node)
    if result.op == "call_function" and result.target in _LOG_FORMS and len(result.users) == 1:
        result.target = _LOG_FORMS[result.target]
        result.meta[_LOG_OF_PROBABILITIES] = "softmax"
    else:
        with model.graph.inserting_before(output):
            floor = model.graph.call_function(ATEN.clamp_min, (result, _PROBABILITY_FLOOR))
            log = model.graph.call_function(ATEN.log, (floor,))
        floor.meta[_LOG_OF_PROBABILITIES] = "floor"
        log.meta[_LOG_OF_PROBABILITIES] = "log"
        output.args = (log,)
    model.recompile()
    return True


def with_original_answers(model: nn.Module) -> nn.Module:
    """``model`` answering as the user's model did (a copy where it was changed by
    :func:`train_on_log_probabilities`; ``model`` itself otherwise)."""
    if not isinstance(model, fx.GraphModule) or not any(
        _LOG_OF_PROBABILITIES in node.meta for node in model.graph.nodes
    ):
        return model
    model = copy.deepcopy(model)
    output = next(node for node in model.graph.nodes if node.op == "output")
    for node in reversed(list(model.graph.nodes)):
        mark = node.meta.pop(_LOG_OF_PROBABILITIES, None)
        if mark == "softmax":
            node.target = next(plain for plain, log in _LOG_FORMS.items() if log is node.target)
        elif mark == "log":
            output.args = (node.args[0].args[0],)  # log(clamp_min(answer)) -> answer
            floor = node.args[0]
            model.graph.erase_node(node)
            model.graph.erase_node(floor)
    model.recompile()
    return model
