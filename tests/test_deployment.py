"""The deployment files, checked without a Docker engine (`make compose-test` runs them).

The compose files, the Dockerfile, the lock, the Prometheus configuration and its alert
rules are read as text or YAML and checked against the code they deploy: services and their
wiring, ports, healthchecks, that every ERRANDS_* variable exists in errands/config.py,
that every command is a real `errands` command, and that alerts use real metric names.
deploy/compose.local.yml is held in step with docker-compose.yml, and deploy/replica.py,
which gives its replicas their ports and identities, is run here in process.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from errands.cli import cli
from errands.harness.process import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
LOCK = ROOT / "requirements.lock"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
LOCAL_FILE = DEPLOY / "compose.local.yml"
ERRANDS_SERVICES = ("migrate", "api", "worker")  # run the image built from this repository
LONG_RUNNING = ("api", "worker")
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
ERRANDS_VARIABLE = re.compile(r"\bERRANDS_[A-Z0-9_]+\b")


# -- reading the files -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


def local() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(LOCAL_FILE.read_text())
    return document


def local_service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = local()["services"]
    return services[name]


def interpolated(value: Any) -> str:
    """A compose value as Compose would resolve it with no variable set: the defaults."""
    return INTERPOLATION.sub(lambda m: m.group("default") or "", str(value))


def environment(name: str) -> dict[str, str]:
    return {key: interpolated(value) for key, value in service(name)["environment"].items()}


def port_of(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def container_port(mapping: str | int) -> int:
    return int(str(mapping).rpartition(":")[2].split("/")[0])


def seconds(duration: str) -> float:
    """A Compose duration such as 30s, 1m30s or 1h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def build_arguments() -> dict[str, str]:
    """The ARGs declared before the first FROM, which FROM lines may use: their defaults."""
    declared = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            return declared
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            declared[name] = default
    raise AssertionError("the Dockerfile has no FROM")


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, FROM first."""
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def build_stage_arguments() -> list[str]:
    return [args.partition("=")[0] for word, args in stages()[0] if word == "ARG"]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def only(keyword: str) -> str:
    found = [arguments for word, arguments in final_stage() if word == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    assert arguments.startswith("["), f"shell form, not exec form: {arguments}"
    parsed = json.loads(arguments)
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


def healthcheck_command() -> list[str]:
    arguments = only("HEALTHCHECK")
    return exec_form(arguments[arguments.index("CMD ") + len("CMD ") :])


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def prometheus_config() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    return document


def scrape_job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    return jobs[name]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def config_variables() -> set[str]:
    return set(ERRANDS_VARIABLE.findall((ROOT / "errands" / "config.py").read_text()))


def exposed_metrics() -> set[str]:
    """Metric names errands defines (errands/metrics.py), with a histogram's series."""
    names = set(re.findall(r'"(errands_[a-z_]+)"', (ROOT / "errands" / "metrics.py").read_text()))
    histograms = {"errands_job_duration_seconds", "errands_job_wait_seconds"}
    assert histograms <= names
    return names | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}


def parse_cli(args: list[str]) -> click.Context:
    """Parse an `errands` command line as click would, without running it."""
    command: click.Command = cli
    name = "errands"
    while isinstance(command, click.Group) and args:
        while args[0].startswith("-"):  # the group's own options, such as --database-url
            option = next(p for p in command.params if args[0] in p.opts)
            args = args[1 if getattr(option, "is_flag", False) else 2 :]
        name, args = args[0], args[1:]
        found = command.commands.get(name)
        assert found is not None, f"errands has no command {name!r}"
        command = found
    return command.make_context(name, list(args))


# -- compose: services and their wiring --------------------------------------------------------


def test_compose_defines_postgres_migrate_api_worker_and_prometheus() -> None:
    assert {"postgres", "migrate", "api", "worker", "prometheus"} <= set(compose()["services"])


def test_errands_services_are_built_from_this_repository() -> None:
    for name in ERRANDS_SERVICES:
        assert service(name)["build"] == ".", name


