"""Cost reports stay independent of history: on SQLite, every statement a report or the digest
runs reads `cost_rollups` and `model_calls` through an index range (never a scan of the table,
never a Bloom filter, which SQLite builds by reading the whole inner table), and a report scoped
to a chat or a user seeks that chat or user in the rollups instead of reading every chat's day.

Checked with the statistics SQLite has without ANALYZE (what the gateway runs with) and with those
ANALYZE gave `bench_costs.py`'s 1,000,000 rows (written into sqlite_stat1: a big history's plans).
"""

from __future__ import annotations

import random
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.config import BudgetSettings
from gateway.costs.budgets import check_budget
from gateway.costs.digest import build_digest
from gateway.costs.reports import cost_report, cost_table
from gateway.costs.rollups import totals
from gateway.storage import Store
from gateway.storage.contract import sqlite_dialect
from tests.fakes.clock import FakeClock
from tests.gateway.test_cost_rollups import T0, book_randomly

BERLIN = ZoneInfo("Europe/Berlin")
# sqlite_stat1 of bench_costs.py's database after its fill (ANALYZE): 1M calls, 200k turns.
BIG_HISTORY = [
    ("cost_rollups", "cost_rollups_chat", "1088719 272180 155532 64043 6891 10"),
    ("cost_rollups", "cost_rollups_key", "1088719 272180 155532 160 68 10 3 3 2 2 1 1"),
    ("cost_rollups", "cost_rollups_user", "1088719 272180 155532 64043 722 4"),
    ("model_calls", "idx_model_calls_chat_spend", "1000000 333334 20000 5 1"),
    ("model_calls", "idx_model_calls_created_at", "1000000 5"),
    ("model_calls", "idx_model_calls_turn_id", "1000000 5"),
    ("model_calls", "idx_model_calls_user_spend", "1000000 333334 2000 5 1"),
    ("turns", "idx_turns_platform_chat_id_started_at", "200000 66667 4000 1"),
    ("turns", "idx_turns_platform_user_id_started_at", "200000 66667 400 1"),
    ("turns", "idx_turns_session_id", "200000 4000"),
    ("turns", "idx_turns_started_at", "200000 1"),
]
HISTORY_TABLES = ("cost_rollups", "model_calls", "turns")


class Recorder:
    """Wraps a store's `query`: every statement run, with its parameters."""

    def __init__(self, store: Store) -> None:
        self.store, self.inner, self.statements = store, store.query, []
        store.query = self.query  # type: ignore[method-assign]

    async def query(self, sql: str, params: Any = (), **kw: Any) -> list[Any]:
        self.statements.append((sql, list(params)))
        return await self.inner(sql, params, **kw)

    async def plans(self) -> list[tuple[str, list[str]]]:
        out = []
        for sql, params in self.statements:
            rows = await self.inner("EXPLAIN QUERY PLAN " + sql, params)
            out.append((sql, [row[-1] for row in rows]))
        return out


def _aliases(sql: str) -> dict[str, str]:
    """Alias -> table, for the history tables named in a statement (`FROM model_calls m`)."""
    found = {t: t for t in HISTORY_TABLES}
    for table, alias in re.findall(r"\b(cost_rollups|model_calls|turns)\s+(?:AS\s+)?([a-z])\b", sql):
        found[alias] = table
    return found


def assert_no_history_scan(sql: str, plan: list[str]) -> None:
    aliases = _aliases(sql)
    for line in plan:
        assert "BLOOM FILTER" not in line, (line, sql[:300])
        scanned = re.match(r"SCAN (\w+)", line)
        assert not (scanned and scanned.group(1) in aliases), (line, sql[:300])


@pytest.fixture(params=["no statistics", "a big history's statistics"])
async def store(request: pytest.FixtureRequest, tmp_path: Path):
    clock = FakeClock(T0)
    s = await Store.open(tmp_path / "plans.db", clock)
    await book_randomly(s, clock, random.Random(5), turns=40, hours=91 * 24)
    if request.param != "no statistics":
        def analyze(db):  # type: ignore[no-untyped-def]
            db.execute("ANALYZE")
            db.execute("DELETE FROM sqlite_stat1")
            db.conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", BIG_HISTORY)
            db.execute("ANALYZE sqlite_schema")  # makes the planner read sqlite_stat1 again
        await s.run(analyze)
    yield s
    await s.close()


