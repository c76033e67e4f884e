"""WAL checkpoints on SQLite run in a thread of their own beside the writer, only where the
SQLite library has the WAL-reset bug fixed (elsewhere the writer checkpoints alone); in that
thread they happen while writes go on, the log stays bounded, a failing or unopenable checkpoint
connection loses nothing, and stopping never hangs."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import gateway.storage.sqlite as sqlite_store
from gateway.storage import Store
from gateway.storage.sqlite_checkpoints import (
    WRITER_AUTOCHECKPOINT_PAGES,
    Checkpointer,
    library_version,
    wal_reset_fixed,
)
from moa_core.values import CallRecord, Cost, Message, Usage
from tests.fakes.clock import FakeClock

_events = itertools.count(1)
CALL = CallRecord("reference", 1, 0, "p", "m", "ok", 300, Usage(100, 0, 0, 50), Cost(0.001, "price_table"))


async def turn(store: Store, chat: str) -> None:
    n = next(_events)
    taken = await store.take_question(platform="telegram", event_id=f"e{n}", chat_id=chat, thread_id=None,
                                      user_id=f"u{n % 7}", user_name="Ann", message_id=f"m{n}",
                                      prompt="question " * 20, preset_of=lambda stored: "default")
    assert taken is not None
    await store.record_calls(taken.turn_id, [CALL, CALL])
    await store.complete_turn(taken.turn_id, status="done", answer="answer " * 40, cost_usd=0.002,
                              messages=[Message("assistant", "answer " * 40)], delivery=None)


async def writes(store: Store, turns: int, at_once: int = 25) -> None:
    for start in range(0, turns, at_once):
        await asyncio.gather(*(turn(store, f"c{(start + i) % 40}") for i in range(at_once)))


def wal_pages(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return (wal.stat().st_size - 32) // (4096 + 24) if wal.exists() else 0


async def eventually(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_checkpoints_run_in_their_own_thread_while_the_writer_writes(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db", FakeClock(), checkpoint_thread=True)
    try:
        # The writer checkpoints only at its own, higher mark.
        assert await store.run(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) \
            == WRITER_AUTOCHECKPOINT_PAGES
        checkpointer = store.checkpointer
        assert checkpointer is not None and checkpointer.running
        await writes(store, 200)
        await eventually(lambda: checkpointer.pages_copied > 0)
        assert checkpointer.checkpoints >= 1 and checkpointer.failures == 0
        # Nothing written, nothing to do: no checkpoint runs while the store is idle.
        await asyncio.sleep(0.1)
        idle = checkpointer.checkpoints
        await asyncio.sleep(0.2)
        assert checkpointer.checkpoints == idle
        count = (await store.query("SELECT COUNT(*) FROM turns WHERE status = 'done'"))[0][0]
    finally:
        await store.close()
    assert not checkpointer.running
    # Everything committed is in the file once the store is closed (the log is gone).
    assert not Path(f"{tmp_path / 'gw.db'}-wal").exists()
    with sqlite3.connect(tmp_path / "gw.db") as db:
        assert db.execute("SELECT COUNT(*) FROM turns WHERE status = 'done'").fetchone()[0] == count == 200
        assert db.execute("SELECT COUNT(*) FROM model_calls").fetchone()[0] == 400


@pytest.mark.parametrize("thread", [True, False], ids=["checkpoint thread", "writer alone"])
async def test_the_log_stays_bounded_while_writes_never_pause(tmp_path: Path, monkeypatch, thread: bool) -> None:
    # A low mark, so that a short test writes many times its size into the log.
    monkeypatch.setattr(sqlite_store, "WRITER_AUTOCHECKPOINT_PAGES", 150)
    store = await Store.open(tmp_path / "gw.db", FakeClock(), checkpoint_thread=thread)
    try:
        largest = 0
        for _ in range(24):
            await writes(store, 50)
            largest = max(largest, wal_pages(tmp_path / "gw.db"))
        if thread:
            # More pages copied than the log may hold: it started over, again and again.
            assert store.checkpointer is not None and store.checkpointer.pages_copied > 150 * 2
        else:
            assert store.checkpointer is None
        # The mark plus what a batch or two add before the writer's own checkpoint starts it over.
        assert largest < 150 * 4, largest
    finally:
        await store.close()


@pytest.mark.parametrize(("version", "fixed"), [
    ((3, 40, 1), False),  # Debian 12, and so CI
    ((3, 44, 5), False), ((3, 44, 6), True), ((3, 44, 9), True), ((3, 45, 0), False),
    ((3, 50, 6), False), ((3, 50, 7), True), ((3, 51, 0), False), ((3, 51, 1), False), ((3, 51, 2), False),
    ((3, 51, 3), True), ((3, 52, 0), True), ((3, 54, 1), True), ((4, 0, 0), True),
])
def test_the_wal_reset_bug_is_fixed_in_3_51_3_and_the_two_backports(version, fixed) -> None:
    assert wal_reset_fixed(version) is fixed


def test_the_library_version_is_the_one_the_store_connects_with() -> None:
    import sqlite_utils

    db = sqlite_utils.Database(memory=True)
    assert ".".join(map(str, library_version())) == db.execute("SELECT sqlite_version()").fetchone()[0]


async def test_without_the_fix_only_the_writer_checkpoints(tmp_path: Path) -> None:
    # By default a checkpoint thread runs only on a library with the fix: elsewhere a checkpoint
    # on a second connection racing the writer's commits can corrupt the file (the WAL-reset bug).
    store = await Store.open(tmp_path / "gw.db", FakeClock())
    fixed = wal_reset_fixed(library_version())
    try:
        mark = await store.run(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        await writes(store, 100)
        threads = {thread.name for thread in threading.enumerate()}
        if fixed:
            assert store.checkpointer is not None and "moa-db-checkpoint" in threads
        else:
            assert store.checkpointer is None and "moa-db-checkpoint" not in threads
        # The writer's own mark either way (without the thread, every checkpoint runs there).
        assert mark == WRITER_AUTOCHECKPOINT_PAGES
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "gw.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT COUNT(*) FROM turns WHERE status = 'done'").fetchone()[0] == 100


def test_stop_right_after_a_nudge_never_hangs(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "gw.db").execute("PRAGMA journal_mode = WAL").fetchone()
    for _ in range(200):  # a stop() may land anywhere in the thread's loop
        checkpointer = Checkpointer(str(tmp_path / "gw.db"), min_interval_s=0.0005)
        checkpointer.start()
        checkpointer.nudge()
        stopper = threading.Thread(target=checkpointer.stop)
        stopper.start()
        stopper.join(timeout=5)
        assert not stopper.is_alive()


class _FailingOnce(sqlite3.Connection):
    failed = False

    def execute(self, sql, *args):  # type: ignore[no-untyped-def, override]
        if sql.startswith("PRAGMA wal_checkpoint") and not _FailingOnce.failed:
            _FailingOnce.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def test_a_failed_checkpoint_is_logged_and_the_next_one_runs(tmp_path: Path, caplog) -> None:
    path = tmp_path / "gw.db"
    store = await Store.open(path, FakeClock())
    checkpointer = Checkpointer(str(path), connect=lambda p: sqlite3.connect(p, isolation_level=None,
                                                                            factory=_FailingOnce))
    checkpointer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.storage.sqlite_checkpoints"):
            await writes(store, 25)
            checkpointer.nudge()
            await eventually(lambda: checkpointer.failures == 1)
            await writes(store, 25)
            checkpointer.nudge()
            await eventually(lambda: checkpointer.checkpoints >= 1)
        assert "WAL checkpoint" in caplog.text and "failed" in caplog.text
        assert (await store.query("SELECT COUNT(*) FROM turns"))[0][0] == 50
    finally:
        checkpointer.stop()
        await store.close()


async def test_a_checkpointer_that_cannot_open_leaves_the_writer_to_checkpoint(tmp_path: Path, caplog,
                                                                              monkeypatch) -> None:
    def refuse(path: str) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    original = Checkpointer.__init__

    def refusing(self, path, **kwargs):  # type: ignore[no-untyped-def]
        original(self, path, connect=refuse, **kwargs)

    monkeypatch.setattr(sqlite_store.Checkpointer, "__init__", refusing)
    with caplog.at_level(logging.WARNING, logger="gateway.storage.sqlite_checkpoints"):
        store = await Store.open(tmp_path / "gw.db", FakeClock(), checkpoint_thread=True)
        try:
            await writes(store, 50)
            assert (await store.query("SELECT COUNT(*) FROM turns WHERE status = 'done'"))[0][0] == 50
        finally:
            await store.close()  # does not wait for a thread that ended
    assert "could not open" in caplog.text and "the writer checkpoints alone" in caplog.text


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_commits_close_together_share_a_checkpoint(tmp_path: Path, interval: float) -> None:
    path = tmp_path / "gw.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE t (x)")
        checkpointer = Checkpointer(str(path), min_interval_s=interval)
        checkpointer.start()
        try:
            for i in range(20):
                db.execute("INSERT INTO t VALUES (?)", (i,))
                checkpointer.nudge()
                time.sleep(0.005)
            time.sleep(interval + 0.1)
        finally:
            checkpointer.stop()
    # 20 commits 5 ms apart: one checkpoint each with no pause between them; a few with 50 ms.
    if interval:
        assert 1 <= checkpointer.checkpoints <= 5
    else:
        assert checkpointer.checkpoints >= 2
