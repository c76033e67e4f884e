"""The storage contract on both backends, then what is particular to each.

Every test that takes `store` (or `backend`) runs on SQLite and on PostgreSQL (tests/backends.py):
sessions, turns, calls, the ledger, seen events, channel settings, refusal notices and digest
claims. Then SQLite's own schema, thread and crash safety, and PostgreSQL's schema, migrations
and races between two stores on one database (two replicas).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.contract import ChatRef
from gateway.storage import Delivery, Storage, Store, TurnRow, from_iso, to_iso
from gateway.storage.migrations import migrations
from moa_core.values import CallRecord, Cost, ImagePart, Message, ToolCall, Usage
from tests.backends import Backend

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    async def sleep(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)

    def advance(self, **kwargs: float) -> None:
        self.current += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(backend: Backend, clock: FakeClock):
    s = await backend.open(clock)
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path, clock: FakeClock):
    s = await Store.open(tmp_path / "gw.db", clock)
    yield s
    await s.close()


def call(index: int = 0, *, role: str = "reference", usd: float | None = 0.01, status: str = "ok") -> CallRecord:
    return CallRecord(
        role=role,  # type: ignore[arg-type]
        step=0,
        index=index,
        provider="openrouter",
        model=f"m{index}",
        status=status,  # type: ignore[arg-type]
        latency_ms=100 + index,
        usage=Usage(input=10, cache_read=2, cache_write=3, output=20, reasoning=5),
        cost=Cost(usd, "price_table" if usd is not None else "unknown"),
    )


async def start(store: Storage, session_id: int, prompt: str = "hi", **over: object) -> int:
    fields = dict(
        session_id=session_id, platform="telegram", chat_id="-100", thread_id=None, user_id="u1",
        user_name="Ann", event_id="e1", message_id="m1", preset="default", prompt=prompt,
    )
    fields.update(over)
    return await store.start_turn(**fields)  # type: ignore[arg-type]


# Schema and migrations ----------------------------------------------------------------------

EXPECTED_COLUMNS = {
    "sessions": ["id", "platform", "chat_id", "thread_id", "started_at", "closed_at"],
    "messages": ["id", "session_id", "turn_id", "role", "content", "tool_calls", "tool_call_id", "name",
                 "created_at"],
    "turns": ["id", "session_id", "platform", "chat_id", "thread_id", "user_id", "user_name", "event_id",
              "message_id", "preset", "prompt", "status", "answer", "cost_usd", "error", "started_at",
              "finished_at"],
    "model_calls": ["id", "turn_id", "role", "step", "idx", "provider", "model", "status", "latency_ms",
                    "input", "cache_read", "cache_write", "output", "reasoning", "usage_source", "cost_usd",
                    "cost_source", "error", "late", "created_at", "platform", "chat_id", "user_id", "preset"],
    "channel_settings": ["platform", "chat_id", "preset", "updated_by", "updated_at"],
    "seen_events": ["platform", "event_id", "seen_at"],
    "deliveries": ["id", "turn_id", "platform", "chat_id", "thread_id", "reply_to_id", "reply_handle", "kind",
                   "payload", "status", "message_ids", "created_at", "updated_at"],
    "refusal_notices": ["platform", "chat_id", "last_at"],
    "cost_rollups": ["grain", "span", "bucket", "platform", "chat_id", "user_id", "preset", "role", "provider",
                     "model", "status", "calls", "turns", "model_turns", "dollars", "unpriced", "input",
                     "cache_read", "cache_write", "output", "reasoning"],
}

EXPECTED_INDEXES = {
    "sessions": [["platform", "chat_id", "thread_id"]],
    "turns": [["session_id"], ["platform", "chat_id", "started_at"], ["platform", "user_id", "started_at"],
              ["started_at"], ["id"], ["status", "started_at"]],
    "messages": [["session_id", "id"], ["turn_id"]],
    "model_calls": [["turn_id"], ["created_at"], ["platform", "chat_id", "created_at", "cost_usd"],
                    ["platform", "user_id", "created_at", "cost_usd"]],
    "deliveries": [["turn_id"], ["id"]],
    "cost_rollups": [["grain", "span", "bucket", "platform", "chat_id", "user_id", "preset", "role", "provider",
                      "model", "status"], ["grain", "span", "platform", "chat_id", "bucket"],
                     ["grain", "span", "platform", "user_id", "bucket"]],
}


def schema_of(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {
            name: sql
            for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        }
    finally:
        conn.close()


async def test_empty_database_gets_the_current_schema(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "fresh.db"
    store = await Store.open(path, clock)
    await store.close()

    db = sqlite_utils.Database(path)
    assert [m.name for m in migrations.applied(db)] == [m.name for m in migrations._migrations]
    assert migrations.pending(db) == []
    for table, columns in EXPECTED_COLUMNS.items():
        assert table in db.table_names()
        assert [c.name for c in db[table].columns][: len(columns)] == columns, table
    for table, indexes in EXPECTED_INDEXES.items():
        present = [i.columns for i in db[table].indexes]
        for index in indexes:
            assert index in present, (table, index)
    assert db["channel_settings"].pks == ["platform", "chat_id"]
    assert db["seen_events"].pks == ["platform", "event_id"]
    assert db["refusal_notices"].pks == ["platform", "chat_id"]
    assert db.journal_mode == "wal"
    db.close()


def _migration_names() -> list[str]:
    return [m.name for m in migrations._migrations]


@pytest.mark.parametrize("step", _migration_names()[1:])
async def test_database_of_an_earlier_step_migrates_to_current(
    tmp_path: Path, clock: FakeClock, step: str
) -> None:
    fresh = tmp_path / "fresh.db"
    await (await Store.open(fresh, clock)).close()

    old = tmp_path / "old.db"
    db = sqlite_utils.Database(old)
    migrations.apply(db, stop_before=step)
    assert step in [m.name for m in migrations.pending(db)]
    # Data written under the old schema must survive the upgrade.
    db["sessions"].insert({"platform": "slack", "chat_id": "C1", "thread_id": "", "started_at": to_iso(T0)})
    db.close()

    store = await Store.open(old, clock)
    assert await store.active_session("slack", "C1", None) == 1
    applied = await store.run(lambda d: [m.name for m in migrations.applied(d)])
    await store.close()
    assert applied == _migration_names()
    assert schema_of(old) == schema_of(fresh)


# Rows of a database from before m009: two turns, the second with a call on the next UTC day.
OLD_CALLS = [
    # turn, role, provider, model, status, cost, created_at
    (1, "reference", "p", "m1", "ok", 0.25, "2026-03-01T23:59:00.000000+00:00"),
    (1, "reference", "p", "m1", "ok", None, "2026-03-02T00:01:00.000000+00:00"),
    (1, "aggregator", "p", "m2", "cut", 0.5, "2026-03-02T00:02:00.000000+00:00"),
    (2, "reference", "q", "m1", "skipped", None, "2026-03-02T10:00:00.000000+00:00"),
]


def old_rows_sql() -> list[tuple[str, list[object]]]:
    """Portable inserts of OLD_CALLS (and their session and turns) under the m008 schema."""
    out: list[tuple[str, list[object]]] = [(
        "INSERT INTO sessions (platform, chat_id, thread_id, started_at) VALUES ('slack', 'C1', '', ?)",
        ["2026-03-01T00:00:00.000000+00:00"])]
    for _turn in (1, 2):
        out.append(("INSERT INTO turns (session_id, platform, chat_id, thread_id, user_id, preset, status, "
                    "started_at) VALUES (1, 'slack', 'C1', '', 'U1', 'default', 'done', ?)",
                    ["2026-03-01T23:58:00.000000+00:00"]))
    for turn_id, role, provider, model, status, cost, at in OLD_CALLS:
        out.append(("INSERT INTO model_calls (turn_id, role, step, idx, provider, model, status, latency_ms, input, "
                    "cache_read, cache_write, output, reasoning, usage_source, cost_usd, cost_source, created_at, "
                    "platform, chat_id, user_id, preset) VALUES (?, ?, 0, 0, ?, ?, ?, 5, 10, 1, 2, 20, 3, 'reported', "
                    "?, 'price_table', ?, 'slack', 'C1', 'U1', 'default')",
                    [turn_id, role, provider, model, status, cost, at]))
    return out


def assert_old_rows_rolled_up(rows: list[tuple]) -> None:
    """`SELECT span, bucket, calls, turns, model_turns, dollars, unpriced FROM cost_rollups
    WHERE grain = 'chat' ORDER BY span, bucket` after m009 over OLD_CALLS."""
    assert [tuple(r[:6]) + (r[6],) for r in rows] == [
        ("day", "2026-03-01", 1, 1, 1, 0.25, 0),
        ("day", "2026-03-02", 3, 1, 2, 0.5, 1),  # turn 1's first call was the day before
        ("hour", "2026-03-01T23", 1, 1, 1, 0.25, 0),
        ("hour", "2026-03-02T00", 2, 0, 1, 0.5, 1),
        ("hour", "2026-03-02T10", 1, 1, 1, 0.0, 0),  # a skipped slot is not unpriced
    ]


async def test_m009_builds_the_rollups_of_rows_stored_before(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m009_cost_rollups")
    for statement, params in old_rows_sql():
        db.execute(statement, params)
    db.conn.commit()
    db.close()
    store = await Store.open(path, clock)
    rows = await store.query("SELECT span, bucket, calls, turns, model_turns, dollars, unpriced FROM cost_rollups "
                             "WHERE grain = 'chat' ORDER BY span, bucket")
    await store.close()
    assert_old_rows_rolled_up(rows)


async def test_reopening_applies_nothing_twice(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "gw.db"
    for _ in range(2):
        store = await Store.open(path, clock)
        count = await store.run(lambda d: d["_sqlite_migrations"].count)
        await store.close()
    assert count == len(_migration_names())


async def test_database_lives_in_one_dedicated_thread(sqlite_store: Store) -> None:
    store = sqlite_store
    names = {await store.run(lambda d: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and threading.current_thread().name not in names
    pragmas = await store.run(
        lambda d: (
            d.execute("PRAGMA journal_mode").fetchone()[0],
            d.execute("PRAGMA synchronous").fetchone()[0],
            d.execute("PRAGMA busy_timeout").fetchone()[0],
        )
    )
    assert pragmas[0] == "wal" and pragmas[1] == 1 and pragmas[2] >= 5000


# Round trips --------------------------------------------------------------------------------


def test_times_are_fixed_width_utc_text() -> None:
    berlin = timezone(timedelta(hours=2))
    text = to_iso(datetime(2026, 10, 25, 2, 30, tzinfo=berlin))
    assert text == "2026-10-25T00:30:00.000000+00:00"
    assert from_iso(text) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        to_iso(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30)),  # noqa: DTZ001 - naive bounds: the strategy wants them
                          st.integers(-14 * 60, 14 * 60)), min_size=1, max_size=8))
def test_times_are_the_same_text_as_isoformat_whatever_came_before(moments) -> None:  # type: ignore[no-untyped-def]
    # to_iso keeps the text of the last second it wrote: the next time, in another second, another
    # zone or a microsecond later, must still read exactly as isoformat would write it.
    for naive, offset in moments:
        for moment in (naive.replace(tzinfo=UTC), naive.replace(tzinfo=timezone(timedelta(minutes=offset)))):
            assert to_iso(moment) == moment.astimezone(UTC).isoformat(timespec="microseconds")
            later = moment + timedelta(microseconds=1)
            assert to_iso(later) == later.astimezone(UTC).isoformat(timespec="microseconds")


async def test_sessions_per_chat_and_thread(store: Storage, clock: FakeClock) -> None:
    a = await store.active_session("telegram", "-100", None)
    assert await store.active_session("telegram", "-100", None) == a
    assert await store.active_session("telegram", "-100", "") == a
    topic = await store.active_session("telegram", "-100", "7")
    other = await store.active_session("discord", "-100", None)
    assert len({a, topic, other}) == 3

    clock.advance(minutes=5)
    b = await store.new_session("telegram", "-100", None)
    assert b != a
    assert await store.active_session("telegram", "-100", None) == b
    assert await store.active_session("telegram", "-100", "7") == topic
    closed = await store.query("SELECT closed_at FROM sessions WHERE id = ?", [a])
    assert from_iso(closed[0][0]) == clock.now()


async def test_turn_messages_and_history_round_trip(store: Storage, clock: FakeClock) -> None:
    session = await store.active_session("telegram", "-100", None)
    turn_id = await start(store, session, prompt="What is 2+2?")
    assert await store.history(session) == [Message("user", "What is 2+2?")]

    produced = [
        Message("assistant", "", tool_calls=(ToolCall("c1", "calculator", '{"expr": "2+2"}'),
                                              ToolCall("c2", "current_time", "{}"))),
        Message("tool", "4", tool_call_id="c1", name="calculator"),
        Message("tool", "2026-03-29T00:30Z", tool_call_id="c2", name="current_time"),
        Message("assistant", "It is **4** — ünïcödé ✓"),
    ]
    clock.advance(seconds=3)
    chat = ChatRef("telegram", "-100", None, reply_to_id="m1")
    delivery_id = await store.complete_turn(
        turn_id, status="done", answer="It is **4**", cost_usd=0.0123, messages=produced,
        delivery=(chat, "answer", {"text": "It is **4**", "footer": None}),
    )
    assert isinstance(delivery_id, int)
    assert await store.history(session) == [Message("user", "What is 2+2?"), *produced]
    assert await store.history(session, limit=2) == produced[-2:]

    row = await store.turn(turn_id)
    assert isinstance(row, TurnRow)
    assert row.status == "done" and row.answer == "It is **4**" and row.cost_usd == pytest.approx(0.0123)
    assert row.started_at == T0 and row.finished_at == T0 + timedelta(seconds=3)
    assert row.started_at.tzinfo is not None and row.thread_id is None
    assert (row.user_id, row.user_name, row.event_id, row.message_id, row.preset) == ("u1", "Ann", "e1", "m1",
                                                                                       "default")
    assert await store.unfinished_turns() == []
    # Another session's history is separate.
    other = await store.new_session("telegram", "-100", None)
    assert await store.history(other) == []


async def test_record_calls_copies_the_turn_columns(store: Storage, clock: FakeClock) -> None:
    session = await store.active_session("slack", "C9", "1700000000.1")
    turn_id = await start(store, session, platform="slack", chat_id="C9", user_id="U7", preset="deep")
    late = CallRecord("reference", 0, 2, "groq", "llama", "timeout", 5000, Usage(source="estimated"),
                      Cost(None, "unknown"), error="deadline", late=True)
    await store.record_calls(turn_id, [call(0), call(1, usd=None), late, call(0, role="aggregator", usd=0.5)])
    rows = await store.query("SELECT * FROM model_calls ORDER BY id", dicts=True)
    assert len(rows) == 4
    assert {(r["platform"], r["chat_id"], r["user_id"], r["preset"], r["turn_id"]) for r in rows} == {
        ("slack", "C9", "U7", "deep", turn_id)
    }
    first = rows[0]
    assert (first["input"], first["cache_read"], first["cache_write"], first["output"], first["reasoning"]) == (
        10, 2, 3, 20, 5)
    assert first["cost_usd"] == pytest.approx(0.01) and first["cost_source"] == "price_table"
    assert rows[1]["cost_usd"] is None and rows[1]["cost_source"] == "unknown"
    assert (rows[2]["status"], rows[2]["late"], rows[2]["error"], rows[2]["usage_source"], rows[2]["idx"]) == (
        "timeout", 1, "deadline", "estimated", 2)
    assert rows[3]["role"] == "aggregator"
    assert from_iso(first["created_at"]) == clock.now()

    with pytest.raises(KeyError):
        await store.record_calls(9999, [call()])


async def test_book_calls_stores_calls_of_several_turns_in_one_go(store: Storage) -> None:
    first = await start(store, await store.active_session("slack", "C1", None), platform="slack", chat_id="C1",
                        user_id="U1", preset="deep")
    second = await start(store, await store.active_session("telegram", "-5", None), chat_id="-5", user_id="u2")
    await store.book_calls([(first, call(0)), (second, call(1, usd=None)), (first, call(0, role="aggregator",
                                                                                         status="cut"))])
    rows = await store.query("SELECT turn_id, platform, chat_id, user_id, preset, role, status, cost_usd "
                             "FROM model_calls ORDER BY id", dicts=True)
    assert [(r["turn_id"], r["platform"], r["chat_id"], r["user_id"], r["preset"], r["role"], r["status"])
            for r in rows] == [
        (first, "slack", "C1", "U1", "deep", "reference", "ok"),
        (second, "telegram", "-5", "u2", "default", "reference", "ok"),
        (first, "slack", "C1", "U1", "deep", "aggregator", "cut"),
    ]
    assert rows[1]["cost_usd"] is None
    await store.book_calls([])
    with pytest.raises(KeyError):  # all or nothing: a missing turn stores none of the batch
        await store.book_calls([(first, call(2)), (9999, call())])
    assert len(await store.query("SELECT id FROM model_calls")) == 3


async def test_text_with_a_nul_character_is_stored_with_a_replacement_on_both_backends(store: Storage) -> None:
    # Before: PostgreSQL refused the whole write ("text fields cannot contain NUL"): a fetched
    # binary page in a tool result, or a NUL in a prompt, lost the turn and its cost rows.
    session = await store.active_session("telegram", "-100", None)
    turn_id = await start(store, session, prompt="before\x00after", user_name="A\x00nn")
    broken = CallRecord("reference", 0, 0, "openrouter", "m0", "failed", 5, Usage(), Cost(None, "unknown"),
                        error="HTTP 500: \x00\x00")
    await store.record_calls(turn_id, [broken])
    await store.complete_turn(turn_id, status="done", answer="an\x00swer", cost_usd=0.0, delivery=None,
                              messages=[Message("tool", "page\x00bytes", tool_call_id="t\x00", name="fetch_url"),
                                        Message("assistant", "an\x00swer")])
    row = (await store.query("SELECT prompt, user_name, answer FROM turns WHERE id = ?", [turn_id]))[0]
    assert tuple(row) == ("before\ufffdafter", "A\ufffdnn", "an\ufffdswer")
    assert (await store.query("SELECT error FROM model_calls"))[0][0] == "HTTP 500: \ufffd\ufffd"
    history = await store.history(session)
    assert [m.content for m in history] == ["before\ufffdafter", "page\ufffdbytes", "an\ufffdswer"]
    assert history[1].tool_call_id == "t\ufffd"
    other = await start(store, session, event_id="e2")
    await store.mark_turn(other, "failed", "reason\x00")
    assert (await store.query("SELECT error FROM turns WHERE id = ?", [other]))[0][0] == "reason\ufffd"


async def test_recent_turn_costs_are_the_users_last_done_turns_of_a_preset(store: Storage) -> None:
    session = await store.active_session("telegram", "-100", None)
    for usd, status, preset, user in [(0.1, "done", "default", "u1"), (0.2, "failed", "default", "u1"),
                                      (0.3, "done", "deep", "u1"), (0.4, "done", "default", "u2"),
                                      (None, "done", "default", "u1"), (0.5, "done", "default", "u1")]:
        turn_id = await start(store, session, user_id=user, preset=preset)
        await store.complete_turn(turn_id, status=status, answer=None, cost_usd=usd, messages=(), delivery=None)
    assert await store.recent_turn_costs("telegram", "u1", "default") == [0.5, 0.1]
    assert await store.recent_turn_costs("telegram", "u1", "default", limit=1) == [0.5]
    assert await store.recent_turn_costs("slack", "u1", "default") == []


async def test_complete_turn_without_delivery_and_failed_turns(store: Storage) -> None:
    session = await store.active_session("telegram", "1", None)
    turn_id = await start(store, session)
    result = await store.complete_turn(turn_id, status="failed", answer=None, cost_usd=None, messages=[],
                                       delivery=None, error="provider down")
    assert result is None
    row = await store.turn(turn_id)
    assert row is not None and (row.status, row.error, row.cost_usd) == ("failed", "provider down", None)
    assert await store.pending_deliveries() == []
    with pytest.raises(ValueError):
        await store.complete_turn(turn_id, status="bogus", answer=None, cost_usd=None, messages=[],
                                  delivery=None)


async def test_complete_turn_is_all_or_nothing(sqlite_store: Store) -> None:
    store = sqlite_store
    session = await store.active_session("telegram", "1", None)
    turn_id = await start(store, session)
    # An unknown turn fails inside the transaction and leaves nothing behind.
    with pytest.raises(KeyError):
        await store.complete_turn(424242, status="done", answer="x", cost_usd=0.1,
                                  messages=[Message("assistant", "x")],
                                  delivery=(ChatRef("telegram", "1"), "answer", {}))
    assert await store.pending_deliveries() == []

    def sabotage(db: sqlite_utils.Database) -> None:
        # Make the ledger insert fail, after the turn update and the messages.
        db.execute("CREATE TRIGGER no_ledger BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'x'); END")

    await store.run(sabotage)
    with pytest.raises(sqlite3.IntegrityError):
        await store.complete_turn(turn_id, status="done", answer="x", cost_usd=0.1,
                                  messages=[Message("assistant", "x")],
                                  delivery=(ChatRef("telegram", "1"), "answer", {}))
    row = await store.turn(turn_id)
    assert row is not None and row.status == "running" and row.answer is None
    assert await store.history(session) == [Message("user", "hi")]
    await store.run(lambda d: d.execute("DROP TRIGGER no_ledger"))


async def test_a_turn_completed_for_sending_stores_its_ledger_row_as_sending(store: Storage) -> None:
    session = await store.active_session("telegram", "1", None)
    turn_id = await start(store, session, chat_id="1")
    delivery_id = await store.complete_turn(turn_id, status="done", answer="a", cost_usd=None,
                                            messages=[Message("assistant", "a")],
                                            delivery=(ChatRef("telegram", "1"), "answer", {"text": "a"}), sending=True)
    [row] = await store.pending_deliveries()  # a crash now: sent again, as one cut while sending
    assert (row.id, row.status) == (delivery_id, "sending")
    await store.mark_delivery(row.id, "sent", ["7"])
    assert await store.pending_deliveries() == []


async def test_delivery_ledger(store: Storage, clock: FakeClock) -> None:
    session = await store.active_session("discord", "G1", "T5")
    ids = []
    for n in range(3):
        turn_id = await start(store, session, platform="discord", chat_id="G1", thread_id="T5")
        chat = ChatRef("discord", "G1", "T5", reply_to_id=f"r{n}", reply_handle=f"tok{n}")
        ids.append(await store.complete_turn(
            turn_id, status="done", answer=f"a{n}", cost_usd=None, messages=[Message("assistant", f"a{n}")],
            delivery=(chat, "answer", {"text": f"a{n}", "nested": {"k": [1, 2]}}),
        ))
    pending = await store.pending_deliveries()
    assert [d.id for d in pending] == ids
    first = pending[0]
    assert isinstance(first, Delivery)
    assert first.chat == ChatRef("discord", "G1", "T5", reply_to_id="r0", reply_handle="tok0")
    assert (first.kind, first.payload, first.status, first.message_ids) == (
        "answer", {"text": "a0", "nested": {"k": [1, 2]}}, "pending", ())

    await store.mark_delivery(ids[0], "sending")
    await store.mark_delivery(ids[1], "sent", ["111", "112"])
    await store.mark_delivery(ids[2], "sending", ["300"])
    await store.mark_delivery(ids[2], "failed")
    pending = await store.pending_deliveries()
    assert [(d.id, d.status) for d in pending] == [(ids[0], "sending")]
    row = (await store.query("SELECT * FROM deliveries WHERE id = ?", [ids[2]], dicts=True))[0]
    assert row["message_ids"] == '["300"]' and row["status"] == "failed"
    with pytest.raises(ValueError):
        await store.mark_delivery(ids[0], "lost")
    with pytest.raises(KeyError):
        await store.mark_delivery(12345, "sent")


async def test_take_question_checks_the_event_opens_the_session_and_stores_the_turn(
    store: Storage, clock: FakeClock
) -> None:
    asked: list[str | None] = []

    def preset_of(stored: str | None) -> str:
        asked.append(stored)
        return stored or "default"

    fields = dict(platform="telegram", chat_id="-100", thread_id="t1", user_id="u1", user_name="Ann",
                  message_id="m1", preset_of=preset_of)
    first = await store.take_question(event_id="ev1", prompt="first", **fields)  # type: ignore[arg-type]
    assert first is not None and (first.preset, first.queued) == ("default", False)
    assert asked == [None]
    assert first.session_id == await store.active_session("telegram", "-100", "t1")  # opened for it
    assert not await store.mark_seen("telegram", "ev1")  # the same seen_events as mark_seen
    assert await store.take_question(event_id="ev1", prompt="again", **fields) is None  # type: ignore[arg-type]
    assert asked == [None]  # a duplicate stores nothing and asks for no preset
    row = await store.turn(first.turn_id)
    assert row is not None and (row.status, row.prompt, row.event_id, row.preset) == ("running", "first", "ev1",
                                                                                     "default")
    if store.backend == "sqlite":  # read in the same writer job: the turn's own question included
        assert first.history == [Message("user", "first")]
    else:  # a turn of another replica may be ahead of it: read once it may run
        assert first.history is None
    await store.complete_turn(first.turn_id, status="done", answer="one", cost_usd=0.0,
                              messages=[Message("assistant", "one")], delivery=None)
    await store.set_channel_preset("telegram", "-100", "deep", "admin")
    second = await store.take_question(event_id="ev2", prompt="second", **fields)  # type: ignore[arg-type]
    assert second is not None and second.session_id == first.session_id and second.preset == "deep"
    assert asked == [None, "deep"]
    if store.backend == "sqlite":
        assert second.history == [Message("user", "first"), Message("assistant", "one"), Message("user", "second")]
    waiting = await store.take_question(event_id="ev3", prompt="later", queued=True, **fields)  # type: ignore[arg-type]
    assert waiting is not None and waiting.queued and waiting.history is None
    assert [(t.id, t.status) for t in await store.unfinished_turns()] == [(second.turn_id, "running"),
                                                                         (waiting.turn_id, "queued")]
    assert [m.content for m in await store.history(first.session_id)] == ["first", "one", "second"]
    other = await store.take_question(event_id="ev4", prompt="elsewhere", **{**fields, "thread_id": "t2"})  # type: ignore[arg-type]
    assert other is not None and other.session_id != first.session_id  # another thread: its own session


async def test_on_sqlite_a_question_that_fails_to_store_is_not_marked_seen(tmp_path: Path) -> None:
    # One writer job, one transaction: a failure after the duplicate check leaves the event
    # unseen, so the platform's retry of it is answered. (PostgreSQL marks it in a trip of its own.)
    def broken(stored: str | None) -> str:
        raise RuntimeError("no preset")

    store = await Store.open(tmp_path / "q.db", FakeClock())
    fields = dict(platform="telegram", event_id="ev1", chat_id="1", thread_id=None, user_id="u1",
                  user_name="Ann", message_id="m1", prompt="q")
    with pytest.raises(RuntimeError):
        await store.take_question(preset_of=broken, **fields)  # type: ignore[arg-type]
    assert await store.query("SELECT COUNT(*) FROM turns") == [(0,)]
    taken = await store.take_question(preset_of=lambda stored: "default", **fields)  # type: ignore[arg-type]
    assert taken is not None
    await store.close()


async def test_a_turn_started_with_its_history_reads_it_only_when_nothing_can_change_it(
    store: Storage, clock: FakeClock
) -> None:
    session = await store.active_session("telegram", "1", None)
    first = await start(store, session, prompt="first")
    await store.complete_turn(first, status="done", answer="one", cost_usd=0.0,
                              messages=[Message("assistant", "one")], delivery=None)
    fields = dict(session_id=session, platform="telegram", chat_id="1", thread_id=None, user_id="u1",
                  user_name="Ann", event_id="e2", message_id="m2", preset="default")
    second, history = await store.start_turn_with_history(prompt="second", **fields)  # type: ignore[arg-type]
    if store.backend == "sqlite":  # the same writer job: the turn's own question included
        assert history == [Message("user", "first"), Message("assistant", "one"), Message("user", "second")]
    else:  # a turn of another replica may be ahead of it: read once it may run
        assert history is None
    assert [m.content for m in await store.history(session)] == ["first", "one", "second"]
    queued, history = await store.start_turn_with_history(prompt="later", queued=True, **fields)  # type: ignore[arg-type]
    assert history is None  # a queued turn's history is read when it begins
    assert [(t.id, t.status) for t in await store.unfinished_turns()] == [(second, "running"), (queued, "queued")]


async def test_a_queued_turn_is_stored_at_once_and_joins_the_history_when_it_begins(
    store: Store, clock: FakeClock
) -> None:
    session = await store.active_session("telegram", "1", None)
    first = await start(store, session, prompt="first")
    waiting = await start(store, session, prompt="waiting", queued=True)
    assert [(t.id, t.status) for t in await store.unfinished_turns()] == [(first, "running"), (waiting, "queued")]
    assert [m.content for m in await store.history(session)] == ["first"]  # not yet in the conversation
    await store.complete_turn(first, status="done", answer="one", cost_usd=0.0,
                              messages=[Message("assistant", "one")], delivery=None)
    clock.advance(minutes=2)
    await store.begin_turn(waiting)
    assert [m.content for m in await store.history(session)] == ["first", "one", "waiting"]
    row = await store.turn(waiting)
    assert row is not None and row.status == "running" and row.started_at == clock.now()
    with pytest.raises(ValueError):
        await store.begin_turn(waiting)  # only once
    with pytest.raises(KeyError):
        await store.begin_turn(9999)


async def test_unfinished_turns_and_mark_turn(store: Storage, clock: FakeClock) -> None:
    session = await store.active_session("telegram", "1", "topic")
    a = await start(store, session, thread_id="topic")
    b = await start(store, session, thread_id="topic", prompt="second")
    running = await store.unfinished_turns()
    assert [t.id for t in running] == [a, b]
    assert running[1].prompt == "second" and running[1].thread_id == "topic"
    clock.advance(minutes=1)
    await store.mark_turn(a, "interrupted", "gateway restarted")
    assert [t.id for t in await store.unfinished_turns()] == [b]
    row = await store.turn(a)
    assert row is not None and row.status == "interrupted" and row.error == "gateway restarted"
    assert row.finished_at == clock.now()
    await store.mark_turn(b, "refused")
    assert await store.unfinished_turns() == []
    with pytest.raises(ValueError):
        await store.mark_turn(b, "exploded")


async def test_seen_events(store: Storage, clock: FakeClock) -> None:
    assert await store.mark_seen("slack", "Ev1") is True
    assert await store.mark_seen("slack", "Ev1") is False
    assert await store.mark_seen("discord", "Ev1") is True
    results = await asyncio.gather(*(store.mark_seen("telegram", "42") for _ in range(20)))
    assert results.count(True) == 1
    clock.advance(days=2)
    assert await store.prune_seen(clock.now() - timedelta(days=1)) == 3
    assert await store.mark_seen("slack", "Ev1") is True


async def test_channel_presets(store: Storage) -> None:
    assert await store.channel_preset("telegram", "-100") is None
    await store.set_channel_preset("telegram", "-100", "deep", "admin1")
    await store.set_channel_preset("telegram", "-100", "fast", "admin2")
    assert await store.channel_preset("telegram", "-100") == "fast"
    assert await store.channel_preset("slack", "-100") is None
    row = await store.query("SELECT updated_by FROM channel_settings WHERE platform = ? AND chat_id = ?",
                            ["telegram", "-100"])
    assert row == [("admin2",)]
    await store.set_channel_preset("telegram", "-100", None, "admin1")
    assert await store.channel_preset("telegram", "-100") is None
    await store.set_channel_preset("telegram", "-100", None, "admin1")  # clearing twice is fine


async def test_refusal_notice_at_most_once_per_interval(store: Storage, clock: FakeClock) -> None:
    assert await store.refusal_notice_due("telegram", "-5", 3600) is True
    assert await store.refusal_notice_due("telegram", "-5", 3600) is False
    assert await store.refusal_notice_due("telegram", "-6", 3600) is True
    clock.advance(seconds=3599)
    assert await store.refusal_notice_due("telegram", "-5", 3600) is False
    clock.advance(seconds=1)
    assert await store.refusal_notice_due("telegram", "-5", 3600) is True
    assert await store.refusal_notice_due("telegram", "-5", 3600) is False


async def test_store_reopens_with_its_data(backend: Backend, clock: FakeClock) -> None:
    store = await backend.open(clock)
    session = await store.active_session("telegram", "1", None)
    await start(store, session, prompt="persist me")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError):
        await store.history(session)

    store = await backend.open(clock)
    assert await store.active_session("telegram", "1", None) == session
    assert await store.history(session) == [Message("user", "persist me")]
    assert len(await store.unfinished_turns()) == 1
    await store.close()


async def test_digest_claims(store: Storage, clock: FakeClock) -> None:
    state = await store.digest_state()
    assert (state.any_recorded, state.last_end) == (False, None)
    week = timedelta(days=7)
    assert await store.claim_digest(T0 - week, T0, "baseline", clock.now()) is True
    assert await store.digest_state() == type(state)(True, T0)
    # A period is claimed once: a second claim (another replica, a redelivery) gets False.
    assert await store.claim_digest(T0, T0 + week, "sending", clock.now()) is True
    assert await store.claim_digest(T0, T0 + week, "sending", clock.now()) is False
    await store.finish_digest(T0 + week, "failed", clock.now(), None, "boom")
    assert (await store.digest_state()).last_end == T0  # a failed period is owed again
    assert await store.claim_digest(T0, T0 + week, "sending", clock.now()) is True
    await store.finish_digest(T0 + week, "sent", clock.now(), 1.25, None)
    rows = await store.query("SELECT status, dollars, error FROM digests ORDER BY period_end")
    assert rows == [("baseline", None, None), ("sent", 1.25, None)]
    with pytest.raises(ValueError):
        await store.claim_digest(T0, T0 + week, "lost", clock.now())


async def test_portable_query_seam(store: Storage) -> None:
    session = await store.active_session("telegram", "1", None)
    turn_id = await start(store, session)
    await store.record_calls(turn_id, [call(0, usd=0.25), call(1, usd=None), call(2, usd=0.5)])
    # COALESCE(SUM(..), 0.0) and COUNT(*) - COUNT(..) read alike; a SQLite hint is a comment.
    rows = await store.query(
        "SELECT COALESCE(SUM(cost_usd), 0.0), COUNT(*) - COUNT(cost_usd), SUM(input) FROM model_calls "
        "/*sqlite: INDEXED BY idx_model_calls_created_at*/ WHERE created_at >= ? AND platform = ?",
        [to_iso(T0), "telegram"],
    )
    assert rows == [(pytest.approx(0.75), 1, 30)]
    assert type(rows[0][0]) is float and type(rows[0][2]) is int
    empty = await store.query("SELECT COALESCE(SUM(cost_usd), 0.0) FROM model_calls WHERE platform = ?", ["x"])
    assert empty == [(0.0,)] and type(empty[0][0]) is float
    assert await store.query("SELECT role, idx FROM model_calls WHERE idx = ?", [1], dicts=True) == [
        {"role": "reference", "idx": 1}]
    assert store.backend in ("sqlite", "postgresql")


async def test_two_sessions_opened_at_once_are_one(store: Storage) -> None:
    ids = await asyncio.gather(*(store.active_session("slack", "C1", "t") for _ in range(10)))
    assert len(set(ids)) == 1


async def test_leases_hand_over_the_rows_whose_owner_is_gone(backend: Backend, clock: FakeClock) -> None:
    """A store owns what it writes; another store gets it when the owner is gone: on SQLite at
    once (one process per file: another store is a later run), on PostgreSQL when the lease
    expired (a replica that stopped renewing)."""
    a = await backend.open(clock, lease_s=20, auto_renew=False)
    b = await backend.open(clock, lease_s=20, auto_renew=False)
    try:
        session = await a.active_session("telegram", "1", None)
        running = await start(a, session, prompt="running")
        queued = await start(a, session, prompt="queued", queued=True)
        done = await start(a, session, prompt="done")
        ledger = await a.complete_turn(done, status="done", answer="x", cost_usd=None, messages=[],
                                       delivery=(ChatRef("telegram", "1"), "answer", {"text": "x"}))
        assert [d.id for d in await a.pending_deliveries()] == [ledger]
        assert await a.claim_cut_turns() == []  # its own turns are not cut
        if backend.name == "postgresql":
            # A live owner keeps them: renewing before expiry moves the lease on.
            assert await b.claim_cut_turns() == [] and await b.pending_deliveries() == []
            clock.advance(seconds=15)
            assert await a.renew_leases() == 3  # two turns, one ledger row
            clock.advance(seconds=15)
            assert await b.claim_cut_turns() == [] and await b.pending_deliveries() == []
            clock.advance(seconds=6)  # 21 s since the renewal: expired
        assert [t.id for t in await b.claim_cut_turns()] == [running, queued]
        assert [d.id for d in await b.pending_deliveries()] == [ledger]
        # Now b's: claimed once, not handed to anyone else.
        assert await b.claim_cut_turns() == []
        if backend.name == "postgresql":
            assert await a.pending_deliveries() == [] and await a.claim_cut_turns() == []
    finally:
        await a.close()
        await b.close()


async def test_a_named_lock_is_held_by_one_store(backend: Backend, clock: FakeClock) -> None:
    a, b = await backend.open(clock), await backend.open(clock)
    try:
        held = await a.try_lock("moa-gateway:test")
        assert held is not None and held.name == "moa-gateway:test"
        other = await b.try_lock("moa-gateway:test")
        if backend.name == "postgresql":  # a second replica is refused until the holder lets go
            assert other is None
            another = await b.try_lock("moa-gateway:another")
            assert another is not None
            await another.stop()
            await held.stop()
            other = await b.try_lock("moa-gateway:test")
        assert other is not None  # on SQLite always granted: one process per file
        await other.stop()
        await held.stop()  # twice is fine
    finally:
        await a.close()
        await b.close()


# Concurrency and crashes --------------------------------------------------------------------


async def test_200_concurrent_record_calls_all_land(store: Storage) -> None:
    session = await store.active_session("telegram", "1", None)
    turns = [await start(store, session, user_id=f"u{n % 7}") for n in range(200)]
    await asyncio.gather(*(store.record_calls(t, [call(i) for i in range(5)]) for t in turns))
    counts = await store.query("SELECT COUNT(*), COUNT(DISTINCT turn_id) FROM model_calls")
    assert counts == [(1000, 200)]
    per_user = dict(await store.query("SELECT user_id, COUNT(*) FROM model_calls GROUP BY user_id"))
    assert per_user == {f"u{k}": 5 * len([n for n in range(200) if n % 7 == k]) for k in range(7)}


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from adapters.contract import ChatRef
    from gateway.storage import Store
    from moa_core.clock import SystemClock
    from moa_core.values import CallRecord, Cost, ImagePart, Message, ToolCall, Usage

    BIG = "x" * 50_000  # spreads one complete_turn over many pages

    def die_inside_the_next_ledger_insert(db):
        # A tiny page cache makes SQLite spill the uncommitted pages into the WAL before the kill.
        db.execute("PRAGMA cache_size = 5")
        db.conn.create_function("die", 0, lambda: os.kill(os.getpid(), signal.SIGKILL))
        db.execute("CREATE TEMP TRIGGER die AFTER INSERT ON main.deliveries BEGIN SELECT die(); END")

    async def main(path, die_at):
        store = await Store.open(path, SystemClock())
        call = CallRecord("reference", 0, 0, "p", "m", "ok", 5, Usage(1, 2, 3, 4, 0), Cost(0.001, "config"))
        n = 0
        while True:
            n += 1
            session = await store.active_session("telegram", str(n % 10), None)
            turn = await store.start_turn(
                session_id=session, platform="telegram", chat_id=str(n % 10), thread_id=None, user_id="u",
                user_name="U", event_id=str(n), message_id=str(n), preset="p", prompt=f"q{n}")
            await store.record_calls(turn, [call] * 5)
            if n == die_at:
                await store.run(die_inside_the_next_ledger_insert)
            await store.complete_turn(
                turn, status="done", answer=f"a{n}", cost_usd=0.005,
                messages=[Message("assistant", "", (ToolCall("c", "calculator", "{}"),)),
                          Message("tool", BIG, tool_call_id="c", name="calculator"),
                          Message("assistant", f"a{n}" + BIG)],
                delivery=(ChatRef("telegram", str(n % 10)), "answer", {"text": f"a{n}", "pad": BIG}))
            print(turn, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def run_writer_until_killed(path: Path, *, kill_after: int | None, die_at: int = 0) -> list[int]:
    """Run the writer process; SIGKILL it after `kill_after` finished turns (plus a random few
    milliseconds, so that the kill lands anywhere), or let it kill itself inside the
    complete_turn transaction of turn `die_at`. Returns the turns it reported finished."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(die_at)], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env=env)
    assert child.stdout is not None
    finished: list[int] = []
    try:
        for line in child.stdout:
            finished.append(int(line))
            if kill_after is not None and len(finished) >= kill_after:
                time.sleep(random.uniform(0, 0.03))
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return finished


