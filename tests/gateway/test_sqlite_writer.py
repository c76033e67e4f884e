"""The SQLite store's writer and reader threads: writes queued together commit as one
transaction, a failing write fails alone, close() writes what is queued, errors reach their
caller, reads do not wait behind writes, and a batch's cost rollups are written once, summed
from its rows."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import sqlite_utils

from gateway.storage import Store
from gateway.storage import rollups as rollup_sql
from gateway.storage.sqlite_threads import WRITER_BEGIN, WRITER_COMMIT
from moa_core.clock import SystemClock
from moa_core.values import CallRecord, Cost, Usage
from tests.gateway.test_cost_rollups import assert_reconciled


class HeldWriter:
    """Keeps the writer thread busy inside one job until released, so that the writes queued
    meanwhile are all waiting when it next drains its queue."""

    def __init__(self, store: Store):
        self.store = store
        self.release = threading.Event()
        self._started = threading.Event()
        self.task: asyncio.Future | None = None

    async def __aenter__(self) -> HeldWriter:
        def hold(db: sqlite_utils.Database) -> None:
            self._started.set()
            self.release.wait(30)

        self.task = asyncio.ensure_future(self.store.run(hold))
        assert await asyncio.to_thread(self._started.wait, 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.task is not None
        await self.task


async def queued(store: Store, *jobs: Callable[[sqlite_utils.Database], object]) -> list[asyncio.Future]:
    """Start a write per job; return once each is in the writer's queue."""
    tasks = [asyncio.ensure_future(store.run(job)) for job in jobs]
    await asyncio.sleep(0)  # each task runs up to its await: its job is queued by then
    return tasks


def insert(value: str) -> Callable[[sqlite_utils.Database], int]:
    def job(db: sqlite_utils.Database) -> int:
        return db.conn.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid or 0
    return job


def fail(db: sqlite_utils.Database) -> None:
    db.conn.execute("INSERT INTO t (v) VALUES ('from the failing job')")
    raise LookupError("this job fails")


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "gw.db", SystemClock())
    await store.run(lambda db: db.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    yield store
    await store.close()


async def values(store: Store) -> list[str]:
    return await store.read(lambda db: [r[0] for r in db.conn.execute("SELECT v FROM t ORDER BY id")])


async def test_writes_queued_together_commit_once(store: Store) -> None:
    statements: list[str] = []
    await store.run(lambda db: db.conn.set_trace_callback(statements.append))
    async with HeldWriter(store):
        tasks = await queued(store, *(insert(f"v{n}") for n in range(20)))
        statements.clear()
    ids = await asyncio.gather(*tasks)
    assert len(set(ids)) == 20
    # After the held job's transaction (its end is traced after the clear), the twenty share one.
    assert statements.count(WRITER_BEGIN) == 1
    batch = statements[statements.index(WRITER_BEGIN):]
    assert sum(s.startswith("INSERT") for s in batch) == 20
    assert batch.count(WRITER_COMMIT) == 1 and batch[-1] == WRITER_COMMIT
    assert await values(store) == [f"v{n}" for n in range(20)]


async def test_writes_submitted_in_one_turn_of_the_loop_are_one_batch(store: Store) -> None:
    # Handed to the writer together at the end of the loop's turn (one wakeup of its thread),
    # not one by one: an idle writer does not start on the first alone.
    async def write_after_a_pause(n: int) -> int:
        time.sleep(0.005)  # the interpreter lock is free: a writer given a job meanwhile would start on it
        return await store.run(insert(f"v{n}"))

    before = store._writer.batches
    tasks = [asyncio.ensure_future(write_after_a_pause(n)) for n in range(5)]  # all run in one turn
    assert len(set(await asyncio.gather(*tasks))) == 5
    assert store._writer.batches == before + 1


async def test_a_failing_write_fails_alone(store: Store) -> None:
    async with HeldWriter(store):
        first, failing, last = await queued(store, insert("first"), fail, insert("last"))
    assert await first and await last
    with pytest.raises(LookupError, match="this job fails"):
        await failing
    assert await values(store) == ["first", "last"]  # the failing job's own insert is rolled back


async def test_a_batch_that_fails_nowhere_runs_without_a_savepoint_per_write(store: Store) -> None:
    statements: list[str] = []
    await store.run(lambda db: db.conn.set_trace_callback(statements.append))
    async with HeldWriter(store):
        tasks = await queued(store, *(insert(f"v{n}") for n in range(5)))
        statements.clear()
    await asyncio.gather(*tasks)
    batch = statements[statements.index(WRITER_BEGIN):]
    assert not [s for s in batch if "SAVEPOINT" in s or "RELEASE" in s]


async def test_the_writes_beside_a_failing_one_return_what_was_committed(store: Store) -> None:
    async with HeldWriter(store):
        tasks = await queued(store, insert("a"), fail, insert("b"), fail, insert("c"))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results[1::2]] == [LookupError, LookupError]
    stored = await store.read(lambda db: db.conn.execute("SELECT id, v FROM t ORDER BY id").fetchall())
    assert [(i, v) for i, v in stored] == list(zip(results[0::2], ["a", "b", "c"], strict=True))


