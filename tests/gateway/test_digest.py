"""The cost digest: cron periods across DST, once per period across restarts, catch-up after
downtime, figures against hand-computed sums, and the chart. An injected clock; nothing sleeps."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from gateway.config import BudgetSettings, ChannelSettings
from gateway.costs.chart import spend_chart_png
from gateway.costs.digest import Digest, build_digest, digest_chart_png, render_digest_text
from gateway.costs.schedule import (
    DigestScheduler,
    cron_trigger,
    digest_destinations,
    due_period,
    fire_times,
    latest_fire,
    next_fire,
    previous_fire,
)
from gateway.storage import Storage as Store
from moa_core.values import CallRecord, Cost, Usage
from tests.backends import Backend
from tests.fakes.clock import FakeClock

BERLIN = ZoneInfo("Europe/Berlin")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


class Outbox:
    """The `send` of a DigestScheduler: records what it was given; can be told to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[Digest, bytes]] = []
        self.fail = False

    async def __call__(self, digest: Digest, png: bytes) -> None:
        if self.fail:
            raise ConnectionError("platform down")
        self.sent.append((digest, png))

    @property
    def periods(self) -> list[tuple[datetime, datetime]]:
        return [(d.start.astimezone(UTC), d.end.astimezone(UTC)) for d, _ in self.sent]


# Cron, fire times and due periods -----------------------------------------------------------


def test_monday_9am_berlin_across_both_dst_changes() -> None:
    trigger = cron_trigger("0 9 * * 1", "Europe/Berlin")
    # Spring: clocks go forward on Sunday 2026-03-29.
    fires = []
    fire = trigger.get_next_fire_time(None, utc(2026, 3, 20))
    for _ in range(3):
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    assert [f.astimezone(UTC) for f in fires] == [utc(2026, 3, 23, 8), utc(2026, 3, 30, 7), utc(2026, 4, 6, 7)]
    assert all(f.astimezone(BERLIN).strftime("%a %H:%M") == "Mon 09:00" for f in fires)
    assert fires[1].astimezone(UTC) - fires[0].astimezone(UTC) == timedelta(days=7, hours=-1)
    # Autumn: clocks go back on Sunday 2026-10-25.
    assert fire_times(trigger, utc(2026, 10, 15), utc(2026, 11, 3)) == [
        utc(2026, 10, 19, 7), utc(2026, 10, 26, 8), utc(2026, 11, 2, 8)]
    assert due_period(trigger, None, utc(2026, 10, 26, 8)) == (utc(2026, 10, 19, 7), utc(2026, 10, 26, 8))
    assert due_period(trigger, None, utc(2026, 3, 30, 7, 0, 1)) == (utc(2026, 3, 23, 8), utc(2026, 3, 30, 7))


def test_crontab_day_numbers_mean_what_cron_means() -> None:
    # apscheduler 3's own from_crontab counts 0 as Monday; ours follows crontab (0/7 = Sunday).
    monday = utc(2026, 3, 2, 12)  # a Monday

    def weekdays(expr: str) -> list[str]:
        fires = fire_times(cron_trigger(expr, "UTC"), monday, monday + timedelta(days=7))
        return [f.strftime("%a") for f in fires]

    assert weekdays("0 9 * * 1") == ["Mon"]
    assert weekdays("0 9 * * 0") == weekdays("0 9 * * 7") == weekdays("0 9 * * sun") == ["Sun"]
    assert weekdays("0 9 * * 1-5") == ["Tue", "Wed", "Thu", "Fri", "Mon"]
    assert weekdays("0 9 * * 5-7") == ["Fri", "Sat", "Sun"]
    assert weekdays("0 9 * * */2") == ["Tue", "Thu", "Sat", "Sun"]
    assert weekdays("0 9 * * MON,wed") == ["Wed", "Mon"]
    assert len(weekdays("0 9 * * *")) == 7
    for bad in ("0 9 * * 8", "0 9 * * 5-1", "0 9 * *", "0 9 * * funday"):
        with pytest.raises(ValueError):
            cron_trigger(bad, "UTC")


