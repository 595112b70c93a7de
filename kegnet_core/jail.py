"""Run a whole job in a child process that can reach nothing but its own files.

An uploaded model is code.  The worker never calls it in its own process:
:func:`run_jailed` starts ``python -m kegnet_core.jail`` with

* **no secrets**: a fresh environment (no database, broker or S3 settings,
  no API keys); the parent's memory is not shared (a new interpreter, not a fork);
* **its own files only** (Landlock, Linux 5.13+): read access to the Python
  installation and the job's input folder, write access to the job's output
  folder and a scratch folder, nothing else (not the service's database, not
  the worker's ``/proc/<pid>/environ``);
* **no network**: a new network namespace with no interfaces;
* **limits**: address space (CPU runs), CPU seconds, wall seconds, no core dumps.

Trusted code (torch, the core) is imported before the restrictions; the model
is loaded only after them.  Progress, previews and the final report come back
as JSON lines on a pipe, and cancellation is the parent killing the child's
process group.  A crash, a limit or an error in the model fails the job with a
code while the worker carries on.  docs/security.md says what each layer
stops and what it does not.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from kegnet_core.errors import Cancelled, KegnetError, ModelRunError, TimeLimitError
from kegnet_core.progress import ProgressCallback, ProgressEvent, ignore_progress
from kegnet_core.sandbox import (
    ERRORS,
    MEMORY_MARKS,
    ModelCrashedError,
    ModelMemoryError,
    SandboxLimits,
    lower_limit,
)

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
STDERR_KEEP = 64 * 1024


class InternalJobError(KegnetError):
    """The job's process failed in our own code, not the model's."""

    code = "internal_error"


@dataclass(frozen=True)
class JailLimits:
    memory_bytes: int = 16 * 1024**3  # address space, CPU runs only (CUDA maps far more)
    cpu_seconds: int = 24 * 3600
    wall_seconds: float = 24 * 3600.0
    threads: int = 0  # torch threads in the child; 0: torch's choice
    niceness: int = 10  # CPU priority below the API's and the worker's, which share the host


@dataclass
class Isolation:
    """What the child managed to apply (it reports this before loading the model)."""

    environment: bool = True
    network: bool = False
    filesystem: bool = False
    landlock_abi: int = 0
    details: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Landlock (filesystem), through its three system calls

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1
# Access rights, ABI 1..3 (later ABIs add network and ioctl rights we do not need to handle).
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE, _MAKE_CHAR, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAKE_REG, _MAKE_SOCK, _MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE = 1 << 13, 1 << 14
_READ = _EXECUTE | _READ_FILE | _READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where it has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def restrict_filesystem(readable: Sequence[str], writable: Sequence[str]) -> int:
    """From now on this process (and its children) may read only ``readable`` and write only
    ``writable`` (each a file or folder with everything beneath).  Returns the Landlock ABI used;
    raises OSError where the kernel refuses."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("this kernel has no Landlock")
    handled = _READ | _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_CHAR | _MAKE_DIR | _MAKE_REG
    handled |= _MAKE_SOCK | _MAKE_FIFO | _MAKE_BLOCK | _MAKE_SYM
    if abi >= 2:
        handled |= _REFER
    if abi >= 3:
        handled |= _TRUNCATE
    write = handled & ~_EXECUTE
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, access in ((readable, _READ), (writable, write | _READ)):
            for path in paths:
                if not os.path.exists(path):
                    continue
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    allowed = (
                        access
                        if os.path.isdir(path)
                        else access & (_EXECUTE | _READ_FILE | _WRITE_FILE | _TRUNCATE)
                    )
                    rule = _PathBeneathAttr(allowed & handled, fd)
                    if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def python_paths() -> list[str]:
    """What the interpreter and its libraries need to read: the installation and system libraries."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths |= {entry for entry in sys.path if entry and os.path.isdir(entry)}
    # Our own source (an editable install lives outside site-packages): TorchScript reads it to
    # script the student.
    paths.add(os.path.dirname(os.path.abspath(__file__)))
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo", "/etc/ld.so.cache"}
    paths |= {"/dev/null", "/dev/urandom", "/proc/self", "/sys/devices/system/cpu", "/proc/cpuinfo"}
    paths |= {"/proc/meminfo", "/sys/fs/cgroup"}
    if os.path.isdir("/dev") and any(name.startswith("nvidia") for name in os.listdir("/dev")):
        paths |= {os.path.join("/dev", name) for name in os.listdir("/dev") if name.startswith("nvidia")}
        paths |= {"/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices"}
    return sorted(paths)


def drop_network() -> bool:
    """Move into a new network namespace with no interfaces (new user namespace if not root)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if os.geteuid() == 0 and libc.unshare(CLONE_NEWNET) == 0:
            return True
        return bool(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0)
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------
# The parent side


