"""Fixtures for the dashboard's browser tests: ``kegnet serve`` and headless Chromium.

The browser is Debian's Chromium driven by Playwright (never a browser that
Playwright downloads); the tests are skipped where either is missing. Every
request to a host other than the test server is aborted and recorded, so a
page that needs the internet fails its test instead of passing on a
networked machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import missing_service
from tests.serve_process import ServeProcess, start_serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

CHROMIUM = os.environ.get("KEGNET_CHROMIUM", "/usr/bin/chromium")
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
LOCAL_HOSTS = {"127.0.0.1"}


@dataclass
class Server:
    url: str
    home: Path
    key: str
    serve: ServeProcess


@dataclass
class Blocked:
    """Requests the page tried to send off the test server."""

    urls: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing_service(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Started only once the browser is known to be there, so a skip costs nothing."""
    home = tmp_path_factory.mktemp("serve") / ".kegnet"
    try:
        serve = start_serve(home)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        page = httpx.get(f"{serve.url}/", timeout=5)
        if page.status_code != 200 or 'id="main"' not in page.text:
            pytest.fail(
                f"GET / answered {page.status_code}: api.app.create_app must call install_dashboard(app)"
            )
        yield Server(url=serve.url, home=home, key=serve.api_key(), serve=serve)
    finally:
        serve.stop()


@pytest.fixture
def blocked() -> Blocked:
    return Blocked()


@pytest.fixture
def context(browser: Browser, blocked: Blocked) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)

    def only_local(route: Route) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            blocked.urls.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", only_local)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN of the core tests as TorchScript (1x8x8 inputs, 3 classes)."""
    torch = pytest.importorskip("torch")
    from tests.core.models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    path.write_bytes(torchscript_bytes(TinyCNN(), (1, 8, 8)))
    return path


@pytest.fixture
def signed_in(page: Page, server: Server) -> Page:
    """A page signed in with the server's key, showing the jobs list."""
    page.goto(f"{server.url}/")
    page.fill("#api-key", server.key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#jobs-table", state="attached")
    return page
