"""Spend of model calls: period reports (`/moa cost`), terminal tables (`moa-gateway costs`) and
budgets (`/moa budget`, the check before a turn).

Everything reads the `model_calls` rows written by the store (one per reference and aggregator
call, with the turn's platform, chat, user and preset copied onto it) and aggregates in SQL,
written as the storage contract's portable SQL (`Storage.query`), so that the same statements
run on SQLite and PostgreSQL. Dollars are the sum of *known* costs; calls whose price is unknown add
nothing to it and are counted apart, so that a report says how much of it is unpriced.

Periods are local to the configured time zone: a day is a calendar day, a week starts on Monday
(ISO), a month is a calendar month. Their bounds are aware datetimes in that zone; the rows are
compared as UTC text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from adapters.figures import format_usd
from gateway.storage import Storage, to_iso

Period = Literal["day", "week", "month"]
GroupBy = Literal["chat", "user", "preset", "model"]
BudgetKind = Literal["user_day", "chat_month"]

PERIODS: tuple[Period, ...] = ("day", "week", "month")
_GROUPS: dict[str, tuple[str, ...]] = {
    "chat": ("platform", "chat_id"),
    "user": ("platform", "user_id"),
    "preset": ("preset",),
    "model": ("role", "provider", "model"),
}
# One aggregate list for every query, so every row reads the same way (see `_spend`).
# Portable SQL: COALESCE(SUM(x), 0.0) for SQLite's TOTAL. A skipped reference (a `moa:` slot)
# has a row but made no call: it is not an unpriced call.
KNOWN_DOLLARS = "COALESCE(SUM(cost_usd), 0.0)"
UNPRICED = "COALESCE(SUM(CASE WHEN cost_usd IS NULL AND status != 'skipped' THEN 1 ELSE 0 END), 0)"
_AGGREGATES = (
    f"COUNT(*), COUNT(DISTINCT turn_id), {KNOWN_DOLLARS}, {UNPRICED}, "
    "COALESCE(SUM(input), 0), COALESCE(SUM(cache_read), 0), COALESCE(SUM(cache_write), 0), "
    "COALESCE(SUM(output), 0), COALESCE(SUM(reasoning), 0)"
)


@dataclass(frozen=True, slots=True)
class Tokens:
    """The five token counts of a set of calls (`reasoning` is a part of `output`)."""

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.output + other.output,
            self.reasoning + other.reasoning,
        )

    @property
    def total(self) -> int:
        """Tokens read and written (reasoning is already inside output)."""
        return self.input + self.cache_read + self.cache_write + self.output


@dataclass(frozen=True, slots=True)
class Spend:
    """Dollars and volume of one group of calls.

    `key` names the group: "platform:chat_id", "platform:user_id", a preset, or
    "provider:model" (with `role` "reference" or "aggregator"). `turns` counts distinct turns
    among the calls. `label` is a display name where one is known (a user's name).
    """

    key: str
    dollars: float
    calls: int
    turns: int
    unknown_calls: int
    tokens: Tokens
    role: str | None = None
    label: str | None = None

    @property
    def priced_usd(self) -> float | None:
        """The known dollars, or None when every call is unpriced (then nothing is known)."""
        return None if self.calls and self.unknown_calls >= self.calls else self.dollars


@dataclass(frozen=True, slots=True)
class CostReport:
    """Spend of one scope (a chat, a user, a platform, everything) over one local period.

    `turns` counts turns started in the period (refused ones excluded); `dollars` is the sum of
    known costs, `unknown_calls` the calls that have no price.
    """

    period: Period
    start: datetime
    end: datetime
    platform: str | None
    chat_id: str | None
    user_id: str | None
    dollars: float
    turns: int
    calls: int
    unknown_calls: int
    tokens: Tokens
    by_preset: tuple[Spend, ...]
    by_model: tuple[Spend, ...]

    @property
    def priced_usd(self) -> float | None:
        """The known dollars, or None when every call is unpriced (then nothing is known)."""
        return None if self.calls and self.unknown_calls >= self.calls else self.dollars

    @property
    def references(self) -> tuple[Spend, ...]:
        return tuple(s for s in self.by_model if s.role == "reference")

    @property
    def aggregators(self) -> tuple[Spend, ...]:
        return tuple(s for s in self.by_model if s.role == "aggregator")

    @property
    def transcriptions(self) -> tuple[Spend, ...]:
        """Speech-to-text calls of voice messages and audio files."""
        return tuple(s for s in self.by_model if s.role == "transcription")


class HeldSpend(Protocol):
    """Spend held for running turns (`gateway.costs.reservations.Reservations` fits)."""

    def held(self, scope: str) -> tuple[float, int]:
        """Dollars still expected from the running turns of `scope`, and how many they are."""
        ...


def budget_scope(kind: BudgetKind, scope: str) -> str:
    """The key a budget's reservations are held under: `user_day:platform:user`, ..."""
    return f"{kind}:{scope}"


class BudgetLimits(Protocol):
    """Global budgets (the `[budgets]` section; `gateway.config.BudgetSettings` fits)."""

    @property
    def per_user_usd_day(self) -> float | None: ...

    @property
    def per_chat_usd_month(self) -> float | None: ...


class ChannelBudgets(Protocol):
    """A chat's overrides (`[channels."platform:chat"]`; `gateway.config.ChannelSettings` fits)."""

    @property
    def budget_usd_month(self) -> float | None: ...

    @property
    def budget_usd_day_per_user(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget that applies to a turn: what it allows, what is spent, when it starts over.

    `user_day` counts the user's spend on the platform (every chat) during the local day;
    `chat_month` counts the chat's spend during the local month. `source` says whether the
    limit comes from `[budgets]` ("config") or the chat's override ("channel").
    """

    kind: BudgetKind
    scope: str
    limit: float
    spent: float
    resets_at: datetime
    source: Literal["config", "channel"]
    # Held for turns of this scope still running: what they are expected to cost beyond what
    # they have booked so far (see gateway.costs.reservations).
    reserved: float = 0.0
    running: int = 0

    @property
    def left(self) -> float:
        return max(0.0, self.limit - self.spent - self.reserved)

    @property
    def reached(self) -> bool:
        """Spent, or held for running turns: another turn is refused from here."""
        return self.spent + self.reserved >= self.limit

    @property
    def ratio(self) -> float:
        return (self.spent + self.reserved) / self.limit if self.limit > 0 else float("inf")


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """Whether a turn may run. Refused when a budget is already reached (spent >= limit);
    `spent`/`limit`/`resets_at` describe that budget, or (when allowed) the one closest to its
    limit, or nothing when no budget applies."""

    allowed: bool
    reason: str
    spent: float
    limit: float | None
    resets_at: datetime | None


# Periods ------------------------------------------------------------------------------------


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The start of a local calendar day, as an aware datetime in `tz`."""
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def period_bounds(period: Period, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The local day, ISO week (from Monday) or calendar month that contains `now`."""
    today = now.astimezone(tz).date()
    if period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = _next_month(first)
    else:
        raise ValueError(f"unknown period {period!r}; expected one of {PERIODS}")
    return local_midnight(first, tz), local_midnight(after, tz)


# SQL helpers (portable SQL through `Storage.query`) -----------------------------------------


def _scope(platform: str | None, chat_id: str | None, user_id: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in (("platform", platform), ("chat_id", chat_id), ("user_id", user_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return "".join(f" AND {c}" for c in clauses), params


def _spend(key: str, row: tuple[Any, ...], *, role: str | None = None, label: str | None = None) -> Spend:
    """A `Spend` from the nine `_AGGREGATES` columns at the end of `row`."""
    calls, turns, dollars, unknown, i, cr, cw, o, r = row[-9:]
    return Spend(key, float(dollars), int(calls), int(turns), int(unknown), Tokens(i, cr, cw, o, r), role, label)


async def _grouped(store: Storage, by: GroupBy, where: str, params: list[Any]) -> list[Spend]:
    columns = _GROUPS[by]
    group = ", ".join(columns)
    rows = await store.query(
        f"SELECT {group}, {_AGGREGATES} FROM model_calls WHERE {where} GROUP BY {group}", params
    )
    out = []
    for row in rows:
        if by == "model":
            out.append(_spend(f"{row[1]}:{row[2]}", row, role=row[0]))
        else:
            out.append(_spend(":".join(row[: len(columns)]), row))
    return sorted(out, key=lambda s: (-s.dollars, -s.calls, s.key))


async def spent_between(
    store: Storage, start: datetime, end: datetime, *, platform: str | None = None,
    chat_id: str | None = None, user_id: str | None = None,
) -> float:
    """Known dollars of the calls in [start, end) within a scope."""
    scope, params = _scope(platform, chat_id, user_id)
    rows = await store.query(
        f"SELECT {KNOWN_DOLLARS} FROM model_calls WHERE created_at >= ? AND created_at < ?{scope}",
        [to_iso(start), to_iso(end), *params],
    )
    return float(rows[0][0])


# Reports ------------------------------------------------------------------------------------


async def cost_report(
    store: Storage,
    *,
    period: Period,
    now: datetime,
    tz: ZoneInfo,
    platform: str | None,
    chat_id: str | None,
    user_id: str | None,
) -> CostReport:
    """Spend of the local `period` containing `now`, for the calls matching every given filter
    (platform, chat, user; None means any). `/moa cost` asks once for the chat and once for the
    caller; an admin's `all` leaves chat and user out."""
    start, end = period_bounds(period, now, tz)
    scope, scope_params = _scope(platform, chat_id, user_id)
    where = f"created_at >= ? AND created_at < ?{scope}"
    params = [to_iso(start), to_iso(end), *scope_params]

    total = (await store.query(f"SELECT {_AGGREGATES} FROM model_calls WHERE {where}", params))[0]
    by_preset = await _grouped(store, "preset", where, params)
    by_model = await _grouped(store, "model", where, params)
    turns = (await store.query(
        f"SELECT COUNT(*) FROM turns WHERE started_at >= ? AND started_at < ?{scope} AND status != 'refused'",
        params,
    ))[0][0]
    overall = _spend("total", total)
    return CostReport(
        period=period, start=start, end=end, platform=platform, chat_id=chat_id, user_id=user_id,
        dollars=overall.dollars, turns=int(turns), calls=overall.calls,
        unknown_calls=overall.unknown_calls, tokens=overall.tokens,
        by_preset=tuple(by_preset), by_model=tuple(by_model),
    )


async def cost_table(
    store: Storage, since: datetime, by: GroupBy, *, until: datetime | None = None
) -> list[Spend]:
    """Spend since `since` (until `until`, default: everything) grouped by chat, user, preset or
    model, most expensive first: the rows of `moa-gateway costs`."""
    if by not in _GROUPS:
        raise ValueError(f"unknown grouping {by!r}; expected one of {sorted(_GROUPS)}")
    where, params = "created_at >= ?", [to_iso(since)]
    if until is not None:
        where += " AND created_at < ?"
        params.append(to_iso(until))
    return await _grouped(store, by, where, params)


# Budgets ------------------------------------------------------------------------------------


def effective_limits(
    budgets: BudgetLimits | None, channel_override: ChannelBudgets | None
) -> dict[BudgetKind, tuple[float, Literal["config", "channel"]]]:
    """The limits that apply in a chat: its override where set, else `[budgets]`."""
    out: dict[BudgetKind, tuple[float, Literal["config", "channel"]]] = {}
    pairs: tuple[tuple[BudgetKind, float | None, float | None], ...] = (
        ("user_day", getattr(channel_override, "budget_usd_day_per_user", None),
         getattr(budgets, "per_user_usd_day", None)),
        ("chat_month", getattr(channel_override, "budget_usd_month", None),
         getattr(budgets, "per_chat_usd_month", None)),
    )
    for kind, override, default in pairs:
        if override is not None:
            out[kind] = (float(override), "channel")
        elif default is not None:
            out[kind] = (float(default), "config")
    return out


async def budget_status(
    store: Storage,
    budgets: BudgetLimits | None,
    channel_override: ChannelBudgets | None,
    platform: str,
    chat_id: str,
    user_id: str,
    now: datetime,
    tz: ZoneInfo,
    held: HeldSpend | None = None,
) -> tuple[BudgetLine, ...]:
    """Every budget that applies to this user in this chat, with spend and reset time, and
    (given `held`) what running turns of each scope are still expected to cost."""
    limits = effective_limits(budgets, channel_override)
    if not limits:
        return ()
    day_start, day_end = period_bounds("day", now, tz)
    month_start, month_end = period_bounds("month", now, tz)

    def line(kind: BudgetKind, scope: str, spent: float, resets_at: datetime) -> BudgetLine:
        limit, source = limits[kind]
        reserved, running = held.held(budget_scope(kind, scope)) if held is not None else (0.0, 0)
        return BudgetLine(kind, scope, limit, spent, resets_at, source, reserved, running)

    lines = []
    if "user_day" in limits:
        spent = await spent_between(store, day_start, day_end, platform=platform, user_id=user_id)
        lines.append(line("user_day", f"{platform}:{user_id}", spent, day_end))
    if "chat_month" in limits:
        spent = await spent_between(store, month_start, month_end, platform=platform, chat_id=chat_id)
        lines.append(line("chat_month", f"{platform}:{chat_id}", spent, month_end))
    return tuple(lines)


async def check_budget(
    store: Storage,
    budgets: BudgetLimits | None,
    channel_override: ChannelBudgets | None,
    platform: str,
    chat_id: str,
    user_id: str,
    now: datetime,
    tz: ZoneInfo,
    held: HeldSpend | None = None,
) -> BudgetVerdict:
    """May a turn run? Refused when a budget is already reached: spent, plus what the running
    turns of its scope are still expected to cost (`held`), is at or over the limit."""
    lines = await budget_status(store, budgets, channel_override, platform, chat_id, user_id, now, tz, held)
    if not lines:
        return BudgetVerdict(True, "", 0.0, None, None)
    reached = [line for line in lines if line.reached]
    if reached:
        line = max(reached, key=lambda b: b.resets_at)  # the refusal lasts until the latest reset
        return BudgetVerdict(False, refusal_text(line), line.spent, line.limit, line.resets_at)
    line = max(lines, key=lambda b: b.ratio)
    return BudgetVerdict(True, "", line.spent, line.limit, line.resets_at)


# Wording ------------------------------------------------------------------------------------


def format_moment(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M %Z")


def _held_text(line: BudgetLine) -> str:
    if not line.running:
        return ""
    turns = "turn" if line.running == 1 else "turns"
    return f" (+ {format_usd(line.reserved)} held for {line.running} running {turns})"


def describe_budget(line: BudgetLine) -> str:
    who = "your daily budget" if line.kind == "user_day" else "this chat's monthly budget"
    return (
        f"{who}: {format_usd(line.spent)} of {format_usd(line.limit)} spent{_held_text(line)}, "
        f"{format_usd(line.left)} left, resets {format_moment(line.resets_at)}"
    )


def refusal_text(line: BudgetLine) -> str:
    who = "You have" if line.kind == "user_day" else "This chat has"
    what = "your daily budget" if line.kind == "user_day" else "its monthly budget"
    return (
        f"{who} spent {format_usd(line.spent)}{_held_text(line)} of {what} of {format_usd(line.limit)}; "
        f"it resets {format_moment(line.resets_at)}. Nothing was run."
    )
