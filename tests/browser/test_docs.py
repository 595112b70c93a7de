"""The API reference at /docs renders with no network beyond the server itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.browser.conftest import Blocked, Server

expect = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed").expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow


def test_docs_render_offline(page: Page, server: Server, blocked: Blocked) -> None:
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui")).to_be_visible()
    create = page.locator(".opblock-post .opblock-summary-path[data-path='/v1/jobs']")
    expect(create).to_be_visible(timeout=30_000)
    expect(page.locator(".opblock-post .opblock-summary-method").first).to_have_text("POST")
    assert not blocked.urls, f"/docs tried to load from the internet: {blocked.urls}"


def test_the_dashboard_loads_nothing_from_the_internet(page: Page, server: Server, blocked: Blocked) -> None:
    page.goto(f"{server.url}/")
    expect(page.locator("#api-key")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert not blocked.urls, f"the dashboard tried to reach the internet: {blocked.urls}"
