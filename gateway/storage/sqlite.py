"""The gateway's SQLite store: sessions, history, turns, model calls, settings and the ledger.

Two threads own the file's two connections (sqlite3 connections are bound to the thread that
made them; see `gateway.storage.sqlite_threads`): every write is a function queued to the writer
thread, which runs whatever is queued as one transaction (one COMMIT: group commit; a write
that raises is rolled back alone) and resolves the callers once it has committed; reads go to a
reader thread on a read-only connection and never wait behind writes (WAL). Writes are
serialised, and a function sent to the writer runs alone, so a read-then-write inside it needs no
lock; what must be all-or-nothing (a finished turn with its messages and ledger row) is one write function.

Times come from the injected clock (or are passed in, aware) and are stored as UTC ISO-8601
text of fixed width, so comparing the text compares the times.

Parts of `Store` live beside it: its small tables (`sqlite_small_tables`), its reads
(`sqlite_reads`) and what it remembers of each chat's history (`sqlite_history`).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from adapters.contract import ChatRef
from gateway.storage.contract import (
    DEFAULT_LEASE_S,
    DELIVERY_STATUSES,
    TURN_STATUSES,
    Delivery,
    TakenQuestion,
    TurnRow,
    from_iso,
    images_from_json,
    ledger_values,
    new_replica_id,
    require,
    sqlite_dialect,
    storable,
    thread_key,
    to_iso,
    turn_values,
)
from gateway.storage.contract import call_values as _call_row
from gateway.storage.contract import message_values as _message_row
from gateway.storage.contract import turn_row as _turn_row
from gateway.storage.sqlite_checkpoints import (
    WRITER_AUTOCHECKPOINT_PAGES,
    Checkpointer,
    checkpoint_thread_safe,
)
from gateway.storage.sqlite_connect import (
    BUSY_TIMEOUT_MS,
    DatabaseBusy,
    RollupSums,
    connect_reader,
    connect_writer,
    dict_rows,
    find_open_session,
    insert_calls,
    insert_row,
    insert_rows,
    open_session,
    turn_columns,
)
from gateway.storage.sqlite_history import HistoryCache, KnownHistory, read_history
from gateway.storage.sqlite_reads import Reads
from gateway.storage.sqlite_small_tables import SmallTables, channel_preset_of, mark_seen_in
from gateway.storage.sqlite_threads import DbThread, run_reads, run_writes
from moa_core.clock import Clock
from moa_core.values import CallRecord, ImagePart, Message

T = TypeVar("T")

_connect = connect_writer  # the name tests and older callers use
_TURN_KEYS_KEPT = 4096  # more turns than a gateway runs at once


def _writer_connection(path: str, busy_timeout_ms: int) -> sqlite_utils.Database:
    db = connect_writer(path, busy_timeout_ms)
    # All its checkpoints, or only those a checkpoint thread beside it could not keep up with
    # (see that module).
    db.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
    return db


class Store(SmallTables, Reads):
    """Async access to the gateway's SQLite file through a writer and a reader thread, with a
    third checkpointing its WAL where the SQLite library allows (the embedded backend of
    `gateway.storage.contract.Storage`)."""

    backend = "sqlite"
    writes_in_order = True  # one writer thread, FIFO, batches committed one after another

    # One process per file: the ledger retry loop's pace of old, and leases other stores wrote
    # are always of a process that has ended (see the contract).
    takeover_every_s = 60.0

    def __init__(self, writer: DbThread, reader: DbThread, sums: RollupSums, clock: Clock, path: Path,
                 lease_s: float = DEFAULT_LEASE_S, checkpointer: Checkpointer | None = None):
        # Use `Store.open`. `sums` belongs to the writer's batches (touched in its thread only).
        self._writer = writer
        self._reader = reader
        self.checkpointer = checkpointer
        self._sums = sums
        self._clock = clock
        self.path = path
        self._closed = False
        self.replica = new_replica_id()
        self.lease_s = lease_s
        # The key columns of turns this store started (`turn_columns`' dict), known once their
        # start committed and never changed after: a booking or completion then reads no turn
        # row in the writer. Dropped when the turn ends; bounded in case a turn never does.
        self._turn_keys: dict[int, dict[str, Any]] = {}
        # Per chat, the history its last question read: the next one reads only what came since.
        self._histories = HistoryCache()

    @classmethod
    async def open(cls, path: str | Path, clock: Clock, *, lease_s: float = DEFAULT_LEASE_S,
                   busy_timeout_ms: int = BUSY_TIMEOUT_MS, checkpoint_thread: bool | None = None) -> Store:
        """Open or create the database file and apply pending migrations. `checkpoint_thread`:
        WAL checkpoints in a thread beside the writer (None: where the SQLite library is safe for it)."""
        path = Path(path)
        sums = RollupSums()
        # WAL checkpoints beside the writer, not in it, where SQLite allows (gateway.storage.sqlite_checkpoints).
        beside = checkpoint_thread_safe() if checkpoint_thread is None else checkpoint_thread
        checkpointer = Checkpointer(str(path)) if beside else None
        writer = DbThread("moa-db", lambda: _writer_connection(str(path), busy_timeout_ms),
                          functools.partial(run_writes, deferred=sums),
                          after_batch=checkpointer.nudge if checkpointer is not None else None)
        await writer.start()
        # Opened once the writer has migrated the file and put it in WAL mode.
        reader = DbThread("moa-db-read", lambda: connect_reader(str(path), busy_timeout_ms), run_reads)
        try:
            await reader.start()
        except BaseException:
            await writer.stop()
            raise
        if checkpointer is not None:
            checkpointer.start()
        return cls(writer, reader, sums, clock, path, lease_s, checkpointer)

    async def close(self) -> None:
        """Stop taking calls; what was already queued is written (and committed) first."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.stop()
        finally:
            try:
                await self._reader.stop()
            finally:
                if self.checkpointer is not None:  # waits for at most the checkpoint it is running
                    await asyncio.to_thread(self.checkpointer.stop)

    @property
    def writer_cpu_s(self) -> float:
        """CPU seconds the writer thread has spent running batches so far (benchmarks,
        diagnostics): the store's own work per write, apart from the event loop's."""
        return self._writer.cpu_s

    async def run(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` in the writer thread, inside the transaction of its batch (its own
        SAVEPOINT: an exception rolls back what it did), and return its result once committed.
        `fn` must not commit or roll back itself."""
        if self._closed:
            raise RuntimeError("store is closed")
        return await self._writer.submit(fn)

    async def execute_many(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Portable statements, each run for every one of its parameter rows, in ONE writer job."""

        def work(db: sqlite_utils.Database) -> None:
            for sql, rows in steps:
                db.conn.executemany(sqlite_dialect(sql), rows)

        await self.run(work)

    async def _write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """`run` for the store's own write functions (they do not read the cost rollups, so the
        batch's summed rollup upserts need not be written before them)."""
        if self._closed:
            raise RuntimeError("store is closed")
        return await self._writer.submit(fn, private=True)

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` in the reader thread (a read-only connection) and return its result: it
        sees every write whose call has returned, and does not wait behind queued ones."""
        if self._closed:
            raise RuntimeError("store is closed")
        return await self._reader.submit(fn)

    def _now(self) -> str:
        return to_iso(self._clock.now())

    def _lease(self) -> tuple[str, str]:
        return self.replica, to_iso(self._clock.now() + timedelta(seconds=self.lease_s))

    # Sessions and history -------------------------------------------------------------------

    async def active_session(self, platform: str, chat_id: str, thread_id: str | None) -> int:
        """The open session of this chat and thread, opened now if there is none."""
        at, thread = self._now(), thread_key(thread_id)
        # Mostly there already: looked up by the reader, so only a new chat waits for the writer.
        found = await self.read(lambda db: find_open_session(db, platform, chat_id, thread))
        if found is not None:
            return found

        def work(db: sqlite_utils.Database) -> int:
            found = find_open_session(db, platform, chat_id, thread)
            return found if found is not None else open_session(db, platform, chat_id, thread, at)

        return await self._write(work)

    async def new_session(self, platform: str, chat_id: str, thread_id: str | None) -> int:
        """Close the open session of this chat and thread (if any) and open another."""
        at, thread = self._now(), thread_key(thread_id)
        self._histories.forget((platform, chat_id, thread))

        def work(db: sqlite_utils.Database) -> int:
            db.conn.execute(
                "UPDATE sessions SET closed_at = ? "
                "WHERE platform = ? AND chat_id = ? AND thread_id = ? AND closed_at IS NULL",
                (at, platform, chat_id, thread),
            )
            return open_session(db, platform, chat_id, thread, at)

        return await self._write(work)

    # Turns and model calls ------------------------------------------------------------------

    async def start_turn(
        self,
        *,
        session_id: int,
        platform: str,
        chat_id: str,
        thread_id: str | None,
        user_id: str,
        user_name: str,
        event_id: str,
        message_id: str,
        preset: str,
        prompt: str,
        queued: bool = False,
        images: Sequence[ImagePart] = (),
    ) -> int:
        """Record a turn; returns its id. A running turn stores its user message in the same
        transaction. A queued one (waiting behind another turn of its chat) is stored at once,
        so a crash cannot lose it, but its message only joins the session in `begin_turn`:
        the history keeps the order in which turns really ran."""
        turn_id = await self._write(self._start_turn_work(
            session_id=session_id, platform=platform, chat_id=chat_id, thread_id=thread_id, user_id=user_id,
            user_name=user_name, event_id=event_id, message_id=message_id, preset=preset, prompt=prompt,
            queued=queued, images=images))
        self._keep_turn_keys(turn_id, session_id, platform, chat_id, user_id, preset)
        return turn_id

    def _keep_turn_keys(self, turn_id: int, session_id: int, platform: str, chat_id: str, user_id: str,
                        preset: str) -> None:
        keys = self._turn_keys
        if len(keys) >= _TURN_KEYS_KEPT:
            del keys[next(iter(keys))]  # the oldest: it reads its row again if it books more
        keys[turn_id] = {"id": turn_id, "session_id": session_id, "platform": platform, "chat_id": chat_id,
                         "user_id": user_id, "preset": preset}

    def _start_turn_work(self, *, session_id: int, prompt: str, queued: bool = False,
                         images: Sequence[ImagePart] = (), **fields: Any) -> Callable[[sqlite_utils.Database], int]:
        at = self._now()
        turn = turn_values(session_id=session_id, prompt=prompt, queued=queued, at=at, images=images,
                           lease=self._lease(), **fields)

        def work(db: sqlite_utils.Database) -> int:
            turn_id = insert_row(db.conn, "turns", turn)
            if not queued:
                user = Message("user", prompt, images=tuple(images))
                insert_row(db.conn, "messages", _message_row(session_id, turn_id, user, at))
            return turn_id

        return work

    async def start_turn_with_history(self, *, limit: int = 500, **turn: Any) -> tuple[int, list[Message] | None]:
        """`start_turn` and, for a running turn, its session's history read in the same writer
        job (one trip to the store instead of two before the engine starts). One process per
        file: a turn stored running has no turn ahead of it (the gateway's lanes queue the
        session's later messages behind it), so nothing writes to its session before it runs."""
        work = self._start_turn_work(**turn)
        session_id = turn["session_id"]
        chat = (turn["platform"], turn["chat_id"], thread_key(turn["thread_id"]))
        known = self._histories.get(chat)

        def with_history(db: sqlite_utils.Database) -> tuple[int, Any]:
            turn_id = work(db)
            return turn_id, None if turn.get("queued") else read_history(db, session_id, limit, known)

        turn_id, read = await self._write(with_history)
        self._keep_turn_keys(turn_id, session_id, turn["platform"], turn["chat_id"], turn["user_id"], turn["preset"])
        if read is None:
            return turn_id, None
        history, remembered = read
        self._histories.keep(chat, remembered)  # committed: what it read stands
        return turn_id, history

    async def begin_turn(self, turn_id: int) -> None:
        """A queued turn starts: marked running, its user message stored, in one transaction."""
        at = self._now()

        def work(db: sqlite_utils.Database) -> None:
            row = db.conn.execute(
                "SELECT session_id, prompt, status, images FROM turns WHERE id = ?", (turn_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no turn {turn_id}")
            session_id, prompt, status, images = row
            if status != "queued":
                raise ValueError(f"turn {turn_id} is {status}, not queued")
            db.conn.execute(
                "UPDATE turns SET status = 'running', started_at = ?, lease_owner = ?, lease_until = ? "
                "WHERE id = ?", (at, *self._lease(), turn_id))
            user = Message("user", prompt, images=images_from_json(images))
            insert_row(db.conn, "messages", _message_row(session_id, turn_id, user, at))

        await self._write(work)

    async def record_calls(self, turn_id: int, calls: Sequence[CallRecord]) -> None:
        """Store model calls of a turn, with the turn's chat, user and preset copied onto each."""
        if not calls:
            return
        at = self._now()
        known = self._turn_keys.get(turn_id)

        def work(db: sqlite_utils.Database) -> None:
            turn = known or turn_columns(db, turn_id)
            insert_calls(db, [_call_row(turn, call, at) for call in calls], self._sums)

        await self._write(work)

    async def book_calls(self, calls: Sequence[tuple[int, CallRecord]]) -> None:
        """Store model calls of one or more turns, given as (turn id, call), in ONE transaction:
        the gateway books each call as it ends and writes those that ended together at once.
        Each row gets its turn's chat, user and preset copied onto it, as in `record_calls`."""
        if not calls:
            return
        at = self._now()
        keys = self._turn_keys
        known = {turn_id: keys[turn_id] for turn_id, _ in calls if turn_id in keys}

        def work(db: sqlite_utils.Database) -> None:
            turns = dict(known)
            rows = []
            for turn_id, call in calls:
                if turn_id not in turns:
                    turns[turn_id] = turn_columns(db, turn_id)
                rows.append(_call_row(turns[turn_id], call, at))
            insert_calls(db, rows, self._sums)

        await self._write(work)

    async def complete_turn(
        self,
        turn_id: int,
        *,
        status: str,
        answer: str | None,
        cost_usd: float | None,
        messages: Sequence[Message],
        delivery: tuple[ChatRef, str, dict] | None,
        error: str | None = None,
        sending: bool = False,
    ) -> int | None:
        """Finish a turn in ONE transaction: its status and answer, the assistant and tool
        messages it produced, and (when `delivery` is given) a ledger row, whose id is returned:
        pending, or 'sending' with `sending=True` (the caller sends it next). Either all of it is
        stored or none."""
        require(status, TURN_STATUSES, "turn status")
        at = self._now()
        ledger = ledger_values(turn_id, *delivery, at, lease=self._lease()) if delivery is not None else None
        if ledger is not None and sending:
            ledger["status"] = "sending"
        # Its calls are booked (a late one reads the turn's row); a turn completed again fails
        # as before only if it does not exist.
        known = self._turn_keys.pop(turn_id, None)

        def work(db: sqlite_utils.Database) -> int | None:
            turn = known or turn_columns(db, turn_id)
            db.conn.execute(
                "UPDATE turns SET status = ?, answer = ?, cost_usd = ?, error = ?, finished_at = ? WHERE id = ?",
                (status, storable(answer), cost_usd, storable(error), at, turn_id),
            )
            insert_rows(db.conn, "messages", [_message_row(turn["session_id"], turn_id, m, at) for m in messages])
            return None if ledger is None else insert_row(db.conn, "deliveries", ledger)

        return await self._write(work)

    async def mark_turn(self, turn_id: int, status: str, error: str | None = None) -> None:
        """Set a turn's status (e.g. `interrupted` after a crash); stamps `finished_at` unless running."""
        require(status, TURN_STATUSES, "turn status")
        at = None if status == "running" else self._now()
        if status != "running":
            self._turn_keys.pop(turn_id, None)

        def work(db: sqlite_utils.Database) -> None:
            db.conn.execute(
                "UPDATE turns SET status = ?, error = COALESCE(?, error), finished_at = ? WHERE id = ?",
                (status, storable(error), at, turn_id),
            )

        await self._write(work)

    async def claim_cut_turns(self) -> list[TurnRow]:
        """Unfinished turns another store wrote (on SQLite: a process that has ended), now ours."""
        owner, until = self._lease()

        def work(db: sqlite_utils.Database) -> list[TurnRow]:
            rows = dict_rows(db.conn.execute(
                "SELECT * FROM turns WHERE status IN ('queued', 'running') "
                "AND (lease_owner IS NULL OR lease_owner != ?) ORDER BY id", (owner,)))
            db.conn.executemany("UPDATE turns SET lease_owner = ?, lease_until = ? WHERE id = ?",
                                [(owner, until, r["id"]) for r in rows])
            return [_turn_row(r) for r in rows]

        return await self._write(work)

    async def renew_leases(self) -> int:
        """Extend this store's leases (kept alike on both backends; no other process reads them)."""
        owner, until = self._lease()

        def work(db: sqlite_utils.Database) -> int:
            turns = db.conn.execute("UPDATE turns SET lease_until = ? WHERE lease_owner = ? "
                                    "AND status IN ('queued', 'running')", (until, owner)).rowcount
            sent = db.conn.execute("UPDATE deliveries SET lease_until = ? WHERE lease_owner = ? "
                                   "AND status IN ('pending', 'sending')", (until, owner)).rowcount
            return turns + sent

        return await self._write(work)

    # The delivery ledger --------------------------------------------------------------------

    async def mark_delivery(self, delivery_id: int, status: str, message_ids: Sequence[str] = ()) -> None:
        """Move a ledger row on; non-empty `message_ids` replace the ids stored so far."""
        require(status, DELIVERY_STATUSES, "delivery status")
        at = self._now()
        ids = json.dumps(list(message_ids)) if message_ids else None

        def work(db: sqlite_utils.Database) -> None:
            cursor = db.conn.execute(
                "UPDATE deliveries SET status = ?, message_ids = COALESCE(?, message_ids), updated_at = ? "
                "WHERE id = ?",
                (status, ids, at, delivery_id),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"no delivery {delivery_id}")

        await self._write(work)

    # Inbound de-duplication, channel settings, refusal notices ------------------------------

    async def take_question(self, *, platform: str, event_id: str, chat_id: str, thread_id: str | None,
                            preset_of: Callable[[str | None], str], queued: bool = False, limit: int = 500,
                            **turn: Any) -> TakenQuestion | None:
        """The duplicate check, the session (opened if none), the preset, the turn and (for a
        turn that runs at once) its history, in one writer job: one trip to the store and one
        transaction between a question's arrival and its engine run. One process per file: a
        turn stored running has nothing of its session written before it runs (the gateway's
        lanes queue later messages behind it), so the history read here is the one it runs with."""
        at, thread = self._now(), thread_key(thread_id)
        chat = (platform, chat_id, thread)
        known = self._histories.get(chat)

        # With what it read of the history, for the chat's next question (a job run again, when
        # its batch is, returns afresh: only the committed run's value reaches the caller).
        def work(db: sqlite_utils.Database) -> tuple[TakenQuestion | None, KnownHistory | None]:
            if not mark_seen_in(db, platform, event_id, at):
                return None, None
            session_id = find_open_session(db, platform, chat_id, thread)
            if session_id is None:
                session_id = open_session(db, platform, chat_id, thread, at)
            preset = preset_of(channel_preset_of(db, platform, chat_id))
            turn_id = self._start_turn_work(session_id=session_id, platform=platform, chat_id=chat_id,
                                            thread_id=thread_id, event_id=event_id, preset=preset,
                                            queued=queued, **turn)(db)
            if queued:
                return TakenQuestion(turn_id, session_id, preset, queued, None), None
            history, read = read_history(db, session_id, limit, known)
            return TakenQuestion(turn_id, session_id, preset, queued, history), read

        taken, read = await self._write(work)
        if taken is not None:
            self._keep_turn_keys(taken.turn_id, taken.session_id, platform, chat_id, turn["user_id"], taken.preset)
        if read is not None:
            self._histories.keep(chat, read)  # committed: what it read stands
        return taken

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DELIVERY_STATUSES",
    "DatabaseBusy",
    "TURN_STATUSES",
    "Delivery",
    "Store",
    "TurnRow",
    "from_iso",
    "to_iso",
]
