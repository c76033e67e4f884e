"""Cost reports, terminal tables and budgets over rows written through the real Store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.config import BudgetSettings, ChannelSettings
from gateway.costs.budgets import BudgetLine, budget_status, check_budget
from gateway.costs.reports import Tokens, cost_report, cost_table, period_bounds
from gateway.storage import Storage as Store
from moa_core.values import CallRecord, Cost, Usage
from tests.backends import Backend
from tests.fakes.clock import FakeClock

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(backend: Backend, clock: FakeClock):
    s = await backend.open(clock)
    yield s
    await s.close()


def rec(usd: float | None, *, role: str = "reference", model: str = "m1", provider: str = "p",
        status: str = "ok", tokens: tuple[int, ...] = (100, 10, 5, 50, 7)) -> CallRecord:
    return CallRecord(role, 0, 0, provider, model, status, 100, Usage(*tokens),  # type: ignore[arg-type]
                      Cost(usd, "unknown" if usd is None else "price_table"))


async def turn(store: Store, clock: FakeClock, at: datetime, calls: list[CallRecord], *, platform: str = "telegram",
               chat: str = "c1", user: str = "u1", preset: str = "default", status: str = "done") -> int:
    clock.current = at
    session = await store.active_session(platform, chat, None)
    turn_id = await store.start_turn(session_id=session, platform=platform, chat_id=chat, thread_id=None,
                                     user_id=user, user_name=user.upper(), event_id=f"e{at}", message_id="m",
                                     preset=preset, prompt="q")
    await store.record_calls(turn_id, calls)
    if status != "running":
        await store.complete_turn(turn_id, status=status, answer="a", cost_usd=None, messages=[], delivery=None)
    return turn_id


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Periods ------------------------------------------------------------------------------------


def test_periods_are_local_calendar_units() -> None:
    # 00:30 in Berlin on 1 April is still 31 March in UTC.
    now = utc(2026, 3, 31, 22, 30)
    day = period_bounds("day", now, BERLIN)
    assert day == (datetime(2026, 4, 1, tzinfo=BERLIN), datetime(2026, 4, 2, tzinfo=BERLIN))
    assert day[0].astimezone(UTC) == utc(2026, 3, 31, 22)
    month = period_bounds("month", now, BERLIN)
    assert month == (datetime(2026, 4, 1, tzinfo=BERLIN), datetime(2026, 5, 1, tzinfo=BERLIN))
    # The ISO week that holds the spring change is an hour short.
    start, end = period_bounds("week", utc(2026, 3, 29, 12), BERLIN)
    assert (start.astimezone(UTC), end.astimezone(UTC)) == (utc(2026, 3, 22, 23), utc(2026, 3, 29, 22))
    assert start.weekday() == 0 and end - start == timedelta(days=7) and (end.astimezone(UTC) - start) == \
        timedelta(days=7, hours=-1)
    assert period_bounds("month", utc(2026, 12, 31, 23, 30), BERLIN)[0] == datetime(2027, 1, 1, tzinfo=BERLIN)
    assert period_bounds("day", utc(2026, 3, 31, 22, 30), ZoneInfo("UTC"))[0] == utc(2026, 3, 31)
    with pytest.raises(ValueError):
        period_bounds("year", now, BERLIN)  # type: ignore[arg-type]


# Reports ------------------------------------------------------------------------------------


async def test_cost_report_sums_the_chat_and_the_caller(store: Store, clock: FakeClock) -> None:
    month_start = datetime(2026, 4, 1, tzinfo=BERLIN)
    # In April (Berlin): two turns in c1 by u1, one in c1 by u2, one in c2 by u1.
    await turn(store, clock, month_start.astimezone(UTC), [rec(0.5), rec(None, model="m2"),
                                                           rec(0.25, role="aggregator", model="agg")])
    await turn(store, clock, utc(2026, 4, 10), [rec(0.125), rec(0.125, role="aggregator", model="agg")],
               preset="deep")
    await turn(store, clock, utc(2026, 4, 11), [rec(1.0, status="timeout")], user="u2")
    await turn(store, clock, utc(2026, 4, 12), [rec(2.0)], chat="c2")
    await turn(store, clock, utc(2026, 4, 12), [rec(4.0)], chat="c1", platform="slack")
    # Outside April in Berlin: a minute before it began, and the very start of May.
    await turn(store, clock, month_start.astimezone(UTC) - timedelta(minutes=1), [rec(8.0)])
    await turn(store, clock, datetime(2026, 5, 1, tzinfo=BERLIN).astimezone(UTC), [rec(16.0)])
    refused = await turn(store, clock, utc(2026, 4, 13), [], status="running")
    await store.mark_turn(refused, "refused")

    now = utc(2026, 4, 20)
    chat = await cost_report(store, period="month", now=now, tz=BERLIN, platform="telegram", chat_id="c1",
                             user_id=None)
    assert chat.start == month_start
    assert chat.dollars == pytest.approx(0.5 + 0.25 + 0.125 + 0.125 + 1.0)
    assert (chat.turns, chat.calls, chat.unknown_calls) == (3, 6, 1)
    assert chat.tokens == Tokens(600, 60, 30, 300, 42)
    assert [(s.key, s.dollars, s.turns, s.calls) for s in chat.by_preset] == [
        ("default", pytest.approx(1.75), 2, 4), ("deep", pytest.approx(0.25), 1, 2)]
    assert [(s.key, s.dollars, s.calls, s.unknown_calls) for s in chat.references] == [
        ("p:m1", pytest.approx(1.625), 3, 0), ("p:m2", 0.0, 1, 1)]
    assert [(s.key, s.dollars, s.turns) for s in chat.aggregators] == [("p:agg", pytest.approx(0.375), 2)]

    caller = await cost_report(store, period="month", now=now, tz=BERLIN, platform="telegram", chat_id=None,
                               user_id="u1")
    assert caller.dollars == pytest.approx(0.5 + 0.25 + 0.125 + 0.125 + 2.0)
    assert caller.turns == 3

    everything = await cost_report(store, period="month", now=now, tz=BERLIN, platform=None, chat_id=None,
                                   user_id=None)
    assert everything.dollars == pytest.approx(8.0)
    assert everything.turns == 5  # the refused turn is not counted

    day = await cost_report(store, period="day", now=utc(2026, 4, 12, 9), tz=BERLIN, platform="telegram",
                            chat_id="c2", user_id="u1")
    assert (day.dollars, day.turns) == (2.0, 1)
    empty = await cost_report(store, period="week", now=utc(2026, 6, 1), tz=BERLIN, platform="telegram",
                              chat_id="c1", user_id=None)
    assert (empty.dollars, empty.turns, empty.calls, empty.by_model) == (0.0, 0, 0, ())


async def test_cost_table_groups(store: Store, clock: FakeClock) -> None:
    await turn(store, clock, utc(2026, 4, 1), [rec(1.0), rec(0.5, role="aggregator", model="agg")])
    await turn(store, clock, utc(2026, 4, 2), [rec(2.0, model="m2")], chat="c2", user="u2", preset="deep")
    await turn(store, clock, utc(2026, 3, 1), [rec(100.0)])  # before `since`
    since = utc(2026, 3, 15)
    by_chat = await cost_table(store, since, "chat")
    assert [(s.key, s.dollars, s.turns, s.calls) for s in by_chat] == [
        ("telegram:c2", 2.0, 1, 1), ("telegram:c1", 1.5, 1, 2)]
    assert [(s.key, s.dollars) for s in await cost_table(store, since, "user")] == [
        ("telegram:u2", 2.0), ("telegram:u1", 1.5)]
    assert [(s.key, s.dollars) for s in await cost_table(store, since, "preset")] == [
        ("deep", 2.0), ("default", 1.5)]
    assert [(s.role, s.key, s.dollars) for s in await cost_table(store, since, "model")] == [
        ("reference", "p:m2", 2.0), ("reference", "p:m1", 1.0), ("aggregator", "p:agg", 0.5)]
    assert [s.dollars for s in await cost_table(store, since, "chat", until=utc(2026, 4, 2))] == [1.5]
    with pytest.raises(ValueError):
        await cost_table(store, since, "colour")  # type: ignore[arg-type]


# Budgets ------------------------------------------------------------------------------------


async def test_budget_refused_exactly_when_spend_reaches_it(store: Store, clock: FakeClock) -> None:
    budgets = BudgetSettings(per_user_usd_day=1.0)
    now = utc(2026, 4, 10, 12)
    # Exactly representable figures, so "equal" is exact.
    await turn(store, clock, utc(2026, 4, 10, 8), [rec(0.5), rec(0.25)])
    await turn(store, clock, utc(2026, 4, 10, 9), [rec(0.25 - 2**-20)], chat="c2")  # same user, other chat
    verdict = await check_budget(store, budgets, None, "telegram", "c1", "u1", now, BERLIN)
    assert verdict.allowed and verdict.spent == 1.0 - 2**-20 and verdict.limit == 1.0

    await turn(store, clock, utc(2026, 4, 10, 10), [rec(2**-20)])
    verdict = await check_budget(store, budgets, None, "telegram", "c1", "u1", now, BERLIN)
    assert not verdict.allowed
    assert (verdict.spent, verdict.limit) == (1.0, 1.0)
    assert verdict.resets_at == datetime(2026, 4, 11, tzinfo=BERLIN)
    assert "$1.00" in verdict.reason and "2026-04-11 00:00" in verdict.reason

    # Another user, and the same user on the next local day, may go on.
    assert (await check_budget(store, budgets, None, "telegram", "c1", "u2", now, BERLIN)).allowed
    assert (await check_budget(store, budgets, None, "slack", "c1", "u1", now, BERLIN)).allowed
    assert (await check_budget(store, budgets, None, "telegram", "c1", "u1", utc(2026, 4, 10, 22), BERLIN)).allowed


async def test_chat_month_budget_and_channel_overrides(store: Store, clock: FakeClock) -> None:
    await turn(store, clock, utc(2026, 4, 1, 6), [rec(30.0)], user="a")
    await turn(store, clock, utc(2026, 4, 20), [rec(20.0)], user="b")
    now = utc(2026, 4, 25)
    budgets = BudgetSettings(per_user_usd_day=100.0, per_chat_usd_month=50.0)
    verdict = await check_budget(store, budgets, None, "telegram", "c1", "c", now, BERLIN)
    assert not verdict.allowed and (verdict.spent, verdict.limit) == (50.0, 50.0)
    assert verdict.resets_at == datetime(2026, 5, 1, tzinfo=BERLIN)
    assert "This chat" in verdict.reason

    # The channel's own budget replaces [budgets] for that chat.
    looser = ChannelSettings(budget_usd_month=80.0)
    verdict = await check_budget(store, budgets, looser, "telegram", "c1", "c", now, BERLIN)
    assert verdict.allowed and (verdict.spent, verdict.limit) == (50.0, 80.0)
    stricter = ChannelSettings(budget_usd_day_per_user=20.0)
    verdict = await check_budget(store, budgets, stricter, "telegram", "c1", "b", utc(2026, 4, 20, 12), BERLIN)
    assert not verdict.allowed and verdict.limit == 50.0  # both reached; the month lasts longer

    lines = await budget_status(store, budgets, looser, "telegram", "c1", "b", utc(2026, 4, 20, 12), BERLIN)
    assert [(b.kind, b.limit, b.spent, b.left, b.source) for b in lines] == [
        ("user_day", 100.0, 20.0, 80.0, "config"), ("chat_month", 80.0, 50.0, 30.0, "channel")]
    assert all(isinstance(b, BudgetLine) and not b.reached for b in lines)

    # No budget at all: always allowed; a zero budget refuses everything.
    assert (await check_budget(store, None, None, "telegram", "c1", "c", now, BERLIN)).allowed
    assert await budget_status(store, BudgetSettings(), None, "telegram", "c1", "c", now, BERLIN) == ()
    zero = await check_budget(store, BudgetSettings(per_user_usd_day=0.0), None, "telegram", "zz", "new", now, BERLIN)
    assert not zero.allowed and zero.spent == 0.0


async def test_unknown_prices_do_not_count_against_budgets(store: Store, clock: FakeClock) -> None:
    await turn(store, clock, utc(2026, 4, 10, 8), [rec(None), rec(None)])
    verdict = await check_budget(store, BudgetSettings(per_user_usd_day=0.01), None, "telegram", "c1", "u1",
                                 utc(2026, 4, 10, 9), BERLIN)
    assert verdict.allowed and verdict.spent == 0.0




async def test_transcription_calls_are_their_own_line_of_a_report(store: Store, clock: FakeClock) -> None:
    from gateway.costs.commands import render_report

    now = utc(2026, 4, 12, 9)
    await turn(store, clock, now, [rec(0.25, role="transcription", provider="oa", model="whisper-1"),
                                   rec(1.0, role="aggregator", model="agg")])
    report = await cost_report(store, period="day", now=now, tz=BERLIN, platform="telegram", chat_id="c1",
                               user_id=None)
    assert [s.key for s in report.transcriptions] == ["oa:whisper-1"]
    assert report.dollars == pytest.approx(1.25)
    assert "  transcription: oa:whisper-1 $0.2500" in render_report("This chat", report).splitlines()
