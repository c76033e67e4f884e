"""Run the installed `moa-gateway` console script as a user would: a subprocess with a chosen
environment, working folder and stdin, and a bounded wait."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The console script pip installed beside this interpreter (.venv/bin/moa-gateway).
CONSOLE_SCRIPT = Path(sys.executable).parent / "moa-gateway"
# Variables the built-in default reads: a test starts from none of them set.
BUILTIN_VARIABLES = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "OLLAMA_HOST")


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str

    @property
    def last_err_line(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any provider variable, with the user's data folder in
    tmp_path (XDG_DATA_HOME), so no test touches the real home folder."""
    env = {k: v for k, v in os.environ.items() if k not in BUILTIN_VARIABLES and not k.startswith("TEST_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    env["HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


async def moa_gateway(*args: str, env: dict[str, str], cwd: Path, stdin: bytes | None = None,
                      timeout: float = 90) -> Ran:
    process = await asyncio.create_subprocess_exec(
        str(CONSOLE_SCRIPT), *args, cwd=cwd, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Ran(process.returncode or 0, out.decode(), err.decode())


def fake_config(base_url: str, *, database: str = "moa.db", extra: str = "", key_env: str = "TEST_KEY") -> str:
    """A small config on one OpenAI-style provider at `base_url`: references ref-a and ref-b,
    aggregator agg."""
    return f"""
[gateway]
database = "{database}"

[providers.fake]
api = "openai"
base_url = "{base_url}"
api_key_env = "{key_env}"
max_retries = 0

[presets.default]
references = ["fake:ref-a", "fake:ref-b"]
aggregator = "fake:agg"
{extra}"""
