#!/usr/bin/env bash
# Every test: install, make sure Postgres and Redis are up, run pytest (the
# integration suite starts its own SeaweedFS S3 server, API and workers).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
./scripts/services.sh
exec .venv/bin/python -m pytest "$@"
