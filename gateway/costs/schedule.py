"""When the admin cost digest is owed, and sending it once per period.

- The period of a fire is from the previous fire time of the cron to this one. `due_period`
  decides, from `now` and the end of the last period recorded, which period is owed; it takes
  `now` so tests never wait.
- `DigestScheduler` fires on the cron with apscheduler 3.11 (`AsyncIOScheduler`, in-memory job
  re-added at each start) and records every period in the `digests` table: a period is claimed
  before it is sent, so a restart never sends it twice, and a period whose fire time passed
  while the gateway was down is sent when it starts (periods missed in a row are folded into
  one digest). On the very first start nothing is owed: the period before it is recorded as a
  baseline.

Cron expressions have the standard crontab meaning: day-of-week 0 and 7 are Sunday, 1 is
Monday. (apscheduler 3.x's `from_crontab` counts 0 as Monday, so "0 9 * * 1" would fire on
Tuesdays; `cron_trigger` translates the field.) As in apscheduler, when both day-of-month and
day-of-week are restricted, both must match (classic cron fires when either does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from gateway.costs.budgets import BudgetLimits, ChannelBudgets
from gateway.costs.digest import Digest, build_digest, digest_chart_png
from gateway.storage import Storage
from moa_core.clock import Clock

log = logging.getLogger(__name__)

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MAX_LOOKBACK = timedelta(days=3000)  # "0 0 29 2 *" fires only every four (or eight) years
_TICK = timedelta(microseconds=1)

# Cron and periods ---------------------------------------------------------------------------


def _weekday(text: str) -> int:
    text = text.strip().lower()
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    if text[:3] in _DAY_NAMES and len(text) == 3:
        return _DAY_NAMES.index(text)
    raise ValueError(f"bad day of week {text!r}")


def _standard_day_of_week(field: str) -> str:
    """A crontab day-of-week field (0/7 = Sunday) as apscheduler 3 names ("mon,wed")."""
    days: set[int] = set()
    for part in field.split(","):
        base, slash, step_text = part.partition("/")
        step = int(step_text) if slash else 1
        if step < 1:
            raise ValueError(f"bad step in day of week {part!r}")
        if base in ("*", "?"):
            low, high = 0, 6
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _weekday(first), _weekday(last)
        else:
            low = _weekday(base)
            high = 6 if slash else low
        if low > high:
            raise ValueError(f"bad day-of-week range {part!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_DAY_NAMES[d] for d in (1, 2, 3, 4, 5, 6, 0) if d in days)


def cron_trigger(cron: str, tz: str | ZoneInfo) -> CronTrigger:
    """A `CronTrigger` for a standard 5-field crontab expression in a time zone."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron {cron!r} must have 5 fields (minute hour day month day-of-week)")
    fields[4] = _standard_day_of_week(fields[4])
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    return CronTrigger.from_crontab(" ".join(fields), timezone=zone)


def _is_repeat(fire: datetime) -> bool:
    """A fire at a wall time that the fall-back hour repeats (apscheduler fires both)."""
    first = fire.replace(fold=0)
    return first.astimezone(UTC) < fire.astimezone(UTC)


def fire_times(trigger: CronTrigger, since: datetime, until: datetime) -> list[datetime]:
    """Fire times in [since, until], in UTC; a repeated wall time (DST fall-back) counts once."""
    out: list[datetime] = []
    fire = trigger.get_next_fire_time(None, since)
    while fire is not None and fire.astimezone(UTC) <= until.astimezone(UTC):
        if not _is_repeat(fire):
            out.append(fire.astimezone(UTC))
        fire = trigger.get_next_fire_time(fire, fire)
    return out