def clean_environment(threads: int) -> dict[str, str]:
    """The child's whole environment: nothing of the worker's (no secrets), only what Python needs."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry and os.path.isdir(entry))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def die_with_parent() -> None:
    """Ask the kernel to kill this process when the one that started it dies (kill -9 included)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _preexec(limits: JailLimits, limit_memory: bool) -> None:
    """In the child before exec: own process group, dies with the worker, lower CPU priority,
    limits, no network."""
    os.setsid()
    die_with_parent()
    if limits.niceness:
        os.nice(limits.niceness)
    if limit_memory:
        lower_limit(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
    lower_limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    drop_network()


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _event(message: dict[str, Any]) -> ProgressEvent:
    preview = message.get("preview")
    return ProgressEvent(
        stage=str(message["stage"]),
        step=int(message["step"]),
        total=int(message["total"]),
        metrics={key: float(value) for key, value in (message.get("metrics") or {}).items()},
        detail=str(message.get("detail", "")),
        preview=base64.b64decode(preview) if preview else None,
        estimate_s=float(message["estimate_s"]) if message.get("estimate_s") is not None else None,
    )


def run_jailed(
    model_path: str | Path,
    spec_json: dict[str, Any],
    out_dir: str | Path,
    *,
    scratch: str | Path,
    limits: JailLimits | None = None,
    progress: ProgressCallback = ignore_progress,
    device: str | None = None,
    previews: bool = False,
    require_filesystem: bool = False,
    sandbox: SandboxLimits | None = None,
    checkpoints: str | Path | None = None,
) -> tuple[dict[str, Any], Isolation]:
    """Run the pipeline on ``model_path`` in a jailed child; return its report (JSON) and isolation.

    ``progress`` gets the child's events as they come and may raise (for
    instance :class:`Cancelled`) to stop it: the child's process group is
    killed and the exception goes on.  ``require_filesystem`` fails the job
    where the kernel cannot confine the child's files (no Landlock).  With
    ``sandbox`` limits, the child first loads and runs the model once under
    those tighter limits (:mod:`kegnet_core.sandbox`), inside the jail.  With a
    ``checkpoints`` folder (which the child may write), the run saves its
    progress there and resumes from what it finds (:mod:`kegnet_core.checkpoint`).
    """
    limits = limits or JailLimits()
    model_path, out_dir, scratch = (
        Path(model_path).resolve(),
        Path(out_dir).resolve(),
        Path(scratch).resolve(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    saved = Path(checkpoints).resolve() if checkpoints is not None else None
    if saved is not None:
        saved.mkdir(parents=True, exist_ok=True)
    request = {
        "model": str(model_path),
        "spec": spec_json,
        "out": str(out_dir),
        "device": device,
        "previews": previews,
        "threads": limits.threads,
        "readable": [str(model_path.parent)],
        "writable": [str(out_dir), str(scratch), *([str(saved)] if saved is not None else [])],
        "checkpoints": str(saved) if saved is not None else None,
        "require_filesystem": require_filesystem,
        "sandbox": asdict(sandbox) if sandbox is not None else None,
    }
    on_gpu = bool(device and device.startswith("cuda"))
    env = clean_environment(limits.threads)
    env["HOME"] = env["TMPDIR"] = str(scratch)
    process = subprocess.Popen(
        [sys.executable, "-I", "-m", "kegnet_core.jail"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(scratch),
        preexec_fn=lambda: _preexec(limits, limit_memory=not on_gpu),
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(json.dumps(request).encode())
    process.stdin.close()
    deadline = time.monotonic() + limits.wall_seconds
    isolation = Isolation()
    final: dict[str, Any] | None = None
    stderr = bytearray()
    try:
        for message in _messages(process, deadline, limits.wall_seconds, stderr):
            if "isolation" in message:
                isolation = Isolation(**message["isolation"])
            elif "event" in message:
                progress(_event(message["event"]))
            else:
                final = message
        process.wait()
    except BaseException:
        _kill(process)
        raise
    if final is not None and "report" in final:
        return final["report"], isolation
    if final is not None and "error" in final:
        error = final["error"]
        if error.get("code") == "cancelled":
            raise Cancelled()
        known = {**ERRORS, InternalJobError.code: InternalJobError, TimeLimitError.code: TimeLimitError}
        kind = known.get(str(error.get("code")), ModelRunError)
        raised = kind(str(error.get("message")), field=error.get("field"))
        raised.code = str(error.get("code") or raised.code)
        raise raised
    raise _crash(process.returncode, bytes(stderr), limits)


def _messages(process: subprocess.Popen[bytes], deadline: float, wall_limit: float, stderr: bytearray) -> Any:
    """JSON lines from the child's stdout, while keeping the tail of its stderr; stops at the deadline."""
    assert process.stdout is not None and process.stderr is not None
    streams: dict[int, IO[bytes]] = {
        process.stdout.fileno(): process.stdout,
        process.stderr.fileno(): process.stderr,
    }
    buffer = b""
    while streams:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(process)
            raise TimeLimitError(f"the job ran past its time limit of {wall_limit:g} s")
        ready, _, _ = select.select(list(streams), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                del streams[fd]
                continue
            if fd == process.stderr.fileno():
                stderr.extend(chunk)
                del stderr[: max(0, len(stderr) - STDERR_KEEP)]
                continue
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def _crash(returncode: int | None, stderr: bytes, limits: JailLimits) -> KegnetError:
    text = stderr.decode(errors="replace")
    if any(mark in text for mark in MEMORY_MARKS):
        return ModelMemoryError(
            f"the job needed more than {limits.memory_bytes // 1024**2} MiB", field="model"
        )
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return TimeLimitError(f"the job used over its {limits.cpu_seconds} s of CPU time")
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return ModelCrashedError(f"the model crashed the job's process ({name})", field="model")
    last = text.strip().splitlines()[-1] if text.strip() else f"exit status {returncode}"
    return ModelCrashedError(f"the job's process failed: {last[:500]}", field="model")


# --------------------------------------------------------------------------
# The child side


class _Pipe:
    """Writes JSON lines to the parent; a progress callback."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, message: dict[str, Any]) -> None:
        self.stream.write(json.dumps(message) + "\n")
        self.stream.flush()

    def __call__(self, event: ProgressEvent) -> None:
        data: dict[str, Any] = {
            "stage": event.stage,
            "step": event.step,
            "total": event.total,
            "metrics": dict(event.metrics),
            "detail": event.detail,
        }
        if event.preview is not None:
            data["preview"] = base64.b64encode(event.preview).decode()
        if event.estimate_s is not None:
            data["estimate_s"] = event.estimate_s
        self.send({"event": data})


def _confine(request: dict[str, Any]) -> Isolation:
    isolation = Isolation(network=_has_no_network())
    readable = [*python_paths(), *request["readable"]]
    try:
        isolation.landlock_abi = restrict_filesystem(readable, request["writable"])
        isolation.filesystem = True
    except OSError as exc:
        isolation.details.append(f"files not confined: {exc}")
        if request.get("require_filesystem"):
            raise ModelRunError(
                "this worker cannot confine a job's files (no Landlock); refusing to run the model",
                field=None,
            ) from exc
    return isolation


def _has_no_network() -> bool:
    """True in a network namespace whose only interface is loopback (as a new one is)."""
    import socket

    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
        return False
    return all(name == "lo" for name in interfaces)


def main() -> int:
    """The child: read the request, confine itself, run the pipeline, send the report."""
    pipe = _Pipe(sys.stdout)
    sys.stdout = sys.stderr  # nothing else may write to the parent's pipe
    request = json.loads(sys.stdin.read())
    try:
        # Trusted code first, while the filesystem is still open to it.
        import torch

        from kegnet_core.pipeline import run
        from kegnet_core.spec import parse_spec

        if request.get("threads"):
            torch.set_num_threads(int(request["threads"]))
        spec = parse_spec(request["spec"])
        isolation = _confine(request)
        pipe.send({"isolation": asdict(isolation)})
        sandbox = SandboxLimits(**request["sandbox"]) if request.get("sandbox") else None
        report = run(
            request["model"],
            spec,
            request["out"],
            progress=pipe,
            device=request.get("device"),
            previews=bool(request.get("previews")),
            sandbox=sandbox,
            checkpoints=request.get("checkpoints"),
        )
        pipe.send({"report": report.model_dump(mode="json")})
    except KegnetError as exc:
        code = ModelMemoryError.code if any(mark in exc.message for mark in MEMORY_MARKS) else exc.code
        pipe.send({"error": {"code": code, "message": exc.message, "field": exc.field}})
    except MemoryError:
        message = "the job ran out of memory"
        pipe.send({"error": {"code": ModelMemoryError.code, "message": message, "field": "model"}})
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:2000]
        error: dict[str, str | None]
        if any(mark in message for mark in MEMORY_MARKS):
            error = {"code": ModelMemoryError.code, "message": message, "field": "model"}
        elif _raised_in_model(exc):  # the model's own code raised while the job ran
            error = {"code": "model_run_failed", "message": f"the model failed: {message}", "field": "model"}
        else:
            error = {"code": InternalJobError.code, "message": message, "field": None}
        pipe.send({"error": error})
    return 0


def _raised_in_model(exc: BaseException) -> bool:
    """Whether the exception came out of the model's own code: its converted graph (torch.fx
    re-raises from ``GraphModule.__call__``, teacher and student alike) or TorchScript."""
    trace = exc.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        if code.co_filename.startswith("<eval_with_key") or (
            code.co_filename.endswith(os.path.join("torch", "fx", "graph_module.py"))
            and code.co_name in ("__call__", "call_wrapped")
        ):
            return True
        trace = trace.tb_next
    return isinstance(exc, torch_jit_error())


def torch_jit_error() -> type[BaseException]:
    import torch

    return torch.jit.Error


if __name__ == "__main__":
    sys.exit(main())
