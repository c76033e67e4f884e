"""The admin cost digest: what it says — `build_digest` aggregates one period's calls (portable
SQL through `Storage.query`, so on SQLite and PostgreSQL alike) into a frozen `Digest`; `render_digest_text` words it (platform-neutral
Markdown); `digest_chart_png` draws its spend per day by model. When it is sent is
`gateway.costs.schedule`'s job.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from adapters.figures import format_total, format_usd
from gateway.costs.chart import spend_chart_png
from gateway.costs.reports import (
    KNOWN_DOLLARS,
    UNPRICED,
    BudgetKind,
    BudgetLimits,
    ChannelBudgets,
    Spend,
    Tokens,
    local_midnight,
    period_bounds,
    spent_between,
)
from gateway.storage import Storage, to_iso

log = logging.getLogger(__name__)

NEAR_BUDGET = 0.8  # a budget at or above this share of its limit is shown in the digest
_TICK = timedelta(microseconds=1)
# Scans of a time range use the created_at index: with ANALYZE statistics SQLite's planner may
# prefer a skip-scan of (platform, chat_id, created_at), several times slower for these queries.
# Hints are portable-SQL comments that only the SQLite backend unwraps (gateway.storage.contract).
_BY_TIME = "/*sqlite: INDEXED BY idx_model_calls_created_at*/"


def _indexed_by(index: str) -> str:
    return f"/*sqlite: INDEXED BY {index}*/"


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

    async def work() -> Digest:
        total = _Sums()
        by_chat: defaultdict[tuple[str, str], _Sums] = defaultdict(_Sums)
        by_user: defaultdict[tuple[str, str], _Sums] = defaultdict(_Sums)
        by_preset: defaultdict[str, _Sums] = defaultdict(_Sums)
        by_model: defaultdict[tuple[str, str, str], _Sums] = defaultdict(_Sums)
        failed_refs = timed_out_refs = 0
        # One grouped scan of the period; every breakdown is folded from it in Python.
        for row in await store.query(
            "SELECT platform, chat_id, user_id, preset, role, provider, model, status, COUNT(*), "
            f"{KNOWN_DOLLARS}, {UNPRICED}, SUM(input), SUM(cache_read), "
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
        for platform, chat_id, user_id, preset, status, count in await store.query(
            f"SELECT platform, chat_id, user_id, preset, status, COUNT(*) FROM turns {_indexed_by('idx_turns_started_at')} "
            "WHERE started_at >= ? AND started_at < ? AND status != 'refused' "
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
        users = tuple([
            Spend(s.key, s.dollars, s.calls, s.turns, s.unknown_calls, s.tokens, None,
                  await _user_name(store, *s.key.split(":", 1)))
            for s in users
        ])

        # Per model and per user, one short index-only read each (no sort of the whole period).
        daily: list[DaySpend] = []
        for provider, model in sorted({(provider, model) for _, provider, model in by_model}):
            for n, dollars in await store.query(
                f"SELECT {day_of_row} AS day, {KNOWN_DOLLARS} FROM model_calls "
                f"{_indexed_by('idx_model_calls_model_spend')} WHERE provider = ? AND model = ? "
                "AND created_at >= ? AND created_at < ? GROUP BY day ORDER BY day",
                [*day_starts, provider, model, *span],
            ):
                daily.append(DaySpend(days[n], f"{provider}:{model}", dollars))
        daily.sort(key=lambda d: (d.day, d.model))
        user_alerts: dict[str, BudgetAlert] = {}
        if user_day_limit is not None:
            # A user's local day counts from its midnight, also before the period began.
            for platform, user_id in by_user:
                for n, dollars in await store.query(
                    f"SELECT {day_of_row} AS day, {KNOWN_DOLLARS} FROM model_calls "
                    f"{_indexed_by('idx_model_calls_user_spend')} WHERE platform = ? AND user_id = ? "
                    f"AND created_at >= ? AND created_at < ? GROUP BY day HAVING {KNOWN_DOLLARS} >= ?",
                    [*day_starts, platform, user_id, *whole_days, NEAR_BUDGET * user_day_limit],
                ):
                    scope = f"{platform}:{user_id}"
                    if scope not in user_alerts or user_alerts[scope].spent < dollars:
                        user_alerts[scope] = BudgetAlert("user_day", scope, dollars, user_day_limit, days[n])

        alerts: list[BudgetAlert] = []
        if check_chats:
            if chat_month_default is not None:
                chats = await store.query("SELECT DISTINCT platform, chat_id FROM sessions")
            else:
                chats = [tuple(key.split(":", 1)) for key in channels]
            for platform, chat_id in chats:
                # One short read of the (platform, chat_id, created_at, cost_usd) index per chat.
                dollars = await spent_between(store, month_start, end, platform=platform, chat_id=chat_id)
                scope = f"{platform}:{chat_id}"
                limit = getattr(channels.get(scope), "budget_usd_month", None)
                limit = chat_month_default if limit is None else limit
                if limit is not None and dollars >= NEAR_BUDGET * limit:
                    alerts.append(BudgetAlert("chat_month", scope, dollars, limit, (end - _TICK).date()))
        alerts.extend([
            BudgetAlert(a.kind, a.scope, a.spent, a.limit, a.day, await _user_name(store, *a.scope.split(":", 1)))
            for a in user_alerts.values()
        ])

        previous = (await store.query(
            f"SELECT {KNOWN_DOLLARS} FROM model_calls {_BY_TIME} WHERE created_at >= ? AND created_at < ?",
            [to_iso(previous_start), to_iso(start)],
        ))[0][0]

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

    return await work()


async def _user_name(store: Storage, platform: str, user_id: str) -> str | None:
    rows = await store.query(
        "SELECT user_name FROM turns WHERE platform = ? AND user_id = ? ORDER BY started_at DESC LIMIT 1",
        [platform, user_id],
    )
    return rows[0][0] if rows and rows[0][0] else None


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
    "digest_chart_png",
    "render_digest_text",
]
