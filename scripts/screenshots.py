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
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.serve_process import start_serve  # noqa: E402

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


def tiny_teacher() -> bytes:
    """The tests' TinyCNN (1x8x8 inputs, 3 classes) as TorchScript."""
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
        try:
            serve = start_serve(Path(folder) / ".kegnet", cwd=REPO)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        try:
            log.info("kegnet serve at %s; running a quick job", serve.url)
            job_id = run_job(serve.url, serve.api_key(), args.timeout)
            for path in shoot(serve.url, serve.api_key(), job_id, args.out, args.chromium):
                log.info("saved %s", path)
        finally:
            serve.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
