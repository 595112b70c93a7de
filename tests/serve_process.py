"""``kegnet serve`` as a user runs it, in a subprocess: one copy for the tests and the screenshot script.

The server gets a fresh ``KEGNET_HOME`` and none of the caller's other
``KEGNET_*`` settings; it runs in its own process session so that stopping
it stops the worker it started too. Its output and its worker's go to one
log file, which is quoted whenever the server dies before it is ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is listening on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api_key(self) -> str:
        return (self.home / "api_key").read_text().strip()

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM to the whole session (server and worker); SIGKILL if it outlasts ``timeout_s``."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_serve(home: Path, *, cwd: Path | None = None, ready_timeout_s: float = 90) -> ServeProcess:
    """Start ``kegnet serve`` on a free port and wait until ``/readyz`` answers 200.

    Raises ``RuntimeError`` with the server's log when it exits or is not
    ready in time (the process is stopped first).
    """
    home.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEGNET_")}
    env["KEGNET_HOME"] = str(home)
    log_path = home.parent / "serve.log"
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "kegnet_cli.main", "serve", "--port", str(port), "--loglevel", "WARNING"],
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServeProcess(process=process, url=f"http://127.0.0.1:{port}", home=home, log_path=log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"kegnet serve exited with code {process.returncode}:\n{server.log()}")
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"kegnet serve was not ready within {ready_timeout_s:.0f} s:\n{server.log()}")
