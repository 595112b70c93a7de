"""Screenshots of the dashboard for the docs, from a real ``kegnet serve`` and a real job.

Starts ``kegnet serve`` with a fresh KEGNET_HOME, submits the tiny CNN of the
tests with the quick preset, waits for it to succeed, and saves the jobs list,
the finished job page and the new-job form at laptop (1280x800) and phone
(390x844) sizes as PNGs. Needs Debian's Chromium and the playwright package:

    python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIZES: dict[str, ViewportSize] = {
    "laptop": {"width": 1280, "height": 800},
    "phone": {"width": 390, "height": 844},
}

log = logging.getLogger("screenshots")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEGNET_")}
    env["KEGNET_HOME"] = str(home)
    with open(home.parent / "serve.log", "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "kegnet_cli.main", "serve", "--port", str(port), "--loglevel", "WARNING"],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("kegnet serve exited before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("kegnet serve did not become ready")


def tiny_teacher() -> bytes:
    """The tests' TinyCNN (1x8x8 inputs, 3 classes) as TorchScript."""
    sys.path.insert(0, str(REPO))
    import torch

    from tests.core.models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    return torchscript_bytes(TinyCNN(), (1, 8, 8))


def run_job(url: str, key: str, timeout_s: float) -> str:
    """Submit a quick job over HTTP and wait until it has succeeded; return its id."""
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(
        f"{url}/v1/jobs",
        files={"model": ("digits-cnn.pt", io.BytesIO(tiny_teacher()))},
        data={"spec": json.dumps({"input_shape": [1, 8, 8], "preset": "quick"})},
        headers=headers,
        timeout=60,
    )
    response.raise_for_status()
    job_id: str = response.json()["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if job["status"] == "succeeded":
            return job_id
        if job["status"] in ("failed", "cancelled"):
            raise SystemExit(f"the job ended {job['status']}: {job.get('error')}")
        time.sleep(1)
    raise SystemExit(f"the job did not finish within {timeout_s:.0f} s")


def shoot(url: str, key: str, job_id: str, out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for size, viewport in SIZES.items():
            context = browser.new_context(viewport=viewport)
            page = context.new_page()
            page.goto(f"{url}/")
            page.fill("#api-key", key)
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector(f"tr[data-job-id='{job_id}'][data-status='succeeded']")
            saved.append(save(page, out / f"jobs-{size}.png", full_page=False))
            page.goto(f"{url}/#/jobs/{job_id}")
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.artifact')].length === 2 &&"
                " [...document.querySelectorAll('img.artifact')].every(i => i.complete && i.naturalWidth > 0)"
            )
            saved.append(save(page, out / f"job-{size}.png", full_page=True))
            page.goto(f"{url}/#/new")
            page.wait_for_selector("#new-job")
            saved.append(save(page, out / f"new-job-{size}.png", full_page=True))
            context.close()
        browser.close()
    return saved


def save(page: Page, path: Path, *, full_page: bool) -> Path:
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)  # let the progress bars finish their transition
    page.screenshot(path=str(path), full_page=full_page)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kegnet-shots-") as folder:
        home = Path(folder) / ".kegnet"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_serve(home, port)
        try:
            wait_ready(url, process)
            key = (home / "api_key").read_text().strip()
            log.info("kegnet serve at %s; running a quick job", url)
            job_id = run_job(url, key, args.timeout)
            for path in shoot(url, key, job_id, args.out, args.chromium):
                log.info("saved %s", path)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
