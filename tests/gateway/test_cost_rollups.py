"""Cost rollups: kept with the rows they sum on both backends (reconciled row for row), built
from old rows by the migration, and read back (rollups + edges) exactly as the raw rows say."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.costs.rollups import Piece, pieces, raw_rows_only, totals
from gateway.storage import Storage
from gateway.storage import rollups as rollup_sql
from moa_core.values import CallRecord, Cost, Usage
from tests.backends import Backend
from tests.fakes.clock import FakeClock

T0 = datetime(2026, 3, 27, 20, 0, tzinfo=UTC)  # the Friday before Berlin's spring change
ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
                                "Pacific/Chatham")]
STATUSES = ["ok", "ok", "ok", "failed", "timeout", "cut", "skipped"]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def call(rng: random.Random, role: str = "reference") -> CallRecord:
    status = rng.choice(STATUSES) if role == "reference" else rng.choice(["ok", "cut", "failed"])
    usd = None if rng.random() < 0.2 or status == "skipped" else round(rng.uniform(0, 0.01), 6)
    return CallRecord(role, 0, rng.randrange(4), rng.choice(["p", "q"]), rng.choice(["m1", "m2", "m3"]),  # type: ignore[arg-type]
                      status, 10, Usage(*(rng.randrange(1000) for _ in range(5))),  # type: ignore[arg-type]
                      Cost(usd, "unknown" if usd is None else "price_table"))


async def book_randomly(store: Storage, clock: FakeClock, rng: random.Random, turns: int = 60,
                        hours: int = 80) -> None:
    """Turns at random times over `hours` hours from T0, their calls booked one by one, together,
    or by record_calls, some of them over two later bookings (a call can land on the next day)."""
    for n in range(turns):
        clock.current = T0 + timedelta(minutes=rng.randrange(hours * 60), seconds=rng.random())
        platform = rng.choice(["telegram", "slack"])
        session = await store.active_session(platform, f"c{rng.randrange(3)}", None)
        chat = f"c{rng.randrange(3)}"
        turn_id = await store.start_turn(session_id=session, platform=platform, chat_id=chat, thread_id=None,
                                         user_id=f"u{rng.randrange(4)}", user_name="U", event_id=f"e{n}",
                                         message_id="m", preset=rng.choice(["a", "b"]), prompt="q")
        calls = [call(rng) for _ in range(rng.randrange(0, 4))] + [call(rng, "aggregator")]
        how = rng.randrange(3)
        if how == 0:
            await store.record_calls(turn_id, calls)
        elif how == 1:
            await store.book_calls([(turn_id, c) for c in calls])
        else:
            for c in calls:
                clock.current += timedelta(minutes=rng.randrange(90))
                await store.book_calls([(turn_id, c)])


async def assert_reconciled(store: Storage) -> int:
    """Every stored rollup row is what the rows say, and no row is missing; returns the count."""
    count = 0
    for grain, spans in rollup_sql.SPANS.items():
        for span in spans:
            expected = {tuple(r[:9]): r[9:] for r in await store.query(rollup_sql.expected_sql(grain, span))}
            stored = {tuple(r[:9]): r[9:] for r in await store.query(rollup_sql.stored_sql(grain, span))}
            assert stored.keys() == expected.keys(), (grain, span)
            for key, sums in expected.items():
                got = stored[key]
                assert [int(v) for n, v in enumerate(got) if n != 3] == [int(v) for n, v in enumerate(sums) if n != 3]
                assert float(got[3]) == pytest.approx(float(sums[3]), abs=1e-12), (grain, span, key)
            count += len(stored)
    return count


@pytest.fixture
async def store(backend: Backend):
    clock = FakeClock(T0)
    s = await backend.open(clock)
    s.test_clock = clock  # type: ignore[attr-defined]
    yield s
    await s.close()


async def test_rollups_are_kept_with_the_rows_they_sum(store: Storage) -> None:
    rng = random.Random(14)
    await book_randomly(store, store.test_clock, rng)  # type: ignore[attr-defined]
    assert await assert_reconciled(store) > 0
    # The turn counts: every turn with calls is counted once, in its first call's rows.
    turns = (await store.query("SELECT COUNT(DISTINCT turn_id) FROM model_calls"))[0][0]
    assert (await store.query("SELECT SUM(turns) FROM cost_rollups WHERE grain = 'call'"))[0][0] == turns


async def test_a_failed_booking_leaves_neither_rows_nor_rollups(store: Storage) -> None:
    with pytest.raises(KeyError):
        await store.book_calls([(999, call(random.Random(1)))])
    assert await store.query("SELECT COUNT(*) FROM cost_rollups") == [(0,)]
    assert await store.query("SELECT COUNT(*) FROM model_calls") == [(0,)]


def test_a_berlin_day_is_a_utc_day_plus_and_minus_two_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = (datetime(2026, 4, 2, tzinfo=berlin), datetime(2026, 4, 3, tzinfo=berlin))
    assert pieces([day], hourly=True) == [
        Piece(0, 1, "day", utc(2026, 4, 2), utc(2026, 4, 3)),
        Piece(0, 1, "hour", utc(2026, 4, 1, 22), utc(2026, 4, 2)),
        Piece(0, -1, "hour", utc(2026, 4, 2, 22), utc(2026, 4, 3)),
    ]
    # Without hour rollups the edges are raw rows; at :30 (Kolkata) the half hours are raw too.
    assert [p.source for p in pieces([day], hourly=False)] == ["day", "raw", "raw"]
    kolkata = ZoneInfo("Asia/Kolkata")
    parts = pieces([(datetime(2026, 4, 2, tzinfo=kolkata), datetime(2026, 4, 3, tzinfo=kolkata))], hourly=True)
    assert [(p.sign, p.source, p.start, p.end) for p in parts] == [
        (1, "day", utc(2026, 4, 2), utc(2026, 4, 3)),
        (1, "hour", utc(2026, 4, 1, 19), utc(2026, 4, 2)),
        (1, "raw", utc(2026, 4, 1, 18, 30), utc(2026, 4, 1, 19)),
        (-1, "hour", utc(2026, 4, 2, 19), utc(2026, 4, 3)),
        (-1, "raw", utc(2026, 4, 2, 18, 30), utc(2026, 4, 2, 19)),
    ]
    with raw_rows_only():
        assert pieces([day], hourly=True) == [Piece(0, 1, "raw", utc(2026, 4, 1, 22), utc(2026, 4, 2, 22))]


GROUPS = [(), ("preset",), ("role", "provider", "model"), ("platform", "chat_id"), ("platform", "user_id"),
          ("preset", "role", "provider", "model", "status")]


async def test_every_sum_from_rollups_is_the_sum_of_the_rows(store: Storage) -> None:
    """Property-style: random intervals in zones at whole, half and 45-minute offsets, series of
    local days, every grouping and scope: rollups + edges give what the raw rows give."""
    rng = random.Random(9)
    await book_randomly(store, store.test_clock, rng, turns=50, hours=100)  # type: ignore[attr-defined]
    for _ in range(60):
        tz = rng.choice(ZONES)
        start = (T0 - timedelta(hours=5) + timedelta(minutes=rng.randrange(60 * 60))).astimezone(tz)
        if rng.random() < 0.5:
            start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        days = rng.randrange(1, 5)
        intervals = [(start + timedelta(days=d), start + timedelta(days=d + 1)) for d in range(days)]
        if rng.random() < 0.5:
            intervals = [(start, start + timedelta(hours=rng.randrange(1, 120), minutes=rng.randrange(60)))]
        group = rng.choice(GROUPS)
        scope = rng.choice([{}, {"platform": "telegram"}, {"platform": "slack", "chat_id": "c1"},
                            {"platform": "telegram", "user_id": "u2"}])
        having = rng.choice([None, None, 0.004, 0.0005])
        dollars_only = rng.random() < 0.5  # with `having` over a series of days: read in two steps
        got = await totals(store, intervals, group, having_dollars=having, dollars_only=dollars_only, **scope)
        with raw_rows_only():
            want = await totals(store, intervals, group, having_dollars=having, dollars_only=dollars_only, **scope)
        assert [(n, k) for n, k, _ in got] == [(n, k) for n, k, _ in want] or sorted(
            (n, k) for n, k, _ in got) == sorted((n, k) for n, k, _ in want), (tz, intervals, group, scope)
        got_by, want_by = {(n, k): t for n, k, t in got}, {(n, k): t for n, k, t in want}
        assert got_by.keys() == want_by.keys()
        for key, t in want_by.items():
            g = got_by[key]
            assert g.dollars == pytest.approx(t.dollars, abs=1e-9), (tz, intervals, group, scope, key)
            assert g.values()[:3] + g.values()[4:] == t.values()[:3] + t.values()[4:], (tz, intervals, group, key)


async def _rebuild(backend: Backend, store: Storage) -> None:
    if backend.name == "sqlite":
        def work(db):  # type: ignore[no-untyped-def]
            with db.atomic():
                for statement in rollup_sql.BACKFILL:
                    db.execute(statement)
        await store.run(work)  # type: ignore[attr-defined]
        return
    import psycopg

    with psycopg.connect(backend.location) as conn, conn.transaction():
        for statement in rollup_sql.BACKFILL:
            conn.execute(statement)


async def test_the_backfill_builds_what_booking_kept(backend: Backend, store: Storage) -> None:
    """The migration's backfill (also `bench_costs`' fill) gives the rollups booking gave."""
    await book_randomly(store, store.test_clock, random.Random(3), turns=40)  # type: ignore[attr-defined]
    kept = sorted(await store.query("SELECT * FROM cost_rollups"))
    await store.query("SELECT 1")
    await _rebuild(backend, store)
    rebuilt = sorted(await store.query("SELECT * FROM cost_rollups"))
    assert len(rebuilt) == len(kept) > 0
    for a, b in zip(kept, rebuilt, strict=True):
        assert a[:11] == b[:11] and a[11:14] == b[11:14] and a[15:] == b[15:]
        assert float(a[14]) == pytest.approx(float(b[14]), abs=1e-12)
    await assert_reconciled(store)


def assert_same(got: object, want: object, where: str = "") -> None:
    """Equal, floats up to rounding (dataclasses, tuples and lists compared field by field)."""
    import dataclasses

    if dataclasses.is_dataclass(want):
        assert type(got) is type(want), where
        for f in dataclasses.fields(want):
            assert_same(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    elif isinstance(want, tuple | list):
        assert isinstance(got, tuple | list) and len(got) == len(want), (where, got, want)
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{n}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-9), where
    else:
        assert got == want, where


async def test_every_report_reads_the_same_from_rollups_as_from_rows(store: Storage) -> None:
    """Property-style over the reports themselves: /moa cost (chat, caller, all), budgets,
    `moa-gateway costs` and the digest, at random moments in random zones."""
    from gateway.config import BudgetSettings
    from gateway.costs.budgets import budget_status
    from gateway.costs.digest import build_digest
    from gateway.costs.reports import cost_report, cost_table

    rng = random.Random(21)
    await book_randomly(store, store.test_clock, rng, turns=45, hours=100)  # type: ignore[attr-defined]
    budgets = BudgetSettings(per_user_usd_day=0.004, per_chat_usd_month=0.01)
    for _ in range(6):
        tz = rng.choice(ZONES)
        now = T0 + timedelta(minutes=rng.randrange(100 * 60))
        scope = rng.choice([{}, {"platform": "slack", "chat_id": "c1"}, {"platform": "telegram", "user_id": "u2"}])
        start = now - timedelta(hours=rng.randrange(1, 100), minutes=rng.randrange(60))

        async def everything(now: datetime, tz: ZoneInfo, scope: dict, start: datetime):  # type: ignore[no-untyped-def]
            return (
                [await cost_report(store, period=p, now=now, tz=tz, platform=scope.get("platform"),
                                   chat_id=scope.get("chat_id"), user_id=scope.get("user_id"))
                 for p in ("day", "week", "month")],
                [await cost_table(store, start, by, until=now) for by in ("chat", "user", "preset", "model")],
                await budget_status(store, budgets, None, "slack", "c1", "u2", now, tz),
                await build_digest(store, start=start, end=now, tz=tz, budgets=budgets),
            )

        got = await everything(now, tz, scope, start)
        with raw_rows_only():
            want = await everything(now, tz, scope, start)
        assert_same(got, want, f"{tz} {now} {scope}")
        assert want[3].calls > 0  # not an empty comparison