async def test_an_error_that_ends_the_transaction_reruns_the_writes_before_it(store: Store) -> None:
    await store.run(lambda db: db.conn.execute(
        "CREATE TRIGGER no_bad BEFORE INSERT ON t WHEN NEW.v = 'bad' BEGIN SELECT RAISE(ROLLBACK, 'no'); END"))
    async with HeldWriter(store):
        tasks = await queued(store, insert("a"), insert("b"), insert("bad"), insert("c"))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert all(isinstance(r, int) for r in results[:2] + results[3:])
    assert await values(store) == ["a", "b", "c"]


@pytest.mark.parametrize("ends", ["commit", "commit statement", "rollback", "begin", "release"])
async def test_a_write_that_tries_to_end_the_transaction_fails_alone_and_nothing_is_written_twice(
        store: Store, ends: str) -> None:
    # Jobs must not end their batch's transaction: one that committed and then raised made the
    # whole batch run again, and the writes before it were stored twice.
    def rogue(db: sqlite_utils.Database) -> None:
        db.conn.execute("INSERT INTO t (v) VALUES ('rogue')")
        if ends == "commit":
            db.conn.commit()
        elif ends == "commit statement":
            db.conn.execute("COMMIT")
        elif ends == "rollback":
            db.conn.execute("ROLLBACK")
        elif ends == "release":
            db.conn.execute("RELEASE moa_job")  # the writer's savepoint around a job, when it has one
        else:
            db.conn.execute("BEGIN")
        raise LookupError("after ending the transaction")

    async with HeldWriter(store):
        tasks = await queued(store, insert("a"), rogue, insert("c"))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert await values(store) == ["a", "c"]
    assert isinstance(results[1], sqlite3.DatabaseError) and "not authorized" in str(results[1])
    assert isinstance(results[0], int) and isinstance(results[2], int)
    await store.run(insert("later"))  # the writer goes on as before
    assert await values(store) == ["a", "c", "later"]


