"""TEMPORARY: ``kegnet serve`` with the dashboard installed, until ``create_app`` calls it.

Runs the real ``kegnet serve`` command after wrapping ``api.app.create_app`` so
that it calls ``install_dashboard``; harmless once create_app does so itself
(installing twice is a no-op).
"""

from __future__ import annotations

import sys

import api.app
from api.dashboard import install_dashboard
from kegnet_cli.main import main

_create_app = api.app.create_app


def _create_app_with_dashboard(*args, **kwargs):  # type: ignore[no-untyped-def]
    app = _create_app(*args, **kwargs)
    install_dashboard(app)
    return app


api.app.create_app = _create_app_with_dashboard  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
