#!/usr/bin/env bash
# Create .venv (Python 3.11) and install kegnet with pinned versions. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ ! -f .venv/.kegnet-installed ] || [ constraints.txt -nt .venv/.kegnet-installed ] || [ pyproject.toml -nt .venv/.kegnet-installed ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
  touch .venv/.kegnet-installed
fi
