"""The writes on a turn's critical path: what the gateway waits for between the answer and its
send, and that each write it acted on was stored first."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from adapters.contract import Answer
from tests.fakes.provider_server import Reply
from tests.fakes.recording_adapter import RecordingAdapter
from tests.gateway.gateway_kit import make_gateway
from tests.gateway.test_cost_rollups import assert_reconciled


class LedgerWatcher(RecordingAdapter):
    """Reads the ledger row's stored status (another connection: only what is committed) at the
    moment the final answer is sent."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.status_at_send: list[str] = []

    def _look(self, item) -> None:
        if isinstance(item, Answer) and item.final:
            with sqlite3.connect(self.path) as db:
                self.status_at_send += [r[0] for r in db.execute("SELECT status FROM deliveries WHERE kind = 'answer'")]

    async def send(self, chat, item):
        self._look(item)
        return await super().send(chat, item)

    async def edit(self, sent, item):
        self._look(item)
        return await super().edit(sent, item)


async def test_an_answer_is_completed_and_marked_sending_in_one_write_before_it_is_sent(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="A"))
    fake.reply("ref-b", Reply(text="B"))
    fake.reply("agg", Reply(text="The answer."))
    adapter = LedgerWatcher(tmp_path / "gw.db")
    gw, chat = await make_gateway(fake, http, tmp_path, adapter=adapter)
    marks: list[str] = []
    mark = gw.store.mark_delivery

    async def spy(delivery_id, status, message_ids=()):
        marks.append(status)
        await mark(delivery_id, status, message_ids)

    gw.store.mark_delivery = spy  # type: ignore[method-assign]
    await chat.push(chat.message("/moa a question"))
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["The answer."]
    assert adapter.status_at_send == ["sending"]  # durable before the platform had it
    assert marks == ["sent"]  # no second write between completing the turn and sending
    assert await gw.store.pending_deliveries() == []


async def test_on_sqlite_a_turn_is_completed_without_waiting_for_its_last_call_to_be_written(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="A"))
    fake.reply("ref-b", Reply(text="B"))
    fake.reply("agg", Reply(text="The answer."))
    gw, chat = await make_gateway(fake, http, tmp_path)
    assert gw.store.writes_in_order
    release = threading.Event()
    book_calls, complete = gw.store.book_calls, gw.store.complete_turn
    unbooked_at_completion: list[int] = []
    blocking: list[asyncio.Future] = []

    async def slow_booking(calls):  # type: ignore[no-untyped-def]
        if any(record.role == "aggregator" for _, record in calls):
            # The writer is kept busy from now until the completion: a job queued just ahead of
            # the aggregator row's write (before: a task queued it at some point near the row,
            # and on a busy machine the row was written first, or the references' rows queued
            # behind it).
            blocking.append(gw.store._writer.submit(lambda db: release.wait(30)))  # type: ignore[attr-defined]
        return await book_calls(calls)

    async def completing(turn_id, **kwargs):
        unbooked_at_completion.append(gw.book.unbooked(turn_id))
        release.set()
        return await complete(turn_id, **kwargs)

    gw.store.book_calls = slow_booking  # type: ignore[method-assign]
    gw.store.complete_turn = completing  # type: ignore[method-assign]
    await chat.push(chat.message("/moa a question"))
    await asyncio.wait_for(gw.idle(), 60)  # waiting for the row first would never get here
    assert unbooked_at_completion == [1]  # the aggregator's row was queued, not yet written
    assert len(blocking) == 1 and blocking[0].done()
    assert [a.text for a in chat.final_answers()] == ["The answer."]
    # Written in the writer's order: the row before the completion that followed it.
    rows = await gw.store.query("SELECT role FROM model_calls ORDER BY id")
    assert [r[0] for r in rows] == ["reference", "reference", "aggregator"]
    assert await assert_reconciled(gw.store) > 0


async def test_a_turn_that_runs_at_once_gets_its_history_with_its_own_write(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="A"), Reply(text="A2"))
    fake.reply("ref-b", Reply(text="B"), Reply(text="B2"))
    fake.reply("agg", Reply(text="First answer."), Reply(text="Second answer."))
    gw, chat = await make_gateway(fake, http, tmp_path)
    reads: list[int] = []
    history = gw.store.history

    async def spy(session_id, limit=500):
        reads.append(session_id)
        return await history(session_id, limit)

    gw.store.history = spy  # type: ignore[method-assign]
    await chat.push(chat.message("/moa first question"))
    await gw.idle()
    await chat.push(chat.message("/moa second question"))
    await gw.idle()
    assert reads == []  # read in the turn's own write, not in a trip of its own
    first, second = (r.body["messages"] for r in fake.for_model("agg"))
    assert [m["role"] for m in first] == ["user"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == "First answer."
    assert [a.text for a in chat.final_answers()] == ["First answer.", "Second answer."]


async def test_a_plain_question_reaches_the_engine_after_one_trip_to_the_store(fake, http, tmp_path):
    fake.reply("deep-ref", Reply(text="R1"), Reply(text="R2"), Reply(text="R3"))
    fake.reply("deep-agg", Reply(text="First answer."), Reply(text="Second answer."), Reply(text="Third answer."))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await gw.store.set_channel_preset("fakechat", "c1", "deep", "admin")
    trips: list[str] = []

    def spying(name: str):
        real = getattr(gw.store, name)

        def spy(*args, **kwargs):
            trips.append(name)
            return real(*args, **kwargs)
        return spy

    for name in ("mark_seen", "active_session", "channel_preset", "busy_elsewhere", "start_turn",
                 "start_turn_with_history", "history", "take_question"):
        setattr(gw.store, name, spying(name))
    await chat.push(chat.message("/moa first question"))  # a new chat: its session opened in the same trip
    await gw.idle()
    second = chat.message("/moa second question")
    await chat.push(second)
    await gw.idle()
    await chat.push(chat.message("just a DM question", dm=True, chat="c1"))  # not a /moa command: the same
    await gw.idle()
    assert trips == ["take_question"] * 3  # seen, session, preset, turn and history: one writer job
    await chat.push(second)  # the same event again: no second turn
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["First answer.", "Second answer.", "Third answer."]
    turns = await gw.store.query("SELECT preset, session_id, prompt FROM turns ORDER BY id")
    assert [t[0] for t in turns] == ["deep"] * 3  # the stored default
    assert len({t[1] for t in turns}) == 1
    assert [t[2] for t in turns] == ["first question", "second question", "just a DM question"]
    history = fake.for_model("deep-agg")[1].body["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]


async def test_a_question_the_gateway_refuses_is_marked_seen_and_told_once(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    unknown = chat.message("/moa +nosuch what now?")
    await chat.push(unknown)
    await chat.push(unknown)  # a platform's retry: not told twice
    await gw.idle()
    assert [n for n in chat.notices() if "Unknown preset" in n] == [
        "Unknown preset 'nosuch'. Presets: default, deep, solo."]
    assert await gw.store.query("SELECT COUNT(*) FROM turns") == [(0,)]
