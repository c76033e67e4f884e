"""The deploy files: what they promise is in them, and (where a Docker engine answers) the image
builds and runs `check-config` and one `ask` against a loopback fake provider."""

from __future__ import annotations

import asyncio
import configparser
import shutil
import subprocess

import pytest

from tests.cli.kit import ROOT
from tests.fakes.provider_server import FakeProvider, Reply

DEPLOY = ROOT / "deploy"


def test_the_systemd_unit_does_not_restart_on_a_config_error():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(DEPLOY / "moa-gateway.service")
    service = unit["Service"]
    assert service["DynamicUser"] == "yes" and service["StateDirectory"] == "moa-gateway"
    assert service["RestartPreventExitStatus"] == "2" and service["Restart"] == "on-failure"
    assert service["WorkingDirectory"] == "/var/lib/moa-gateway"
    assert "User" not in service  # DynamicUser: no account to create


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(part.split()) for part in "\n".join(lines).replace("\\\n", " ").split("\n") if part.strip()]


def test_the_dockerfile_installs_dependencies_before_the_source_and_runs_unprivileged():
    steps = dockerfile_instructions()
    copies = [i for i, step in enumerate(steps) if step.startswith("COPY")]
    assert steps[copies[0]] == "COPY pyproject.toml ./"
    deps = next(i for i, step in enumerate(steps) if "pip install" in step)
    source = next(i for i, step in enumerate(steps) if step.startswith("COPY gateway"))
    assert copies[0] < deps < source and "-r /tmp/requirements.txt" in steps[deps]
    assert "--no-deps" in next(step for step in steps[source:] if "pip install" in step)
    user = [step for step in steps if step.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")


def test_the_docker_context_and_git_leave_out_state_and_secrets():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "*.db", "traces", ".env", ".git"} <= ignored
    gitignored = set((ROOT / ".gitignore").read_text().split())
    assert {"deploy/.env", "deploy/data/", "deploy/moa-gateway.toml", "*.db"} <= gitignored


def test_compose_paths_exist_from_the_repository_root():
    # compose resolves paths against the compose file's folder; README runs it from the root.
    text = (DEPLOY / "compose.yaml").read_text()
    assert "context: .." in text and "dockerfile: deploy/Dockerfile" in text
    assert (DEPLOY / ".." / "deploy" / "Dockerfile").exists()
    assert "./moa-gateway.toml:/data/moa-gateway.toml:ro" in text and "env_file: .env" in text
    assert '#   - "8443:8443"' in text and '#   - "3000:3000"' in text
    assert (DEPLOY / "env.example").exists() and (DEPLOY / "moa-gateway.example.toml").exists()
    readme = (ROOT / "README.md").read_text()
    assert "docker compose -f deploy/compose.yaml up -d --build" in readme


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"docker info failed: {error}"
    if probe.returncode != 0:
        return "docker info failed: " + (probe.stderr.strip().splitlines() or ["no engine"])[-1]
    return None


async def _docker(*args: str, timeout: float = 900) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode()


async def test_the_image_builds_and_answers_one_ask(tmp_path):
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    tag = "moa-gateway-test:latest"
    code, log = await _docker("build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT))
    assert code == 0, log[-3000:]
    async with FakeProvider() as fake:
        fake.reply("agg", Reply(text="ANSWER-FROM-THE-IMAGE"))
        data = tmp_path / "data"
        data.mkdir()
        data.chmod(0o777)  # the image's user (uid 10001) writes the database here
        (data / "moa-gateway.toml").write_text(
            f'[providers.fake]\napi = "openai"\nbase_url = "{fake.openai_base}"\napi_key_env = "FAKE_KEY"\n'
            '[presets.default]\nreferences = ["fake:ref"]\naggregator = "fake:agg"\n'
        )
        run = ("run", "--rm", "--network", "host", "-e", "FAKE_KEY=sk-test", "-v", f"{data}:/data", tag)
        code, out = await _docker(*run, "check-config", "--config", "/data/moa-gateway.toml", timeout=120)
        assert code == 0 and out.strip().splitlines()[-1].startswith("config OK"), out
        code, out = await _docker(*run, "ask", "--config", "/data/moa-gateway.toml", "hello", timeout=120)
        assert code == 0 and "ANSWER-FROM-THE-IMAGE" in out, out
    assert (data / "moa-gateway.db").exists()  # relative database: beside the config, in /data
