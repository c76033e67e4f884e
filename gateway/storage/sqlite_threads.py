"""The SQLite store's threads: one writer that commits everything queued as one transaction
(group commit), and one reader beside it, each owning its own connection.

Why threads at all: a statement may wait for another process's lock (the busy timeout) or for
the disk, and the event loop must not. Why one writer: SQLite has one write lock per file, so a
second writer would only wait for the first. Why batches: at a few hundred turns at once the
writes of many turns are queued together; running them in one transaction pays one BEGIN and
one COMMIT (the WAL frames of a page touched by several of them written once) instead of one
each, and the loop is woken once per batch (`call_soon_threadsafe`) instead of once per write —
a cross-thread wakeup costs more than most of these writes. The other way too: what the loop
submits during one of its turns is handed to the thread at the end of that turn as one queue
item (one wakeup of the thread, ~15-25 us of the loop's CPU here, instead of one per write), and
those jobs are always in one batch.

A job that raises is rolled back alone, gets its own exception, and its batch-mates commit. The
jobs of a batch first run one after another without a SAVEPOINT each (most batches fail nowhere);
when one raises, the transaction is rolled back and the batch runs again with a SAVEPOINT per job,
so that only the failing one is rolled back (jobs are functions of the database they are given,
so each sees again what it saw the first time). An error that ends the whole transaction (a
`RAISE(ROLLBACK)` trigger, a full disk) undid the jobs before it too: they run again in a fresh
transaction. A job's future is resolved only after its transaction committed (or failed), so a
caller that was told "done" can act on it: the write is durable (WAL, synchronous=NORMAL: a
process crash loses nothing committed).

Jobs must not end the transaction themselves (COMMIT, ROLLBACK, VACUUM, changing journal_mode):
a job that committed and then raised made its whole batch run again, and the writes before it
were stored twice. So while a job runs, an authorizer (`_TransactionGuard`) refuses BEGIN,
COMMIT, ROLLBACK and the batch's own savepoint: such a statement raises "not authorized" in the
job, which then fails alone like any other failing job.
A batch may also carry `Deferred` work its jobs leave for its end (the store's cost-rollup
upserts, summed over the batch: one upsert per rollup row instead of one per job and row),
written in the same transaction just before COMMIT — or before a job that is not the store's own
(`private`), which may read what the deferred work writes.
The reader's connection is `query_only`; WAL lets it read the last commit while the writer
writes, so a report or a history read never waits behind a batch of writes.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import sqlite_utils

T = TypeVar("T")

# A batch stops growing here, so the first job of a long queue is not kept waiting for the last.
MAX_BATCH = 512

# A job: its function, its future, and whether it is the store's own (`private`: it does not
# read what `Deferred` work writes, so that work need not be written before it).
Job = tuple[Callable[[sqlite_utils.Database], Any], asyncio.Future, bool]
# Per job of a batch: (future, error or None, value).
Outcome = tuple[asyncio.Future, BaseException | None, Any]
RunBatch = Callable[[sqlite_utils.Database, list[Job]], list[Outcome]]

_STOP = None  # queued by close(): the thread finishes what is before it, then ends


class Deferred(Protocol):
    """Work a batch's jobs leave for the end of its transaction."""

    def keep(self) -> None:
        """The job that just ran stands: what it left is kept."""

    def drop(self) -> None:
        """The job that just ran was rolled back: what it left is dropped."""

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write what is kept, in the open transaction."""

    def reset(self) -> None:
        """The transaction is gone: forget everything."""


class DbThread:
    """One thread, one connection (sqlite3 connections belong to the thread that made them), and
    a queue of jobs that `run_batch` runs together; their futures are resolved on the loop."""

    def __init__(self, name: str, connect: Callable[[], sqlite_utils.Database], run_batch: RunBatch,
                 after_batch: Callable[[], None] | None = None):
        self.name = name
        self._connect = connect
        self._run_batch = run_batch
        self._after_batch = after_batch  # called in the thread after each batch (the writer's: a checkpoint is due)
        self._queue: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self._pending: list[Job] = []  # submitted in this turn of the loop; handed over at its end
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.batches = 0  # batches run so far (tests, diagnostics)
        # CPU time this thread spent running batches (its own: not the time it waited for the
        # interpreter lock or the disk): what the store's work costs, apart from the event loop.
        self.cpu_s = 0.0

    async def start(self) -> None:
        """Start the thread and open its connection there; raises what opening raised."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        opened: asyncio.Future[None] = loop.create_future()
        self._stopped = loop.create_future()
        # A daemon: a store never closed must not keep the interpreter from exiting (its queued
        # jobs' callers were not told "done", so nothing they acted on is lost).
        self._thread = threading.Thread(target=self._main, args=(opened,), name=self.name, daemon=True)
        self._thread.start()
        await opened

    def submit(self, fn: Callable[[sqlite_utils.Database], T], *, private: bool = False) -> asyncio.Future[T]:
        """Queue `fn(db)`; the future holds its result once its batch is done. Handed to the
        thread at the end of this turn of the loop, with whatever else is submitted in it."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        pending = self._pending
        pending.append((fn, future, private))
        if len(pending) == 1:
            self._loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        """On the loop: give the thread what was submitted since the last hand-over."""
        jobs, self._pending = self._pending, []
        if jobs:
            self._queue.put(jobs)

    async def stop(self) -> None:
        """Run what is queued, close the connection and end the thread."""
        if self._thread is None or self._stopped is None:
            return
        self._hand_over()  # what was submitted before stop() runs first
        self._queue.put(_STOP)
        await self._stopped
        self._thread.join()

    def _main(self, opened: asyncio.Future[None]) -> None:
        try:
            db = self._connect()
        except BaseException as error:
            self._call(_settle, [(opened, error, None)])
            return
        self._call(_settle, [(opened, None, None)])
        try:
            waiting: list[Job] = []  # handed over, not yet run (beyond one batch)
            stop = False
            while True:
                if not waiting and not stop:
                    jobs = self._queue.get()
                    if jobs is _STOP:
                        stop = True
                    else:
                        waiting += jobs
                while not stop and len(waiting) < MAX_BATCH:
                    try:
                        jobs = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if jobs is _STOP:
                        stop = True
                    else:
                        waiting += jobs
                batch, waiting = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                if batch:
                    self.batches += 1
                    cpu = time.thread_time()
                    try:
                        outcomes = self._run_batch(db, batch)
                    except BaseException as error:  # a bug here must not leave callers waiting
                        outcomes = [(future, error, None) for _, future, _ in batch]
                    self.cpu_s += time.thread_time() - cpu
                    self._call(_settle, outcomes)
                    if self._after_batch is not None:
                        self._after_batch()
                if stop and not waiting:
                    break
        finally:
            db.close()
            if self._stopped is not None:
                self._call(_settle, [(self._stopped, None, None)])

    def _call(self, fn: Callable[[list[Outcome]], None], outcomes: list[Outcome]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, outcomes)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(outcomes: list[Outcome]) -> None:
    """On the loop: resolve a batch's futures (a caller that was cancelled is skipped)."""
    for future, error, value in outcomes:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def run_reads(db: sqlite_utils.Database, jobs: list[Job]) -> list[Outcome]:
    """Reads, one after another, each with its own result or error."""
    outcomes: list[Outcome] = []
    for fn, future, _ in jobs:
        try:
            outcomes.append((future, None, fn(db)))
        except BaseException as error:
            outcomes.append((future, error, None))
    return outcomes


