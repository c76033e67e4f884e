"""The SQLite store's WAL checkpoints: in a thread of their own beside the writer where the
SQLite library is safe for it (see the last paragraph), else in the writer's own connection.

A commit appends the pages it changed to the write-ahead log; a checkpoint copies them into the
database file, so that the log can start over. SQLite runs one in the committing connection
whenever the log reaches `wal_autocheckpoint` pages: on our writer's thread, between two batches,
where every write queued meanwhile waits for it: copying pages (a read and a write syscall
each) and syncing both files, none of it in parallel with the next batch. With 50 turns at once
(bench/bench_gateway.py's stored turns, in one process side by side) that was 183 -> 157 us of
the writer's CPU per stored turn, and 3,810 -> 4,790 turns/s (10-15% in runs of the two
versions one after another).

So a `Checkpointer` thread with its own connection runs `PRAGMA wal_checkpoint(PASSIVE)` soon
after the writer commits (`nudge`, at most once per `min_interval_s`; nothing when nothing is
written). PASSIVE takes no lock a writer or reader waits for: it copies what was committed
before it began while the writer goes on, and SQLite releases the interpreter lock while it
runs. The log only starts over at a write that finds every page in it copied, which a writer
committing every few milliseconds seldom finds; so the writer keeps SQLite's own checkpoint at
a higher mark (`WRITER_AUTOCHECKPOINT_PAGES`): there, with nearly everything copied already, it
copies the last few pages and the next write starts the log over. The log stays under about
that many pages (16 MB) however long the writes go on.

Durability is unchanged: a commit is durable in the log (synchronous=NORMAL); a checkpoint only
moves pages that are already durable, and a crash during one is recovered from the log.

Only on a SQLite library without the WAL-reset bug (https://sqlite.org/wal.html#walresetbug,
every release from 3.7.0 to 3.51.2): there, a checkpoint that starts on one connection soon
after another finished, while a commit on another connection starts the log over, can leave a
wrong count in the WAL index, and a later checkpoint then skips committed pages: the file is
corrupt and data is lost. A checkpoint thread beside a busy writer is that pattern exactly
(SQLite calls the race rare, and 52 stress runs of bench_gateway's stored turns here did not hit
it; nothing says it cannot). The bug is fixed in 3.51.3 and in the 3.44.6 and 3.50.7 backports
(`wal_reset_fixed`); with any other library the writer checkpoints in its own connection, as
before this thread existed (one connection never races itself), at the same mark: at 4,000 pages
rather than SQLite's 1,000 a page that many batches change is copied once per 4,000 pages of log
instead of four times, and the files are synced a quarter as often (side by side, six pairs:
1-18% more stored turns per second, about 9% at the median; the log stays under about 16 MB
either way). Debian 12's SQLite (3.40.1), the one Python uses on this project's CI, is such a
library. The version is that of the library the store's connections use (`library_version`:
sqlite-utils takes pysqlite3 when installed), and this thread connects through sqlite-utils too,
so that one process never has two SQLite libraries on one file, whose locks cannot see each
other (sqlite.org/howtocorrupt.html): with pysqlite3 installed, the store's connections on its
SQLite and this thread's on the stdlib's made those stress runs end in "database disk image is
malformed" in 4 of 8, one file with wrong index entries.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

import sqlite_utils

log = logging.getLogger(__name__)

# The first release of each line with the WAL-reset bug fixed: 3.51.3 and later, and two backports.
_FIXED_IN = ((3, 44, 6), (3, 50, 7), (3, 51, 3))


def wal_reset_fixed(version: tuple[int, ...]) -> bool:
    """Whether SQLite `version` has the WAL-reset bug fixed (see the module docstring)."""
    version = tuple(version[:3])
    newest = _FIXED_IN[-1]
    if version >= newest:
        return True
    # A backport fixes its own line only: 3.50.7 and later 3.50 releases, not 3.51.0-3.51.2.
    return any(fixed <= version < (fixed[0], fixed[1] + 1) for fixed in _FIXED_IN[:-1])


def library_version() -> tuple[int, int, int]:
    """The version of the SQLite library the store's connections use (sqlite-utils' choice)."""
    db = sqlite_utils.Database(memory=True)
    try:
        text = db.execute("SELECT sqlite_version()").fetchone()[0]
    finally:
        db.close()
    major, minor, patch, *_ = (*map(int, text.split(".")), 0, 0)
    return major, minor, patch


def checkpoint_thread_safe() -> bool:
    """Whether WAL checkpoints may run in a thread beside the writer: only on a SQLite library
    without the WAL-reset bug. Decided, and logged when not, once per process."""
    global _checkpoint_thread_safe
    if _checkpoint_thread_safe is None:
        version = library_version()
        _checkpoint_thread_safe = wal_reset_fixed(version)
        if not _checkpoint_thread_safe:
            log.info("SQLite %s: WAL checkpoints run in the writer thread (a checkpoint thread beside it needs "
                     "SQLite 3.51.3 or later, without the WAL-reset bug: https://sqlite.org/wal.html#walresetbug)",
                     ".".join(map(str, version)))
    return _checkpoint_thread_safe


_checkpoint_thread_safe: bool | None = None  # decided once per process

# The writer connection's own checkpoint mark, in pages of the log (SQLite's default is 1000):
# with a checkpoint thread beside it, reached only when that thread could not keep the log from
# growing; without one, where every checkpoint runs (see above).
WRITER_AUTOCHECKPOINT_PAGES = 4000


class Checkpointer:
    """A thread that checkpoints one database file's WAL after the writer's commits.

    `nudge()` is cheap and may be called from any thread; `start()` opens the connection (in
    the thread), `stop()` ends it. Counters are for tests and diagnostics."""

    def __init__(self, path: str, *, min_interval_s: float = 0.02,
                 connect: Callable[[str], sqlite3.Connection] | None = None) -> None:
        self._path = path
        self._min_interval_s = min_interval_s
        self._connect = connect or _connect
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # checkpoints run
        self.pages_copied = 0  # log pages copied into the database file, over all of them
        self.failures = 0  # checkpoints that raised (logged once each; the writer's mark still holds)
        self._in_log = self._copied = 0  # the log's pages and how many of them are copied, at the last look

    def start(self) -> None:
        # A daemon, like the store's other threads: it holds nothing a caller waits for.
        self._thread = threading.Thread(target=self._main, name="moa-db-checkpoint", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def nudge(self) -> None:
        """Something was committed: checkpoint soon."""
        self._wanted.set()

    def stop(self) -> None:
        """End the thread (after the checkpoint it may be running). Blocks for at most that long."""
        if self._thread is None:
            return
        self._stopping = True
        self._wanted.set()
        self._thread.join()
        self._thread = None

    def _main(self) -> None:
        try:
            conn = self._connect(self._path)
        except Exception:  # the writer's own checkpoints go on: slower, nothing lost
            log.warning("could not open %s for WAL checkpoints; the writer checkpoints alone", self._path,
                        exc_info=True)
            return
        try:
            last = 0.0
            while True:
                self._wanted.wait()
                # Commits close together share one checkpoint.
                pause = last + self._min_interval_s - time.monotonic()
                if pause > 0 and not self._stopping:
                    time.sleep(pause)
                self._wanted.clear()
                if self._stopping:  # read after the clear: a stop() during the pause is not lost
                    return
                last = time.monotonic()
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            _busy, in_log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except Exception:  # sqlite3's errors, or pysqlite3's (not sqlite3.Error's subclasses)
            self.failures += 1
            log.warning("a WAL checkpoint of %s failed; the next commit tries again", self._path, exc_info=True)
            return
        # The counts are of the log as it is: it may have started over since the last look.
        before = self._copied if in_log >= self._in_log else 0
        self._in_log, self._copied = max(0, in_log), max(0, copied)
        self.checkpoints += 1
        self.pages_copied += max(0, self._copied - before)


def _connect(path: str) -> sqlite3.Connection:
    # Through sqlite-utils: the same SQLite library as the writer's connection (see above).
    # Autocommit (no transaction of its own); NORMAL, as the writer: a checkpoint syncs the log
    # before it copies and the file after, whatever this setting says.
    conn = sqlite_utils.Database(path, execute_plugins=False).conn
    conn.isolation_level = None
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


__all__ = ["WRITER_AUTOCHECKPOINT_PAGES", "Checkpointer", "checkpoint_thread_safe", "library_version",
           "wal_reset_fixed"]
