"""Logging set-up as every entry point calls it."""

from __future__ import annotations

import logging

import pytest

from kegnet_service.logs import configure_logging


@pytest.mark.parametrize("level", ["warning", "WARNING", logging.WARNING])
def test_level_by_name_or_number(level):
    # Celery's setup_logging signal hands over a number, the CLI a name.
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        configure_logging(level, json_lines=True)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
