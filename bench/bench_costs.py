"""Benchmark: cost reports and the digest over 1,000,000 model-call rows.

Fills a fresh SQLite file through the real Store (in its DB thread, one executemany per table
and batch), or with `--database` an empty PostgreSQL database (COPY), then the cost rollups by
the same backfill as migration m009,
with 200,000 turns of 5 calls each (4 references + 1 aggregator) spread over 90 days, 50 chats
on three platforms, 500 users, 3 presets, 8 models, 3% unpriced calls, 5% failed or timed-out
references. Then times, median of 5 runs each:

- the weekly digest (cron "0 9 * * 1", Europe/Berlin) that is due at "now";
- `/moa cost month`: this chat's report and the caller's report (two `cost_report` calls);
- `/moa cost month all` (every chat), the budget check run before every turn;
- worst case: a digest whose period covers all 90 days (every row);
- the digest's chart (the weekly one, and the 90-day one);
- the floor of the ratio goal: the all-rows digest's two series of local days alone (the chart's
  spend per model and day, the users' days for budget alerts), read as the digest reads them:
  from the summaries of its closed local days (below), the last day or two from the rollups.

A digest keeps summaries of closed intervals (`gateway.costs.summaries`: its local days, a long
period's UTC weeks; written on read, exact: a late row makes them again), so its FIRST run on a
fresh database writes them and the later ones read them: each digest's first run is printed
beside its median (`digest_week_first_ms`, `digest_all_rows_first_ms`). The weekly digest runs
first, so the all-rows digest's first run finds that week's local days summarised already (what
a scheduled weekly digest leaves behind).

Each figure is the median of the runs' wall time and, beside it (`..._cpu_ms`), of the process's
CPU time (`time.process_time`, every thread: the store's DB thread does the SQL), which a busy
machine disturbs less. Goals (issue #14): the all-rows digest under 1 s and within 3x the weekly
one, `/moa cost` under 20 ms, the chart under 150 ms. Prints peak RSS.

On PostgreSQL the process's CPU time leaves out the server's (judge by wall time there), and
JIT (on by default) compiles the series statements of a long digest (a SELECT per piece, 270
over 90 days): seconds of compiling for tens of milliseconds of work. To measure without it,
give the URL `?options=-c%20jit%3Doff` (a gateway can be configured the same way).

No ANALYZE after the fill: the gateway never runs it, so these are the plans it gets (the
plans with a big history's statistics are checked in tests/gateway/test_cost_plans.py).

    python bench/bench_costs.py [--rows 1000000] [--db PATH | --database postgresql://...] [--json]
(--json: the figures as one JSON object, on the last line)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Figures  # noqa: E402
from gateway.costs.budgets import check_budget  # noqa: E402
from gateway.costs.digest import NEAR_BUDGET, build_digest, day_intervals, digest_chart_png  # noqa: E402
from gateway.costs.reports import cost_report  # noqa: E402
from gateway.costs.rollups import totals  # noqa: E402
from gateway.costs.schedule import cron_trigger, due_period, previous_fire  # noqa: E402
from gateway.costs.summaries import Sealing  # noqa: E402
from gateway.heap import settle_heap  # noqa: E402
from gateway.storage import Store, open_store, to_iso  # noqa: E402
from gateway.storage.rollups import BACKFILL  # noqa: E402

NOW = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")
DAYS = 90
CHATS = [(platform, f"{platform[0]}{n}") for n, platform in
         enumerate(["telegram"] * 20 + ["discord"] * 15 + ["slack"] * 15)]
USERS_PER_CHAT = 10
PRESETS = ["default", "deep", "fast"]
REFERENCE_MODELS = [("openrouter", "openai/gpt-5.1"), ("openrouter", "google/gemini-2.5-pro"),
                    ("together", "deepseek-v3"), ("groq", "llama-3.3-70b"), ("mistral", "mistral-large"),
                    ("openrouter", "x-ai/grok-4")]
AGGREGATORS = [("openrouter", "anthropic/claude-sonnet-4.5"), ("anthropic", "claude-opus-4.1")]


class FixedClock:
    def now(self) -> datetime:
        return NOW

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Budgets:
    per_user_usd_day: float | None = 0.5
    per_chat_usd_month: float | None = 100.0


TURN_COLUMNS = ("id, session_id, platform, chat_id, thread_id, user_id, user_name, event_id, message_id, preset, "
                "prompt, status, started_at, finished_at")
CALL_COLUMNS = ("turn_id, role, step, idx, provider, model, status, latency_ms, input, cache_read, cache_write, "
                "output, reasoning, usage_source, cost_usd, cost_source, created_at, platform, chat_id, user_id, preset")


def sessions() -> list[tuple[object, ...]]:
    return [(n + 1, p, c, to_iso(NOW - timedelta(days=DAYS))) for n, (p, c) in enumerate(CHATS)]


def batches(rows: int, seed: int = 7, batch: int = 20_000) -> Iterator[tuple[list[tuple[object, ...]], list[tuple[object, ...]]]]:
    """The turns and `rows` model calls to store, in batches (turn rows, call rows), so that the
    benchmark's own memory stays small."""
    rng = random.Random(seed)
    turns = rows // 5
    first = NOW - timedelta(days=DAYS)
    step = (NOW - first).total_seconds() / turns
    for low in range(1, turns + 1, batch):
        turn_rows, call_rows = [], []
        for t in range(low, min(low + batch, turns + 1)):
            chat = rng.randrange(len(CHATS))
            platform, chat_id = CHATS[chat]
            user_id = f"u{chat * USERS_PER_CHAT + rng.randrange(USERS_PER_CHAT)}"
            preset = PRESETS[rng.randrange(3)]
            at = first + timedelta(seconds=t * step)
            started = to_iso(at)
            finished = to_iso(at + timedelta(seconds=20))
            turn_rows.append((t, chat + 1, platform, chat_id, "", user_id, f"name-{user_id}", str(t), str(t),
                              preset, "q", "failed" if rng.random() < 0.01 else "done", started, finished))
            refs = rng.sample(REFERENCE_MODELS, 4)
            for idx, (provider, model) in enumerate([*refs, AGGREGATORS[rng.randrange(2)]]):
                role = "reference" if idx < 4 else "aggregator"
                roll = rng.random()
                status = "failed" if role == "reference" and roll < 0.03 else (
                    "timeout" if role == "reference" and roll < 0.05 else "ok")
                cost = None if rng.random() < 0.03 else rng.uniform(0.0001, 0.02)
                call_rows.append((t, role, 0, idx if role == "reference" else 0, provider, model, status,
                                  900, rng.randrange(2000), rng.randrange(500), 0, rng.randrange(800), 0,
                                  "reported", cost, "price_table" if cost is not None else "unknown",
                                  finished, platform, chat_id, user_id, preset))
        yield turn_rows, call_rows


