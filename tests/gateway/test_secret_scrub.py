"""An API key a provider echoes in its error never reaches the chat, the database or the logs,
wherever the 300-character excerpt cut falls; a very short key does not mangle messages."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from moa_core.clock import SystemClock
from moa_core.providers.base import CompletionRequest, ProviderError
from moa_core.providers.client import ProviderClient
from moa_core.settings import ProviderSettings
from moa_core.values import Message
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import ENV, make_gateway

KEY = ENV["FAKE_KEY"]
CUT = 300  # the provider client's excerpt length
# Every placement from wholly before the cut to wholly after it, one character apart.
OFFSETS = range(CUT - len(KEY) - 2, CUT + 3)


def key_pieces(text: str) -> list[str]:
    """Every 6-character run of the key that appears in `text` (none may)."""
    return sorted({KEY[i : i + 6] for i in range(len(KEY) - 5) if KEY[i : i + 6] in text})


def echo(offset: int) -> str:
    """An error message with the key starting at `offset` of the excerpt, long enough to be cut."""
    return "e" * offset + KEY + " and then the server goes on about it" * 10


async def test_a_key_at_every_offset_around_the_cut_never_leaks(fake, http, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake.reply("agg", *(Reply(status=400, error_message=echo(offset)) for offset in OFFSETS))
    fake.reply("ref-a", *(Reply(status=400, error_message=echo(offset)) for offset in OFFSETS))
    gw, chat = await make_gateway(fake, http, tmp_path)
    for offset in OFFSETS:
        await chat.push(chat.message(f"/moa question {offset}"))
        await gw.idle()

    notices = [n for n in chat.notices() if "failed" in n]
    advice = [e.advice for summary in chat.summaries() for e in summary.entries if e.status == "failed"]
    assert len(advice) == len(OFFSETS) and all(key_pieces(text) == [] for text in advice)
    assert len(notices) == len(OFFSETS)
    turns = await gw.store.run(lambda db: [r["error"] for r in db.query("select error from turns order by id")])
    calls = await gw.store.run(lambda db: [r["error"] for r in db.query(
        "select error from model_calls where model = 'agg' order by id")])
    ref_calls = await gw.store.run(lambda db: [r["error"] for r in db.query(
        "select error from model_calls where model = 'ref-a' order by id")])
    assert len(ref_calls) == len(OFFSETS) and all(key_pieces(text) == [] for text in ref_calls)
    assert len(turns) == len(calls) == len(OFFSETS) and all(turns) and all(calls)
    clean = 0
    for offset, notice, turn_error, call_error in zip(OFFSETS, notices, turns, calls, strict=True):
        for where, text in (("notice", notice), ("turns.error", turn_error), ("model_calls.error", call_error)):
            assert key_pieces(text) == [], (offset, where, text)
        assert "HTTP 400" in call_error and "e" * 20 in call_error  # the error itself is still told
        clean += 1
    assert clean == len(OFFSETS) == len(KEY) + 5
    # This path logs only the HTTP requests (the failure is a turn outcome, not an exception).
    assert caplog.records and key_pieces(caplog.text) == []
    assert all(key_pieces(r.getMessage()) == [] for r in caplog.records)


async def test_a_one_letter_key_is_masked_only_where_it_stands_alone(fake, http):
    provider = ProviderSettings("fake", "openai", fake.openai_base, "TINY_KEY", max_retries=0)
    client = ProviderClient(http, env={"TINY_KEY": "k"}, clock=SystemClock())
    fake.reply("ok-a", Reply(status=401, error_message="bad key k for model ok-a (keep looking)"))
    with pytest.raises(ProviderError) as info:
        await client.complete(CompletionRequest(provider, "ok-a", (Message("user", "hi"),)))
    assert str(info.value) == "fake:ok-a: HTTP 401: bad key *** for model ok-a (keep looking)"


@pytest.mark.parametrize("offset", OFFSETS)
async def test_a_non_json_body_is_scrubbed_before_its_cut(fake, http, offset):
    # A 200 whose body is not JSON is quoted (cut to 300 characters) in the error.
    body = echo(offset)
    provider = ProviderSettings("fake", "openai", fake.openai_base, "FAKE_KEY", max_retries=0)
    client = ProviderClient(http, env=ENV, clock=SystemClock())
    fake.handler("raw", lambda rec: Reply(malformed_body=body))
    with pytest.raises(ProviderError) as info:
        await client.complete(CompletionRequest(provider, "raw", (Message("user", "hi"),)))
    assert "not valid JSON" in str(info.value)
    assert key_pieces(str(info.value)) == []


async def test_ask_never_prints_a_key_cut_by_the_excerpt(fake, tmp_path):
    """From outside: `moa-gateway ask`, four calls whose errors echo the key across the cut."""
    offsets = (CUT - len(KEY) + 1, CUT - len(KEY) // 2, CUT - 2, CUT - 1)
    models = [f"ref-{n}" for n in range(3)] + ["agg"]
    for model, offset in zip(models, offsets, strict=True):
        fake.reply(model, Reply(status=400, error_message=echo(offset)))
    config = tmp_path / "moa-gateway.toml"
    config.write_text(f'[gateway]\ndatabase = "{tmp_path / "moa.db"}"\n\n[providers.fake]\napi = "openai"\n'
                      f'base_url = "{fake.openai_base}"\napi_key_env = "FAKE_KEY"\nmax_retries = 0\n\n'
                      f'[presets.default]\nreferences = {json.dumps(["fake:" + m for m in models[:3]])}\n'
                      'aggregator = "fake:agg"\n')
    script = Path(sys.executable).with_name("moa-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    root = Path(__file__).resolve().parents[2]
    for mode in (["--json"], []):
        process = await asyncio.create_subprocess_exec(
            *command, "ask", *mode, "--config", str(config), "hello",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **ENV, "PYTHONPATH": str(root)}, cwd=tmp_path,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1, err.decode()
        assert "HTTP 400" in out.decode() + err.decode()
        assert key_pieces(out.decode()) == [] and key_pieces(err.decode()) == []


@pytest.mark.parametrize("command", ["ask", "chat"])
async def test_ask_and_chat_log_problems_with_every_key_masked(fake, tmp_path, command):
    """`ask` and `chat` set up logging as `run` does (warnings and worse, keys masked): before,
    Python's last-resort handler printed any warning a library logged, key and all."""
    fake.reply("agg", Reply(text="fine"))
    config = tmp_path / "moa-gateway.toml"
    config.write_text(f'[gateway]\ndatabase = "{tmp_path / "moa.db"}"\n\n[providers.fake]\napi = "openai"\n'
                      f'base_url = "{fake.openai_base}"\napi_key_env = "FAKE_KEY"\n\n'
                      '[presets.default]\nreferences = ["fake:ref"]\naggregator = "fake:agg"\n')
    # A real run of the command, then a warning carrying the key, from a logger of ours.
    program = (
        "import logging, os, sys\nfrom gateway.cli import main\n"
        f"code = main([{command!r}, '--config', {str(config)!r}] + ([] if {command!r} == 'chat' else ['hi']))\n"
        "logging.getLogger('gateway.service').warning('provider said: bad key %s', os.environ['FAKE_KEY'])\n"
        "logging.getLogger('gateway.service').info('chatter nobody asked for')\n"
        "sys.exit(code)\n"
    )
    root = Path(__file__).resolve().parents[2]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **ENV, "PYTHONPATH": str(root)}, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(b"" if command == "chat" else None), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode() + err.decode()
    assert "WARNING gateway.service: provider said: bad key ***" in err.decode()
    assert key_pieces(text) == [] and "chatter" not in text
