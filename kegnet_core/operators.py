"""The operators an uploaded model may use: pure tensor math and control flow, nothing else.

A TorchScript file is a program.  Before anything runs it, every operator it
can call is checked against :data:`ALLOWED`: file, process and network
access, printing, custom ``torch.ops`` namespaces and anything else not
plainly a pure function are refused with ``forbidden_operator``, naming the
operator and the method it is in.  The list errs on the side of refusing; a
legitimate model outside it gets a message that says which op and why.

Two walks use the one list:

* :func:`check_archive_code` reads the archive's serialised code (a subset of
  Python syntax) with :mod:`ast`, without torch, so the API can refuse an
  upload at once.
* :func:`check_script_module` walks every graph of every method of every
  submodule, with calls inlined and nested blocks entered, as torch compiled
  them; the worker runs it before the model is ever called.

This module imports torch only inside :func:`check_script_module`.
"""

from __future__ import annotations

import ast
import copy
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kegnet_core.errors import KegnetError

if TYPE_CHECKING:
    import torch


class ForbiddenOperatorError(KegnetError):
    """The model calls an operator outside the allow-list."""

    code = "forbidden_operator"
    default_field = "model"


# Pure tensor math of classifiers (aten::), by family.  In-place forms
# (``relu_``) are pure on the values they get; writes to the model's own state
# are refused separately (prim::SetAttr).
_MATH = """
add add_ sub sub_ rsub mul mul_ div div_ floor_divide remainder fmod neg abs pow pow_ sqrt rsqrt exp exp2
expm1 log log2 log10 log1p reciprocal sign square clamp clamp_ clamp_min clamp_max clip clip_ minimum
maximum floor ceil round trunc frac lerp addcmul addcdiv sin cos tan tanh tanh_ sinh cosh asin acos atan
atan2 erf erfc erfinv sigmoid sigmoid_ logit hypot where masked_fill masked_fill_ nan_to_num
eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_not isfinite isnan isinf
all any sum mean prod std var var_mean std_mean norm linalg_vector_norm frobenius_norm max min amax amin
argmax argmin logsumexp cumsum cumprod topk sort argsort median kthvalue mode
"""
_LAYERS = """
conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d _convolution _convolution_mode
convolution
scaled_dot_product_attention
linear matmul mm bmm addmm addmv addbmm baddbmm mv dot einsum bilinear embedding embedding_bag
batch_norm layer_norm group_norm instance_norm native_batch_norm native_layer_norm
relu relu_ relu6 hardtanh hardtanh_ leaky_relu leaky_relu_ elu elu_ selu selu_ celu gelu silu silu_
mish hardswish hardswish_ hardsigmoid hardsigmoid_ softplus softsign softmax log_softmax
_softmax _log_softmax prelu glu threshold threshold_
relu6_ mish_ celu_ log_sigmoid hardshrink softshrink rrelu rrelu_
dropout dropout_ feature_dropout feature_dropout_ alpha_dropout alpha_dropout_ feature_alpha_dropout
feature_alpha_dropout_
max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices avg_pool1d avg_pool2d
avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
adaptive_max_pool2d adaptive_max_pool3d lp_pool2d pixel_shuffle pixel_unshuffle channel_shuffle
upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_bilinear2d upsample_bicubic2d
upsample_linear1d upsample_trilinear3d _upsample_nearest_exact1d _upsample_nearest_exact2d
_upsample_nearest_exact3d _upsample_bilinear2d_aa _upsample_bicubic2d_aa _upsample_lanczos2d_aa im2col col2im
__interpolate interpolate grid_sampler affine_grid_generator pad constant_pad_nd reflection_pad1d
reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d replication_pad3d cosine_similarity
pairwise_distance cdist
lstm gru rnn_tanh rnn_relu
_native_multi_head_attention _transformer_encoder_layer_fwd _nested_tensor_from_mask
_nested_tensor_from_mask_left_aligned to_padded_tensor is_grad_enabled is_autocast_enabled
"""
_SHAPES = """
view reshape flatten unflatten squeeze squeeze_ unsqueeze unsqueeze_ permute transpose transpose_ t
contiguous expand expand_as repeat repeat_interleave tile cat concat concatenate stack hstack vstack
chunk split split_with_sizes unbind narrow slice select index index_select gather take_along_dim
roll flip movedim swapaxes diagonal diag tril triu reshape_as view_as unsafe_chunk unsafe_split
masked_select nonzero size dim numel len __getitem__ list __len__ __contains__ __is__ __isnot__
__not__ __and__ __or__ __xor__ __derive_index __range_length Int Float Bool ScalarImplicit
to type_as detach detach_ clone copy_ fill_ zero_ float int long double half bool item
zeros zeros_like ones ones_like full full_like empty empty_like arange linspace eye tensor
IntImplicit scalar_tensor new_zeros new_ones new_full new_empty lift_fresh lift_fresh_copy alias
one_hot floordiv format str warn append extend insert pop dict keys values items
__getitem__ __setitem__ device is_floating_point dtype requires_grad_
"""
_PRIM = """
Constant GetAttr If Loop ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex
DictConstruct Uninitialized unchecked_cast RaiseException device dtype NumToTensor min max
shape dim layout is_cuda isinstance CallMethod CallFunction Enter Exit Return BroadcastSizes
ListIndex TupleSlice abs data requires_grad Guard is_nested type
"""

