"""The admin cost digest: what it says — `build_digest` sums one period's calls into a frozen
`Digest`; `render_digest_text` words it (platform-neutral Markdown); `digest_chart_png` draws its
spend per day by model. When it is sent is `gateway.costs.schedule`'s job.

Every figure is read from the cost rollups plus the raw rows at the period's edges
(`gateway.costs.rollups`), a handful of statements whatever the period's length: the totals and
breakdowns by preset and model, by chat, by user; the chart's local days and the users' local
days (budget alerts) as series of intervals; the chats' months so far. Turn counts by chat, user
and preset count the turns whose first call is in the period; the digest's own turn count (and
the failed ones) are the turns started in it, from the turns table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from adapters.figures import format_total, format_usd
from gateway.costs.budgets import BudgetKind, BudgetLimits, ChannelBudgets
from gateway.costs.chart import spend_chart_png
from gateway.costs.reports import (
    Spend,
    fold,
    local_midnight,
    period_bounds,
    ranked,
    spend_of,
)
from gateway.costs.rollups import total, totals
from gateway.costs.summaries import Sealing
from gateway.costs.values import Tokens, Totals
from gateway.storage import Storage, to_iso

log = logging.getLogger(__name__)

NEAR_BUDGET = 0.8  # a budget at or above this share of its limit is shown in the digest
_TICK = timedelta(microseconds=1)


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
    def priced_usd(self) -> float | None:
        """The known dollars, or None when every call is unpriced (then nothing is known)."""
        return None if self.calls and self.unknown_calls >= self.calls else self.dollars

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


def day_intervals(start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """Each local day of [start, end) as an interval (the digest's series: the chart's days, the
    users' days): the first from its midnight (a user's day counts from there, also before the
    period began), the last up to `end`."""
    days = _local_days(start, end, tz)
    midnights = [local_midnight(day, tz) for day in days]
    return [(m, min(after, end)) for m, after in
            zip(midnights, [*midnights[1:], local_midnight(days[-1] + timedelta(days=1), tz)], strict=True)]


async def build_digest(
    store: Storage,
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
    period = [(start, end)]
    days = _local_days(start, end, tz)
    local_days = day_intervals(start, end, tz)
    month_start = period_bounds("month", end - _TICK, tz)[0]
    user_day_limit = getattr(budgets, "per_user_usd_day", None)
    chat_month_default = getattr(budgets, "per_chat_usd_month", None)
    check_chats = chat_month_default is not None or any(
        getattr(c, "budget_usd_month", None) is not None for c in channels.values()
    )

    # What ended a day before the period's end is read from summaries of closed intervals (kept
    # on read, exact: gateway.costs.summaries): a long period's blocks of days, its series' local days.
    sealed = {"sealed": Sealing(end - timedelta(days=1), (min(previous_start, local_days[0][0]), end))}
    mix = await totals(store, period, ("preset", "role", "provider", "model", "status"), **sealed)
    overall = sum((t for _, _, t in mix), Totals())
    refs = {status: t.calls for (role, status), t in fold(mix, lambda g: (g[1], g[4])).items() if role == "reference"}
    by_chat = await totals(store, period, ("platform", "chat_id"), **sealed)
    # Users are ranked on dollars and calls alone (every user of the period: the widest read),
    # then the top ones' full sums are sought user by user.
    by_user = await totals(store, period, ("platform", "user_id"), dollars_only=True, **sealed)
    top = ranked([spend_of(f"{p}:{u}", t, 0) for _, (p, u), t in by_user])[:top_users]
    users = []
    for s in top:
        platform, user_id = s.key.split(":", 1)
        t = await total(store, start, end, platform=platform, user_id=user_id)
        users.append(spend_of(s.key, t, t.turns))

    # Turns started in the period: all of them (time index alone), less the refused; the failed
    # and interrupted ones sought by status (few). Never each turn's status read.
    statuses = ("refused", "failed", "interrupted")
    counted = (await store.query(
        "SELECT (SELECT COUNT(*) FROM turns /*sqlite: INDEXED BY idx_turns_started_at*/ "
        "WHERE started_at >= ? AND started_at < ?)"
        + "".join(", (SELECT COUNT(*) FROM turns /*sqlite: INDEXED BY idx_turns_status_started*/ "
                  "WHERE status = ? AND started_at >= ? AND started_at < ?)" for _ in statuses),
        [to_iso(start), to_iso(end), *(v for s in statuses for v in (s, to_iso(start), to_iso(end)))],
    ))[0]
    turns, failed_turns = int(counted[0]) - int(counted[1]), int(counted[2]) + int(counted[3])

    daily = [DaySpend(days[n], f"{provider}:{model}", t.dollars)
             for n, (provider, model), t in await totals(store, local_days, ("provider", "model"), dollars_only=True,
                                                   **sealed)]
    daily.sort(key=lambda d: (d.day, d.model))

    alerts: list[BudgetAlert] = []
    if check_chats:
        if chat_month_default is not None:
            chats = await store.query("SELECT DISTINCT platform, chat_id FROM sessions")
        else:
            chats = [tuple(key.split(":", 1)) for key in channels]
        month = {g: t.dollars for _, g, t in await totals(store, [(month_start, end)], ("platform", "chat_id"),
                                                           dollars_only=True, **sealed)}
        for platform, chat_id in chats:
            scope = f"{platform}:{chat_id}"
            dollars = month.get((platform, chat_id), 0.0)
            limit = getattr(channels.get(scope), "budget_usd_month", None)
            limit = chat_month_default if limit is None else limit
            if limit is not None and dollars >= NEAR_BUDGET * limit:
                alerts.append(BudgetAlert("chat_month", scope, dollars, limit, (end - _TICK).date()))
    if user_day_limit is not None:
        worst: dict[str, BudgetAlert] = {}
        for n, (platform, user_id), t in await totals(store, local_days, ("platform", "user_id"), dollars_only=True,
                                                      having_dollars=NEAR_BUDGET * user_day_limit, **sealed):
            scope = f"{platform}:{user_id}"
            if scope not in worst or worst[scope].spent < t.dollars:
                worst[scope] = BudgetAlert("user_day", scope, t.dollars, user_day_limit, days[n])
        alerts.extend(worst.values())
    names = await _user_names(store, {s.key for s in users} | {a.scope for a in alerts if a.kind == "user_day"})
    users = tuple(Spend(s.key, s.dollars, s.calls, s.turns, s.unknown_calls, s.tokens, None, names.get(s.key))
                  for s in users)
    alerts = [BudgetAlert(a.kind, a.scope, a.spent, a.limit, a.day, names.get(a.scope)) if a.kind == "user_day"
              else a for a in alerts]
    previous = sum((t.dollars for _, _, t in await totals(store, [(previous_start, start)], dollars_only=True,
                                                               **sealed)), 0.0)

    return Digest(
        start=start,
        end=end,
        timezone=tz.key,
        dollars=overall.dollars,
        previous_dollars=previous,
        turns=turns,
        failed_turns=failed_turns,
        calls=overall.calls,
        unknown_calls=overall.unpriced,
        tokens=overall.tokens,
        by_chat=ranked([spend_of(f"{p}:{c}", t, t.turns) for _, (p, c), t in by_chat]),
        by_preset=ranked([spend_of(p, t, t.turns) for p, t in fold(mix, lambda g: g[0]).items()]),
        by_model=ranked([spend_of(f"{m[1]}:{m[2]}", t, 0, role=m[0])
                         for m, t in fold(mix, lambda g: g[1:4]).items()]),
        top_users=users,
        failed_references=refs.get("failed", 0),
        timed_out_references=refs.get("timeout", 0),
        budget_alerts=tuple(sorted(alerts, key=lambda a: (-a.spent / a.limit if a.limit else 0, a.scope))),
        daily=tuple(daily),
    )


async def _user_names(store: Storage, scopes: set[str]) -> dict[str, str]:
    """The latest name of each "platform:user" (one statement; VALUES columns are column1, 2
    in both dialects)."""
    pairs = sorted(tuple(scope.split(":", 1)) for scope in scopes)
    if not pairs:
        return {}
    rows = await store.query(
        "SELECT v.column1, v.column2, (SELECT t.user_name FROM turns t WHERE t.platform = v.column1 "
        "AND t.user_id = v.column2 ORDER BY t.started_at DESC LIMIT 1) FROM (VALUES "
        + ", ".join("(?, ?)" for _ in pairs) + ") AS v",
        [value for pair in pairs for value in pair],
    )
    return {f"{platform}:{user_id}": name for platform, user_id, name in rows if name}


# Wording and chart --------------------------------------------------------------------------


def _pct(digest: Digest) -> str:
    pct = digest.change_pct
    sign = "+" if digest.change_usd >= 0 else "-"
    money = f"{sign}{format_usd(abs(digest.change_usd))}"
    return f"{money} ({pct:+.1f}%)" if pct is not None else f"{money} (nothing spent before)"


def _spend_line(s: Spend, name: str | None = None) -> str:
    turns = f", {s.turns} turns" if s.turns else ""
    return f"- {name or s.key}: {format_total(s.priced_usd, s.unknown_calls)} ({s.calls} calls{turns})"


def render_digest_text(digest: Digest, *, top: int = 10) -> str:
    """The digest as plain Markdown-ish text (headings, bullets, bold): platform neutral."""
    tz = ZoneInfo(digest.timezone)
    start, end = digest.start.astimezone(tz), digest.end.astimezone(tz)
    lines = [
        f"**MoA cost digest** {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({digest.timezone})",
        "",
        f"**Total:** {format_total(digest.priced_usd, digest.unknown_calls)}, {_pct(digest)} vs the previous period "
        f"({format_usd(digest.previous_dollars)})",
        f"**Turns:** {digest.turns} ({digest.failed_turns} failed or interrupted), {digest.calls} model calls",
        f"**Tokens:** {digest.tokens.input:,} in, {digest.tokens.cache_read:,} cache read, "
        f"{digest.tokens.cache_write:,} cache write, {digest.tokens.output:,} out "
        f"({digest.tokens.reasoning:,} reasoning)",
        f"**References:** {digest.failed_references} failed, {digest.timed_out_references} timed out",
    ]
    if digest.unknown_calls:
        lines.append(f"**Unpriced calls:** {digest.unknown_calls} (their dollars are unknown; the totals count the rest)")

    def section(title: str, spends: tuple[Spend, ...], names: bool = False) -> None:
        if not spends:
            return
        lines.extend(["", f"**{title}**"])
        for s in spends[:top]:
            lines.append(_spend_line(s, f"{s.label} ({s.key})" if names and s.label else None))
        if len(spends) > top:
            rest = spends[top:]
            priced = [s.dollars for s in rest if s.priced_usd is not None]
            unpriced = sum(s.unknown_calls for s in rest)
            lines.append(f"- {len(rest)} more: {format_total(sum(priced) if priced else None, unpriced)}")

    section("By chat", digest.by_chat)
    section("By preset", digest.by_preset)
    section("References", tuple(s for s in digest.by_model if s.role == "reference"))
    section("Aggregators", tuple(s for s in digest.by_model if s.role == "aggregator"))
    section("Transcription", tuple(s for s in digest.by_model if s.role == "transcription"))
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


__all__ = [
    "NEAR_BUDGET",
    "BudgetAlert",
    "DaySpend",
    "Digest",
    "build_digest",
    "day_intervals",
    "digest_chart_png",
    "render_digest_text",
]
