"""A turn run outside the chat gateway (`moa-gateway ask`) is stored like a chat turn, with each
call booked as it ends: a turn cut by Ctrl-C keeps the rows of the calls that had ended."""

from __future__ import annotations

import asyncio

import pytest

from gateway.booking import run_stored_turn
from gateway.storage import Store
from moa_core.clock import SystemClock
from tests.fakes.provider_server import Reply
from tests.moa_core.engine_kit import engine, preset


@pytest.fixture
async def store(tmp_path):
    opened = await Store.open(tmp_path / "ask.db", SystemClock())
    yield opened
    await opened.close()


def turn_args(**over):
    return dict(platform="terminal", chat_id="local", thread_id="ask", user_id="local", user_name="you",
                event_id="ask-1", preset="p", prompt="what is MoA?", session="cli-ask") | over


async def test_an_ask_turn_is_stored_with_its_calls(fake, http, store):
    result = await run_stored_turn(engine(fake, http, preset()), store, **turn_args())
    [turn] = await store.query("SELECT id, status, answer, cost_usd FROM turns", dicts=True)
    assert turn["status"] == "done" and turn["answer"] == result.answer
    rows = await store.query("SELECT turn_id, role, status, platform FROM model_calls", dicts=True)
    assert sorted(r["role"] for r in rows) == ["aggregator", "reference", "reference"]
    assert {(r["turn_id"], r["platform"]) for r in rows} == {(turn["id"], "terminal")}


async def test_an_ask_cut_by_ctrl_c_keeps_the_rows_of_the_calls_that_ended(fake, http, store):
    fake.reply("agg", Reply(hang=True))
    task = asyncio.create_task(run_stored_turn(engine(fake, http, preset()), store, **turn_args()))
    async with asyncio.timeout(5):
        while not fake.for_model("agg"):
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [turn] = await store.query("SELECT status FROM turns", dicts=True)
    assert turn["status"] == "interrupted"
    rows = await store.query("SELECT role, status FROM model_calls ORDER BY role, idx", dicts=True)
    assert [(r["role"], r["status"]) for r in rows] == [("aggregator", "cut"), ("reference", "ok"),
                                                        ("reference", "ok")]