def test_postgres_is_version_16_on_port_5432_with_a_named_volume() -> None:
    postgres = service("postgres")
    assert postgres["image"] == "postgres:16"
    assert [container_port(p) for p in postgres["ports"]] == [5432]
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]


def test_postgres_is_healthy_when_pg_isready_says_so() -> None:
    assert "pg_isready" in service("postgres")["healthcheck"]["test"]


def test_migrate_runs_once_when_postgres_is_healthy() -> None:
    migrate = service("migrate")
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_waits_for_a_healthy_database_and_a_finished_migration(name: str) -> None:
    assert service(name)["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


def test_api_publishes_the_port_it_listens_on() -> None:
    api = service("api")
    listens = port_of(environment("api")["ERRANDS_HTTP_ADDR"])
    assert listens == 3000
    assert [container_port(p) for p in api["ports"]] == [listens]


def published_ports() -> dict[str, list[str]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {
        name: [str(p) for p in svc["ports"]] for name, svc in services.items() if "ports" in svc
    }


def test_published_ports_bind_the_loopback_unless_told_otherwise() -> None:
    """A default password and an open API must not be reachable from other machines."""
    published = published_ports()
    assert set(published) == {"postgres", "api", "prometheus"}
    for name, mappings in published.items():
        for mapping in mappings:
            assert mapping.startswith("${PUBLISH_ADDR:-127.0.0.1}:"), (name, mapping)
            assert interpolated(mapping).startswith("127.0.0.1:"), (name, mapping)


def compose_config(**env: str) -> str:
    """`docker-compose config`: the file as Compose itself reads and validates it."""
    docker_compose = shutil.which("docker-compose")
    assert docker_compose is not None
    clean = {k: v for k, v in os.environ.items() if k != "PUBLISH_ADDR"}
    result = subprocess.run(
        [docker_compose, "--file", str(COMPOSE_FILE), "--profile", "prometheus", "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (.ci/run installs it: apt-get install docker-compose)",
)


@needs_compose
def test_docker_compose_validates_the_file_and_publishes_on_the_loopback() -> None:
    published = re.findall(r"^\s*- (\S+):(\d+):\d+/tcp$", compose_config(), re.MULTILINE)
    assert sorted(published) == [
        ("127.0.0.1", "3000"),
        ("127.0.0.1", "5432"),
        ("127.0.0.1", "9090"),
    ]


@needs_compose
def test_publish_addr_exposes_the_ports_deliberately() -> None:
    published = re.findall(
        r"^\s*- (\S+):(\d+):\d+/tcp$", compose_config(PUBLISH_ADDR="0.0.0.0"), re.MULTILINE
    )
    assert {address for address, _ in published} == {"0.0.0.0"}


def test_worker_http_child_listens_on_an_internal_port_only() -> None:
    worker = service("worker")
    listens = port_of(environment("worker")["ERRANDS_HTTP_ADDR"])
    assert "ports" not in worker
    assert [int(p) for p in worker["expose"]] == [listens]


def test_worker_can_be_scaled() -> None:
    worker = service("worker")
    assert "container_name" not in worker
    assert "ports" not in worker


def test_worker_runs_the_configured_number_of_worker_processes() -> None:
    assert service("worker")["command"] == ["run"]
    assert int(environment("worker")["ERRANDS_WORKERS"]) >= 1


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_healthcheck_is_the_images(name: str) -> None:
    assert service(name)["healthcheck"]["test"] == ["CMD", *healthcheck_command()]


@pytest.mark.parametrize("name", ["migrate", "prune"])
def test_one_shot_service_has_no_healthcheck(name: str) -> None:
    assert service(name)["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_stop_grace_period_outlasts_the_supervisor_grace(name: str) -> None:
    grace = float(environment(name)["ERRANDS_GRACE_SECONDS"])
    example = dict(re.findall(r"^(ERRANDS_\w+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert float(example["ERRANDS_GRACE_SECONDS"]) == grace
    # After the grace the supervisor kills what still runs and releases its jobs: leave time.
    assert seconds(service(name)["stop_grace_period"]) >= grace + 5


def test_database_url_points_at_the_postgres_service() -> None:
    postgres = service("postgres")["environment"]
    for name in ERRANDS_SERVICES:
        url = environment(name)["ERRANDS_DATABASE_URL"]
        user, db = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
        password = interpolated(postgres["POSTGRES_PASSWORD"])
        assert url == f"postgresql://{user}:{password}@postgres:5432/{db}", name


@pytest.mark.parametrize("name", [*ERRANDS_SERVICES, "prune"])
def test_compose_command_is_a_real_errands_command(name: str) -> None:
    spec = service(name)
    assert "entrypoint" not in spec  # the image's: errands
    parse_cli([interpolated(arg) for arg in spec["command"]])


def test_prometheus_runs_only_under_its_profile() -> None:
    assert service("prometheus")["profiles"] == ["prometheus"]


def test_prometheus_mounts_its_configuration_and_rules_from_the_repository() -> None:
    mounts = dict(v.split(":")[:2] for v in service("prometheus")["volumes"] if v.startswith("./"))
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./deploy/alerts.yml"] == "/etc/prometheus/alerts.yml"
    for source in mounts:
        assert (ROOT / source).is_file(), source


# -- compose on the host network: deploy/compose.local.yml in step with docker-compose.yml ------

# What the host network changes in each service's environment, and nothing else: addresses on
# the loopback at the ERRANDS_COMPOSE_* ports; a worker replica's port is deploy/replica.py's.
LOCAL_DATABASE = "@127.0.0.1:${ERRANDS_COMPOSE_PG_PORT:-55432}/"
LOCAL_ENVIRONMENT: dict[str, dict[str, str | None]] = {
    "postgres": {"PGPORT": "${ERRANDS_COMPOSE_PG_PORT:-55432}"},
    "api": {"ERRANDS_HTTP_ADDR": "127.0.0.1:${ERRANDS_COMPOSE_API_PORT:-3000}"},
    "worker": {
        "ERRANDS_HTTP_ADDR": None,
        "ERRANDS_COMPOSE_WORKER_PORT": "${ERRANDS_COMPOSE_WORKER_PORT:-9100}",
    },
}
REPLICA_ENTRYPOINT = ["python", "/deploy/replica.py"]


def expected_local_environment(name: str) -> dict[str, str]:
    main = {
        key: str(value).replace("@postgres:5432/", LOCAL_DATABASE)
        for key, value in service(name).get("environment", {}).items()
    }
    for key, value in LOCAL_ENVIRONMENT.get(name, {}).items():
        if value is None:
            del main[key]
        else:
            main[key] = value
    return main


def test_local_file_has_the_services_and_profiles_of_the_main_file() -> None:
    services = compose()["services"]
    assert set(local()["services"]) == set(services)
    for name, spec in services.items():
        assert local_service(name).get("profiles") == spec.get("profiles"), name


@pytest.mark.parametrize("name", [*ERRANDS_SERVICES, "prune"])
def test_local_errands_service_runs_the_same_command_from_the_same_image(name: str) -> None:
    main, here = service(name), local_service(name)
    assert here["command"] == main["command"]
    assert here["image"] == main["image"]
    assert here["build"]["context"] == ".."  # the repository, from deploy/
    assert here.get("entrypoint") == (REPLICA_ENTRYPOINT if name in LONG_RUNNING else None)


def test_local_postgres_and_prometheus_run_the_main_command_on_the_loopback() -> None:
    assert local_service("postgres")["command"] == ["postgres", "-c", "listen_addresses=127.0.0.1"]
    assert local_service("prometheus")["command"] == [
        *service("prometheus")["command"],
        "--web.listen-address=127.0.0.1:${ERRANDS_COMPOSE_PROMETHEUS_PORT:-9090}",
    ]


@pytest.mark.parametrize("name", ["postgres", "migrate", "api", "worker", "prune", "prometheus"])
def test_local_service_has_the_main_environment_but_for_host_network_addresses(name: str) -> None:
    assert dict(local_service(name).get("environment", {})) == expected_local_environment(name)


def test_local_worker_ports_start_where_the_main_workers_listen() -> None:
    first = interpolated(local_service("worker")["environment"]["ERRANDS_COMPOSE_WORKER_PORT"])
    assert int(first) == port_of(environment("worker")["ERRANDS_HTTP_ADDR"])


@pytest.mark.parametrize("name", ["postgres", "migrate", "api", "worker", "prune"])
def test_local_service_has_the_main_healthcheck(name: str) -> None:
    expected = dict(service(name)["healthcheck"])
    if name == "worker":  # the port is the replica's own, where replica.py announced it
        expected["test"] = ["CMD", *REPLICA_ENTRYPOINT, "health"]
    assert local_service(name)["healthcheck"] == expected


@pytest.mark.parametrize("key", ["restart", "depends_on", "stop_grace_period"])
def test_local_services_restart_wait_and_stop_as_the_main_ones(key: str) -> None:
    for name, spec in compose()["services"].items():
        assert local_service(name).get(key) == spec.get(key), (name, key)


def test_every_local_service_is_on_the_host_network_and_publishes_nothing() -> None:
    for name, spec in local()["services"].items():
        assert spec["network_mode"] == "host", name
        assert "ports" not in spec and "expose" not in spec, name


def test_local_images_are_the_official_ones_unless_told_otherwise() -> None:
    for name, variable in [
        ("postgres", "ERRANDS_COMPOSE_POSTGRES_IMAGE"),
        ("prometheus", "ERRANDS_COMPOSE_PROMETHEUS_IMAGE"),
    ]:
        assert local_service(name)["image"] == f"${{{variable}:-{service(name)['image']}}}"
    python = local_service("api")["build"]["args"]["PYTHON_IMAGE"]
    assert python == f"${{ERRANDS_COMPOSE_PYTHON_IMAGE:-{build_arguments()['PYTHON_IMAGE']}}}"


def test_the_errands_image_builds_on_the_host_network_with_the_shells_pip_settings() -> None:
    build = local_service("api")["build"]
    assert build["network"] == "host"
    passed = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "EXTRA_CA_PEM"}
    assert {name: build["args"][name] for name in passed} == {
        name: f"${{{name}:-}}" for name in passed
    }
    assert set(build["args"]) == passed | {"PYTHON_IMAGE"}
    assert passed <= set(build_stage_arguments())


def test_local_replicas_share_the_targets_volume_prometheus_reads() -> None:
    volumes = local()["volumes"]
    assert volumes["targets"]["driver_opts"]["type"] == "tmpfs"  # empty whenever the stack is down
    owner = re.search(r"\buid=(\d+),gid=(\d+)\b", volumes["targets"]["driver_opts"]["o"])
    assert owner is not None and ":".join(owner.groups()) == only("USER")  # replicas write it
    for name in LONG_RUNNING:
        assert "targets:/targets" in local_service(name)["volumes"]
        assert "./replica.py:/deploy/replica.py:ro" in local_service(name)["volumes"]
    assert "targets:/etc/prometheus/targets:ro" in local_service("prometheus")["volumes"]


def test_local_prometheus_reads_the_targets_the_replicas_announce() -> None:
    mounts = dict(v.split(":")[:2] for v in local_service("prometheus")["volumes"])
    assert mounts["./prometheus.local.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./alerts.yml"] == "/etc/prometheus/alerts.yml"
    document = yaml.safe_load((DEPLOY / "prometheus.local.yml").read_text())
    files = {job["job_name"]: job["file_sd_configs"] for job in document["scrape_configs"]}
    assert files == {
        "errands-api": [{"files": ["/etc/prometheus/targets/api.json"]}],
        "errands-worker": [{"files": ["/etc/prometheus/targets/worker-*.json"]}],
    }
    assert document["rule_files"] == prometheus_config()["rule_files"]


@needs_compose
def test_docker_compose_validates_the_local_file() -> None:
    result = subprocess.run(
        ["docker-compose", "--file", str(LOCAL_FILE), "--profile", "prometheus", "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("network_mode: host") == len(local()["services"])


# -- deploy/replica.py: a port, an identity and a Prometheus target per replica -----------------


@pytest.fixture
def replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """deploy/replica.py, its shared volume and announcement file under tmp_path."""
    spec = importlib.util.spec_from_file_location("replica", DEPLOY / "replica.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TARGETS", tmp_path / "targets")
    monkeypatch.setattr(module, "CLAIMS", tmp_path / "targets" / "claims")
    monkeypatch.setattr(module, "ANNOUNCED", tmp_path / "http-addr")
    (tmp_path / "targets" / "claims").mkdir(parents=True)
    yield module
    for lock in module._claims:
        os.close(lock)


def held_elsewhere(replica: Any, port: int) -> int:
    """Another replica's claim on `port`: a lock of its own on the claim file."""
    lock = replica._lock(port)
    assert lock is not None
    return int(lock)


def test_replicas_claim_ports_of_their_own(replica: Any) -> None:
    first = replica.claim_port(free_port())
    assert replica.claim_port(first) > first


def test_a_replica_skips_a_port_something_else_listens_on(replica: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert replica.claim_port(port) != port


def test_a_crashed_replicas_port_is_free_again(replica: Any) -> None:
    port = free_port()
    os.close(held_elsewhere(replica, port))  # the replica's processes died: the lock with them
    assert replica.claim_port(port) == port


def test_sweep_removes_the_targets_of_replicas_gone_for_good_only(replica: Any) -> None:
    live, gone = free_port(), free_port()
    lock = held_elsewhere(replica, live)
    replica.CLAIMS.joinpath(str(gone)).touch()
    for port in (live, gone):
        replica.announce(f"worker-{port}", f"127.0.0.1:{port}", "replica")
    replica.sweep()
    assert sorted(p.name for p in replica.TARGETS.glob("*.json")) == [f"worker-{live}.json"]
    os.close(lock)


def test_announce_writes_a_prometheus_target_and_where_health_looks(replica: Any) -> None:
    target = replica.announce("worker-9100", "127.0.0.1:9100", "0123456789ab")
    assert json.loads(target.read_text()) == [
        {"targets": ["127.0.0.1:9100"], "labels": {"replica": "0123456789ab"}}
    ]
    assert replica.ANNOUNCED.read_text() == "127.0.0.1:9100"


@pytest.mark.parametrize(
    "source",
    [
        "/var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw",
        "/var/lib/containers/storage/overlay-containers/{id}/userdata/hostname /etc/hostname rw",
    ],
    ids=["docker", "podman"],
)
def test_a_replicas_identity_is_its_container_id(replica: Any, tmp_path: Path, source: str) -> None:
    container = "0123456789abcdef" * 4
    mountinfo = tmp_path / "mountinfo"
    mounts = f"1 0 0:1 / / rw - overlay overlay rw\n639 630 254:0 {source.format(id=container)}\n"
    mountinfo.write_text(mounts)
    assert replica.container_id(mountinfo) == container


# -- environment variables -------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE_FILE, ENV_EXAMPLE, DOCKERFILE], ids=lambda p: p.name)
def test_every_errands_variable_named_exists_in_the_configuration(path: Path) -> None:
    named = set(ERRANDS_VARIABLE.findall(path.read_text()))
    assert named, f"{path.name} names no ERRANDS_ variable"
    assert named <= config_variables(), named - config_variables()


def test_env_example_lists_every_variable_compose_reads_with_its_default() -> None:
    defaults = {
        m.group("name"): m.group("default") or ""
        for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())
    }
    example = dict(re.findall(r"^(\w+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert example == defaults


def test_env_example_explains_every_setting() -> None:
    for paragraph in ENV_EXAMPLE.read_text().split("\n\n"):
        lines = paragraph.strip().splitlines()
        settings = [line for line in lines if re.match(r"^\w+=", line)]
        assert not settings or lines[0].startswith("#"), f"no explanation for {settings}"


# -- Prometheus and alerts ---------------------------------------------------------------------


def test_prometheus_scrapes_the_api_where_it_listens() -> None:
    job = scrape_job("errands-api")
    port = port_of(environment("api")["ERRANDS_HTTP_ADDR"])
    assert job["static_configs"] == [{"targets": [f"api:{port}"]}]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_discovers_every_worker_replica_where_it_listens() -> None:
    job = scrape_job("errands-worker")
    port = port_of(environment("worker")["ERRANDS_HTTP_ADDR"])
    assert job["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": port, "refresh_interval": "15s"}
    ]


def test_prometheus_loads_the_alert_rules() -> None:
    assert prometheus_config()["rule_files"] == ["alerts.yml"]


def test_alert_rules_cover_stuck_jobs_dead_jobs_and_queue_age() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert set(rules) == {"ErrandsJobsStuck", "ErrandsDeadJobsRising", "ErrandsQueueAgeGrowing"}
    assert "errands_queue_jobs" in rules["ErrandsJobsStuck"]
    assert "errands_jobs_dead_total" in rules["ErrandsDeadJobsRising"]
    assert "errands_queue_oldest_pending_seconds" in rules["ErrandsQueueAgeGrowing"]


def test_alert_rules_use_only_metrics_errands_exposes() -> None:
    used = {name for rule in alert_rules() for name in re.findall(r"\berrands_\w+", rule["expr"])}
    assert used
    assert used <= exposed_metrics(), used - exposed_metrics()


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("ERRANDS_SKIP_PROMTOOL_TESTS") == "1":
            pytest.skip("ERRANDS_SKIP_PROMTOOL_TESTS=1 and promtool missing")
        pytest.fail(
            "the alert rules' unit tests need promtool: install it with `apt-get install -y"
            " --no-install-recommends prometheus` (or set ERRANDS_SKIP_PROMTOOL_TESTS=1 to"
            " skip this test)"
        )
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_builds_on_python_311_slim_unless_told_otherwise() -> None:
    images = [args.split()[0] for word, args in dockerfile_instructions() if word == "FROM"]
    assert images == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # the build stage and the image
    assert build_arguments() == {"PYTHON_IMAGE": "python:3.11-slim"}


def test_only_the_build_stage_reaches_a_package_index() -> None:
    """pip's settings and a proxy's CA are build arguments of the build stage: the image
    installs the wheels that stage made, with no index, and keeps none of them."""
    build, final = stages()
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "EXTRA_CA_PEM"} <= set(
        build_stage_arguments()
    )
    assert not [args for word, args in final if word == "ARG"]
    installs = [args for word, args in final if word == "RUN" and "pip install" in args]
    assert installs and all("--no-index" in args for args in installs)
    downloads = [args for word, args in build if word == "RUN" and "pip download" in args]
    assert len(downloads) == 1 and "--no-deps" in downloads[0]
    assert "requirements.lock" in downloads[0]


def test_entrypoint_is_errands_in_exec_form() -> None:
    assert exec_form(only("ENTRYPOINT")) == ["errands"]


def test_default_command_is_run_in_exec_form() -> None:
    command = exec_form(only("CMD"))
    assert command == ["run"]
    parse_cli(command)


def test_image_runs_as_a_non_root_user() -> None:
    users = [args for word, args in final_stage() if word == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_image_installs_the_lock_then_errands_without_dependencies() -> None:
    runs = [args for word, args in final_stage() if word == "RUN" and "pip install" in args]
    assert len(runs) == 2, runs
    locked, project = runs
    assert "requirements.lock" in locked
    assert "--no-deps" in project
    assert "pip check" in project


def test_image_installs_no_extras() -> None:
    text = DOCKERFILE.read_text()
    assert "[dev" not in text
    assert "[embedded" not in text


class _Ready(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ready"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ready_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A stand-in for /ready answering with the status given by parametrization."""
    handler = type("Handler", (_Ready,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(http_addr: str) -> int:
    program, *arguments = healthcheck_command()
    assert program == "python"
    env = {"ERRANDS_HTTP_ADDR": http_addr}
    result = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, check=False)
    return result.returncode


@pytest.mark.parametrize("ready_server", [200], indirect=True)
def test_healthcheck_passes_when_ready_answers_on_the_configured_port(ready_server: int) -> None:
    assert run_healthcheck(f"0.0.0.0:{ready_server}") == 0


@pytest.mark.parametrize("ready_server", [503], indirect=True)
def test_healthcheck_fails_when_ready_answers_an_error(ready_server: int) -> None:
    assert run_healthcheck(f"0.0.0.0:{ready_server}") != 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert run_healthcheck(f"0.0.0.0:{free_port}") != 0


def test_dockerignore_admits_what_the_dockerfile_copies_and_nothing_private() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def admitted(name: str) -> bool:
        verdict = True
        for rule in rules:
            pattern = rule.removeprefix("!").rstrip("/")
            if "/" not in pattern and Path(name).match(pattern):
                verdict = rule.startswith("!")
        return verdict

    copied = [
        source
        for word, args in dockerfile_instructions()
        if word == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert admitted(source.rstrip("/").split("/")[0]), source
    for private in (".git", ".venv", ".env", "tests", ".hypothesis"):
        assert not admitted(private), private


# -- the lock ----------------------------------------------------------------------------------


def test_lock_pins_exact_versions() -> None:
    assert lock_pins()  # every line is name==version, or lock_pins fails


def test_lock_covers_every_runtime_dependency_and_theirs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pending = [Requirement(spec) for spec in pyproject["project"]["dependencies"]]
    needed: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in needed:
            continue
        needed.add(name)
        extras = {"", *requirement.extras}
        for spec in metadata.requires(requirement.name) or []:
            dependency = Requirement(spec)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    missing = needed - set(lock_pins())
    assert not missing, f"requirements.lock lacks {sorted(missing)}"


def test_lock_provides_every_module_errands_imports_at_start_up() -> None:
    """Module-level imports run when `errands` starts; lazy ones inside functions do not.

    errands/harness is imported only by `errands bench` and `errands chaos`, which need
    the `harness` extra (not in the image); errands/contrib only by applications that
    install its extras (`errands[django]`); an import that falls back on ImportError is
    an extra's too (opentelemetry, `errands[otel]`).
    """

    def module_level_imports(body: list[ast.stmt]) -> Iterator[str]:
        for node in body:
            if isinstance(node, ast.Import):
                yield from (alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.module.split(".")[0]
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from module_level_imports(node.body + node.orelse)
            elif isinstance(node, ast.Try) and not optional(node):
                yield from module_level_imports(node.body)

    def optional(node: ast.Try) -> bool:
        """`try: import x` / `except ImportError:`: x is an optional extra (errands[otel])."""
        return any("ImportError" in ast.unparse(h.type) for h in node.handlers if h.type)

    modules = {
        module
        for path in (ROOT / "errands").rglob("*.py")
        if not {"harness", "contrib"} & set(path.relative_to(ROOT / "errands").parts)
        for module in module_level_imports(ast.parse(path.read_text()).body)
    }
    third_party = modules - set(sys.stdlib_module_names) - {"errands", "__future__"}
    distributions = metadata.packages_distributions()
    unlocked = {
        module: distributions.get(module)
        for module in third_party
        if not {canonicalize_name(d) for d in distributions.get(module, [])} & set(lock_pins())
    }
    assert not unlocked, f"imported at start-up but not in requirements.lock: {unlocked}"


# -- the operator's guide ----------------------------------------------------------------------


def test_every_errands_command_in_the_readme_and_the_docs_is_valid() -> None:
    # Those the examples runner does not run too (not-run blocks: compose, chaos, bench).
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "".join(page.read_text() for page in pages)
    blocks = re.findall(r"```(?:sh|console|bash)\n(.*?)```", text, re.DOTALL)
    commands = [
        # A command sent to the background (`errands run ... &`) is the command before `&`.
        shlex.split(line.removeprefix("$ ").split(" #")[0].strip().removesuffix("&"))
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        # `errands ... || echo "exit code $?"` shows a refusal on purpose (reference/exit-codes)
        if line.removeprefix("$ ").startswith("errands ")
        and not {"--version", "--help", "||"} & set(line.split())
    ]
    assert commands
    for command in commands:
        parse_cli(command[1:])
