"""Two processes on one SQLite file: both open it (the second waits for the first's lock and
finds the migrations applied), and a lock held past the busy timeout is named as such."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import threading

import pytest

from gateway.storage.sqlite import DatabaseBusy, _connect
from gateway.storage.sqlite_connect import retry_while_busy
from tests.cli.kit import ROOT

OPEN_ONCE = """
import asyncio, sys
from gateway.storage import Store
from moa_core.clock import SystemClock

async def main():
    store = await Store.open(sys.argv[1], SystemClock())
    await store.close()

asyncio.run(main())
"""


async def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path):
    # Before: two of four processes failed in m001 with "database is locked" (or "no such index").
    for attempt in range(3):
        path = tmp_path / f"shared-{attempt}.db"
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", OPEN_ONCE, str(path), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(4)
        ]
        results = [await asyncio.wait_for(p.communicate(), 60) for p in processes]
        for process, (_, err) in zip(processes, results, strict=True):
            assert process.returncode == 0, err.decode()
        with sqlite3.connect(path) as db:
            names = [row[0] for row in db.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
        assert len(names) == len(set(names)) and names[0] == "m001_conversations"


def _hold_write_lock(path, seconds: float, held: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    held.set()
    threading.Event().wait(seconds)
    db.execute("ROLLBACK")
    db.close()


def test_a_lock_released_within_the_busy_timeout_is_waited_for(tmp_path):
    path = tmp_path / "moa.db"
    _connect(str(path)).close()
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.5, held))
    holder.start()
    held.wait(5)
    try:
        _connect(str(path), busy_timeout_ms=5_000).close()
    finally:
        holder.join()


def test_a_lock_held_past_the_busy_timeout_says_another_gateway_holds_it(tmp_path):
    path = tmp_path / "moa.db"
    _connect(str(path)).close()
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 2.0, held))
    holder.start()
    held.wait(5)
    try:
        with pytest.raises(DatabaseBusy) as error:
            _connect(str(path), busy_timeout_ms=200)
    finally:
        holder.join()
    assert str(path) in str(error.value) and "another moa-gateway" in str(error.value)
    # The wait is the one measured (a busy answered early would show a shorter one), beside the limit.
    waited = float(re.search(r"waited ([0-9.]+) s \(busy timeout 0.2 s\)", str(error.value)).group(1))
    assert 0.2 <= waited < 2.0


def test_a_busy_answered_at_once_to_avoid_a_deadlock_is_tried_again(tmp_path):
    # SQLite answers "database is locked" at once, without waiting, to a connection that read and
    # now wants to write while another waits to commit (processes opening a new file together:
    # each reads, then changes the journal mode). Before, the open failed ("waited 0.0 s").
    path = tmp_path / "moa.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    held, committed = threading.Event(), threading.Event()

    def commit_behind_our_read() -> None:
        other = sqlite3.connect(path, isolation_level=None, timeout=5)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")
        held.set()
        other.execute("COMMIT")  # waits until our read has ended
        other.close()
        committed.set()

    tries: list[float] = []

    def attempt(remaining: float) -> int:
        tries.append(remaining)
        ours = sqlite3.connect(path, isolation_level=None, timeout=remaining)
        try:
            ours.execute("BEGIN")
            ours.execute("SELECT COUNT(*) FROM t").fetchone()
            if len(tries) == 1:
                threading.Thread(target=commit_behind_our_read).start()
                held.wait(5)
                threading.Event().wait(0.2)  # the other is waiting to commit now
            ours.execute("INSERT INTO t VALUES (2)")
            ours.execute("COMMIT")
            return len(tries)
        finally:
            ours.close()

    assert retry_while_busy(attempt, 5.0) == 2
    assert committed.wait(5)
    with sqlite3.connect(path) as db:
        assert sorted(x for (x,) in db.execute("SELECT x FROM t")) == [1, 2]
    assert 0 < tries[1] < tries[0] <= 5.0  # each try gets what is left of the one timeout


def test_a_busy_past_the_timeout_is_not_tried_again() -> None:
    tries = []

    def attempt(remaining: float) -> None:
        tries.append(remaining)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        retry_while_busy(attempt, 0.3, pause_s=0.05)
    assert 2 <= len(tries) <= 12 and tries[-1] < 0.1

    def broken(remaining: float) -> None:
        tries.append(remaining)
        raise sqlite3.OperationalError("no such table: x")

    tries.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_while_busy(broken, 5.0)
    assert len(tries) == 1  # not busy: raised at once
