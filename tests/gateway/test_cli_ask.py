"""`moa-gateway ask` run as a user would: a real subprocess against a fake provider."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.fakes.provider_server import FakeProvider, Reply

ROOT = Path(__file__).resolve().parents[2]


def config_text(fake: FakeProvider, tmp_path: Path, *, base_url: str | None = None, traces: bool = False) -> str:
    return f"""
[gateway]
database = "{tmp_path / 'moa.db'}"
default_preset = "default"
save_traces = {str(traces).lower()}
trace_dir = "{tmp_path / 'traces'}"

[providers.openrouter]
api = "openai"
base_url = "{base_url or fake.openai_base}"
api_key_env = "TEST_OPENROUTER_KEY"

[providers.claude]
api = "anthropic"
base_url = "{fake.anthropic_base}"
api_key_env = "TEST_ANTHROPIC_KEY"
price_provider = "anthropic"        # the fake's URL says nothing about whose prices apply

[presets.default]
references = ["openrouter:openai/gpt-5.1", "claude:claude-sonnet-4-5", "moa:other"]
aggregator = "openrouter:anthropic/claude-sonnet-4.5"
tools = ["calculator"]

[presets.other]
references = ["openrouter:ref-x"]
aggregator = "openrouter:agg-x"
"""


async def run_cli(tmp_path: Path, *args: str, env_extra: dict | None = None, config: str) -> tuple[int, str, str]:
    path = tmp_path / "moa-gateway.toml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEST_")}
    env.update({"TEST_OPENROUTER_KEY": "sk-or-secret-123", "TEST_ANTHROPIC_KEY": "sk-ant-secret-456"})
    env.update(env_extra or {})
    env["PYTHONPATH"] = str(ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_ask_json_has_the_spec_shape(fake, tmp_path):
    fake.reply("openai/gpt-5.1", Reply(text="Use MoA.", cost=0.0031, usage={"input": 120, "output": 300}))
    fake.reply("claude-sonnet-4-5", Reply(text="Think twice.", usage={"input": 100, "cache_read": 20, "output": 50}))
    fake.reply("anthropic/claude-sonnet-4.5", Reply(text="The answer.", cost=0.01))
    code, out, err = await run_cli(tmp_path, "ask", "--json", "What", "is", "MoA?", config=config_text(fake, tmp_path))
    assert code == 0, err
    data = json.loads(out)
    assert data["preset"] == "default"
    assert data["answer"] == "The answer."
    refs = data["references"]
    assert [r["label"] for r in refs] == ["openrouter:openai/gpt-5.1", "claude:claude-sonnet-4-5", "moa:other"]
    assert [r["status"] for r in refs] == ["ok", "ok", "skipped"]
    first = refs[0]
    assert first["text"] == "Use MoA." and isinstance(first["latency_ms"], int)
    assert first["usage"] == {"input": 120, "cache_read": 0, "cache_write": 0, "output": 300, "reasoning": 0}
    assert (first["cost_usd"], first["cost_source"]) == (0.0031, "provider")
    # Anthropic usage: cache reads apart from input; priced from the price table at its own rate.
    assert refs[1]["usage"]["cache_read"] == 20 and refs[1]["cost_source"] == "price_table"
    assert refs[1]["cost_usd"] == pytest.approx((100 * 3 + 20 * 0.3 + 50 * 15) / 1e6)
    assert refs[2]["cost_usd"] is None and refs[2]["cost_source"] == "unknown"
    agg = data["aggregator"]
    assert agg["label"] == "openrouter:anthropic/claude-sonnet-4.5" and agg["steps"] == 1
    assert set(agg["usage"]) == {"input", "cache_read", "cache_write", "output", "reasoning"}
    assert (agg["cost_usd"], agg["cost_source"]) == (0.01, "provider")
    assert data["total_cost_usd"] == pytest.approx(0.0031 + refs[1]["cost_usd"] + 0.01)
    assert isinstance(data["elapsed_ms"], int)
    assert "sk-or-secret" not in out + err and "sk-ant-secret" not in out + err
    assert not (tmp_path / "traces").exists()  # save_traces = false


async def test_ask_text_prints_summary_then_answer_then_totals(fake, tmp_path):
    fake.reply("openai/gpt-5.1", Reply(text="ADVICE-ONE"))
    fake.reply("anthropic/claude-sonnet-4.5", Reply(text="STREAMED-ANSWER", chunk_chars=3))
    code, out, err = await run_cli(tmp_path, "ask", "hello", config=config_text(fake, tmp_path, traces=True))
    assert code == 0, err
    assert out.index("ADVICE-ONE") < out.index("STREAMED-ANSWER") < out.rindex("$")
    assert "references" in out.splitlines()[-1] and "aggregator" in out.splitlines()[-1]  # the totals line
    assert "skipped" in out
    assert list((tmp_path / "traces").glob("*.jsonl"))


async def test_ask_missing_key_unknown_preset_and_unreachable_provider(fake, tmp_path):
    config = config_text(fake, tmp_path)
    code, out, err = await run_cli(tmp_path, "ask", "hi", config=config, env_extra={"TEST_ANTHROPIC_KEY": ""})
    assert code != 0 and "TEST_ANTHROPIC_KEY" in err and len(err.strip().splitlines()) == 1

    code, out, err = await run_cli(tmp_path, "ask", "--preset", "nope", "hi", config=config)
    assert code != 0 and "unknown preset 'nope'" in err

    dead = config_text(fake, tmp_path, base_url="http://127.0.0.1:9/v1")
    code, out, err = await run_cli(tmp_path, "ask", "hi", config=dead)
    assert code != 0 and "openrouter" in err and "Traceback" not in err


async def test_check_config_and_presets(fake, tmp_path):
    config = config_text(fake, tmp_path)
    code, out, err = await run_cli(tmp_path, "presets", config=config)
    assert code == 0 and out.startswith("default preset: default\n") and "aggregator openrouter:agg-x" in out
    assert "default (default)" not in out
    code, out, err = await run_cli(tmp_path, "check-config", config=config)
    assert code == 0 and out.splitlines()[-1] == "config OK, but: no platform is configured, so `run` will not start; ask and chat work"
    code, out, err = await run_cli(tmp_path, "check-config", config=config.replace('api = "anthropic"', 'api = "x"'))
    assert code == 2 and "providers.claude.api" in err
    speech = config + '\n[providers.stt]\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n' \
        'api_key_env = "TEST_STT_KEY"\n\n[transcription]\nprovider = "stt"\n'
    code, out, err = await run_cli(tmp_path, "check-config", config=speech)
    assert code != 0 and "TEST_STT_KEY is not set (API key of provider 'stt', used by [transcription])" in err
    code, out, err = await run_cli(tmp_path, "check-config", config=speech, env_extra={"TEST_STT_KEY": "k"})
    assert code == 0 and "config OK" in out


async def run_cli_with_input(tmp_path: Path, *args: str, config: str, stdin: bytes) -> tuple[int, str, str]:
    path = tmp_path / "moa-gateway.toml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEST_")}
    env.update({"TEST_OPENROUTER_KEY": "sk-or-secret-123", "TEST_ANTHROPIC_KEY": "sk-ant-secret-456",
                "PYTHONPATH": str(ROOT)})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--config", str(path), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    return process.returncode, out.decode(), err.decode()


async def test_chat_runs_turns_and_commands_through_the_gateway(fake, tmp_path):
    fake.reply("openai/gpt-5.1", Reply(text="CHAT-ADVICE"))
    fake.reply("anthropic/claude-sonnet-4.5", Reply(text="CHAT-ANSWER-1", cost=0.25), Reply(text="CHAT-ANSWER-2"))
    code, out, err = await run_cli_with_input(
        tmp_path, "chat", config=config_text(fake, tmp_path),
        stdin=b"first question\nsecond question\n/moa cost\n/moa presets\n")
    assert code == 0, err
    assert out.index("CHAT-ADVICE") < out.index("CHAT-ANSWER-1") < out.index("CHAT-ANSWER-2")
    assert "This chat — day" in out and "$0.25" in out
    assert "default (default)" in out or "← default here" in out
    # The session continued: the second aggregator call saw the first exchange.
    second = fake.for_model("anthropic/claude-sonnet-4.5")[1].body["messages"]
    assert [m["role"] for m in second[:3]] == ["user", "assistant", "user"]
    assert (tmp_path / "moa.db").exists()


async def test_run_without_platforms_names_what_to_set(fake, tmp_path):
    code, out, err = await run_cli(tmp_path, "run", config=config_text(fake, tmp_path))
    assert code == 2
    assert "[telegram] token_env" in err and "TELEGRAM_BOT_TOKEN" in err and "SLACK_APP_TOKEN" in err
    with_section = config_text(fake, tmp_path) + '\n[telegram]\ntoken_env = "TEST_TG_TOKEN_UNSET"\nallow_all = true\n'
    code, out, err = await run_cli(tmp_path, "run", config=with_section)
    assert code == 2 and "TEST_TG_TOKEN_UNSET is not set" in err and len(err.strip().splitlines()) == 1


async def test_costs_table_from_the_database(fake, tmp_path):
    fake.reply("openai/gpt-5.1", Reply(text="advice", cost=0.5))
    fake.reply("anthropic/claude-sonnet-4.5", Reply(text="answer", cost=0.25))
    code, out, err = await run_cli_with_input(tmp_path, "chat", config=config_text(fake, tmp_path),
                                              stdin=b"spend something\n")
    assert code == 0, err
    code, out, err = await run_cli(tmp_path, "costs", "--by", "model", config=config_text(fake, tmp_path))
    assert code == 0, err
    assert "openrouter:openai/gpt-5.1 (reference)" in out and "$0.5000" in out
    assert "(aggregator)" in out and "$0.2500" in out
    label, total = out.strip().splitlines()[-1].split()
    assert label == "total" and total.startswith("$0.75")
    code, out, err = await run_cli(tmp_path, "costs", "--by", "preset", "--since", "2000-01-01",
                                   config=config_text(fake, tmp_path))
    assert code == 0 and "default" in out
    code, out, err = await run_cli(tmp_path, "costs", "--since", "yesterday", config=config_text(fake, tmp_path))
    assert code == 2 and "--since" in err