async def test_the_digest_over_all_history_reads_no_table_whole(store: Store) -> None:
    recorder = Recorder(store)
    end = T0 + timedelta(days=92)
    digest = await build_digest(store, start=T0 - timedelta(days=1), end=end, tz=BERLIN,
                                budgets=BudgetSettings(per_user_usd_day=0.001, per_chat_usd_month=0.001))
    assert digest.calls > 0 and len(digest.days) > 90
    plans = await recorder.plans()
    assert any("cost_rollups" in sql for sql, _ in plans)
    for sql, plan in plans:
        assert_no_history_scan(sql, plan)


async def test_reports_and_budgets_read_no_table_whole(store: Store) -> None:
    recorder = Recorder(store)
    now = T0 + timedelta(days=20, hours=5)
    for scope in ({}, {"platform": "slack", "chat_id": "c1"}, {"platform": "telegram", "user_id": "u2"}):
        await cost_report(store, period="month", now=now, tz=BERLIN, platform=scope.get("platform"),
                          chat_id=scope.get("chat_id"), user_id=scope.get("user_id"))
    await cost_table(store, T0, "user", until=now)
    await check_budget(store, BudgetSettings(per_user_usd_day=1.0, per_chat_usd_month=5.0), None, "slack", "c1",
                       "u2", now, BERLIN)
    for sql, plan in await recorder.plans():
        assert_no_history_scan(sql, plan)


async def test_a_chat_or_a_user_is_sought_in_the_rollups(store: Store) -> None:
    """A scoped report reads that chat's or user's rollups, not every chat's day filtered."""
    recorder = Recorder(store)
    now = T0 + timedelta(days=20, hours=5)
    for column, scope in (("chat_id", {"chat_id": "c1", "user_id": None}), ("user_id", {"chat_id": None, "user_id": "u2"})):
        recorder.statements.clear()
        await cost_report(store, period="month", now=now, tz=BERLIN, platform="slack", **scope)
        rollup_reads = [line for sql, plan in await recorder.plans() if "cost_rollups" in sql for line in plan
                        if re.match(r"SEARCH r\b", line)]
        assert rollup_reads
        for line in rollup_reads:
            assert f"{column}=?" in line, line



async def test_a_series_of_local_days_is_one_select_per_span(store: Store) -> None:
    """A series (the chart's days, the users' days) lists its one-bucket pieces, so its statement
    does not grow a SELECT per day: PostgreSQL planned 274 of them over 90 days in ~12 ms."""
    recorder = Recorder(store)
    start = T0 - timedelta(days=1)
    for group in (("provider", "model"), ("platform", "user_id")):
        counts = []
        for length in (3, 90):
            recorder.statements.clear()
            days = [((start + timedelta(days=n)).astimezone(BERLIN), (start + timedelta(days=n + 1)).astimezone(BERLIN))
                    for n in range(length)]
            await totals(store, days, group, dollars_only=True, having_dollars=0.001)
            [(sql, _)] = recorder.statements
            counts.append(sql.count("SELECT "))
        assert counts[0] == counts[1] <= 5, counts
    for sql, plan in await recorder.plans():
        assert_no_history_scan(sql, plan)
        rollup_reads = [line for line in plan if re.match(r"SEARCH r\b", line)]
        assert rollup_reads and all("bucket=?" in line for line in rollup_reads), plan


async def test_each_rollup_range_sums_its_own_rows(store: Store) -> None:
    """On SQLite a statement's outer GROUP BY regroups a row per group and part, not every rollup
    row: SQLite hands each row of a UNION ALL up to it one at a time (the all-rows digest's users:
    ~50 ms of CPU before, ~35 ms after, on bench_costs' 1M rows)."""
    recorder = Recorder(store)
    await build_digest(store, start=T0 - timedelta(days=1), end=T0 + timedelta(days=40), tz=BERLIN,
                       budgets=BudgetSettings(per_user_usd_day=0.001, per_chat_usd_month=0.001))
    parts = [part for sql, _ in recorder.statements if "cost_rollups" in sql
             for part in sqlite_dialect(sql).split(" UNION ALL ")
             if "FROM cost_rollups r" in part]  # a range of buckets (listed buckets: a row per group already)
    assert len(parts) > 10
    for part in parts:
        assert "SUM(" in part.split(" FROM ")[0], part[:200]
