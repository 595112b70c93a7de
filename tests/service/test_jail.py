"""The jailed child that runs every job: no secrets, its own files only, no network, and a model
that fails mid-job fails only its own job."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from torch import nn

from api.app import create_app
from kegnet_core.jail import JailLimits, clean_environment, landlock_abi, run_jailed
from kegnet_core.progress import ProgressEvent
from kegnet_service.settings import Settings
from tests.conftest import missing_service
from tests.core.models import TinyCNN, torchscript_bytes
from worker.tasks import execute_job

from .conftest import ALICE, BOB, auth, submit


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=60
    )


def test_a_confined_child_reads_and_writes_only_its_own_files(tmp_path: Path):
    if landlock_abi() < 1:
        missing_service("this kernel has no Landlock, so a job's files cannot be confined")
    own, other = tmp_path / "job", tmp_path / "service"
    own.mkdir()
    other.mkdir()
    (own / "teacher.pt").write_text("model")
    (other / "kegnet.db").write_text("everyone's jobs")
    result = _child(
        """
        import json, sys
        from kegnet_core.jail import python_paths, restrict_filesystem
        own, other = sys.argv[1], sys.argv[2]
        restrict_filesystem([*python_paths()], [own])
        seen = {}
        for name, action in {
            "own": lambda: open(own + "/teacher.pt").read(),
            "other": lambda: open(other + "/kegnet.db").read(),
            "passwd": lambda: open("/etc/passwd").read(),
            "write_own": lambda: open(own + "/student.pt", "w").write("x"),
            "write_other": lambda: open(other + "/stolen", "w").write("x"),
        }.items():
            try:
                action()
                seen[name] = "ok"
            except PermissionError:
                seen[name] = "denied"
        print(json.dumps(seen))
        """,
        str(own),
        str(other),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "own": "ok",
        "other": "denied",
        "passwd": "denied",
        "write_own": "ok",
        "write_other": "denied",
    }


def test_a_child_without_network_reaches_nothing():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        result = _child(
            """
            import socket, sys
            from kegnet_core.jail import drop_network
            assert drop_network(), "no network namespace"
            try:
                socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
                print("connected")
            except OSError as exc:
                print("refused", type(exc).__name__)
            """,
            str(port),
        )
    finally:
        listener.close()
    if "no network namespace" in result.stderr:
        missing_service("this machine allows no network namespace")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused")


def test_the_child_environment_holds_no_secret(monkeypatch):
    monkeypatch.setenv("KEGNET_DATABASE_URL", "postgresql://kegnet:secret@db/kegnet")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret")
    monkeypatch.setenv("KEGNET_API_KEYS", "alice:key")
    env = clean_environment(threads=1)
    assert not any("secret" in value or "alice" in value for value in env.values())
    assert not any(key.startswith(("KEGNET_", "AWS_")) for key in env)


def test_a_jailed_run_reports_its_isolation(tmp_path: Path):
    model = tmp_path / "in" / "teacher.pt"
    model.parent.mkdir()
    model.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    events: list[ProgressEvent] = []
    report, isolation = run_jailed(
        model,
        {"input_shape": [1, 8, 8], "preset": "quick"},
        tmp_path / "out",
        scratch=tmp_path / "scratch",
        limits=JailLimits(threads=1),
        progress=events.append,
    )
    assert (tmp_path / "out" / "student.pt").is_file() and report["compression_ratio"] > 1
    assert {event.stage for event in events} >= {"validating", "distilling", "exporting"}
    assert isolation.environment and isolation.network == (sys.platform == "linux")
    assert isolation.filesystem == (landlock_abi() > 0)


class RaisesMidJob(nn.Module):
    """Answers like a classifier on the batches it is checked with; divides by zero on batches of 48,
    the size the student trains on in the test (a branch would be resolved away by the loader; an
    integer division by the batch size is not)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + 0.0 * float(64 // (x.size(0) - 48))
        return self.fc(x.flatten(1)) * scale


def test_a_model_that_raises_mid_job_fails_its_own_job_only(tmp_path: Path, tiny_model_bytes: bytes):
    settings = Settings(
        home=tmp_path / "home", api_keys=f"alice:{ALICE},bob:{BOB}", heartbeat_interval_s=3600
    )
    settings.home.mkdir()
    import migrations

    migrations.upgrade(settings.resolved_database_url)
    spec = json.dumps(
        {
            "input_shape": [1, 8, 8],
            "preset": "quick",
            "prior": "gaussian",
            "overrides": {"baseline_distill.batch_size": 48},
        }
    )
    with TestClient(create_app(settings)) as client:
        bad = submit(client, torchscript_bytes(RaisesMidJob(), (1, 8, 8)), spec).json()["id"]
        other_owner = submit(client, tiny_model_bytes, headers={"Authorization": f"Bearer {BOB}"}).json()[
            "id"
        ]
        assert execute_job(bad, settings) == "failed"
        job = client.get(f"/v1/jobs/{bad}", headers=auth()).json()
        assert job["error"]["code"] == "model_run_failed", job["error"]
        assert "ZeroDivisionError" in job["error"]["message"]
        # The worker carries on, and the other owner's job is untouched and runs.
        assert execute_job(other_owner, settings) == "succeeded"
        assert client.get(f"/v1/jobs/{other_owner}", headers=auth(BOB)).json()["status"] == "succeeded"
        assert client.get("/healthz").status_code == 200


def _jail_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"kegnet_core.jail" in command:
            found.append(int(entry.name))
    return found


def test_the_jailed_child_dies_with_its_worker(tmp_path: Path):
    model = tmp_path / "in" / "teacher.pt"
    model.parent.mkdir()
    model.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    spec = {
        "input_shape": [1, 8, 8],
        "preset": "quick",
        "prior": "gaussian",
        "overrides": {"baseline_distill.steps": 10**6},
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, sys; from kegnet_core.jail import run_jailed; "
            "run_jailed(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], scratch=sys.argv[4])",
            str(model),
            json.dumps(spec),
            str(tmp_path / "out"),
            str(tmp_path / "scratch"),
        ]
    )
    try:
        deadline = time.monotonic() + 60
        children: list[int] = []
        while not children and time.monotonic() < deadline:
            children = _jail_children(worker.pid)
            time.sleep(0.2)
        assert children, "the job's process never started"
        worker.kill()  # kill -9, as the OOM killer or an operator would
        worker.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{children[0]}").exists(), "the jailed child outlived its worker"
    finally:
        if worker.poll() is None:
            worker.kill()


def test_events_cross_the_pipe_whole():
    import io

    from kegnet_core.jail import _event, _Pipe

    sent = ProgressEvent("validating", 1, 1, {"loss": 0.5}, "estimated 42 s", preview=b"png", estimate_s=42.5)
    stream = io.StringIO()
    _Pipe(stream)(sent)
    assert _event(json.loads(stream.getvalue())["event"]) == sent