def check_crashed_database(path: Path, finished: list[int]) -> list[dict]:
    async def read() -> list[dict]:
        store = await Store.open(path, FakeClock())
        assert await store.run(lambda d: d.execute("PRAGMA integrity_check").fetchone()[0]) == "ok"
        assert await store.run(lambda d: d.execute("PRAGMA foreign_key_check").fetchall()) == []
        rows = await store.run(lambda d: list(d.query(
            "SELECT t.id, t.status, "
            " (SELECT COUNT(*) FROM messages m WHERE m.turn_id = t.id AND m.role != 'user') AS produced, "
            " (SELECT COUNT(*) FROM messages m WHERE m.turn_id = t.id AND m.role = 'user') AS prompts, "
            " (SELECT COUNT(*) FROM deliveries d WHERE d.turn_id = t.id) AS ledger, "
            " (SELECT COUNT(*) FROM model_calls c WHERE c.turn_id = t.id) AS calls "
            "FROM turns t ORDER BY t.id")))
        await store.close()
        return rows

    rows = asyncio.run(read())
    by_id = {r["id"]: r for r in rows}
    # Every turn the writer saw finished is there, whole (committed = durable).
    for turn_id in finished:
        assert by_id[turn_id]["status"] == "done"
    for r in rows:
        assert r["prompts"] == 1
        assert r["calls"] in (0, 5)
        if r["status"] == "done":
            assert (r["produced"], r["ledger"], r["calls"]) == (3, 1, 5), r
        else:
            assert r["status"] == "running"
            assert (r["produced"], r["ledger"]) == (0, 0), r
    return rows


