"""Load and run an untrusted model once, in a child process with limits.

A stranger's file may be built to crash the TorchScript loader, allocate
without bound or never return.  Before any training, the worker loads the
model, converts it and runs it on the declared input shape in a separate
process with an address-space limit, a CPU-time limit, a wall-clock timeout
and (where the kernel allows an unprivileged network namespace) no network.
Whatever the child does, the parent survives and gets a clear error code.

Run as ``python -m kegnet_core.sandbox MODEL --input-shape 1,32,32``; it
prints one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kegnet_core.errors import InvalidModelFileError, KegnetError, ModelRunError, UnsupportedModelError

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 8 * 1024**3
    cpu_seconds: int = 300
    wall_seconds: float = 300.0


class ModelCrashedError(ModelRunError):
    code = "model_crashed"


class ModelTimeoutError(ModelRunError):
    code = "model_timeout"


class ModelMemoryError(ModelRunError):
    code = "model_out_of_memory"


MEMORY_MARKS = (
    "MemoryError",
    "std::bad_alloc",
    "out of memory",
    "can't allocate memory",
    "failed to map segment",
)

ERRORS: dict[str, type[KegnetError]] = {
    cls.code: cls
    for cls in (
        InvalidModelFileError,
        UnsupportedModelError,
        ModelRunError,
        ModelCrashedError,
        ModelMemoryError,
    )
}


def _drop_network() -> bool:
    """Move into new user and network namespaces (no interfaces); False where not allowed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        return False


def lower_limit(kind: int, soft: int, hard: int) -> None:
    """Set a resource limit, never above the one already in force: a process may not raise
    its hard limit, and a sandbox started inside the jail inherits the jail's (tighter) ones."""
    _, current = resource.getrlimit(kind)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(kind, (min(soft, hard), hard))


def _limit(limits: SandboxLimits) -> None:
    """Runs in the child before exec: resource limits, own process group, no network."""
    os.setsid()
    lower_limit(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
    lower_limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _drop_network()


def check_model_in_sandbox(
    model_path: str, input_shape: Sequence[int], limits: SandboxLimits | None = None
) -> dict[str, object]:
    """Load and run the model in a limited child; return what it learned, or raise.

    Raises the same :class:`KegnetError` subclasses as loading in-process,
    plus ``model_crashed``, ``model_timeout`` and ``model_out_of_memory``.
    """
    limits = limits or SandboxLimits()
    command = [
        sys.executable,
        "-m",
        "kegnet_core.sandbox",
        str(model_path),
        "--input-shape",
        ",".join(str(int(size)) for size in input_shape),
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "KEGNET_"))}
    env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "no_proxy": "*"})
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: _limit(limits),
    )
    try:
        stdout, stderr = process.communicate(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise ModelTimeoutError(
            f"loading and running the model took over {limits.wall_seconds:g} s", field="model"
        ) from None
    lines = stdout.decode(errors="replace").strip().splitlines()
    if process.returncode == 0 and lines:
        result: dict[str, object] = json.loads(lines[-1])
        if result.get("ok"):
            return result
        kind = ERRORS.get(str(result.get("code")), ModelRunError)
        raise kind(str(result.get("message")), field=str(result.get("field") or "model"))
    text = stderr.decode(errors="replace")
    if any(mark in text for mark in MEMORY_MARKS):
        raise ModelMemoryError(
            f"the model needs more than {limits.memory_bytes // 1024**2} MiB to load and run", field="model"
        )
    if process.returncode == -signal.SIGXCPU or process.returncode == -signal.SIGKILL:
        raise ModelTimeoutError(f"the model used over {limits.cpu_seconds} s of CPU", field="model")
    if process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        raise ModelCrashedError(f"loading or running the model crashed the process ({name})", field="model")
    last = text.strip().splitlines()[-1] if text.strip() else f"exit status {process.returncode}"
    raise ModelCrashedError(f"loading or running the model failed: {last[:500]}", field="model")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kegnet_core.sandbox")
    parser.add_argument("model")
    parser.add_argument("--input-shape", required=True)
    args = parser.parse_args(argv)
    import socket

    def _no_network(*_args: object, **_kwargs: object) -> None:
        raise OSError("network access is disabled while checking a model")

    for method in ("connect", "connect_ex", "sendto", "bind"):
        setattr(socket.socket, method, _no_network)
    shape = [int(part) for part in args.input_shape.split(",")]
    result: dict[str, object]
    try:
        import torch

        from kegnet_core.loading import load_classifier

        torch.set_num_threads(1)
        model = load_classifier(args.model, shape)
        with torch.no_grad():
            logits = model(torch.randn(2, *shape))
        if logits.dim() != 2 or logits.size(1) < 2:
            raise ModelRunError(
                f"a classifier must return (batch, classes) scores with at least 2 classes; "
                f"on input_shape {shape} the model returns {tuple(logits.shape)}"
            )
        if not torch.isfinite(logits).all():
            raise ModelRunError(f"the model returns non-finite scores on input_shape {shape}")
        result = {
            "ok": True,
            "n_classes": int(logits.size(1)),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    except KegnetError as exc:
        code = ModelMemoryError.code if any(mark in exc.message for mark in MEMORY_MARKS) else exc.code
        result = {"ok": False, "code": code, "message": exc.message, "field": exc.field}
    except MemoryError:
        result = {
            "ok": False,
            "code": ModelMemoryError.code,
            "message": "the model ran out of memory",
            "field": "model",
        }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
