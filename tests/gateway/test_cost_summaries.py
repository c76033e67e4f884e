"""Summaries of closed intervals (gateway.costs.summaries), on both backends: a long digest
writes them on its first run and reads them afterwards, its figures stay what the raw rows say,
a row that arrives late in a summarised day is counted (the seal no longer matches), a pruned
summary serves only thresholds at or above its own, and a failing write leaves the rollups to
answer."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.config import BudgetSettings
from gateway.costs import summaries
from gateway.costs.digest import build_digest, day_intervals
from gateway.costs.rollups import raw_rows_only, totals
from gateway.costs.summaries import Sealing, execute_many
from gateway.storage import Storage
from moa_core.values import CallRecord, Cost, Usage
from tests.backends import Backend
from tests.fakes.clock import FakeClock
from tests.gateway.test_cost_rollups import T0, assert_same, book_randomly

BERLIN = ZoneInfo("Europe/Berlin")
START, END = T0 - timedelta(hours=1), T0 + timedelta(days=24)  # 3 whole UTC weeks inside
BUDGETS = BudgetSettings(per_user_usd_day=0.004, per_chat_usd_month=0.01)


@pytest.fixture
async def store(backend: Backend):
    clock = FakeClock(T0)
    s = await backend.open(clock)
    s.test_clock = clock  # type: ignore[attr-defined]
    await book_randomly(s, clock, random.Random(31), turns=150, hours=24 * 24)
    yield s
    await s.close()


async def digest(store: Storage, budgets: BudgetSettings = BUDGETS, tz: ZoneInfo = BERLIN):  # type: ignore[no-untyped-def]
    return await build_digest(store, start=START.astimezone(tz), end=END.astimezone(tz), tz=tz, budgets=budgets)


async def assert_as_the_rows_say(store: Storage, budgets: BudgetSettings = BUDGETS, tz: ZoneInfo = BERLIN) -> None:
    got = await digest(store, budgets, tz)
    with raw_rows_only():
        want = await digest(store, budgets, tz)
    assert_same(got, want, f"{tz} {budgets}")
    assert want.calls > 0 and want.budget_alerts


async def counts(store: Storage) -> dict[tuple[str, str], int]:
    rows = await store.query("SELECT grain, span, COUNT(*) FROM cost_rollups WHERE span IN ('sum', 'seal') "
                             "GROUP BY grain, span")
    return {(grain, span): int(n) for grain, span, n in rows}


async def test_a_long_digest_writes_summaries_once_and_reads_what_the_rows_say(store: Storage) -> None:
    assert await counts(store) == {}
    await assert_as_the_rows_say(store)
    written = await counts(store)
    # the rollup grains' (the period's weeks, the users' days), the chart's (provider and model
    # per day) and the previous period's total (its weeks)
    assert {grain for grain, _ in written} == {"mix", "chat", "user", "mix/model+provider", "chat/"}
    seals = await store.query("SELECT grain, bucket FROM cost_rollups WHERE grain IN ('chat', 'chat/') "
                              "AND span = 'seal' ORDER BY grain, bucket")
    # the blocks of days in the period (up to a day before its end), in the previous one
    # (the chats' month so far shares the period's last two blocks)
    assert [(g, b[:10], b[33:43]) for g, b in seals] == [
        ("chat", "2026-03-28", "2026-04-01"), ("chat", "2026-04-01", "2026-04-17"), ("chat", "2026-04-17", "2026-04-19"),
        ("chat/", "2026-03-04", "2026-03-08"), ("chat/", "2026-03-08", "2026-03-16"),
        ("chat/", "2026-03-16", "2026-03-24"), ("chat/", "2026-03-24", "2026-03-28")]
    seals = await store.query("SELECT bucket, calls FROM cost_rollups WHERE span = 'seal' ORDER BY grain, bucket")
    await assert_as_the_rows_say(store)
    assert await counts(store) == written
    assert await store.query("SELECT bucket, calls FROM cost_rollups WHERE span = 'seal' ORDER BY grain, bucket") == seals


async def test_the_digest_reads_its_summaries(store: Storage) -> None:
    """What a summary says is what the digest reports (here: one made wrong on purpose)."""
    before = await digest(store)
    await execute_many(store, [("UPDATE cost_rollups SET dollars = dollars + 1000 WHERE span = 'sum' AND grain = ?",
                                [("mix",)])])
    after = await digest(store)
    assert after.dollars > before.dollars + 1000


async def test_a_late_row_in_a_summarised_day_is_counted(store: Storage) -> None:
    await assert_as_the_rows_say(store)
    seals = dict(await store.query("SELECT bucket, calls FROM cost_rollups WHERE grain = 'user' AND span = 'seal'"))
    clock: FakeClock = store.test_clock  # type: ignore[attr-defined]
    clock.current = T0 + timedelta(days=9, hours=3)  # a summarised week and local day, booked late
    session = await store.active_session("slack", "c1", None)
    turn = await store.start_turn(session_id=session, platform="slack", chat_id="c1", thread_id=None, user_id="late",
                                  user_name="Late", event_id="late", message_id="m", preset="a", prompt="q")
    await store.book_calls([(turn, CallRecord("aggregator", 0, 0, "p", "m1", "ok", 10, Usage(1, 0, 0, 1, 0),
                                               Cost(0.5, "price_table")))])
    got = await digest(store)
    assert any(a.scope == "slack:late" for a in got.budget_alerts)  # the local-day summary was made again
    assert any(s.key == "slack:late" for s in got.top_users)  # and the week's
    await assert_as_the_rows_say(store)
    after = dict(await store.query("SELECT bucket, calls FROM cost_rollups WHERE grain = 'user' AND span = 'seal'"))
    assert after.keys() == seals.keys() and after != seals


async def test_a_pruned_summary_serves_only_a_threshold_at_or_above_its_own(store: Storage) -> None:
    """The users' days: summaries pruned at 0.004 serve 0.008, not 0.001 (made again at 0.001)."""
    for tz in (BERLIN, ZoneInfo("Asia/Kathmandu")):  # other local days; edges of raw rows
        days = day_intervals(START.astimezone(tz), END.astimezone(tz), tz)
        for level in (0.004, 0.008, 0.001, 0.004):
            got = await totals(store, days, ("platform", "user_id"), dollars_only=True, having_dollars=level,
                               sealed=Sealing(END - timedelta(days=1)))
            with raw_rows_only():
                want = await totals(store, days, ("platform", "user_id"), dollars_only=True, having_dollars=level)
            assert_same(sorted(got), sorted(want), f"{tz} {level}")
            assert len(want) > 3
        await assert_as_the_rows_say(store, BudgetSettings(per_user_usd_day=0.003, per_chat_usd_month=0.01), tz)


