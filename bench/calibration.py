"""How fast this machine is right now, as two fixed workloads timed beside a bench's figures.

Runs of the same code on this project's machines have differed by 2x from one machine (or hour)
to the next, which made a figure measured in one session useless against another's. Every bench
therefore also prints, from the same minutes, how long two workloads that never change take:

- `calibration_python_ms`: pure Python of the kind the event loop runs per turn (frozen
  dataclasses made, dicts built and read, text formatted, JSON encoded);
- `calibration_sqlite_ms`: 5,000 rows with two indexes inserted into a fresh WAL file in one
  transaction and committed, through the stdlib's sqlite3 (the writer thread's kind of work).

Each is the median of `runs` timings. A figure divided by the calibration measured beside it can
be compared across machines; the raw figures are what the goals are about."""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class _Row:
    turn_id: int
    model: str
    tokens: int
    cost: float


def _python_work() -> int:
    total = 0
    for i in range(20_000):
        row = _Row(i, f"model-{i % 7}", i * 3, i / 1e6)
        values = {"turn_id": row.turn_id, "model": row.model, "tokens": row.tokens, "cost": row.cost}
        total += len(json.dumps(values)) + values["tokens"] % 5
    return total


def _sqlite_work(directory: Path, n: int) -> None:
    path = directory / f"calibration-{n}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, chat TEXT, model TEXT, created TEXT, cost REAL)")
        conn.execute("CREATE INDEX calls_chat ON calls (chat, created)")
        conn.execute("CREATE INDEX calls_created ON calls (created)")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO calls (chat, model, created, cost) VALUES (?, ?, ?, ?)",
                         ((f"c{i % 50}", f"m{i % 5}", f"2026-12-08T00:{i // 600:02d}:{i % 60:02d}.{i:06d}", i / 1e6)
                          for i in range(5_000)))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _median_ms(work, runs: int) -> float:  # type: ignore[no-untyped-def]
    timings = []
    for n in range(runs):
        started = time.perf_counter()
        work(n)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def machine_speed(runs: int = 5) -> dict[str, float | str]:
    """The two calibration timings (medians, ms) and the SQLite version they ran on."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _python_work()  # warm: the first run also imports and allocates
        return {
            "calibration_python_ms": _median_ms(lambda n: _python_work(), runs),
            "calibration_sqlite_ms": _median_ms(lambda n: _sqlite_work(directory, n), runs),
            "sqlite_version": sqlite3.sqlite_version,
        }


__all__ = ["machine_speed"]