class _TransactionGuard:
    """The writer connection's authorizer: while a job runs (`in_job`), no statement of it may
    begin, commit or roll back the batch's transaction, nor touch the batch's own savepoint (a
    job's own savepoints are its business). Consulted when a statement is compiled, not run."""

    def __init__(self) -> None:
        self.in_job = False

    def __call__(self, action: int, operation: str | None, name: str | None, *_: object) -> int:
        if self.in_job and (action == sqlite3.SQLITE_TRANSACTION
                            or (action == sqlite3.SQLITE_SAVEPOINT and name == _SAVEPOINT)):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def run(self, fn: Callable[[sqlite_utils.Database], Any], db: sqlite_utils.Database) -> Any:
        self.in_job = True
        try:
            return fn(db)
        finally:
            self.in_job = False


_SAVEPOINT = "moa_job"
# The writer's own transaction statements. sqlite3 keeps compiled statements by their text, and
# the authorizer is consulted only when a statement is compiled: a job that wrote "ROLLBACK"
# after the writer had run it would get the writer's compiled one, unchecked. The writer's carry
# a comment no job writes, so a job's text is always compiled (and refused) on its own.
_MINE = " -- moa writer"
WRITER_BEGIN, WRITER_COMMIT, _ROLLBACK = "BEGIN IMMEDIATE" + _MINE, "COMMIT" + _MINE, "ROLLBACK" + _MINE
_MARK, _UNDO, _RELEASE = (f"SAVEPOINT {_SAVEPOINT}{_MINE}", f"ROLLBACK TO {_SAVEPOINT}{_MINE}",
                          f"RELEASE {_SAVEPOINT}{_MINE}")


def _guard(db: sqlite_utils.Database) -> _TransactionGuard:
    guard = getattr(db, "_moa_transaction_guard", None)
    if guard is None:
        guard = _TransactionGuard()
        db.conn.set_authorizer(guard)
        db._moa_transaction_guard = guard  # type: ignore[attr-defined]
    return guard