def fill(db, rows: int) -> None:  # type: ignore[no-untyped-def]
    """SQLite: the rows by executemany in the DB thread, then the rollups as migration m009
    builds them from rows already stored."""
    conn = db.conn
    marks = ", ".join("?" * len(CALL_COLUMNS.split(", ")))
    with db.atomic():
        conn.executemany("INSERT INTO sessions (id, platform, chat_id, thread_id, started_at) VALUES (?, ?, ?, '', ?)",
                         sessions())
        for turn_rows, call_rows in batches(rows):
            conn.executemany(f"INSERT INTO turns ({TURN_COLUMNS}) VALUES ({', '.join('?' * 14)})", turn_rows)
            conn.executemany(f"INSERT INTO model_calls ({CALL_COLUMNS}) VALUES ({marks})", call_rows)
        for statement in BACKFILL:
            db.execute(statement)


def fill_postgres(url: str, rows: int) -> None:
    """PostgreSQL: the rows by COPY, the rollups by m009's backfill, then VACUUM ANALYZE (what
    autovacuum does to a database this size soon after; index-only scans need the visibility map)."""
    import psycopg

    with psycopg.connect(url) as conn:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY sessions (id, platform, chat_id, started_at) FROM STDIN") as copy:
                for row in sessions():
                    copy.write_row(row)
            for turn_rows, call_rows in batches(rows):
                with cur.copy(f"COPY turns ({TURN_COLUMNS}) FROM STDIN") as copy:
                    for row in turn_rows:
                        copy.write_row(row)
                with cur.copy(f"COPY model_calls ({CALL_COLUMNS}) FROM STDIN") as copy:
                    for row in call_rows:
                        copy.write_row(row)
            for statement in BACKFILL:
                cur.execute(statement)
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


FIRST: dict[str, tuple[float, float]] = {}  # fn name -> the first run's wall and CPU seconds