def latest_fire(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The last fire time at or before `now` (UTC), or None."""
    span = timedelta(hours=2)
    while True:
        fires = fire_times(trigger, now - span, now)
        if fires:
            return fires[-1]
        if span >= _MAX_LOOKBACK:
            return None
        span = min(span * 4, _MAX_LOOKBACK)


def previous_fire(trigger: CronTrigger, fire: datetime) -> datetime | None:
    """The last fire time strictly before `fire`."""
    return latest_fire(trigger, fire - _TICK)


def next_fire(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The first fire time strictly after `now` (UTC)."""
    fire = trigger.get_next_fire_time(None, now + _TICK)
    while fire is not None and _is_repeat(fire):
        fire = trigger.get_next_fire_time(fire, fire)
    return fire.astimezone(UTC) if fire is not None else None


def due_period(
    trigger: CronTrigger, last_sent_period_end: datetime | None, now: datetime
) -> tuple[datetime, datetime] | None:
    """The period owed at `now`, as (start, end) in UTC, or None.

    Its end is the latest fire time at or before `now`; nothing is owed when that period (or a
    later one) was already recorded. Its start is the previous fire time, or the end of the last
    recorded period when several were missed in a row (they are folded into one).
    """
    end = latest_fire(trigger, now)
    if end is None:
        return None
    if last_sent_period_end is not None and end <= last_sent_period_end:
        return None
    start = previous_fire(trigger, end)
    if start is None:
        start = end - timedelta(days=7)
    if last_sent_period_end is not None and last_sent_period_end < start:
        start = last_sent_period_end.astimezone(UTC)
    return start, end


# The digest ---------------------------------------------------------------------------------


# Once per period, recorded in the store's digest claims -------------------------------------


DigestSender = Callable[[Digest, bytes], Awaitable[None]]


class DigestScheduler:
    """Sends the cost digest on a cron, at most once per period, catching up after downtime.

    `send(digest, png)` delivers it to every admin destination; if it raises, the period is
    marked failed and owed again at the next start. `start()` must run inside the event loop.
    """

    JOB_ID = "cost_digest"

    def __init__(
        self,
        store: Storage,
        clock: Clock,
        cron: str,
        tz: str,
        send: DigestSender,
        *,
        budgets: BudgetLimits | None = None,
        channels: Mapping[str, ChannelBudgets] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tz = ZoneInfo(tz)
        self.trigger = cron_trigger(cron, self.tz)
        self.send = send
        self.budgets = budgets
        self.channels = channels or {}
        self._scheduler: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Catch up on a period missed while down, then schedule the cron."""
        try:
            await self.run_due()
        except Exception:
            log.exception("cost digest catch-up failed")
        scheduler = AsyncIOScheduler(timezone=self.tz)
        scheduler.add_job(self._fire, self.trigger, id=self.JOB_ID, replace_existing=True,
                          misfire_grace_time=3600, coalesce=True, max_instances=1)
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn
        self._scheduler = None

    @property
    def next_run_time(self) -> datetime | None:
        job = self._scheduler.get_job(self.JOB_ID) if self._scheduler else None
        return job.next_run_time if job is not None else None

    async def _fire(self) -> None:
        try:
            await self.run_due()
        except Exception:
            log.exception("cost digest failed")

    async def run_due(self, now: datetime | None = None) -> Digest | None:
        """Send the period owed at `now` (default: the clock's), if any; returns what was sent.

        On a database with no digest recorded yet, records the last period as a baseline
        instead (a fresh install owes nothing).
        """
        async with self._lock:
            now = now or self.clock.now()
            state = await self.store.digest_state()
            if not state.any_recorded:
                last = latest_fire(self.trigger, now)
                if last is not None:
                    first = previous_fire(self.trigger, last) or last
                    await self.store.claim_digest(first, last, "baseline", now)
                return None
            period = due_period(self.trigger, state.last_end, now)
            if period is None:
                return None
            start, end = period
            # The claim is a unique key: on several replicas, one of them wins it and sends.
            if not await self.store.claim_digest(start, end, "sending", now):
                return None
            try:
                digest, png = await self.digest_for(start, end)
                await self.send(digest, png)
            except Exception as error:
                await self.store.finish_digest(end, "failed", self.clock.now(), None, repr(error)[:500])
                raise
            await self.store.finish_digest(end, "sent", self.clock.now(), digest.dollars, None)
            return digest

    async def digest_for(self, start: datetime, end: datetime) -> tuple[Digest, bytes]:
        """Build a period's digest and its chart (drawn in a worker thread)."""
        # After a fire, the previous period is the cron's; else one as long as this one.
        is_fire = bool(fire_times(self.trigger, start, start))
        before = previous_fire(self.trigger, start) if is_fire else None
        digest = await build_digest(
            self.store, start=start, end=end, tz=self.tz, budgets=self.budgets, channels=self.channels,
            previous_start=before,
        )
        png = await asyncio.to_thread(digest_chart_png, digest)
        return digest, png

    async def digest_now(self, now: datetime | None = None) -> tuple[Digest, bytes]:
        """For `/moa digest`: the period since the last fire time up to now, nothing recorded."""
        now = now or self.clock.now()
        start = latest_fire(self.trigger, now) or now - timedelta(days=7)
        if start >= now:
            start = previous_fire(self.trigger, start) or now - timedelta(days=7)
        return await self.digest_for(start, now)


def digest_destinations(send_to: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """`["telegram:123", "slack:C1"]` as (platform, chat_id) pairs."""
    out = []
    for target in send_to:
        platform, sep, chat = target.partition(":")
        if not sep or not platform or not chat:
            raise ValueError(f"digest destination {target!r} must be 'platform:chat_id'")
        out.append((platform, chat))
    return out


__all__ = [
    "DigestScheduler",
    "cron_trigger",
    "digest_destinations",
    "due_period",
    "fire_times",
    "latest_fire",
    "next_fire",
    "previous_fire",
]
