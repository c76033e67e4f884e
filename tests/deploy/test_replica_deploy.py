"""The replicas deployment (deploy/compose.replicas.yaml, Caddyfile.replicas, the example config
and env file) checked without a Docker engine: the compose file parses and wires PostgreSQL,
two identical replicas and the proxy; the example config is a valid config whose database is
that PostgreSQL service and whose webhook ports and paths are the ones the proxy routes to both
replicas; every variable the files need is in the env example. Where the compose plugin is
installed, `docker compose config` (which needs no daemon) validates the file too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from gateway.config import Config, load_config
from tests.cli.kit import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.replicas.yaml"
CADDYFILE = DEPLOY / "Caddyfile.replicas"
EXAMPLE = DEPLOY / "moa-gateway.replicas.example.toml"
ENV_EXAMPLE = DEPLOY / "env.replicas.example"
REPLICAS = ("replica1", "replica2")


def compose() -> dict:
    try:
        import yaml
    except ImportError:  # a virtualenv made before pyyaml joined the [test] extra
        if os.environ.get("CI"):
            raise
        pytest.skip("pyyaml is not installed: pip install -e '.[test]'")
    return yaml.safe_load(COMPOSE.read_text())


def example_with_slack(tmp_path: Path) -> Path:
    """The example config with its commented [slack] section switched on."""
    text = EXAMPLE.read_text()
    head, slack = text.split("# [slack]\n")
    lines = ["[slack]"] + [line.removeprefix("# ") for line in slack.splitlines()]
    path = tmp_path / "moa-gateway.toml"
    path.write_text(head + "\n".join(lines) + "\n")
    return path


def caddy_routes() -> dict[str, list[str]]:
    """`handle PATH { reverse_proxy UPSTREAM... }` of the Caddyfile: path -> upstreams."""
    routes: dict[str, list[str]] = {}
    path = None
    for line in CADDYFILE.read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["handle"] and words[-1] == "{":
            path = words[1]
        elif words[:1] == ["reverse_proxy"] and path is not None:
            routes[path] = [w for w in words[1:] if w != "{"]
            path = None
    return routes


def env_names() -> set[str]:
    return {line.lstrip("# ").split("=")[0] for line in ENV_EXAMPLE.read_text().splitlines()
            if re.match(r"#? ?[A-Z_]+=", line)}


def needed_variables(config: Path) -> set[str]:
    """The *_env values of a config: the variables it reads secrets from."""
    return set(re.findall(r'^\w+_env = "([A-Z_]+)"', config.read_text(), re.M))


def test_compose_runs_postgres_two_identical_replicas_and_the_proxy():
    services = compose()["services"]
    assert set(services) == {"postgres", *REPLICAS, "proxy"}
    one, two = (services[name] for name in REPLICAS)
    assert one == two  # one YAML anchor: the same image, config, env and grace
    assert one["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / one["build"]["context"] / one["build"]["dockerfile"]).exists()
    assert one["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "healthcheck" in services["postgres"]
    assert one["env_file"] == ".env" and services["proxy"]["env_file"] == ".env"
    # The config is read from /data (the Dockerfile's CMD); all state is in PostgreSQL.
    assert one["volumes"] == ["./data:/data:ro"]
    assert '"/data/moa-gateway.toml"' in (DEPLOY / "Dockerfile").read_text()
    # Only the proxy is reachable from outside.
    assert "ports" not in one and "ports" not in services["postgres"]
    assert services["proxy"]["ports"] == ["80:80", "443:443"]
    assert f"./{CADDYFILE.name}:/etc/caddy/Caddyfile:ro" in services["proxy"]["volumes"]
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(compose()["volumes"])
    # Running turns may finish on SIGTERM before Docker kills the container.
    grace = int(one["stop_grace_period"].removesuffix("s"))
    assert load_config(EXAMPLE).gateway.shutdown_grace_s < grace


def test_the_example_config_is_valid_and_names_the_compose_database(tmp_path):
    config: Config = load_config(example_with_slack(tmp_path))
    postgres = compose()["services"]["postgres"]["environment"]
    url = conninfo_to_dict(config.gateway.database)
    assert url["host"] == "postgres" and url["port"] == "5432"
    assert url["user"] == postgres["POSTGRES_USER"] and url["dbname"] == postgres["POSTGRES_DB"]
    assert "password" not in url  # from the environment, as the compose file sets it:
    assert postgres["POSTGRES_PASSWORD"].startswith("${" + config.gateway.database_password_env + ":")


def test_the_proxy_routes_both_webhooks_to_both_replicas_on_the_configured_ports(tmp_path):
    config = load_config(example_with_slack(tmp_path))
    telegram, slack = config.platforms["telegram"].options, config.platforms["slack"].options
    routes = caddy_routes()
    assert telegram["mode"] == "webhook" and telegram["webhook_listen"] == "0.0.0.0"
    path = "/" + telegram["webhook_path"].lstrip("/")
    assert telegram["webhook_url"].endswith(path)
    assert routes[path] == [f"{name}:{telegram['webhook_port']}" for name in REPLICAS]
    assert slack["http_host"] == "0.0.0.0"
    [prefix] = [p for p in routes if p.endswith("/*") and slack["http_path"].startswith(p[:-1])]
    assert routes[prefix] == [f"{name}:{slack['http_port']}" for name in REPLICAS]
    sites = [line for line in CADDYFILE.read_text().splitlines() if line.endswith("{") and not line[:1].isspace()]
    assert sites == ["{$PUBLIC_HOST} {"]  # one site: the host Telegram's webhook_url names


def test_every_variable_the_files_read_is_in_the_env_example(tmp_path):
    names = env_names()
    assert needed_variables(example_with_slack(tmp_path)) <= names
    assert set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text())) <= names
    assert set(re.findall(r"\{\$([A-Z_]+)\}", CADDYFILE.read_text())) <= names


def _compose_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return "the docker compose plugin is not installed: " + (probe.stderr.strip().splitlines() or ["?"])[0]
    return None


def test_docker_compose_accepts_the_file(tmp_path):
    reason = _compose_unavailable()
    if reason:
        pytest.skip(reason)
    for name in (COMPOSE.name, CADDYFILE.name, "Dockerfile"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text().replace("MOA_DB_PASSWORD=", "MOA_DB_PASSWORD=x"))
    (tmp_path / "data").mkdir()
    done = subprocess.run(["docker", "compose", "-f", str(tmp_path / COMPOSE.name), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
