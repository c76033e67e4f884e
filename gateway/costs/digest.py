"""The admin cost digest: what it says, which period is due, and its schedule.

- `build_digest` aggregates one period's calls (in SQL, in the store's thread) into a frozen
  `Digest`; `render_digest_text` words it (platform-neutral Markdown); `digest_chart_png` draws
  its spend per day by model.
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
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlite_utils
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from adapters.figures import format_usd
from gateway.costs.chart import spend_chart_png
from gateway.costs.reports import (
    BudgetKind,
    BudgetLimits,
    ChannelBudgets,
    Spend,
    Tokens,
    local_midnight,
    period_bounds,
    spent_between,
)
from gateway.storage import Store, from_iso, to_iso
from moa_core.clock import Clock

log = logging.getLogger(__name__)

NEAR_BUDGET = 0.8  # a budget at or above this share of its limit is shown in the digest
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MAX_LOOKBACK = timedelta(days=3000)  # "0 0 29 2 *" fires only every four (or eight) years
_TICK = timedelta(microseconds=1)
# Scans of a time range use the created_at index: with ANALYZE statistics the planner may prefer
# a skip-scan of (platform, chat_id, created_at), several times slower for these queries.
_BY_TIME = "INDEXED BY idx_model_calls_created_at"


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


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget at or over `NEAR_BUDGET` of its limit: a chat's month so far at the end of the
    period, or a user's worst day within it."""

    kind: BudgetKind
    scope: str
    spent: float
    limit: float
    day: date
    label: str | None = None

    @property
    def over(self) -> bool:
        return self.spent >= self.limit


@dataclass(frozen=True, slots=True)
class DaySpend:
    """Known dollars of one model ("provider:model") on one local day."""

    day: date
    model: str
    dollars: float


@dataclass(frozen=True, slots=True)
class Digest:
    """The cost digest of one period [start, end) (aware datetimes in `timezone`).

    `change_pct` is None when the previous period spent nothing. `by_model` rows carry their
    role (reference or aggregator) and no turn count (0). Failed and timed-out counts are of
    reference calls; `failed_turns` counts turns that failed or were interrupted. `daily` holds
    the known dollars per local day and model, for the chart.
    """

    start: datetime
    end: datetime
    timezone: str
    dollars: float
    previous_dollars: float
    turns: int
    failed_turns: int
    calls: int
    unknown_calls: int
    tokens: Tokens
    by_chat: tuple[Spend, ...]
    by_preset: tuple[Spend, ...]
    by_model: tuple[Spend, ...]
    top_users: tuple[Spend, ...]
    failed_references: int
    timed_out_references: int
    budget_alerts: tuple[BudgetAlert, ...]
    daily: tuple[DaySpend, ...]

    @property
    def change_usd(self) -> float:
        return self.dollars - self.previous_dollars

    @property
    def change_pct(self) -> float | None:
        if self.previous_dollars == 0:
            return None
        return 100.0 * self.change_usd / self.previous_dollars

    @property
    def days(self) -> tuple[date, ...]:
        return _local_days(self.start, self.end, ZoneInfo(self.timezone))


