"""docker-compose.yml and Dockerfile.gpu, checked by parsing (no Docker engine here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from kegnet_cli.main import build_parser
from kegnet_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KEGNET_SERVICES = ("migrate", "api", "worker", "reaper")
SECRET = re.compile(r"^\$\{[A-Z_]+:\?[^}]+\}$")


def test_every_service_is_there():
    assert {"api", "worker", "reaper", "postgres", "redis", "minio", "migrate", "flower"} <= set(SERVICES)


def test_healthchecks_everywhere_but_the_one_shot_migration():
    for name, service in SERVICES.items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), name


def test_dependencies_wait_for_health():
    for name in ("api", "worker", "reaper"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["minio"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_environment_names_are_settings_we_read():
    fields = {f"KEGNET_{name.upper()}" for name in Settings.model_fields}
    for name in KEGNET_SERVICES:
        environment = SERVICES[name]["environment"]
        kegnet_names = {key for key in environment if key.startswith("KEGNET_")}
        assert kegnet_names <= fields, kegnet_names - fields
        assert {"KEGNET_DATABASE_URL", "KEGNET_BROKER_URL", "KEGNET_STORAGE_URL"} <= kegnet_names
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment)


def test_secrets_must_be_set():
    assert SECRET.match(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"])
    assert SECRET.match(SERVICES["minio"]["environment"]["MINIO_ROOT_PASSWORD"])
    environment = SERVICES["api"]["environment"]
    assert SECRET.match(environment["KEGNET_API_KEYS"])
    assert SECRET.match(environment["AWS_SECRET_ACCESS_KEY"])
    assert ":?" in environment["KEGNET_DATABASE_URL"]


def test_commands_are_real_kegnet_commands():
    parser = build_parser()
    for name in KEGNET_SERVICES:
        command = SERVICES[name]["command"]
        assert command[0] == "kegnet", name
        parser.parse_args(command[1:])  # exits on an unknown command or option
    worker = parser.parse_args(SERVICES["worker"]["command"][1:])
    assert worker.concurrency == 1 and worker.gpu == 0
    assert SERVICES["worker"]["environment"]["KEGNET_QUEUE"] == worker.queue


def test_worker_reserves_a_gpu():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_state_survives_restarts():
    assert {"pgdata", "redisdata", "miniodata"} <= set(COMPOSE["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "--appendonly" in SERVICES["redis"]["command"]


def test_env_example_sets_every_required_variable():
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (REPO / "docker-compose.yml").read_text()))
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and "=" in line
    )
    assert required <= set(example)


DOCKERFILE = (REPO / "Dockerfile.gpu").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest))
    return rows


def test_dockerfile_uses_a_cuda_runtime_and_a_cuda_torch():
    rows = _instructions()
    assert "nvidia/cuda:" in DOCKERFILE and "runtime" in DOCKERFILE
    assert [rest for keyword, rest in rows if keyword == "FROM"][-1] == "${CUDA_BASE}"
    assert any("download.pytorch.org/whl/cu" in rest for keyword, rest in rows if keyword == "ARG")
    assert any("--index-url ${TORCH_INDEX}" in rest for keyword, rest in rows if keyword == "RUN")


def test_dockerfile_runs_as_a_non_root_user_and_copies_what_exists():
    rows = _instructions()
    users = [rest for keyword, rest in rows if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    for keyword, rest in rows:
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _target = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), source


@pytest.mark.parametrize(
    "package", ["kegnet_core", "kegnet_cli", "kegnet_service", "api", "worker", "migrations"]
)
def test_dockerfile_ships_every_package(package):
    assert f"COPY {package} /src/{package}" in DOCKERFILE


def test_dockerfile_default_command_is_ours():
    command = [rest for keyword, rest in _instructions() if keyword == "CMD"][-1]
    argv = yaml.safe_load(command)
    assert argv[0] == "kegnet"
    build_parser().parse_args(argv[1:])