@pytest.mark.parametrize("kill_after", [1, 5, 20, 40])
def test_sigkill_at_a_random_moment_leaves_a_consistent_database(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "crash.db"
    finished = run_writer_until_killed(path, kill_after=kill_after)
    assert len(finished) == kill_after
    check_crashed_database(path, finished)


def test_sigkill_inside_complete_turn_stores_none_of_it(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    finished = run_writer_until_killed(path, kill_after=None, die_at=4)
    assert len(finished) == 3
    wal = path.with_name(path.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0
    rows = check_crashed_database(path, finished)
    assert [(r["status"], r["calls"], r["produced"], r["ledger"]) for r in rows] == [
        ("done", 5, 3, 1)] * 3 + [("running", 5, 0, 0)]


async def test_images_are_stored_described_never_their_bytes(backend: Backend, clock: FakeClock,
                                                              tmp_path: Path) -> None:
    store = await backend.open(clock)
    photo = ImagePart("photo.jpg", "image/jpeg", b"\xff\xd8IMAGE-BYTES", 640, 480, "ab" * 32)
    session = await store.active_session("telegram", "1", None)
    await start(store, session, prompt="what is this?", images=[photo])
    queued = await start(store, session, prompt="and this?", images=[photo], queued=True)
    await store.begin_turn(queued)
    described = ImagePart("photo.jpg", "image/jpeg", b"", 640, 480, "ab" * 32)
    assert [(m.content, m.images) for m in await store.history(session)] == [
        ("what is this?", (described,)), ("and this?", (described,))]
    stored = await store.query("SELECT images FROM messages UNION ALL SELECT images FROM turns")
    assert all("IMAGE" not in (text or "") for (text,) in stored) and len(stored) == 4
    await store.close()
    if backend.name == "sqlite":  # nor anywhere in the file
        assert b"IMAGE-BYTES" not in b"".join(p.read_bytes() for p in tmp_path.glob("gw.db*"))