def test_daily_cron_fires_once_on_each_dst_day() -> None:
    trigger = cron_trigger("30 2 * * *", BERLIN)
    # Autumn: 02:30 happens twice on 25 October; the digest fires once.
    autumn = fire_times(trigger, utc(2026, 10, 23, 12), utc(2026, 10, 27, 12))
    assert [f.astimezone(BERLIN).date() for f in autumn] == [date(2026, 10, d) for d in (24, 25, 26, 27)]
    assert utc(2026, 10, 25, 0, 30) in autumn and utc(2026, 10, 25, 1, 30) not in autumn
    assert due_period(trigger, utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 45)) is None
    assert next_fire(trigger, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)
    # Spring: 02:30 does not exist on 29 March; there is still one fire that day.
    spring = fire_times(trigger, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    assert len(spring) == 2 and spring[0].astimezone(BERLIN).date() == date(2026, 3, 29)


def test_due_period() -> None:
    trigger = cron_trigger("0 9 * * 1", BERLIN)
    mon23, mon30, apr6, apr13 = utc(2026, 3, 23, 8), utc(2026, 3, 30, 7), utc(2026, 4, 6, 7), utc(2026, 4, 13, 7)
    assert latest_fire(trigger, mon30) == mon30
    assert latest_fire(trigger, mon30 - timedelta(microseconds=1)) == mon23
    assert previous_fire(trigger, mon30) == mon23
    # Nothing recorded: the last completed period.
    assert due_period(trigger, None, utc(2026, 4, 1)) == (mon23, mon30)
    # Already recorded: nothing until the next fire, then exactly that period.
    assert due_period(trigger, mon30, utc(2026, 4, 1)) is None
    assert due_period(trigger, mon30, apr6 - timedelta(seconds=1)) is None
    assert due_period(trigger, mon30, apr6) == (mon30, apr6)
    # Two fires missed while down: one digest covering both periods.
    assert due_period(trigger, mon23, apr13 + timedelta(hours=3)) == (mon23, apr13)
    # A cron that fires only every four years still finds its last period.
    assert due_period(cron_trigger("0 0 29 2 *", "UTC"), None, utc(2026, 3, 1)) == (
        utc(2020, 2, 29), utc(2024, 2, 29))


def test_digest_destinations() -> None:
    assert digest_destinations(["telegram:123", "slack:C1:x"]) == [("telegram", "123"), ("slack", "C1:x")]
    with pytest.raises(ValueError):
        digest_destinations(["telegram"])


# Figures ------------------------------------------------------------------------------------


def rec(usd: float | None, *, role: str = "reference", provider: str = "p", model: str = "m1",
        status: str = "ok", tokens: tuple[int, ...] = (10, 1, 2, 20, 3)) -> CallRecord:
    return CallRecord(role, 0, 0, provider, model, status, 100, Usage(*tokens),  # type: ignore[arg-type]
                      Cost(usd, "unknown" if usd is None else "config"))


async def turn(store: Store, clock: FakeClock, at: datetime, calls: list[CallRecord], *,
               platform: str = "telegram", chat: str = "c1", user: str = "u1", name: str = "Ann",
               preset: str = "default", status: str = "done") -> int:
    clock.current = at
    session = await store.active_session(platform, chat, None)
    turn_id = await store.start_turn(session_id=session, platform=platform, chat_id=chat, thread_id=None,
                                     user_id=user, user_name=name, event_id=str(at), message_id="m",
                                     preset=preset, prompt="q")
    await store.record_calls(turn_id, calls)
    if status == "running":
        return turn_id
    if status in ("done", "failed"):
        await store.complete_turn(turn_id, status=status, answer="a", cost_usd=None, messages=[],
                                  delivery=None)
    else:
        await store.mark_turn(turn_id, status)
    return turn_id


@pytest.fixture
async def store(backend: Backend):
    s = await backend.open(FakeClock(utc(2026, 1, 1)))
    yield s
    await s.close()


async def test_digest_figures_match_hand_computed_sums(store: Store) -> None:
    clock: FakeClock = store._clock  # type: ignore[assignment]
    start, end = utc(2026, 3, 23, 8), utc(2026, 3, 30, 7)  # Mon 09:00 to Mon 09:00, Berlin
    # Previous period: 2.0 in total.
    await turn(store, clock, utc(2026, 3, 20), [rec(2.0)])
    # This period.
    await turn(store, clock, start, [rec(1.0), rec(0.5, model="m2", status="timeout"),
                                     rec(0.25, role="aggregator", model="agg")])                  # first instant
    await turn(store, clock, utc(2026, 3, 24, 23, 30), [rec(2.0), rec(None, model="m2", status="failed"),
                                                        rec(1.0, role="aggregator", model="agg")],
               user="u2", name="Bob", preset="deep")                                          # Berlin: 25th
    await turn(store, clock, utc(2026, 3, 26, 12), [rec(4.0, provider="q", model="big", status="failed")],
               platform="slack", chat="C9", user="U1", name="Cy", status="failed")
    await turn(store, clock, utc(2026, 3, 27, 12), [rec(0.125, role="aggregator", model="agg")],
               status="interrupted")
    await turn(store, clock, utc(2026, 3, 28, 12), [], status="refused")
    # After the period (its end is excluded).
    await turn(store, clock, end, [rec(64.0)])

    digest = await build_digest(store, start=start, end=end, tz=BERLIN,
                                budgets=BudgetSettings(per_user_usd_day=3.0, per_chat_usd_month=7.0),
                                channels={"slack:C9": ChannelSettings(budget_usd_month=100.0)})

    assert digest.start == berlin(2026, 3, 23, 9) and digest.end == berlin(2026, 3, 30, 9)
    assert digest.dollars == pytest.approx(1.0 + 0.5 + 0.25 + 2.0 + 1.0 + 4.0 + 0.125)
    assert digest.previous_dollars == pytest.approx(2.0)
    assert digest.change_usd == pytest.approx(6.875)
    assert digest.change_pct == pytest.approx(343.75)
    assert (digest.turns, digest.failed_turns, digest.calls, digest.unknown_calls) == (4, 2, 8, 1)
    assert digest.tokens.input == 80 and digest.tokens.output == 160 and digest.tokens.reasoning == 24
    assert (digest.failed_references, digest.timed_out_references) == (2, 1)

    assert [(s.key, s.dollars, s.turns, s.calls) for s in digest.by_chat] == [
        ("telegram:c1", pytest.approx(4.875), 3, 7), ("slack:C9", 4.0, 1, 1)]
    assert [(s.key, s.dollars, s.turns) for s in digest.by_preset] == [
        ("default", pytest.approx(5.875), 3), ("deep", 3.0, 1)]
    assert [(s.role, s.key, s.dollars, s.calls, s.unknown_calls) for s in digest.by_model] == [
        ("reference", "q:big", 4.0, 1, 0), ("reference", "p:m1", 3.0, 2, 0),
        ("aggregator", "p:agg", pytest.approx(1.375), 3, 0), ("reference", "p:m2", 0.5, 2, 1)]
    assert [(s.key, s.label, s.dollars, s.turns) for s in digest.top_users] == [
        ("slack:U1", "Cy", 4.0, 1), ("telegram:u2", "Bob", 3.0, 1), ("telegram:u1", "Ann", pytest.approx(1.875), 2)]

    # Budgets: c1's March so far (2.0 + 4.875 of 7.0) is near; C9 has its own 100.0; U1 spent 4.0 of 3.0
    # on the 26th and u2 3.0 of 3.0 on the 25th (Berlin); u1's 64.0 at the period's end is not seen.
    alerts = {(a.kind, a.scope): a for a in digest.budget_alerts}
    assert set(alerts) == {("chat_month", "telegram:c1"), ("user_day", "slack:U1"), ("user_day", "telegram:u2")}
    assert alerts[("chat_month", "telegram:c1")].spent == pytest.approx(6.875)
    assert not alerts[("chat_month", "telegram:c1")].over
    assert alerts[("user_day", "slack:U1")].over and alerts[("user_day", "slack:U1")].day == date(2026, 3, 26)
    assert alerts[("user_day", "telegram:u2")].day == date(2026, 3, 25) and alerts[("user_day", "telegram:u2")].over
    assert alerts[("user_day", "slack:U1")].label == "Cy"

    # Per local day: the 23:30 UTC turn is on the 25th in Berlin.
    by_day: dict[tuple[date, str], float] = {(d.day, d.model): d.dollars for d in digest.daily}
    assert by_day == {
        (date(2026, 3, 23), "p:m1"): 1.0, (date(2026, 3, 23), "p:m2"): 0.5, (date(2026, 3, 23), "p:agg"): 0.25,
        (date(2026, 3, 25), "p:m1"): 2.0, (date(2026, 3, 25), "p:m2"): 0.0, (date(2026, 3, 25), "p:agg"): 1.0,
        (date(2026, 3, 26), "q:big"): 4.0, (date(2026, 3, 27), "p:agg"): 0.125,
    }
    assert digest.days == tuple(date(2026, 3, d) for d in range(23, 31))
    assert sum(by_day.values()) == pytest.approx(digest.dollars)

    text = render_digest_text(digest)
    for figure in ("$8.88", "+$6.88 (+343.8%)", "$2.00", "telegram:c1: $4.88", "Cy (slack:U1)", "q:big: $4.00",
                   "2 failed, 1 timed out", "Unpriced calls:** 1", "OVER", "98%"):
        assert figure in text, figure
    assert text.index("**References**") < text.index("**Aggregators**")


async def test_an_empty_period(store: Store) -> None:
    digest = await build_digest(store, start=utc(2026, 3, 23, 8), end=utc(2026, 3, 30, 7), tz=BERLIN)
    assert (digest.dollars, digest.calls, digest.turns, digest.change_pct) == (0.0, 0, 0, None)
    assert digest.by_chat == digest.daily == digest.budget_alerts == ()
    assert "No model calls" in render_digest_text(digest)
    png = digest_chart_png(digest)
    assert png.startswith(PNG_SIGNATURE)


async def test_chart_is_a_readable_png(store: Store) -> None:
    clock: FakeClock = store._clock  # type: ignore[assignment]
    for n in range(12):
        await turn(store, clock, utc(2026, 3, 1 + n, 10), [rec(0.5 + n, model=f"m{n}")])
    digest = await build_digest(store, start=utc(2026, 3, 1), end=utc(2026, 3, 14), tz=BERLIN)
    png = digest_chart_png(digest)
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300
    # matplotlib reads it back too.
    from matplotlib import image as mpimg

    assert mpimg.imread(io.BytesIO(png), format="png").shape[:2] == (image.size[1], image.size[0])
    with pytest.raises(ValueError):
        spend_chart_png([date(2026, 1, 1)], {"m": [1.0, 2.0]}, "bad")


# Once per period, restarts and catch-up -----------------------------------------------------


async def test_once_per_period_across_a_restart(backend: Backend) -> None:
    clock = FakeClock(utc(2026, 3, 25, 12))  # a Wednesday: first start ever
    store = await backend.open(clock)
    outbox = Outbox()
    scheduler = DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", outbox)
    assert await scheduler.run_due() is None  # a fresh install owes nothing
    await turn(store, clock, utc(2026, 3, 26), [rec(1.5)])

    clock.current = utc(2026, 3, 30, 7, 0, 2)  # the Monday fire
    sent = await scheduler.run_due()
    assert sent is not None and outbox.periods == [(utc(2026, 3, 23, 8), utc(2026, 3, 30, 7))]
    assert sent.dollars == 1.5 and outbox.sent[0][1].startswith(PNG_SIGNATURE)
    assert await scheduler.run_due() is None
    await store.close()

    # A restart an hour later: the same period is not sent again.
    clock.current = utc(2026, 3, 30, 8)
    store = await backend.open(clock)
    scheduler = DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", outbox)
    assert await scheduler.run_due() is None
    clock.current = utc(2026, 4, 6, 7)
    assert await scheduler.run_due() is not None
    assert outbox.periods[1] == (utc(2026, 3, 30, 7), utc(2026, 4, 6, 7))
    rows = await store.query("SELECT status, dollars FROM digests ORDER BY period_end", dicts=True)
    assert rows == [{"status": "baseline", "dollars": None}, {"status": "sent", "dollars": 1.5},
                    {"status": "sent", "dollars": 0.0}]
    await store.close()


async def test_catch_up_after_downtime_then_schedule(backend: Backend) -> None:
    clock = FakeClock(utc(2026, 3, 25))
    store = await backend.open(clock)
    outbox = Outbox()
    await DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", outbox).run_due()  # baseline
    await turn(store, clock, utc(2026, 3, 27), [rec(2.0)])
    await turn(store, clock, utc(2026, 4, 2), [rec(3.0)])
    await store.close()

    # Down over the fires of 30 March and 6 April; back on Wednesday 8 April.
    clock.current = utc(2026, 4, 8, 10)
    store = await backend.open(clock)
    scheduler = DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", outbox)
    await scheduler.start()
    try:
        assert outbox.periods == [(utc(2026, 3, 23, 8), utc(2026, 4, 6, 7))]
        assert outbox.sent[0][0].dollars == 5.0
        job_time = scheduler.next_run_time
        assert job_time is not None and job_time.astimezone(BERLIN).strftime("%a %H:%M") == "Mon 09:00"
    finally:
        await scheduler.stop()
    # Starting again later that day sends nothing more.
    again = DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", outbox)
    await again.start()
    await again.stop()
    assert len(outbox.sent) == 1
    await store.close()


async def test_a_failed_send_is_owed_again_but_a_crash_mid_send_is_not(backend: Backend) -> None:
    clock = FakeClock(utc(2026, 3, 25))
    store = await backend.open(clock)
    outbox = Outbox()
    scheduler = DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", outbox)
    await scheduler.run_due()
    clock.current = utc(2026, 3, 30, 7, 1)
    outbox.fail = True
    with pytest.raises(ConnectionError):
        await scheduler.run_due()
    status = (await store.query("SELECT status, error FROM digests ORDER BY period_end DESC"))[0]
    assert status[0] == "failed" and "platform down" in status[1]
    outbox.fail = False
    assert await scheduler.run_due() is not None
    assert len(outbox.sent) == 1

    # A period claimed ('sending') when the process died may have gone out: never resent.
    assert await store.claim_digest(utc(2026, 3, 30, 7), utc(2026, 4, 6, 7), "sending", clock.now())
    clock.current = utc(2026, 4, 7)
    assert await scheduler.run_due() is None
    assert len(outbox.sent) == 1
    await store.close()


async def test_digest_now_covers_the_time_since_the_last_fire(store: Store) -> None:
    clock: FakeClock = store._clock  # type: ignore[assignment]
    await turn(store, clock, utc(2026, 3, 29), [rec(1.0)])    # before the last fire
    await turn(store, clock, utc(2026, 3, 31), [rec(0.25)])   # after it
    clock.current = utc(2026, 4, 1, 12)
    scheduler = DigestScheduler(store, clock, "0 9 * * 1", "Europe/Berlin", Outbox())
    digest, png = await scheduler.digest_now()
    assert digest.start == berlin(2026, 3, 30, 9) and digest.end == clock.current
    assert digest.dollars == 0.25 and digest.previous_dollars == 1.0
    assert png.startswith(PNG_SIGNATURE)
    assert await store.query("SELECT COUNT(*) FROM digests") == [(0,)]  # nothing recorded


async def test_transcription_spend_has_its_own_section(store: Store) -> None:
    clock: FakeClock = store._clock  # type: ignore[assignment]
    await turn(store, clock, utc(2026, 3, 24), [rec(0.5, role="transcription", provider="oa", model="whisper-1"),
                                               rec(1.0, role="aggregator", model="agg")])
    digest = await build_digest(store, start=utc(2026, 3, 23, 8), end=utc(2026, 3, 30, 7), tz=BERLIN)
    assert digest.dollars == pytest.approx(1.5)
    text = render_digest_text(digest)
    section = text.split("**Transcription**", 1)[1]
    assert "oa:whisper-1" in section.split("\n\n", 1)[0]