ALLOWED: frozenset[str] = frozenset(
    [f"aten::{name}" for family in (_MATH, _LAYERS, _SHAPES) for name in family.split()]
    + [f"prim::{name}" for name in _PRIM.split()]
)

# Why some operators people meet are refused (the message names the reason).
REASONS = {
    "aten::from_file": "it reads a file on the server",
    "aten::save": "it writes a file",
    "aten::load": "it reads a file",
    "prim::Print": "it prints to the server's logs",
    "prim::SetAttr": "it changes the model's own state between calls",
    "prim::PythonOp": "it calls back into Python",
    "prim::profile": "it is not plain computation",
}

# Names the serialised code calls as plain functions that are TorchScript
# builtins (lowered to prim:: and aten:: operators above).
_BUILTINS = frozenset(
    [
        "annotate",
        "unchecked_cast",
        "uninitialized",
        "isinstance",
        "getattr",
        "range",
        "len",
        "int",
        "float",
        "bool",
        "str",
        "min",
        "max",
        "abs",
        "hasattr",
        "zip",
        "enumerate",
        "list",
        "tuple",
        "round",
        "divmod",
        "__is__",
        "__isnot__",
        "math",
    ]
)
_BUILTIN_OPERATORS = {"print": "prim::Print", "setattr": "prim::SetAttr"}


def forbidden(kind: str, where: str = "") -> ForbiddenOperatorError:
    """The error for operator ``kind`` (``aten::from_file``) used in ``where``, with the reason
    where we know it."""
    reason = REASONS.get(kind)
    if reason is None:
        namespace = kind.split("::", 1)[0]
        reason = (
            "it is a custom operator from an extension"
            if namespace not in ("aten", "prim")
            else "it is not on the list of pure tensor operators (docs/security.md)"
        )
    place = f" (in {where})" if where else ""
    return ForbiddenOperatorError(f"the model uses {kind}, which is refused because {reason}{place}")


# --------------------------------------------------------------------------
# Without torch: the archive's serialised code


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _operator_of(call: ast.Call, local_functions: set[str]) -> str | None:
    """The operator a call in serialised code reaches, or None for calls into the archive's own code."""
    func = call.func
    name = _dotted(func)
    if isinstance(func, ast.Name):
        if func.id in _BUILTIN_OPERATORS:
            return _BUILTIN_OPERATORS[func.id]
        if func.id in _BUILTINS or func.id in local_functions or func.id.startswith("_"):
            return None  # a builtin, a function defined in the archive, or a local alias of one
        return f"python::{func.id}"
    if name is None:
        return (
            None  # a method of a module or a value, e.g. (self.conv).forward(x): its code is in the archive
        )
    head, _, rest = name.partition(".")
    if head == "torch" and rest:
        if rest.startswith("ops."):
            namespace, _, op = rest[4:].partition(".")
            return f"{namespace}::{op}"
        return f"aten::{rest.rsplit('.', 1)[-1]}" if "." not in rest else f"torch::{rest}"
    if head == "ops" and rest:
        namespace, _, op = rest.partition(".")
        return f"{namespace}::{op}"
    if head == "__torch__" or head == "self" or head in local_functions or head.startswith("_"):
        return None
    if head in ("math",):
        return f"aten::{rest}"
    return None  # method calls on values (x.size()) compile to aten ops the graph walk checks


