"""The gateway books each model call as it ends: rows exist while the turn is still running,
a turn broken by a bug keeps the rows of its calls, and nothing is booked twice (late
references, many turns at once; advice reused from the cache makes no call, see
tests/moa_core/test_call_events.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.booking import CallBook
from gateway.storage import Store
from moa_core.clock import SystemClock
from moa_core.values import CallRecord, Cost, Usage
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import make_gateway, raw_config


async def rows(store: Store) -> list[dict]:
    return await store.run(lambda db: list(db.query("select * from model_calls order by id")))


async def eventually(predicate, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_reference_rows_are_written_while_the_aggregator_still_runs(fake, http, tmp_path):
    release = asyncio.Event()

    async def slow_aggregator(_):
        await release.wait()
        return Reply(text="done at last")

    fake.handler("agg", slow_aggregator)
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa slow one"))
    await eventually(lambda: _count(gw.store, 2), "the two reference rows")
    assert [(r["role"], r["status"]) for r in await rows(gw.store)] == [("reference", "ok")] * 2
    release.set()
    await gw.idle()
    assert [(r["role"], r["status"]) for r in await rows(gw.store)] == [
        ("reference", "ok"), ("reference", "ok"), ("aggregator", "ok")]


async def _count(store: Store, n: int) -> bool:
    return len(await rows(store)) >= n


class _BrokenAggregator:
    """A client bug (not a provider error) on the aggregator's call, after the references."""

    def __init__(self, inner):
        self.inner = inner

    async def complete(self, request, on_text=None):
        if request.model == "agg":
            raise RuntimeError("a bug in the client")
        return await self.inner.complete(request, on_text)


async def test_a_turn_broken_by_a_bug_keeps_the_rows_of_its_calls(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    gw.engine._client = _BrokenAggregator(gw.engine._client)
    await chat.push(chat.message("/moa break it"))
    await gw.idle()
    assert any("this turn failed" in n for n in chat.notices())
    booked = await rows(gw.store)
    assert [(r["role"], r["status"]) for r in booked] == [("reference", "ok"), ("reference", "ok"),
                                                          ("aggregator", "failed")]
    assert booked[0]["cost_usd"] > 0 and booked[2]["usage_source"] == "estimated"
    [turn] = await gw.store.run(lambda db: list(db.query("select status from turns")))
    assert turn["status"] == "failed"


async def test_a_late_reference_is_booked_once(fake, http, tmp_path):
    raw = raw_config(fake, tmp_path / "gw.db")
    raw["presets"]["default"].update(references=["fake:ref-a", "fake:ref-b", "fake:ref-c"], quorum=2,
                                     quorum_grace=0.05)
    fake.reply("ref-c", Reply(text="slow c", delay=0.4))
    gw, chat = await make_gateway(fake, http, tmp_path, raw=raw)
    await chat.push(chat.message("/moa same question"))
    await gw.idle()
    first = await rows(gw.store)
    assert sorted((r["role"], r["idx"], r["late"]) for r in first) == [
        ("aggregator", 0, 0), ("reference", 0, 0), ("reference", 1, 0), ("reference", 2, 1)]
    [turn] = await gw.store.run(lambda db: list(db.query("select id, cost_usd from turns")))
    assert turn["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in first))


async def test_calls_ending_together_are_written_in_one_transaction(tmp_path):
    store = await Store.open(tmp_path / "b.db", SystemClock())
    writes = []
    original = store.book_calls

    async def counting(calls):
        writes.append(len(calls))
        await original(calls)

    store.book_calls = counting  # type: ignore[method-assign]
    turns = [await store.start_turn(session_id=await store.active_session("p", f"c{i}", None), platform="p",
                                    chat_id=f"c{i}", thread_id=None, user_id="u", user_name="U", event_id=f"e{i}",
                                    message_id=str(i), preset="default", prompt="q") for i in range(3)]
    book = CallBook(store)
    record = CallRecord("reference", 1, 0, "fake", "m", "ok", 5, Usage(10, output=2), Cost(0.001, "config"))
    for turn_id in turns:
        for _ in range(4):
            book.book(turn_id, record)
    await book.settle()
    assert sum(writes) == 12 and len(writes) <= 2  # the first alone, the eleven queued behind it together
    assert len(await rows(store)) == 12
    assert {r["chat_id"] for r in await rows(store)} == {"c0", "c1", "c2"}
    await store.close()


async def test_settling_waits_for_the_rows_queued_so_far_not_for_later_ones(tmp_path):
    # The summary waits for the references' rows; the aggregator's row, booked while it
    # waits, must not hold it up (nor the turn's completion behind the summary).
    store = await Store.open(tmp_path / "s.db", SystemClock())
    turn_id = await store.start_turn(session_id=await store.active_session("p", "c", None), platform="p",
                                     chat_id="c", thread_id=None, user_id="u", user_name="U", event_id="e",
                                     message_id="1", preset="default", prompt="q")
    held = asyncio.Event()
    original = store.book_calls

    async def second_write_held(calls):
        if any(record.role == "aggregator" for _, record in calls):
            await held.wait()
        await original(calls)

    store.book_calls = second_write_held  # type: ignore[method-assign]
    book = CallBook(store)
    reference = CallRecord("reference", 1, 0, "fake", "m", "ok", 5, Usage(10, output=2), Cost(0.001, "config"))
    book.book(turn_id, reference)
    book.book(turn_id, reference)
    references_booked = book.settled_so_far(turn_id)
    await asyncio.sleep(0)  # the references' rows are handed to the store before the aggregator ends
    book.book(turn_id, CallRecord("aggregator", 1, 0, "fake", "agg", "ok", 5, Usage(10, output=2),
                                  Cost(0.001, "config")))
    await asyncio.wait_for(references_booked, 5)  # not behind the held aggregator row
    assert [r["role"] for r in await rows(store)] == ["reference", "reference"]
    assert book.unbooked(turn_id) == 1
    settling_all = asyncio.ensure_future(book.settle(turn_id))
    await asyncio.sleep(0.05)
    assert not settling_all.done()  # the turn's every row: the aggregator's too
    held.set()
    await asyncio.wait_for(settling_all, 5)
    assert [r["role"] for r in await rows(store)] == ["reference", "reference", "aggregator"]
    await store.close()