async def median_of(runs: int, fn: Callable[[], Awaitable[object]]) -> tuple[float, float, object]:
    """Median wall and CPU seconds of `runs` calls, and the last result (the first run's
    figures in FIRST)."""
    walls, cpus, result = [], [], None
    for _ in range(runs):
        began, cpu = time.perf_counter(), time.process_time()
        result = await fn()
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu)
    FIRST[getattr(fn, "__name__", "")] = walls[0], cpus[0]
    return statistics.median(walls), statistics.median(cpus), result


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", help="SQLite file to create (default: a temporary one)")
    parser.add_argument("--database", help="an empty PostgreSQL database to fill instead (postgresql://...)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    args = parser.parse_args()

    settle_heap()  # as `moa-gateway run` does after start-up: the collector's settings of the bot
    workdir = tempfile.TemporaryDirectory()
    print(f"RSS before filling {rss_mb():.0f} MiB")
    began = time.perf_counter()
    if args.database:
        store = await open_store(args.database, FixedClock())
        if (await store.query("SELECT COUNT(*) FROM model_calls"))[0][0]:
            raise SystemExit("the database has model calls already; give an empty one")
        await asyncio.to_thread(fill_postgres, args.database, args.rows)
        where = "PostgreSQL"
    else:
        path = Path(args.db) if args.db else Path(workdir.name) / "bench.db"
        if path.exists():
            raise SystemExit(f"{path} exists; give a new path")
        store = await Store.open(path, FixedClock())
        await store.run(lambda db: fill(db, args.rows))
        where = f"SQLite file {path.stat().st_size / 2**20:.0f} MiB"
    fill_s = time.perf_counter() - began
    count = (await store.query("SELECT COUNT(*) FROM model_calls"))[0][0]
    rss_after_fill = rss_mb()
    print(f"filled {count:,} model_calls + {count // 5:,} turns in {fill_s:.1f} s "
          f"({count / fill_s:,.0f} rows/s); {where}")
    measured_backend = "postgresql" if args.database else "sqlite"

    trigger = cron_trigger("0 9 * * 1", TZ)
    period = due_period(trigger, None, NOW)
    assert period is not None
    start, end = period
    budgets = Budgets()

    async def weekly_digest():  # type: ignore[no-untyped-def]
        return await build_digest(store, start=start, end=end, tz=TZ, budgets=budgets,
                                  previous_start=previous_fire(trigger, start))

    async def whole_range_digest():  # type: ignore[no-untyped-def]
        return await build_digest(store, start=NOW - timedelta(days=DAYS + 1), end=NOW, tz=TZ, budgets=budgets)

    platform, chat_id = CHATS[3]
    user_id = f"u{3 * USERS_PER_CHAT + 1}"

    async def moa_cost():  # type: ignore[no-untyped-def]
        chat = await cost_report(store, period="month", now=NOW, tz=TZ, platform=platform, chat_id=chat_id,
                                 user_id=None)
        caller = await cost_report(store, period="month", now=NOW, tz=TZ, platform=platform, chat_id=None,
                                   user_id=user_id)
        return chat, caller

    async def moa_cost_all():  # type: ignore[no-untyped-def]
        return await cost_report(store, period="month", now=NOW, tz=TZ, platform=None, chat_id=None,
                                 user_id=None)

    async def budget():  # type: ignore[no-untyped-def]
        return await check_budget(store, budgets, None, platform, chat_id, user_id, NOW, TZ)

    all_days = day_intervals(NOW - timedelta(days=DAYS + 1), NOW, TZ)  # whole_range_digest's local days

    async def all_days_series():  # type: ignore[no-untyped-def]
        sealed = Sealing(NOW - timedelta(days=1))  # as whole_range_digest reads them
        await totals(store, all_days, ("provider", "model"), dollars_only=True, sealed=sealed)
        return await totals(store, all_days, ("platform", "user_id"), dollars_only=True,
                            having_dollars=NEAR_BUDGET * budgets.per_user_usd_day, sealed=sealed)  # type: ignore[operator]

    in_period = (await store.query("SELECT COUNT(*) FROM model_calls WHERE created_at >= ? AND created_at < ?",
                                   [to_iso(start), to_iso(end)]))[0][0]
    measured = Figures("bench_costs")
    measured.calibrate()
    measured["backend"] = measured_backend
    measured["rows"] = count
    figures = [
        (f"weekly digest ({in_period:,} rows in period)", weekly_digest),
        ("/moa cost month (chat + caller)", moa_cost),
        ("/moa cost month all", moa_cost_all),
        ("budget check before a turn", budget),
        (f"digest over all {count:,} rows (worst case)", whole_range_digest),
        ("  its two series of local days alone", all_days_series),
    ]
    keys = ["digest_week_ms", "cost_month_ms", "cost_month_all_ms", "budget_check_ms", "digest_all_rows_ms",
            "series_all_days_ms"]
    results = {}
    print(f"{'':48s}    median wall       CPU")
    for (label, fn), key in zip(figures, keys, strict=True):
        seconds, cpu, result = await median_of(args.runs, fn)
        results[label] = result
        measured[key], measured[key.replace("_ms", "_cpu_ms")] = seconds * 1000, cpu * 1000
        first = ""
        if key in ("digest_week_ms", "digest_all_rows_ms"):  # the run that wrote its summaries
            wall1, cpu1 = FIRST[fn.__name__]
            measured[key.replace("_ms", "_first_ms")], measured[key.replace("_ms", "_first_cpu_ms")] = (
                wall1 * 1000, cpu1 * 1000)
            first = f"  (first run {wall1 * 1000:.1f} ms, {cpu1 * 1000:.1f} ms CPU)"
        print(f"{label:48s} {seconds * 1000:10.1f} ms {cpu * 1000:7.1f} ms{first}")

    digest = results[figures[0][0]]
    whole = results[figures[4][0]]
    began = time.perf_counter()
    png = await asyncio.to_thread(digest_chart_png, digest)  # type: ignore[arg-type]
    measured["chart_first_ms"] = (time.perf_counter() - began) * 1000  # includes importing matplotlib
    print(f"{'digest chart PNG (first, with matplotlib import)':48s} {measured['chart_first_ms']:10.1f} ms")
    for label, key, which in (("weekly digest chart PNG", "chart_ms", digest),
                              ("90-day digest chart PNG", "chart_all_days_ms", whole)):
        chart_s, chart_cpu, png = await median_of(
            args.runs, lambda which=which: asyncio.to_thread(digest_chart_png, which))  # type: ignore[misc]
        measured[key], measured[key.replace("_ms", "_cpu_ms")] = chart_s * 1000, chart_cpu * 1000
        print(f"{label:48s} {chart_s * 1000:10.1f} ms {chart_cpu * 1000:7.1f} ms ({len(png):,} bytes)")  # type: ignore[arg-type]
    for what in ("", "_cpu"):
        measured[f"digest_all_over_week{what}"] = (
            measured[f"digest_all_rows{what}_ms"] / measured[f"digest_week{what}_ms"])  # type: ignore[operator]
        measured[f"series_all_days_over_week{what}"] = (
            measured[f"series_all_days{what}_ms"] / measured[f"digest_week{what}_ms"])  # type: ignore[operator]
    goals = [("digest over all rows < 1 s", "digest_all_rows_ms", 1000.0),
             ("  its first run (writing its summaries) < 1 s", "digest_all_rows_first_ms", 1000.0),
             ("digest over all rows within 3x the weekly one", "digest_all_over_week", 3.0),
             ("/moa cost < 20 ms", "cost_month_ms", 20.0), ("chart < 150 ms", "chart_ms", 150.0)]
    for goal, key, limit in goals:
        wall, cpu = measured[key], measured[key.replace("_ms", "_cpu_ms") if key.endswith("_ms") else key + "_cpu"]
        if measured_backend == "postgresql":  # the server's CPU time is not the process's: wall only
            verdict = "met" if wall < limit else "MISSED"  # type: ignore[operator]
        else:
            verdict = "met" if max(wall, cpu) < limit else ("met in CPU time" if cpu < limit else "MISSED")  # type: ignore[operator]
        print(f"goal: {goal}: {wall:.1f} wall, {cpu:.1f} CPU: {verdict}")
    print(f"floor: the all-rows digest's series of local days alone take {measured['series_all_days_over_week']:.1f}x "
          f"the weekly digest ({measured['series_all_days_over_week_cpu']:.1f}x in CPU time), whatever the rest costs")
    chat_report = results[figures[1][0]][0]  # type: ignore[index]
    print(f"check: weekly digest ${digest.dollars:,.2f} over {digest.calls:,} calls, "  # type: ignore[attr-defined]
          f"{digest.turns:,} turns; chat month ${chat_report.dollars:,.2f} over {chat_report.calls:,} calls")
    print(f"peak RSS {rss_mb():.0f} MiB (after filling: {rss_after_fill:.0f} MiB)")
    measured["peak_rss_mb"] = rss_mb()
    await store.close()
    workdir.cleanup()
    if args.json:
        print(measured.as_json())


if __name__ == "__main__":
    asyncio.run(main())
