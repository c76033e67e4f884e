"""Odd input gets a clear answer, and a cut answer says so: a lone surrogate in a prompt, an
empty or whitespace-only DM, an aggregator stream cut mid-answer."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import pytest

from adapters.contract import Answer
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import make_gateway

ROOT = Path(__file__).resolve().parents[2]


async def turns(gw) -> list[dict]:
    return await gw.store.run(lambda db: [dict(r) for r in db.query("select status, prompt from turns order by id")])


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
async def test_an_empty_dm_is_answered_with_how_to_ask(fake, http, tmp_path, text):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message(text, dm=True))
    await gw.idle()
    [notice] = chat.notices()
    assert "empty" in notice and "/moa help" in notice
    assert fake.requests == [] and await turns(gw) == []


async def test_an_empty_group_message_stays_unanswered(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("   ", mention=True))
    await gw.idle()
    assert chat.notices() == [] and fake.requests == []


@pytest.mark.parametrize("text", ["hi \ud800 there", "/moa what about \udfff?", "\udc80"])
async def test_a_lone_surrogate_gets_a_clear_answer(fake, http, tmp_path, text):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message(text, dm=True))
    await gw.idle()
    [notice] = chat.notices()
    assert "surrogate" in notice and "went wrong" not in notice
    assert fake.requests == [] and await turns(gw) == []
    # The chat still works afterwards.
    await chat.push(chat.message("/moa fine now"))
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["answer from agg"]


async def test_a_lone_surrogate_in_a_user_name_does_not_stop_the_turn(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    message = dataclasses.replace(chat.message("/moa hello"), user_name="Ann \ud83d")
    await chat.push(message)
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["answer from agg"]
    names = await gw.store.run(lambda db: [r["user_name"] for r in db.query("select user_name from turns")])
    assert names == ["Ann \ufffd"]


async def test_a_cut_stream_is_marked_incomplete_in_the_same_message(fake, http, tmp_path):
    partial = "The first part of a long answer that the server will not finish. " * 3
    fake.reply("agg", Reply(text=partial + "The rest never arrives.", chunk_chars=20, cut_after=5))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa tell me"))
    await gw.idle()
    streamed = [mid for op, _, item, mid in chat.log if op == "send" and isinstance(item, Answer)]
    assert len(streamed) == 1, chat.log
    shown = chat.shown[streamed[0]]
    assert isinstance(shown, Answer) and shown.final
    assert shown.text.startswith(partial[:60]) and "Incomplete: the answer was cut off" in shown.text
    assert "The rest never arrives." not in shown.text
    assert any("failed" in notice for notice in chat.notices())  # and the error is still told


async def test_a_stream_cut_by_shutdown_is_marked_incomplete_in_the_same_message(fake, http, tmp_path):
    partial = "The first part of an answer that shutdown will cut short. " * 3
    fake.reply("agg", Reply(text=partial + "The rest never arrives.", chunk_chars=20, stall_after=5))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa tell me"))

    def streamed() -> list[str]:
        return [mid for op, _, item, mid in chat.log if op == "send" and isinstance(item, Answer)]

    for _ in range(500):  # until the first part is in the chat
        if streamed() and chat.shown[streamed()[0]].text.startswith(partial[:60]):
            break
        await asyncio.sleep(0.01)
    await gw.shutdown(grace_s=0.2)
    [mid] = streamed()
    shown = chat.shown[mid]
    assert isinstance(shown, Answer) and shown.final
    assert shown.text.startswith(partial[:60]) and "Incomplete: the answer was cut off" in shown.text
    assert "The rest never arrives." not in shown.text


async def test_ask_refuses_a_prompt_that_is_not_utf8(fake, tmp_path):
    # A byte that is not UTF-8 on the command line reaches Python as a lone surrogate.
    config = tmp_path / "moa-gateway.toml"
    config.write_text(f'[gateway]\ndatabase = "{tmp_path / "moa.db"}"\n\n[providers.local]\napi = "openai"\n'
                      f'base_url = "{fake.openai_base}"\n\n[presets.default]\nreferences = ["local:ref"]\n'
                      'aggregator = "local:agg"\n')
    script = Path(sys.executable).with_name("moa-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    process = await asyncio.create_subprocess_exec(
        *command, "ask", "--config", str(config), b"caf\xff",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"}, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, err.decode()
    assert "not valid UTF-8" in err.decode() and "Traceback" not in err.decode()
    assert fake.requests == []
