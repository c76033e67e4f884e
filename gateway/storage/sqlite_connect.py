"""Opening the SQLite file (the writer's connection, which migrates it, and the reader's) and the
SQL the store's write functions share (sessions, inserts, model calls with their rollups).

Inserts are plain `INSERT` statements built once per table and column list: sqlite-utils'
`Table.insert` runs a savepoint, quotes and jsonifies every value and builds its SQL on every
call, which was about half the store's CPU per turn — CPU taken from the event loop's thread
(one interpreter).
"""

from __future__ import annotations

import functools
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
from sqlite_utils.utils import OperationalError as _ConnectedOperationalError

from gateway.storage import rollups
from gateway.storage.migrations import migrations

BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")

# sqlite-utils connects with pysqlite3 when it is installed: the store's connections then raise
# pysqlite3's errors, which are not sqlite3's (a locked file at start-up was a traceback).
OPERATIONAL_ERRORS: tuple[type[Exception], ...] = tuple({sqlite3.OperationalError, _ConnectedOperationalError})


class DatabaseBusy(RuntimeError):
    """Another process held the database's write lock for longer than the busy timeout."""


def connect_writer(path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite_utils.Database:
    """Open (creating) the file, set the connection up and bring the schema up to date.

    Two processes may open one file at once (a second gateway, `ask` beside `run`): each waits
    up to the busy timeout for the other's write lock, and the migrations run under one
    IMMEDIATE transaction so that only one process applies them and the other then finds them
    applied (else both apply m001 and one fails with "database is locked" or "no such index")."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    timeout_s = busy_timeout_ms / 1000
    began = time.monotonic()
    try:
        return retry_while_busy(lambda remaining: _open_writer(path, remaining, busy_timeout_ms), timeout_s)
    except OPERATIONAL_ERRORS as error:
        if not _is_busy(error):
            raise
        raise DatabaseBusy(
            f"{path}: the database is locked by another process (is another moa-gateway running on "
            f"this file?); waited {time.monotonic() - began:.1f} s (busy timeout {timeout_s:g} s)"
        ) from None


def retry_while_busy(attempt: Callable[[float], T], timeout_s: float, pause_s: float = 0.05) -> T:
    """`attempt(seconds left)`, tried again while SQLite answers busy, until `timeout_s` has passed.

    SQLite waits out another connection's lock (the busy timeout) except where waiting could
    deadlock: a connection that read and now wants to write while another, about to commit,
    waits for its read to end is answered busy at once — as when processes open a new file
    together and each changes its journal mode to WAL (a read, then a write). Seen in CI:
    "waited 0.0 s". Such an attempt (its connection closed by it) is simply made again."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            return attempt(max(remaining, 0.0))
        except OPERATIONAL_ERRORS as error:
            if not _is_busy(error) or time.monotonic() + pause_s >= deadline:
                raise
        time.sleep(pause_s * (0.5 + random.random()))  # the other process gets ahead; not in step


def _is_busy(error: Exception) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def _open_writer(path: str, timeout_s: float, busy_timeout_ms: int) -> sqlite_utils.Database:
    db = sqlite_utils.Database(path, execute_plugins=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {max(1, int(timeout_s * 1000))}")
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
        except BaseException:
            db.conn.rollback()
            raise
        db.execute("COMMIT")
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")  # the store's own waits: the whole timeout
    except BaseException:
        db.close()
        raise
    return db


def connect_reader(path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite_utils.Database:
    """A second connection to a file the writer has opened (WAL, migrated), that cannot write."""
    db = sqlite_utils.Database(path, execute_plugins=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.execute("PRAGMA query_only = ON")
    except BaseException:
        db.close()
        raise
    return db


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    # Table and column names come from this package's code, never from input.
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def insert_row(conn: sqlite3.Connection, table: str, row: Mapping[str, Any]) -> int:
    """Insert one row (values already text, numbers or None); returns its id."""
    cursor = conn.execute(_insert_sql(table, tuple(row)), tuple(row.values()))
    if cursor.lastrowid is None:
        raise RuntimeError(f"insert into {table} returned no row id")
    return int(cursor.lastrowid)


def insert_rows(conn: sqlite3.Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows that all have the first row's columns, in that order."""
    if rows:
        conn.executemany(_insert_sql(table, tuple(rows[0])), [tuple(row.values()) for row in rows])


def dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def open_session(db: sqlite_utils.Database, platform: str, chat_id: str, thread: str, at: str) -> int:
    return insert_row(db.conn, "sessions", {"platform": platform, "chat_id": chat_id, "thread_id": thread,
                                            "started_at": at, "closed_at": None})


def find_open_session(db: sqlite_utils.Database, platform: str, chat_id: str, thread: str) -> int | None:
    row = db.conn.execute(
        "SELECT id FROM sessions WHERE platform = ? AND chat_id = ? AND thread_id = ? AND closed_at IS NULL",
        (platform, chat_id, thread),
    ).fetchone()
    return row[0] if row else None


def insert_calls(db: sqlite_utils.Database, rows: list[dict[str, Any]], sums: RollupSums | None = None) -> None:
    """Model-call rows and their cost rollups, in the caller's transaction (one or none): the
    rollup upserts written now, or left to `sums` for the end of the writer's batch."""
    if sums is not None:
        sums.note(db.conn, len(rows))
        insert_rows(db.conn, "model_calls", rows)
        return
    turn_ids = sorted({row["turn_id"] for row in rows})
    prior = db.conn.execute(rollups.prior_models_sql(len(turn_ids)), turn_ids).fetchall()
    insert_rows(db.conn, "model_calls", rows)
    db.conn.executemany(rollups.UPSERT, rollups.rollup_rows(rows, prior))


class RollupSums:
    """The cost rollups of a writer batch's call rows, summed from the rows themselves at the end
    of the batch's transaction (`gateway.storage.sqlite_threads.Deferred`) by one statement
    (`rollups.UPSERT_ROWS_AFTER`): every call row with an id above the highest stored before the
    batch's first booking is the batch's, since a row gets the highest id so far plus one. A job
    rolled back takes its rows with it, so nothing is kept per job; a write that is not the
    store's own sees the rollups written before it (flush) and a later booking notes its own
    start again. Touched by the writer thread only."""

    def __init__(self) -> None:
        self._after: int | None = None  # the highest call row id before this batch's bookings
        self._rows = 0  # rows noted since (some may have been rolled back: a bound, for the choice below)

    def note(self, conn: sqlite3.Connection, rows: int) -> None:
        """`rows` call rows are about to be booked in the open transaction."""
        if self._after is None:
            self._after = conn.execute("SELECT COALESCE(MAX(id), 0) FROM model_calls").fetchone()[0]
        self._rows += rows

    def keep(self) -> None:
        pass  # the kept job's rows are in the table

    def drop(self) -> None:
        pass  # the rolled-back job's rows are gone from the table

    def flush(self, conn: sqlite3.Connection) -> None:
        if self._after is not None:
            # A few rows (one turn's booking at a quiet time) are upserted one by one: cheaper
            # than grouping them; the sums are the same either way.
            few = self._rows <= rollups.EACH_ROW_UP_TO
            conn.execute(rollups.UPSERT_EACH_ROW_AFTER if few else rollups.UPSERT_ROWS_AFTER, (self._after,))
            self.reset()

    def reset(self) -> None:
        self._after = None
        self._rows = 0


def turn_columns(db: sqlite_utils.Database, turn_id: int) -> dict[str, Any]:
    cursor = db.conn.execute(
        "SELECT id, session_id, platform, chat_id, user_id, preset FROM turns WHERE id = ?", (turn_id,)
    )
    row = cursor.fetchone()
    if row is None:
        raise KeyError(f"no turn {turn_id}")
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


__all__ = ["BUSY_TIMEOUT_MS", "DatabaseBusy", "connect_reader", "connect_writer", "dict_rows", "find_open_session",
           "insert_calls", "insert_row", "insert_rows", "open_session", "RollupSums", "turn_columns"]
