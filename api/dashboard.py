"""The web dashboard at ``/`` and an API reference at ``/docs`` that work offline.

The dashboard is static files (plain JS modules, no build step) that talk to
the same ``/v1`` API as the ``kegnet`` client, with the user's API key; the
server adds nothing but the files.  FastAPI's own ``/docs`` page loads
Swagger UI from a CDN and stays blank without network, so the reference is
served from the Swagger UI copy shipped in the ``fastapi-offline`` package.
Never imports torch.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Scope

log = logging.getLogger("kegnet.api.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/static"
SWAGGER_URL = "/static/swagger"
INDEX_ROUTE = "dashboard_index"
DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"

# The page must be revalidated so a new release's scripts are picked up at once.
NO_CACHE = {"Cache-Control": "no-cache"}


class RevalidatedFiles(StaticFiles):
    """Static files the browser revalidates on every load (a cheap 304), so an upgrade shows at once."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_CACHE)
        return response


def swagger_ui_dir() -> Path | None:
    """Swagger UI's files from the ``fastapi-offline`` package, or None when it is missing."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and Swagger UI at ``/docs``; a second call does nothing."""
    if any(getattr(route, "name", None) == INDEX_ROUTE for route in app.router.routes):
        return
    _add_index(app)
    app.mount(STATIC_URL, RevalidatedFiles(directory=STATIC_DIR), name="dashboard-static")
    if app.openapi_url:  # no schema, nothing to show
        _add_docs(app, app.openapi_url)


def _add_index(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False, name=INDEX_ROUTE)
    def dashboard() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=NO_CACHE)


def _add_docs(app: FastAPI, openapi_url: str) -> None:
    """Replace FastAPI's CDN-backed Swagger page (if the app kept one) by a local one."""
    folder = swagger_ui_dir()
    if folder is None:
        log.warning("fastapi-offline is not installed: /docs shows a link to /openapi.json only")
    else:
        # Mounted before /static so the more specific prefix matches first.
        app.router.routes.insert(0, Mount(SWAGGER_URL, StaticFiles(directory=folder), name="swagger-ui"))
    docs_path = app.docs_url or DOCS_PATH
    redirect_path = app.swagger_ui_oauth2_redirect_url or OAUTH2_REDIRECT_PATH
    app.router.routes[:] = [
        route for route in app.router.routes if not _is_path(route, docs_path, redirect_path)
    ]
    title = f"{app.title} - API reference"

    @app.get(docs_path, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        if folder is None:
            return _fallback_docs(title, root + openapi_url)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=title,
            swagger_js_url=f"{root}{SWAGGER_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{SWAGGER_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.svg",
            oauth2_redirect_url=root + redirect_path,
            init_oauth=app.swagger_ui_init_oauth,
            # No validator badge: it would call validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    @app.get(redirect_path, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def _is_path(route: BaseRoute, *paths: str) -> bool:
    return isinstance(route, Route) and route.path in paths


def _fallback_docs(title: str, openapi_url: str) -> HTMLResponse:
    """Without Swagger UI's files, still point at the machine-readable reference."""
    title, url = html.escape(title), html.escape(openapi_url)
    body = (
        f"<!doctype html><meta charset=utf-8><title>{title}</title>"
        f'<p>Swagger UI is not installed on this server. The API is described in <a href="{url}">'
        f"{url}</a>.</p>"
    )
    return HTMLResponse(body)