def run_writes(db: sqlite_utils.Database, jobs: list[Job], deferred: Deferred | None = None) -> list[Outcome]:
    """Writes in one transaction: all at once, and only if one fails a SAVEPOINT per job (see
    the module docstring)."""
    results: list[tuple[BaseException | None, Any]] = [(None, None)] * len(jobs)
    pending = _run_together(db, jobs, deferred, results)
    if pending:
        _run_each_alone(db, jobs, pending, deferred, results)
    return [(future, *results[i]) for i, (_, future, _) in enumerate(jobs)]


def _run_together(db: sqlite_utils.Database, jobs: list[Job], deferred: Deferred | None,
                  results: list[tuple[BaseException | None, Any]]) -> list[int]:
    """The common case first: every job in the transaction without a SAVEPOINT of its own (a
    SAVEPOINT and RELEASE per job, and the statement journal that a savepoint keeps of every page
    its job touches, cost about a tenth of a stored turn). Returns the jobs still to run: none,
    or, when a job failed, all of them again — the transaction is rolled back and
    `_run_each_alone` runs them a SAVEPOINT each, so the failing job fails alone; it then sees the
    same database as here, since the same jobs ran before it."""
    conn, guard = db.conn, _guard(db)
    try:
        conn.execute(WRITER_BEGIN)
    except BaseException as error:  # e.g. another process held the lock past the busy timeout
        for i in range(len(jobs)):
            results[i] = (error, None)
        return []
    for i, (fn, _, private) in enumerate(jobs):
        try:
            if deferred is not None and not private:
                deferred.flush(conn)
            results[i] = (None, guard.run(fn, db))
        except BaseException:
            _rollback(conn)
            if deferred is not None:
                deferred.reset()
            return list(range(len(jobs)))
        if deferred is not None:
            deferred.keep()
        if not conn.in_transaction:
            # The transaction ended during the job without an error (the guard refuses COMMIT
            # and ROLLBACK; kept for what it cannot see): what ran so far stands, the rest runs afresh.
            if deferred is not None:
                deferred.reset()
            return list(range(i + 1, len(jobs)))
    _commit(conn, deferred, range(len(jobs)), results)
    if deferred is not None:
        deferred.reset()
    return []


def _run_each_alone(db: sqlite_utils.Database, jobs: list[Job], pending: list[int], deferred: Deferred | None,
                    results: list[tuple[BaseException | None, Any]]) -> None:
    """Jobs `pending` in one transaction, each inside its own SAVEPOINT: a job that raises is
    rolled back alone; an error that ends the whole transaction reruns the jobs before it."""
    conn, guard = db.conn, _guard(db)
    while pending:
        try:
            conn.execute(WRITER_BEGIN)
        except BaseException as error:
            for i in pending:
                results[i] = (error, None)
            break
        done: list[int] = []
        again: list[int] = []
        for position, i in enumerate(pending):
            fn, _, private = jobs[i]
            if deferred is not None and not private:
                try:
                    deferred.flush(conn)
                except BaseException as error:  # as a failed COMMIT: this transaction's jobs fail
                    for j in done:
                        results[j] = (error, None)
                    again, done = pending[position:], []
                    break
            conn.execute(_MARK)
            try:
                value = guard.run(fn, db)
            except BaseException as error:
                results[i] = (error, None)
                if deferred is not None:
                    deferred.drop()
                if conn.in_transaction:
                    conn.execute(_UNDO)
                    conn.execute(_RELEASE)
                    continue
                # The error ended the whole transaction: the jobs before it were undone too.
                again = done + pending[position + 1:]
                done = []
                break
            results[i] = (None, value)
            if deferred is not None:
                deferred.keep()
            if not conn.in_transaction:
                # The job ended the transaction itself: what ran so far stands (as above).
                again, done = pending[position + 1:], []
                break
            conn.execute(_RELEASE)
            done.append(i)
        if done:
            _commit(conn, deferred, done, results)
        else:
            _rollback(conn)
        if deferred is not None:
            deferred.reset()
        pending = again


def _commit(conn: sqlite3.Connection, deferred: Deferred | None, jobs: Iterable[int],
            results: list[tuple[BaseException | None, Any]]) -> None:
    """Write what `deferred` keeps, then COMMIT; if either fails, each of `jobs` fails with it."""
    try:
        if deferred is not None:
            deferred.flush(conn)
        conn.execute(WRITER_COMMIT)
    except BaseException as error:
        _rollback(conn)
        for i in jobs:
            results[i] = (error, None)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute(_ROLLBACK)


__all__ = ["MAX_BATCH", "DbThread", "Deferred", "run_reads", "run_writes"]
