"""Budgets: which limits apply in a chat (`effective_limits`), what is spent and held against
them (`budget_status`, `/moa budget`), whether a turn may run (`check_budget`, before every
turn) and how that is worded.

Spend is read as every report reads it (`gateway.costs.reports.spent`: rollups plus raw edge
rows, in one statement): the rollups are written in the same transaction as the call rows, so a
call booked a moment ago counts at once. Under concurrency the admission lock and reservations
in `gateway.costs.commands` do the rest. Known dollars count against a limit; unpriced calls
cannot, and are named beside the dollars ("$0.12 + 2 unpriced") so nobody reads them as free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from adapters.figures import format_total, format_usd
from gateway.costs.reports import period_bounds, spent
from gateway.storage import Storage

BudgetKind = Literal["user_day", "chat_month"]


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
    # Calls in the budget's window that have no price: they add nothing to `spent`.
    unpriced: int = 0
    calls: int = 0

    @property
    def spent_text(self) -> str:
        """`spent` as totals read elsewhere: "$0.12 + 2 unpriced", "unknown (2 unpriced)"."""
        priced = None if self.calls and self.unpriced >= self.calls else self.spent
        return format_total(priced, self.unpriced)

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

    lines = []
    for kind, start, end, who in (("user_day", day_start, day_end, {"user_id": user_id}),
                                  ("chat_month", month_start, month_end, {"chat_id": chat_id})):
        if kind not in limits:
            continue
        limit, source = limits[kind]
        scope = f"{platform}:{next(iter(who.values()))}"
        # What is held is read before what is spent: a call booked while the spend is read is
        # then counted twice (refusing early), never dropped from both (its hold shrinks when
        # its row is committed, which a spend read begun before the commit does not see).
        reserved, running = held.held(budget_scope(kind, scope)) if held is not None else (0.0, 0)
        sums = await spent(store, start, end, platform=platform, **who)
        lines.append(BudgetLine(kind, scope, limit, sums.dollars, end, source, reserved, running,  # type: ignore[arg-type]
                                sums.unpriced, sums.calls))
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
        f"{who}: {line.spent_text} of {format_usd(line.limit)} spent{_held_text(line)}, "
        f"{format_usd(line.left)} left, resets {format_moment(line.resets_at)}"
    )


def refusal_text(line: BudgetLine) -> str:
    who = "You have" if line.kind == "user_day" else "This chat has"
    what = "your daily budget" if line.kind == "user_day" else "its monthly budget"
    return (
        f"{who} spent {line.spent_text}{_held_text(line)} of {what} of {format_usd(line.limit)}; "
        f"it resets {format_moment(line.resets_at)}. Nothing was run."
    )


__all__ = [
    "BudgetKind",
    "BudgetLimits",
    "BudgetLine",
    "BudgetVerdict",
    "ChannelBudgets",
    "HeldSpend",
    "budget_scope",
    "budget_status",
    "check_budget",
    "describe_budget",
    "effective_limits",
    "format_moment",
    "refusal_text",
]
