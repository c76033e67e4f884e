"""`moa-gateway ask` over partly priced calls, run as the console script against a fake provider:
the JSON gives the priced calls' sum and the count of unpriced ones, every text total shows both,
and a single unknown cost reads `unknown`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.fakes.provider_server import FakeProvider, Reply

ROOT = Path(__file__).resolve().parents[2]


def config(fake: FakeProvider, tmp_path: Path) -> Path:
    # "priced" reports each call's cost (as OpenRouter does); "local" is a llama.cpp-like server
    # with no prices at all, whose model names no price table knows.
    path = tmp_path / "moa-gateway.toml"
    path.write_text(f"""
[gateway]
database = "{tmp_path / 'moa.db'}"

[providers.priced]
api = "openai"
base_url = "{fake.openai_base}"

[providers.local]
api = "openai"
base_url = "{fake.openai_base}"

[presets.default]
references = ["priced:ref-priced", "local:ref-local-a", "local:ref-local-b", "moa:unpriced"]
aggregator = "priced:agg-priced"

[presets.unpriced]
references = ["local:ref-local-a"]
aggregator = "local:agg-local"
""")
    return path


async def ask(path: Path, *args: str) -> tuple[int, str, str]:
    script = Path(sys.executable).with_name("moa-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    process = await asyncio.create_subprocess_exec(
        *command, "ask", "--config", str(path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=path.parent,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


def replies(fake: FakeProvider) -> None:
    fake.reply("ref-priced", Reply(text="Priced advice.", cost=0.0001))
    fake.reply("ref-local-a", Reply(text="Local advice A."))
    fake.reply("ref-local-b", Reply(text="Local advice B."))
    fake.reply("agg-priced", Reply(text="The answer.", cost=0.00004))
    fake.reply("agg-local", Reply(text="The local answer."))


async def test_ask_json_counts_unpriced_calls_and_rounds_dollars(fake, tmp_path):
    replies(fake)
    code, out, err = await ask(config(fake, tmp_path), "--json", "hello")
    assert code == 0, err
    data = json.loads(out)
    assert data["unpriced_calls"] == 2  # the skipped moa: slot made no call, so it is not unpriced
    assert data["total_cost_usd"] == 0.00014 and "0.00014000000000000001" not in out
    assert [(r["status"], r["cost_usd"]) for r in data["references"]] == [
        ("ok", 0.0001), ("ok", None), ("ok", None), ("skipped", None)]

    code, out, err = await ask(config(fake, tmp_path), "--json", "--preset", "unpriced", "hello")
    assert code == 0, err
    data = json.loads(out)
    assert data["total_cost_usd"] is None and data["unpriced_calls"] == 2


async def test_ask_text_totals_say_how_many_calls_are_unpriced(fake, tmp_path):
    replies(fake)
    code, out, err = await ask(config(fake, tmp_path), "hello")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("References"))
    assert header.endswith("total $0.0001 + 2 unpriced")
    assert "local:ref-local-a — ok" in out and "· unknown" in out and "$?" not in out
    footer = next(line for line in out.splitlines() if "tokens ·" in line)
    assert "$0.0001 + 2 unpriced" in footer
    assert "references $0.0001 + 2 unpriced · aggregator $0.00004" in out
    assert "$0.00 " not in out and "$0.00\n" not in out
