"""``kegnet serve`` as a user runs it: a subprocess with a fresh KEGNET_HOME, driven over HTTP
and with the ``kegnet`` client commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from tests.serve_process import start_serve


@dataclass
class Server:
    url: str
    home: Path
    key: str
    process: subprocess.Popen[bytes]

    def kegnet(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KEGNET_HOME": str(self.home), "KEGNET_URL": self.url}
        env.pop("KEGNET_API_KEY", None)
        return subprocess.run(
            [sys.executable, "-m", "kegnet_cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            check=check,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve") / ".kegnet"
    try:
        serve = start_serve(home)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield Server(url=serve.url, home=home, key=serve.api_key(), process=serve.process)
    serve.stop()


@pytest.fixture(scope="module")
def teacher_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from tests.core.models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    path.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    return path


def test_serve_runs_a_job_over_http(server: Server, teacher_file: Path, tmp_path: Path):
    headers = {"Authorization": f"Bearer {server.key}"}
    with open(teacher_file, "rb") as handle:
        response = httpx.post(
            f"{server.url}/v1/jobs",
            files={"model": ("tiny.pt", handle)},
            data={"spec": json.dumps({"input_shape": [1, 8, 8], "preset": "quick"})},
            headers=headers,
        )
    assert response.status_code == 202, response.text
    job_url = server.url + response.headers["location"]
    deadline = time.monotonic() + 240
    seen_stages = set()
    while time.monotonic() < deadline:
        job = httpx.get(job_url, headers=headers).json()
        seen_stages.add(job["stage"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    assert seen_stages - {None}, "never saw the job running"
    student = httpx.get(f"{job_url}/model", headers=headers)
    assert student.status_code == 200
    path = tmp_path / "student.pt"
    path.write_bytes(student.content)
    loaded = torch.jit.load(str(path))
    assert loaded(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_the_client_commands(server: Server, teacher_file: Path, tmp_path: Path):
    output = tmp_path / "student.pt"
    submitted = server.kegnet(
        "submit",
        str(teacher_file),
        "--input-shape",
        "1,8,8",
        "--preset",
        "quick",
        "--wait",
        "-o",
        str(output),
    )
    assert "compression ratio" in submitted.stdout
    assert torch.jit.load(str(output))(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    report = json.loads((tmp_path / "student_report.json").read_text())
    assert report["params_after"] < report["params_before"]

    listed = server.kegnet("jobs")
    assert "succeeded" in listed.stdout
    job_id = json.loads(server.kegnet("jobs", "--json").stdout)["items"][0]["id"]
    status = json.loads(server.kegnet("status", job_id).stdout)
    assert status["status"] == "succeeded"
    samples = tmp_path / "grid.png"
    server.kegnet("download", job_id, "--what", "samples", "-o", str(samples))
    assert samples.read_bytes().startswith(b"\x89PNG")

    int8 = tmp_path / "tiny_int8.pt"
    quantized = server.kegnet(
        "submit",
        str(teacher_file),
        "--input-shape",
        "1,8,8",
        "--preset",
        "quick",
        "--task",
        "quantize",
        "--wait",
        "-o",
        str(int8),
    )
    assert "int8 model" in quantized.stdout
    assert torch.jit.load(str(int8))(torch.randn(1, 1, 8, 8)).shape == (1, 3)

    queued = server.kegnet(
        "submit", str(teacher_file), "--input-shape", "1,8,8", "--preset", "quick"
    ).stdout.strip()
    cancelled = server.kegnet("cancel", queued)
    assert queued in cancelled.stdout

    missing = server.kegnet("status", "no-such-job", check=False)
    assert missing.returncode == 1 and "job_not_found" in missing.stderr
    bad = server.kegnet(
        "submit", str(teacher_file), "--input-shape", "1,8,8", "--key", "wrong-key-123456", check=False
    )
    assert bad.returncode == 1 and "401" in bad.stderr


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...); None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_stopping_serve_stops_its_worker(tmp_path: Path):
    # `kill PID` on serve alone (as demo.sh's trap does) must not orphan the
    # Celery worker it started in its own session.
    serve = start_serve(tmp_path / ".kegnet")
    process = serve.process
    workers = _children(process.pid)
    assert workers, "kegnet serve started no worker"
    process.send_signal(signal.SIGTERM)  # to serve alone, not to its process group
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "the worker outlived kegnet serve"
