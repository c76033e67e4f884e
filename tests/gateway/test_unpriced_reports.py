"""A turn with one priced and two unpriced calls, through the real gateway: every text total
(summary header, footer, /moa cost, the digest, `moa-gateway costs`) reads as the known sum plus
the count of unpriced calls, never as a bare number."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gateway.config import DigestSettings
from tests.fakes.provider_server import FakeProvider, Reply
from tests.gateway.gateway_kit import make_gateway, raw_config

ROOT = Path(__file__).resolve().parents[2]


def mixed_config(fake: FakeProvider, db: Path) -> dict:
    """The kit's config plus a llama.cpp-like provider with no prices, and a preset that uses it
    for two references next to one priced reference ($1/M in, $2/M out) and a priced aggregator."""
    raw = raw_config(fake, db)
    raw["providers"]["local"] = {"api": "openai", "base_url": fake.openai_base, "max_retries": 0}
    raw["presets"]["mixed"] = {"references": ["fake:ref-a", "local:llama-1", "local:llama-2"],
                               "aggregator": "fake:agg", "reference_timeout": 5}
    raw["gateway"]["default_preset"] = "mixed"
    return raw


async def test_partly_priced_spend_reads_as_known_sum_plus_unpriced_everywhere(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="Priced advice.", usage={"input": 100, "output": 50}))  # $0.0002
    fake.reply("agg", Reply(text="The answer.", usage={"input": 100, "output": 50}))  # $0.0002
    db = tmp_path / "gw.db"
    gw, chat = await make_gateway(fake, http, tmp_path, raw=mixed_config(fake, db),
                                  digest=DigestSettings("0 9 * * 1", "UTC", ("fakechat:c1",)))
    await chat.push(chat.message("/moa question"))
    await gw.idle()

    [summary] = chat.summaries()
    assert (summary.total_cost_usd, summary.unpriced) == (pytest.approx(0.0002), 2)
    [answer] = chat.final_answers()
    assert "$0.0004 + 2 unpriced" in answer.footer

    await chat.push(chat.message("/moa cost"))
    report = chat.notices()[-1]
    assert "day from" in report and ": $0.0004 + 2 unpriced, 1 turn" in report
    assert "mixed $0.0004 + 2 unpriced" in report  # by preset
    assert "local:llama-1 unknown (1 unpriced)" in report and "fake:ref-a $0.0002" in report

    await chat.push(chat.message("/moa digest", user="admin"))
    digest = chat.notices()[-1]
    assert "**Total:** $0.0004 + 2 unpriced" in digest
    assert "- fakechat:c1: $0.0004 + 2 unpriced (4 calls, 1 turns)" in digest
    assert "- local:llama-2: unknown (1 unpriced) (1 calls)" in digest
    await gw.shutdown()

    # The same database through the console script.
    config = tmp_path / "moa-gateway.toml"
    config.write_text(f'[gateway]\ndatabase = "{db}"\n\n[providers.fake]\napi = "openai"\n'
                      f'base_url = "{fake.openai_base}"\n\n[presets.default]\nreferences = ["fake:a"]\n'
                      'aggregator = "fake:b"\n')
    script = Path(sys.executable).with_name("moa-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    process = await asyncio.create_subprocess_exec(
        *command, "costs", "--config", str(config), "--by", "model", "--since", "2000-01-01",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-1].split(maxsplit=1) == ["total", "$0.0004 + 2 unpriced"]
    llama = next(line for line in lines if line.startswith("local:llama-1"))
    assert "unknown (1 unpriced)" in llama and "$0.00 " not in llama


async def test_budget_lines_and_refusals_name_the_unpriced_calls(fake, http, tmp_path):
    """`/moa budget` and a refusal read like every other total: known dollars + N unpriced."""
    fake.reply("ref-a", Reply(text="Priced advice.", usage={"input": 100, "output": 50}))  # $0.0002
    fake.reply("agg", Reply(text="The answer.", usage={"input": 100, "output": 50}))  # $0.0002
    raw = mixed_config(fake, tmp_path / "gw.db")
    raw["budgets"] = {"per_user_usd_day": 0.0003}
    gw, chat = await make_gateway(fake, http, tmp_path, raw=raw)
    await chat.push(chat.message("/moa question"))
    await gw.idle()

    await chat.push(chat.message("/moa budget"))
    budget = chat.notices()[-1]
    assert "your daily budget: $0.0004 + 2 unpriced of $0.0003 spent" in budget

    await chat.push(chat.message("/moa another question"))
    await gw.idle()
    refusal = chat.notices()[-1]
    assert "You have spent $0.0004 + 2 unpriced of your daily budget of $0.0003" in refusal
    await gw.shutdown()
