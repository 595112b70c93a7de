#!/usr/bin/env bash
# The main job on the embedded default: install, start `kegnet serve` (SQLite,
# local files, a filesystem broker: no server to install), compress a real
# classifier through the HTTP API, and print the before/after figures.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
export KEGNET_HOME="${KEGNET_HOME:-$PWD/.kegnet}"
mkdir -p "$KEGNET_HOME"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/kegnet serve --port "$port" >"$KEGNET_HOME/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then cat "$KEGNET_HOME/serve.log"; exit 1; fi
  sleep 0.5
done
echo "kegnet is serving on http://127.0.0.1:$port (log: $KEGNET_HOME/serve.log)"
.venv/bin/python examples/digits_demo.py --url "http://127.0.0.1:$port" "$@"