def check_archive_code(path: str | Path) -> None:
    """Refuse an archive whose serialised code calls an operator outside :data:`ALLOWED`.

    Reads only the ``code/`` entries of the zip; raises
    :class:`ForbiddenOperatorError` naming the operator and the function it is in.
    """
    with zipfile.ZipFile(path) as archive:
        sources = {
            name: archive.read(name).decode("utf-8", errors="replace")
            for name in archive.namelist()
            if "/code/" in name and name.endswith(".py")
        }
    for file_name, source in sources.items():
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # the torch-side walk, which compiles the code, decides
        local_functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        for function in [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]:
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                kind = _operator_of(node, local_functions)
                if kind is not None and kind not in ALLOWED:
                    where = file_name.split("/code/", 1)[-1].removesuffix(".py").replace("/", ".")
                    raise forbidden(kind, f"{function.name} of {where}")


# --------------------------------------------------------------------------
# With torch: every compiled graph


def _graph_nodes(graph: Any) -> list[Any]:
    nodes = []
    stack = list(graph.nodes())
    while stack:
        node = stack.pop()
        nodes.append(node)
        for block in node.blocks():
            stack.extend(block.nodes())
    return nodes


def _graph_kinds(graph: Any) -> list[str]:
    return [node.kind() for node in _graph_nodes(graph)]


# Ops whose output shares memory with their first input: writing through them writes the input.
_ALIASING = frozenset(
    f"aten::{name}"
    for name in [
        "view",
        "reshape",
        "flatten",
        "select",
        "slice",
        "narrow",
        "squeeze",
        "unsqueeze",
        "t",
        "transpose",
        "permute",
        "expand",
        "expand_as",
        "as_strided",
        "diagonal",
        "unflatten",
        "view_as",
        "reshape_as",
        "__getitem__",
        "alias",
        "detach",
    ]
)


def _is_mutating(node: Any) -> bool:
    import torch

    try:
        return bool(torch._C.parse_schema(node.schema()).is_mutable)
    except RuntimeError:
        return node.kind().endswith("_")


def _reads_own_state(value: Any) -> bool:
    """Whether ``value`` is (a view of) a tensor the model holds as an attribute."""
    producer = value.node()
    while producer.kind() in _ALIASING:
        producer = producer.input().node() if producer.inputsSize() == 1 else producer.inputsAt(0).node()
    return bool(producer.kind() == "prim::GetAttr")


def _writes_own_state(node: Any) -> bool:
    """An in-place op on a parameter or buffer: state that carries over from one call to the next."""
    return node.inputsSize() > 0 and _is_mutating(node) and _reads_own_state(node.inputsAt(0))


def check_script_module(script: torch.jit.ScriptModule) -> None:
    """Refuse a loaded model any of whose methods (of any submodule) uses an operator off the list,
    or writes in place to its own parameters or buffers (state that outlives a call).

    Each method's graph is copied, its calls to other methods and functions
    inlined, and every node of every nested block checked.
    """
    import torch

    for module_name, module in script.named_modules():
        for method_name in module._c._method_names():
            graph = module._c._get_method(method_name).graph.copy()
            torch._C._jit_pass_inline(graph)
            for kind in _graph_kinds(graph):
                if kind not in ALLOWED:
                    raise forbidden(kind, f"{module_name}.{method_name}" if module_name else method_name)
    # State: what runs in evaluation mode.  Freezing a copy folds ``self.training``
    # and drops the branches it rules out (BatchNorm's counter of training
    # batches), but keeps every attribute the code writes to.
    frozen = torch.jit.freeze(copy.deepcopy(script).eval())
    for node in _graph_nodes(frozen.graph):
        if node.kind().startswith("aten::") and _writes_own_state(node):
            # A model traced in training mode keeps BatchNorm's update of its running statistics.
            hint = (
                "; it was saved in training mode: call model.eval() before torch.jit.trace"
                if script.training
                else ""
            )
            raise ForbiddenOperatorError(
                f"the model uses {node.kind()} on one of its own tensors, which is refused because "
                f"it changes the model's own state between calls (in forward){hint}"
            )