async def test_a_local_day_over_two_utc_days_each_below_the_limit_is_alerted(backend: Backend) -> None:
    """Berlin's 23:00 to 23:00 UTC (winter): 0.003 before UTC midnight and 0.003 after, each UTC
    day below the 0.8 * 0.005 alert level, the local day above it."""
    day = datetime(2026, 1, 14, 23, 0, tzinfo=UTC)  # Thursday 15 January, Berlin
    clock = FakeClock(day)
    store = await backend.open(clock)
    try:
        session = await store.active_session("slack", "c1", None)
        for n, at in enumerate((day + timedelta(minutes=30), day + timedelta(hours=5))):
            clock.current = at
            turn = await store.start_turn(session_id=session, platform="slack", chat_id="c1", thread_id=None,
                                          user_id="u1", user_name="U", event_id=f"e{n}", message_id="m", preset="a",
                                          prompt="q")
            await store.book_calls([(turn, CallRecord("aggregator", 0, 0, "p", "m1", "ok", 10, Usage(1, 0, 0, 1, 0),
                                                       Cost(0.003, "price_table")))])
        budgets = BudgetSettings(per_user_usd_day=0.005, per_chat_usd_month=None)
        start, end = datetime(2026, 1, 4, 23, tzinfo=UTC).astimezone(BERLIN), datetime(2026, 1, 31, 23, tzinfo=UTC)
        for _ in range(2):  # writes the summaries, then reads them
            got = await build_digest(store, start=start, end=end.astimezone(BERLIN), tz=BERLIN, budgets=budgets)
            [alert] = got.budget_alerts
            assert (alert.scope, str(alert.day)) == ("slack:u1", "2026-01-15")
            assert alert.spent == pytest.approx(0.006)
        assert (await counts(store)).get(("user", "sum"))
    finally:
        await store.close()


async def test_a_failing_summary_write_leaves_the_rollups_to_answer(store: Storage, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def broken(*_args, **_kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("read-only")

    monkeypatch.setattr(summaries, "execute_many", broken)
    await assert_as_the_rows_say(store)
    assert await counts(store) == {}


def test_a_seal_counts_every_utc_day_an_interval_touches() -> None:
    days = summaries._utc_days(datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC))
    assert days == ["2026-03-28", "2026-03-29"]
    blocks = summaries._blocks(datetime(2026, 3, 25, tzinfo=UTC), datetime(2026, 4, 20, tzinfo=UTC),
                               datetime(2026, 4, 13, 1, tzinfo=UTC))
    day = (datetime(2026, 3, 25, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
    assert day % 2 == 1  # 25 March is day 20537, left out alone; 26 March is divisible by 2, 28 by 4, 1 April by 8
    assert [(a.date().isoformat(), b.date().isoformat()) for a, b in blocks] == [
        ("2026-03-26", "2026-03-28"), ("2026-03-28", "2026-04-01"), ("2026-04-01", "2026-04-09"),
        ("2026-04-09", "2026-04-13")]