def _local_days(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[date, ...]:
    first = start.astimezone(tz).date()
    last = (end - _TICK).astimezone(tz).date()
    return tuple(first + timedelta(days=n) for n in range((last - first).days + 1))


class _Sums:
    """Running totals for one group while folding the digest's single grouped scan."""

    __slots__ = ("calls", "dollars", "unknown", "tokens")

    def __init__(self) -> None:
        self.calls = 0
        self.dollars = 0.0
        self.unknown = 0
        self.tokens = [0, 0, 0, 0, 0]

    def add(self, calls: int, dollars: float, unknown: int, tokens: tuple[int, ...]) -> None:
        self.calls += calls
        self.dollars += dollars
        self.unknown += unknown
        for n, value in enumerate(tokens):
            self.tokens[n] += value

    def spend(self, key: str, turns: int, role: str | None = None, label: str | None = None) -> Spend:
        return Spend(key, self.dollars, self.calls, turns, self.unknown, Tokens(*self.tokens), role, label)


def _ranked(spends: list[Spend]) -> tuple[Spend, ...]:
    return tuple(sorted(spends, key=lambda s: (-s.dollars, -s.calls, s.key)))


async def build_digest(
    store: Store,
    *,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    budgets: BudgetLimits | None = None,
    channels: Mapping[str, ChannelBudgets] | None = None,
    previous_start: datetime | None = None,
    top_users: int = 5,
) -> Digest:
    """The digest of the calls and turns in [start, end).

    The previous period, for the change, is [previous_start, start) (default: as long as this
    one). Chat budgets are checked on the month so far at `end`; user budgets (the `[budgets]`
    daily limit) on each local day of the period. `channels` maps "platform:chat" to overrides.
    """
    channels = channels or {}
    start, end = start.astimezone(tz), end.astimezone(tz)
    previous_start = (previous_start or start - (end - start)).astimezone(tz)
    span = [to_iso(start), to_iso(end)]
    days = _local_days(start, end, tz)
    # Local day of a row, by comparing its UTC text with each later local midnight.
    day_starts = [to_iso(local_midnight(day, tz)) for day in days[1:]]
    day_of_row = "CASE " + "".join(f"WHEN created_at < ? THEN {n} " for n in range(len(day_starts))) + \
        f"ELSE {len(day_starts)} END"
    whole_days = [to_iso(local_midnight(days[0], tz)), to_iso(end)]
    month_start = period_bounds("month", end - _TICK, tz)[0]
    user_day_limit = getattr(budgets, "per_user_usd_day", None)
    chat_month_default = getattr(budgets, "per_chat_usd_month", None)
    check_chats = chat_month_default is not None or any(
        getattr(c, "budget_usd_month", None) is not None for c in channels.values()
    )

    def work(db: sqlite_utils.Database) -> Digest:
        total = _Sums()
        by_chat: defaultdict[tuple[str, str], _Sums] = defaultdict(_Sums)
        by_user: defaultdict[tuple[str, str], _Sums] = defaultdict(_Sums)
        by_preset: defaultdict[str, _Sums] = defaultdict(_Sums)
        by_model: defaultdict[tuple[str, str, str], _Sums] = defaultdict(_Sums)
        failed_refs = timed_out_refs = 0
        # One grouped scan of the period; every breakdown is folded from it in Python.
        for row in db.execute(
            "SELECT platform, chat_id, user_id, preset, role, provider, model, status, COUNT(*), "
            "TOTAL(cost_usd), COALESCE(SUM(cost_usd IS NULL), 0), SUM(input), SUM(cache_read), "
            f"SUM(cache_write), SUM(output), SUM(reasoning) FROM model_calls {_BY_TIME} "
            "WHERE created_at >= ? AND created_at < ? "
            "GROUP BY platform, chat_id, user_id, preset, role, provider, model, status",
            span,
        ):
            platform, chat_id, user_id, preset, role, provider, model, status = row[:8]
            calls, dollars, unknown, tokens = row[8], row[9], row[10], row[11:16]
            for sums in (total, by_chat[(platform, chat_id)], by_user[(platform, user_id)],
                         by_preset[preset], by_model[(role, provider, model)]):
                sums.add(calls, dollars, unknown, tokens)
            if role == "reference":
                failed_refs += calls if status == "failed" else 0
                timed_out_refs += calls if status == "timeout" else 0

        turns_of: dict[tuple[str, ...], int] = defaultdict(int)
        turns = failed_turns = 0
        for platform, chat_id, user_id, preset, status, count in db.execute(
            "SELECT platform, chat_id, user_id, preset, status, COUNT(*) FROM turns "
            "INDEXED BY idx_turns_started_at WHERE started_at >= ? AND started_at < ? AND status != 'refused' "
            "GROUP BY platform, chat_id, user_id, preset, status",
            span,
        ):
            turns += count
            failed_turns += count if status in ("failed", "interrupted") else 0
            for key in (("chat", platform, chat_id), ("user", platform, user_id), ("preset", preset)):
                turns_of[key] += count

        users = _ranked([
            sums.spend(f"{p}:{u}", turns_of[("user", p, u)]) for (p, u), sums in by_user.items()
        ])[:top_users]
        users = tuple(
            Spend(s.key, s.dollars, s.calls, s.turns, s.unknown_calls, s.tokens, None,
                  _user_name(db, *s.key.split(":", 1)))
            for s in users
        )

        # Per model and per user, one short index-only read each (no sort of the whole period).
        daily: list[DaySpend] = []
        for provider, model in sorted({(provider, model) for _, provider, model in by_model}):
            for n, dollars in db.execute(
                f"SELECT {day_of_row} AS day, TOTAL(cost_usd) FROM model_calls "
                "INDEXED BY idx_model_calls_model_spend WHERE provider = ? AND model = ? "
                "AND created_at >= ? AND created_at < ? GROUP BY day ORDER BY day",
                [*day_starts, provider, model, *span],
            ):
                daily.append(DaySpend(days[n], f"{provider}:{model}", dollars))
        daily.sort(key=lambda d: (d.day, d.model))
        user_alerts: dict[str, BudgetAlert] = {}
        if user_day_limit is not None:
            # A user's local day counts from its midnight, also before the period began.
            for platform, user_id in by_user:
                for n, dollars in db.execute(
                    f"SELECT {day_of_row} AS day, TOTAL(cost_usd) FROM model_calls "
                    "INDEXED BY idx_model_calls_user_spend WHERE platform = ? AND user_id = ? "
                    "AND created_at >= ? AND created_at < ? GROUP BY day HAVING TOTAL(cost_usd) >= ?",
                    [*day_starts, platform, user_id, *whole_days, NEAR_BUDGET * user_day_limit],
                ):
                    scope = f"{platform}:{user_id}"
                    if scope not in user_alerts or user_alerts[scope].spent < dollars:
                        user_alerts[scope] = BudgetAlert("user_day", scope, dollars, user_day_limit, days[n])

        alerts: list[BudgetAlert] = []
        if check_chats:
            if chat_month_default is not None:
                chats = db.execute("SELECT DISTINCT platform, chat_id FROM sessions").fetchall()
            else:
                chats = [tuple(key.split(":", 1)) for key in channels]
            for platform, chat_id in chats:
                # One short read of the (platform, chat_id, created_at, cost_usd) index per chat.
                dollars = spent_between(db, month_start, end, platform=platform, chat_id=chat_id)
                scope = f"{platform}:{chat_id}"
                limit = getattr(channels.get(scope), "budget_usd_month", None)
                limit = chat_month_default if limit is None else limit
                if limit is not None and dollars >= NEAR_BUDGET * limit:
                    alerts.append(BudgetAlert("chat_month", scope, dollars, limit, (end - _TICK).date()))
        alerts.extend(
            BudgetAlert(a.kind, a.scope, a.spent, a.limit, a.day, _user_name(db, *a.scope.split(":", 1)))
            for a in user_alerts.values()
        )

        previous = db.execute(
            f"SELECT TOTAL(cost_usd) FROM model_calls {_BY_TIME} WHERE created_at >= ? AND created_at < ?",
            [to_iso(previous_start), to_iso(start)],
        ).fetchone()[0]

        return Digest(
            start=start,
            end=end,
            timezone=tz.key,
            dollars=total.dollars,
            previous_dollars=float(previous),
            turns=turns,
            failed_turns=failed_turns,
            calls=total.calls,
            unknown_calls=total.unknown,
            tokens=Tokens(*total.tokens),
            by_chat=_ranked([s.spend(f"{p}:{c}", turns_of[("chat", p, c)]) for (p, c), s in by_chat.items()]),
            by_preset=_ranked([s.spend(p, turns_of[("preset", p)]) for p, s in by_preset.items()]),
            by_model=_ranked([
                s.spend(f"{provider}:{model}", 0, role=role)
                for (role, provider, model), s in by_model.items()
            ]),
            top_users=users,
            failed_references=failed_refs,
            timed_out_references=timed_out_refs,
            budget_alerts=tuple(sorted(alerts, key=lambda a: (-a.spent / a.limit if a.limit else 0, a.scope))),
            daily=tuple(daily),
        )

    return await store.run(work)


def _user_name(db: sqlite_utils.Database, platform: str, user_id: str) -> str | None:
    row = db.execute(
        "SELECT user_name FROM turns WHERE platform = ? AND user_id = ? ORDER BY started_at DESC LIMIT 1",
        [platform, user_id],
    ).fetchone()
    return row[0] if row and row[0] else None


# Wording and chart --------------------------------------------------------------------------


def _pct(digest: Digest) -> str:
    pct = digest.change_pct
    sign = "+" if digest.change_usd >= 0 else "-"
    money = f"{sign}{format_usd(abs(digest.change_usd))}"
    return f"{money} ({pct:+.1f}%)" if pct is not None else f"{money} (nothing spent before)"


def _spend_line(s: Spend, name: str | None = None) -> str:
    unknown = f", {s.unknown_calls} unpriced" if s.unknown_calls else ""
    turns = f", {s.turns} turns" if s.turns else ""
    return f"- {name or s.key}: {format_usd(s.dollars)} ({s.calls} calls{turns}{unknown})"


def render_digest_text(digest: Digest, *, top: int = 10) -> str:
    """The digest as plain Markdown-ish text (headings, bullets, bold): platform neutral."""
    tz = ZoneInfo(digest.timezone)
    start, end = digest.start.astimezone(tz), digest.end.astimezone(tz)
    lines = [
        f"**MoA cost digest** {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({digest.timezone})",
        "",
        f"**Total:** {format_usd(digest.dollars)}, {_pct(digest)} vs the previous period "
        f"({format_usd(digest.previous_dollars)})",
        f"**Turns:** {digest.turns} ({digest.failed_turns} failed or interrupted), {digest.calls} model calls",
        f"**Tokens:** {digest.tokens.input:,} in, {digest.tokens.cache_read:,} cache read, "
        f"{digest.tokens.cache_write:,} cache write, {digest.tokens.output:,} out "
        f"({digest.tokens.reasoning:,} reasoning)",
        f"**References:** {digest.failed_references} failed, {digest.timed_out_references} timed out",
    ]
    if digest.unknown_calls:
        lines.append(f"**Unpriced calls:** {digest.unknown_calls} (not in the totals)")

    def section(title: str, spends: tuple[Spend, ...], names: bool = False) -> None:
        if not spends:
            return
        lines.extend(["", f"**{title}**"])
        for s in spends[:top]:
            lines.append(_spend_line(s, f"{s.label} ({s.key})" if names and s.label else None))
        if len(spends) > top:
            rest = spends[top:]
            lines.append(f"- {len(rest)} more: {format_usd(sum(s.dollars for s in rest))}")

    section("By chat", digest.by_chat)
    section("By preset", digest.by_preset)
    section("References", tuple(s for s in digest.by_model if s.role == "reference"))
    section("Aggregators", tuple(s for s in digest.by_model if s.role == "aggregator"))
    section("Top users", digest.top_users, names=True)
    if digest.budget_alerts:
        lines.extend(["", "**Budgets**"])
        for alert in digest.budget_alerts:
            what = "monthly chat budget" if alert.kind == "chat_month" else f"daily user budget on {alert.day}"
            who = f"{alert.label} ({alert.scope})" if alert.label else alert.scope
            state = "OVER" if alert.over else f"{100 * alert.spent / alert.limit:.0f}%"
            lines.append(f"- {who}: {state} of {what}, {format_usd(alert.spent)} of {format_usd(alert.limit)}")
    if digest.calls == 0:
        lines.extend(["", "No model calls in this period."])
    return "\n".join(lines)


def digest_chart_png(digest: Digest) -> bytes:
    """A PNG of the period's known dollars per local day, stacked by model."""
    days = digest.days
    index = {day: n for n, day in enumerate(days)}
    series: dict[str, list[float]] = {}
    for item in digest.daily:
        series.setdefault(item.model, [0.0] * len(days))[index[item.day]] += item.dollars
    tz = ZoneInfo(digest.timezone)
    title = (f"Spend per day by model, {digest.start.astimezone(tz):%Y-%m-%d} to "
             f"{(digest.end - _TICK).astimezone(tz):%Y-%m-%d} ({digest.timezone})")
    return spend_chart_png(days, series, title)


# Once per period, recorded in SQLite --------------------------------------------------------

_RECORDED = ("baseline", "sending", "sent")


def _last_recorded_end(db: sqlite_utils.Database) -> tuple[bool, datetime | None]:
    """(whether any digest row exists, the end of the last period not owed any more)."""
    any_row = db.execute("SELECT 1 FROM digests LIMIT 1").fetchone() is not None
    row = db.execute(
        "SELECT MAX(period_end) FROM digests WHERE status IN (?, ?, ?)", list(_RECORDED)
    ).fetchone()
    return any_row, (from_iso(row[0]) if row[0] else None)


def _claim(db: sqlite_utils.Database, start: datetime, end: datetime, status: str, at: str) -> bool:
    """Record a period as `status`; False when it was already recorded (and not failed)."""
    cursor = db.execute(
        "INSERT INTO digests (period_end, period_start, status, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (period_end) DO UPDATE SET status = excluded.status, "
        "period_start = excluded.period_start, updated_at = excluded.updated_at, error = NULL "
        "WHERE digests.status = 'failed'",
        [to_iso(end), to_iso(start), status, at, at],
    )
    return cursor.rowcount == 1


def _finish(db: sqlite_utils.Database, end: datetime, status: str, at: str, dollars: float | None,
            error: str | None) -> None:
    db.execute(
        "UPDATE digests SET status = ?, updated_at = ?, dollars = ?, error = ? WHERE period_end = ?",
        [status, at, dollars, error, to_iso(end)],
    )


DigestSender = Callable[[Digest, bytes], Awaitable[None]]


class DigestScheduler:
    """Sends the cost digest on a cron, at most once per period, catching up after downtime.

    `send(digest, png)` delivers it to every admin destination; if it raises, the period is
    marked failed and owed again at the next start. `start()` must run inside the event loop.
    """

    JOB_ID = "cost_digest"

    def __init__(
        self,
        store: Store,
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
            at = to_iso(now)
            any_row, last_end = await self.store.run(_last_recorded_end)
            if not any_row:
                last = latest_fire(self.trigger, now)
                if last is not None:
                    first = previous_fire(self.trigger, last) or last
                    await self.store.run(lambda db: _claim(db, first, last, "baseline", at))
                return None
            period = due_period(self.trigger, last_end, now)
            if period is None:
                return None
            start, end = period
            if not await self.store.run(lambda db: _claim(db, start, end, "sending", at)):
                return None
            try:
                digest, png = await self.digest_for(start, end)
                await self.send(digest, png)
            except Exception as error:
                failed_at, reason = to_iso(self.clock.now()), repr(error)[:500]
                await self.store.run(lambda db: _finish(db, end, "failed", failed_at, None, reason))
                raise
            sent_at = to_iso(self.clock.now())
            await self.store.run(lambda db: _finish(db, end, "sent", sent_at, digest.dollars, None))
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
    "NEAR_BUDGET",
    "BudgetAlert",
    "DaySpend",
    "Digest",
    "DigestScheduler",
    "build_digest",
    "cron_trigger",
    "digest_chart_png",
    "digest_destinations",
    "due_period",
    "fire_times",
    "latest_fire",
    "next_fire",
    "previous_fire",
    "render_digest_text",
]
