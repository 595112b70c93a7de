"""``install_dashboard`` on a bare FastAPI app, no browser needed: routes, files, idempotence."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.dashboard import install_dashboard, swagger_ui_dir


@pytest.fixture
def client() -> TestClient:
    app = FastAPI(title="kegnet")  # FastAPI's own CDN /docs is replaced
    install_dashboard(app)
    install_dashboard(app)
    return TestClient(app)


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="static/js/app.js"' in page.text
    for path in ("/static/js/app.js", "/static/style.css", "/static/favicon.svg"):
        assert client.get(path).status_code == 200, path
    script = client.get("/static/js/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "no-cache"  # an upgrade is picked up at once


def test_installing_twice_adds_nothing(client: TestClient) -> None:
    paths = [getattr(route, "path", None) for route in client.app.router.routes]  # type: ignore[attr-defined]
    assert paths.count("/") == 1
    assert paths.count("/docs") == 1


@pytest.mark.skipif(swagger_ui_dir() is None, reason="fastapi-offline is not installed")
def test_docs_use_local_swagger_files(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn.jsdelivr.net" not in docs.text and "fastapi.tiangolo.com" not in docs.text
    assert "/static/swagger/swagger-ui-bundle.js" in docs.text
    assert "/openapi.json" in docs.text
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/swagger/swagger-ui.css").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_docs_without_swagger_files_link_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.dashboard.swagger_ui_dir", lambda: None)
    app = FastAPI()
    install_dashboard(app)
    docs = TestClient(app).get("/docs")
    assert docs.status_code == 200 and 'href="/openapi.json"' in docs.text


def test_the_dashboard_module_does_not_import_torch() -> None:
    code = "import sys, api.dashboard; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