async def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = await Store.open(path, SystemClock())
    await store.run(lambda db: db.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    async with HeldWriter(store) as held:
        tasks = await queued(store, *(insert(f"v{n}") for n in range(5)))
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
        held.release.set()
        await closing
    assert all(isinstance(n, int) for n in await asyncio.gather(*tasks))
    with pytest.raises(RuntimeError, match="closed"):
        await store.run(insert("late"))
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT v FROM t ORDER BY id")] == [f"v{n}" for n in range(5)]


async def test_a_write_blocked_by_another_process_raises_to_its_caller(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = await Store.open(path, SystemClock(), busy_timeout_ms=100)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.mark_seen("telegram", "e1")
        # Reads still work while the lock is held elsewhere (WAL).
        assert await store.channel_preset("telegram", "1") is None
        other.execute("ROLLBACK")
        assert await store.mark_seen("telegram", "e1") is True  # and writes once it is released
    finally:
        other.close()
        await store.close()


async def test_reads_do_not_wait_behind_writes(store: Store) -> None:
    await store.run(insert("committed"))
    async with HeldWriter(store):
        waiting = await queued(store, insert("queued"))
        # The writer is busy and a write is queued behind it; a read is answered meanwhile.
        assert await asyncio.wait_for(values(store), 30) == ["committed"]
        assert not waiting[0].done()
    await waiting[0]
    assert await values(store) == ["committed", "queued"]


async def test_a_cancelled_caller_does_not_stop_its_write(store: Store) -> None:
    async with HeldWriter(store):
        [task] = await queued(store, insert("kept"))
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.run(lambda db: [r[0] for r in db.conn.execute("SELECT v FROM t")]) == ["kept"]


async def test_the_reader_cannot_write(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await store.read(insert("x"))


# Cost rollups summed over a batch --------------------------------------------------------


CALL = CallRecord("reference", 0, 0, "p", "m", "ok", 5, Usage(10, 0, 0, 5), Cost(0.001, "config"))


async def started_turns(store: Store, count: int) -> list[int]:
    session = await store.active_session("telegram", "1", None)
    return [await store.start_turn(session_id=session, platform="telegram", chat_id="1", thread_id=None,
                                   user_id="u", user_name="U", event_id=f"e{n}", message_id=f"m{n}",
                                   preset="p", prompt="q") for n in range(count)]


async def test_the_rollups_of_a_batch_are_upserted_once_per_rollup_row(store: Store) -> None:
    turns = await started_turns(store, 10)
    statements: list[str] = []
    await store.run(lambda db: db.conn.set_trace_callback(statements.append))
    async with HeldWriter(store):
        booked = [asyncio.ensure_future(store.book_calls([(t, CALL)])) for t in turns]
        booked.append(asyncio.ensure_future(store.book_calls([(424242, CALL)])))  # an unknown turn fails
        await asyncio.sleep(0)
        statements.clear()
    results = await asyncio.gather(*booked, return_exceptions=True)
    assert results[:10] == [None] * 10 and isinstance(results[10], KeyError)
    upserts = [s for s in statements if "INSERT INTO cost_rollups" in s]
    # The batch's rollups are summed from its rows by one statement, once for the ten turns; one
    # chat, user, preset and model in one hour: 7 rollup rows (call; mix, chat and user by day and
    # by hour).
    assert len(upserts) == 1
    assert await assert_reconciled(store) == 7
    [calls, turn_count] = (await store.query(
        "SELECT calls, turns FROM cost_rollups WHERE grain = 'call' AND span = 'day'"))[0]
    assert (calls, turn_count) == (10, 10)


@pytest.mark.parametrize("rows", [1, rollup_sql.EACH_ROW_UP_TO, rollup_sql.EACH_ROW_UP_TO + 1, 60])
async def test_a_batch_of_few_rows_and_one_of_many_sum_alike(store: Store, rows: int) -> None:
    # A batch of a few rows is upserted row by row, a bigger one grouped first: the same sums.
    turns = await started_turns(store, 4)
    await store.book_calls([(turns[0], CALL)])  # the turn's first row is stored already
    calls = [(turns[n % 4], replace(CALL, role="aggregator" if n % 3 else "reference", index=n,
                                    model=f"m{n % 5}", status="ok" if n % 7 else "error",
                                    cost=Cost(None if n % 6 == 0 else 0.001 * n, "config")))
             for n in range(rows)]
    statements: list[str] = []
    await store.run(lambda db: db.conn.set_trace_callback(statements.append))
    async with HeldWriter(store):
        half = rows // 2
        booked = [asyncio.ensure_future(store.book_calls(part)) for part in (calls[:half], calls[half:]) if part]
        await asyncio.sleep(0)
        statements.clear()
    await asyncio.gather(*booked)
    [upsert] = [s for s in statements if "INSERT INTO cost_rollups" in s]
    assert ("CROSS JOIN g" in upsert) == (rows <= rollup_sql.EACH_ROW_UP_TO)
    assert await assert_reconciled(store) > 0


async def test_a_write_of_anyone_but_the_store_sees_the_batch_rollups_so_far(store: Store) -> None:
    [turn] = await started_turns(store, 1)
    async with HeldWriter(store):
        booked = asyncio.ensure_future(store.book_calls([(turn, CALL)]))
        seen = asyncio.ensure_future(store.run(
            lambda db: db.conn.execute("SELECT COALESCE(SUM(calls), 0) FROM cost_rollups WHERE grain = 'call'")
            .fetchone()[0]))
        await asyncio.sleep(0)
    await booked
    assert await seen == 1


async def test_a_turn_this_store_started_is_booked_and_completed_without_reading_its_row(store: Store) -> None:
    [turn] = await started_turns(store, 1)
    statements: list[str] = []
    await store.run(lambda db: db.conn.set_trace_callback(statements.append))
    await store.record_calls(turn, [CALL])
    await store.book_calls([(turn, CALL)])
    await store.complete_turn(turn, status="done", answer="a", cost_usd=0.002, messages=[], delivery=None)
    assert not [s for s in statements if s.startswith("SELECT") and "FROM turns" in s]
    await store.book_calls([(turn, CALL)])  # a call that ended after its turn: its row is read
    assert [s for s in statements if s.startswith("SELECT") and "FROM turns" in s]
    rows = await store.query("SELECT turn_id, platform, chat_id, user_id, preset FROM model_calls")
    assert rows == [(turn, "telegram", "1", "u", "p")] * 3
    assert await assert_reconciled(store) == 7


async def test_a_question_this_store_took_is_booked_and_completed_without_reading_its_row(store: Store) -> None:
    # The gateway's usual path (`take_question`) keeps the turn's key columns as `start_turn` does.
    taken = await store.take_question(platform="telegram", event_id="e1", chat_id="1", thread_id=None,
                                      user_id="u", user_name="U", message_id="m1", prompt="q",
                                      preset_of=lambda stored: "p")
    assert taken is not None
    statements: list[str] = []
    await store.run(lambda db: db.conn.set_trace_callback(statements.append))
    await store.book_calls([(taken.turn_id, CALL)])
    await store.complete_turn(taken.turn_id, status="done", answer="a", cost_usd=0.001, messages=[], delivery=None)
    assert not [s for s in statements if s.startswith("SELECT") and "FROM turns" in s]
    rows = await store.query("SELECT turn_id, platform, chat_id, user_id, preset FROM model_calls")
    assert rows == [(taken.turn_id, "telegram", "1", "u", "p")]
    assert await assert_reconciled(store) == 7
