"""Spend of model calls over local periods: `/moa cost` reports (`cost_report`) and the tables of
`moa-gateway costs` (`cost_table`), with the values they are made of (`Spend`, `CostReport`;
`Tokens` and `Totals` live in `gateway.costs.values`) and the periods themselves (`period_bounds`).

Sums come from the cost rollups plus the raw rows at a period's edges (`gateway.costs.rollups`),
so a report costs the same over a day or a year of history. Dollars are the sum of *known*
costs; calls whose price is unknown add nothing to it and are counted apart, so that a report
says how much of it is unpriced. A group's `turns` counts the turns whose first call (of that
model, for a model) falls in the period: a turn whose calls straddle a period's start is counted
in the period it began calling, never twice. A report's own `turns` counts the turns *started*
in the period (refused ones excluded), from the turns table.

Periods are local to the configured time zone: a day is a calendar day, a week starts on Monday
(ISO), a month is a calendar month. Their bounds are aware datetimes in that zone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from gateway.costs.rollups import total, totals
from gateway.costs.values import Tokens, Totals
from gateway.storage import Storage, to_iso

Period = Literal["day", "week", "month"]
GroupBy = Literal["chat", "user", "preset", "model"]

PERIODS: tuple[Period, ...] = ("day", "week", "month")
# Everything of `moa-gateway costs` (and more), far in the future: "until now" without a clock.
_OPEN_END = datetime(9000, 1, 1, tzinfo=UTC)


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


# Sums -------------------------------------------------------------------------------------


def spend_of(key: str, t: Totals, turns: int, *, role: str | None = None, label: str | None = None) -> Spend:
    return Spend(key, t.dollars, t.calls, turns, t.unpriced, t.tokens, role, label)


def ranked(spends: list[Spend]) -> tuple[Spend, ...]:
    """Most expensive first (then most calls, then by name)."""
    return tuple(sorted(spends, key=lambda s: (-s.dollars, -s.calls, s.key)))


def fold(rows: list[tuple[int, tuple[Any, ...], Totals]], key: Callable[[tuple[Any, ...]], Any]) -> dict[Any, Totals]:
    """`totals` rows summed again by `key` of their group values."""
    out: dict[Any, Totals] = {}
    for _, group, t in rows:
        k = key(group)
        out[k] = out[k] + t if k in out else t
    return out


async def spent_between(
    store: Storage, start: datetime, end: datetime, *, platform: str | None = None,
    chat_id: str | None = None, user_id: str | None = None,
) -> float:
    """Known dollars of the calls in [start, end) within a scope."""
    return (await spent(store, start, end, platform=platform, chat_id=chat_id, user_id=user_id)).dollars


async def spent(
    store: Storage, start: datetime, end: datetime, *, platform: str | None = None,
    chat_id: str | None = None, user_id: str | None = None,
) -> Totals:
    """The sums of the calls in [start, end) within a scope (turn flags left out)."""
    return await total(store, start, end, platform=platform, chat_id=chat_id, user_id=user_id, turns=False)


# Reports ------------------------------------------------------------------------------------

_MODEL = ("role", "provider", "model")


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
    rows = await totals(store, [(start, end)], ("preset", *_MODEL), platform=platform, chat_id=chat_id,
                        user_id=user_id)
    overall = sum((t for _, _, t in rows), Totals())
    by_preset = [spend_of(p, t, t.turns) for p, t in fold(rows, lambda g: g[0]).items()]
    by_model = [spend_of(f"{m[1]}:{m[2]}", t, t.model_turns, role=m[0])
                for m, t in fold(rows, lambda g: g[1:]).items()]
    scope = "".join(f" AND {c} = ?" for c, v in (("platform", platform), ("chat_id", chat_id),
                                                  ("user_id", user_id)) if v is not None)
    turns = (await store.query(
        f"SELECT COUNT(*) FROM turns WHERE started_at >= ? AND started_at < ?{scope} AND status != 'refused'",
        [to_iso(start), to_iso(end), *(v for v in (platform, chat_id, user_id) if v is not None)],
    ))[0][0]
    return CostReport(
        period=period, start=start, end=end, platform=platform, chat_id=chat_id, user_id=user_id,
        dollars=overall.dollars, turns=int(turns), calls=overall.calls, unknown_calls=overall.unpriced,
        tokens=overall.tokens, by_preset=ranked(by_preset), by_model=ranked(by_model),
    )


_GROUPS: dict[str, tuple[str, ...]] = {
    "chat": ("platform", "chat_id"),
    "user": ("platform", "user_id"),
    "preset": ("preset",),
    "model": _MODEL,
}


async def cost_table(
    store: Storage, since: datetime, by: GroupBy, *, until: datetime | None = None
) -> list[Spend]:
    """Spend since `since` (until `until`, default: everything) grouped by chat, user, preset or
    model, most expensive first: the rows of `moa-gateway costs`."""
    if by not in _GROUPS:
        raise ValueError(f"unknown grouping {by!r}; expected one of {sorted(_GROUPS)}")
    rows = await totals(store, [(since, until or _OPEN_END)], _GROUPS[by])
    if by == "model":
        return list(ranked([spend_of(f"{g[1]}:{g[2]}", t, t.model_turns, role=g[0]) for _, g, t in rows]))
    return list(ranked([spend_of(":".join(g), t, t.turns) for _, g, t in rows]))
