"""``kegnet serve | api | worker | migrate | keys``: running the service."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kegnet_service.logs import configure_logging

LOCAL_OWNER = "local"
KEY_FILE = "api_key"


def _settings():  # type: ignore[no-untyped-def]
    from kegnet_service.settings import get_settings

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


def wait_for_database(url: str, timeout_s: float) -> None:
    """Retry until the database answers (containers start in any order)."""
    from kegnet_service.db import ping

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ping(url)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"kegnet: the database did not answer within {timeout_s:.0f} s: {exc}"
                ) from exc
            time.sleep(1.0)


def migrate(args: argparse.Namespace) -> int:
    import migrations

    settings = _settings()
    url = settings.resolved_database_url
    wait_for_database(url, args.wait)
    if args.downgrade:
        migrations.downgrade(url, args.downgrade)
    else:
        migrations.upgrade(url)
    if args.create_bucket and settings.resolved_storage_url.startswith("s3://"):
        from kegnet_service.storage import S3Store, open_store

        store = open_store(settings.resolved_storage_url, endpoint_url=settings.s3_endpoint_url)
        assert isinstance(store, S3Store)
        store.ensure_bucket()
    print(f"database at revision {migrations.current(url)}")
    return 0


def keys(args: argparse.Namespace) -> int:
    import migrations
    from kegnet_service.db import session_scope
    from kegnet_service.keys import create_key, revoke_keys

    settings = _settings()
    migrations.upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        if args.keys_command == "create":
            key = create_key(session, owner=args.owner)
            print(key)
            print(f"(API key for {args.owner!r}; it is shown only once)", file=sys.stderr)
        else:
            count = revoke_keys(session, prefix=args.prefix)
            print(f"revoked {count} key(s)")
    return 0


def local_key(settings) -> str:  # type: ignore[no-untyped-def]
    """The embedded server's own key, made on first start and kept in $KEGNET_HOME."""
    from kegnet_service.db import session_scope
    from kegnet_service.keys import add_key, create_key

    path = Path(settings.home) / KEY_FILE
    with session_scope(settings.resolved_database_url) as session:
        if path.is_file():
            key = path.read_text().strip()
            add_key(session, owner=LOCAL_OWNER, key=key)
            return key
        key = create_key(session, owner=LOCAL_OWNER)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def worker_command(queue: str, concurrency: int, loglevel: str, hostname: str | None = None) -> list[str]:
    named = ["--hostname", hostname] if hostname else []
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--loglevel",
        loglevel,
        "--concurrency",
        str(concurrency),
        "--queues",
        queue,
        "--pool",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        *named,
    ]


def serve(args: argparse.Namespace) -> int:
    """API, one worker and the reaper on this machine, with no server to install."""
    import threading

    import uvicorn

    import migrations
    from api.app import create_app
    from kegnet_service.queue import ensure_broker_folders, make_celery
    from kegnet_service.reaper import run_forever

    settings = _settings()
    configure_logging(args.loglevel)
    migrations.upgrade(settings.resolved_database_url)
    ensure_broker_folders(settings)
    key = local_key(settings)
    print(f"kegnet: state in {settings.home}", file=sys.stderr)
    print(f"kegnet: API key for this server: {key}", file=sys.stderr)
    print(f"kegnet:   (saved in {settings.home / KEY_FILE}; `kegnet submit` finds it there)", file=sys.stderr)
    print(f"kegnet: API docs at http://{args.host}:{args.port}/docs", file=sys.stderr)
    env = {**os.environ, "KEGNET_HOME": str(settings.home)}
    worker = subprocess.Popen(
        worker_command(settings.queue, args.concurrency, args.loglevel),
        env=env,
        start_new_session=True,
        preexec_fn=_worker_preexec,
    )
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the
    # default handler that would kill this process before `finally` stops the
    # worker, leaving it orphaned.  Exiting through SystemExit runs `finally`.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    stop_reaper = threading.Event()
    reaper_thread = threading.Thread(
        target=run_forever, args=(settings, make_celery(settings), stop_reaper), name="reaper", daemon=True
    )
    reaper_thread.start()
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)
    finally:
        stop_reaper.set()
        _stop(worker)
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# The embedded worker shares the host with the API: it runs at a lower CPU priority, so
# that status polls stay quick while a job trains (its jailed child adds its own niceness).
WORKER_NICENESS = 5


def _worker_preexec() -> None:
    from kegnet_core.jail import die_with_parent

    die_with_parent()  # even a kill -9 of `serve` takes its worker with it
    os.nice(WORKER_NICENESS)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def reaper(args: argparse.Namespace) -> int:
    """The deployment's one reaper, on a schedule (``KEGNET_REAP_INTERVAL_S``), until SIGTERM."""
    import threading

    from kegnet_service.queue import make_celery
    from kegnet_service.reaper import run_forever

    settings = _settings()
    configure_logging(args.loglevel)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    run_forever(settings, make_celery(settings), stop)
    return 0


def api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings()
    configure_logging(args.loglevel)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)
    return 0


def worker(args: argparse.Namespace) -> int:
    """A worker alone (for machines that only train); ``--gpu N`` pins it to one device."""
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    settings = _settings()
    from kegnet_service.queue import ensure_broker_folders

    ensure_broker_folders(settings)
    command = worker_command(args.queue or settings.queue, args.concurrency, args.loglevel, args.hostname)
    os.execv(command[0], command)
    return 0  # not reached


def add_service_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve_parser = commands.add_parser(
        "serve", help="run the API and a worker on this machine (embedded default)"
    )
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--concurrency", type=int, default=1, help="jobs at a time")
    serve_parser.add_argument("--loglevel", default="INFO")
    serve_parser.set_defaults(handler=serve)

    api_parser = commands.add_parser("api", help="run the API alone")
    api_parser.add_argument("--host", default="127.0.0.1")
    api_parser.add_argument("--port", type=int, default=8000)
    api_parser.add_argument("--loglevel", default="INFO")
    api_parser.set_defaults(handler=api)

    worker_parser = commands.add_parser("worker", help="run a worker alone")
    worker_parser.add_argument("--queue", help="queue to consume (default $KEGNET_QUEUE or 'kegnet')")
    worker_parser.add_argument("--concurrency", type=int, default=1, help="jobs at a time (1 per GPU)")
    worker_parser.add_argument("--gpu", type=int, help="pin this worker to one GPU index")
    worker_parser.add_argument("--hostname", help="worker name, e.g. gpu0@%%h (default celery@host)")
    worker_parser.add_argument("--loglevel", default="INFO")
    worker_parser.set_defaults(handler=worker)

    reaper_parser = commands.add_parser(
        "reaper", help="re-send jobs whose worker died or whose message was lost (one per deployment)"
    )
    reaper_parser.add_argument("--loglevel", default="INFO")
    reaper_parser.set_defaults(handler=reaper)

    migrate_parser = commands.add_parser("migrate", help="create or upgrade the job database (Alembic)")
    migrate_parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the database")
    migrate_parser.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION (e.g. base)")
    migrate_parser.add_argument(
        "--create-bucket", action="store_true", help="create the S3 bucket if missing"
    )
    migrate_parser.set_defaults(handler=migrate)

    keys_parser = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="make a key and print it once")
    create.add_argument("--owner", required=True)
    create.set_defaults(handler=keys)
    revoke = keys_commands.add_parser("revoke", help="revoke keys by their first 8 characters")
    revoke.add_argument("prefix")
    revoke.set_defaults(handler=keys)
