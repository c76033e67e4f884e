"""Summaries of closed intervals: the rollups of one UTC interval [a, b) as rows of their own
in `cost_rollups` (span 'sum', bucket "a/b" in `to_iso` text), written lazily on read, so that
a long digest reads a few rows per block of days and per local day instead of every (user,
day) and the hours at every local day's edges.

Which intervals: only what a caller allows (`totals(..., sealed=Sealing(t))`: the digest
passes a day before its end) — the local days of a series (the chart's days, the users' days
of the budget alerts: a summary per local day holds each group's exact spend that day, pruned
to the alert level, so the users' series reads a few rows, not every user's day and edge
hours) and, for one long interval, aligned blocks of 2..128 UTC days among its days (`_blocks`:
~8 for 90 days, shared by periods that overlap). Only the narrow grains (mix, chat, user), a
summary per grouping (`summary_grain`), and never a scoped read (one chat's, one user's: few
rows already).

Why exact, whatever arrives later: a summary is valid only while its seal matches. The seal (a
row of span 'seal', same bucket, key columns '') holds the number of calls of the UTC days the
interval touches, read from the chat grain's day rollups BEFORE the summary was computed. Those
rollups change in the same transaction as the call rows, and call rows are only ever added, so a
late row in any of those days raises the count and the summary is computed again (and replaced:
DELETE + INSERT in one transaction). A row that commits between the count and the computation
only makes the seal too low: recomputed next time, never wrong. `raw_rows_only()` reads none.

The writes go through the store's writer (`Storage.execute_many`, one transaction: on SQLite
a job of the writer thread's batch); one that fails is logged and the digest reads the
rollups instead. Nothing of the booking path changes: no rollup row is written per call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.storage import Storage, to_iso
from gateway.storage.rollups import COLUMNS, GRAINS, KEY, SUMS

if TYPE_CHECKING:
    from gateway.costs.rollups import Piece

log = logging.getLogger(__name__)

SUMMARISED = ("mix", "chat", "user")  # the grains with summaries (the call grain is read scoped)
_DAY, _TICK = timedelta(days=1), timedelta(microseconds=1)
_EPOCH, _LONGEST_BLOCK = datetime(1970, 1, 1, tzinfo=UTC), 128
_SERIES_LONGEST = timedelta(hours=26)  # a local day (25 hours when clocks go back), not longer
_COUNT_GRAIN = "chat"  # the seals' call counts: the smallest grain of every call (~1 row per chat)
# Rows are written BATCH to a statement: one statement per row took PostgreSQL a round trip each
# (~6,000 rows on a 90-day digest's first run: ~0.4 s). 400 rows x 21 columns stay well below
# either backend's limit of parameters.
_BATCH = 400
_ROW = f"({', '.join('?' * len(COLUMNS))})"
_UPSERT_TAIL = (f" ON CONFLICT (grain, span, bucket, {', '.join(KEY)}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in SUMS))


def _replace_steps(grain: str, buckets: Sequence[str],
                   rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, Sequence[Sequence[Any]]]]:
    """The statements that replace the summaries of `buckets` of `grain` by `rows`."""
    steps: list[tuple[str, Sequence[Sequence[Any]]]] = []
    for n in range(0, len(buckets), _BATCH):
        part = buckets[n:n + _BATCH]
        steps.append((f"DELETE FROM cost_rollups WHERE grain = ? AND span IN ('sum', 'seal') AND bucket IN "
                      f"({', '.join('?' * len(part))})", [(grain, *part)]))
    for n in range(0, len(rows), _BATCH):
        part = rows[n:n + _BATCH]
        steps.append((f"INSERT INTO cost_rollups ({', '.join(COLUMNS)}) VALUES {', '.join([_ROW] * len(part))}"
                      + _UPSERT_TAIL, [[v for row in part for v in row]]))
    return steps


def summary_grain(grain: str, group: Sequence[str]) -> str:
    """The `grain` of the summaries of a grouping: the rollup grain's own name when the grouping
    keeps all of its columns, else "grain/col+col" (the chart's days keep provider and model:
    8 rows a day, not the 60 of every preset, role and status)."""
    return grain if set(group) == set(GRAINS[grain]) else f"{grain}/{'+'.join(sorted(group))}"


def summary_bucket(start: datetime, end: datetime) -> str:
    """The bucket of the summary of [start, end)."""
    return f"{to_iso(start)}/{to_iso(end)}"


def _utc_days(start: datetime, end: datetime) -> list[str]:
    """The UTC days (bucket text) that [start, end) touches."""
    first, last = start.astimezone(UTC).date(), (end - _TICK).astimezone(UTC).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def _blocks(first: datetime, after: datetime, sealed_before: datetime) -> list[tuple[datetime, datetime]]:
    """The UTC days [first, after) (midnights) that ended by `sealed_before` as aligned blocks of
    2, 4, ... 128 days (a block of 2^k days starts on a day number, since 1970-01-01, divisible
    by 2^k), the fewest that cover them, single days left out (their day rollups are as narrow):
    a 91-day period is ~8 blocks, and two periods share the blocks they have in common."""
    n, end = (first - _EPOCH) // _DAY, (min(after, sealed_before) - _EPOCH) // _DAY
    out = []
    while n < end:
        size = 1
        while size < _LONGEST_BLOCK and n % (size * 2) == 0 and n + size * 2 <= end:
            size *= 2
        if size > 1:
            out.append((_EPOCH + n * _DAY, _EPOCH + (n + size) * _DAY))
        n += size
    return out


async def execute_many(store: Storage, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
    """The summaries' writes: `steps` in one transaction of the store's writer (tests replace
    this to make the writes fail)."""
    await store.execute_many(steps)


class Sealing:
    """What a caller lets `totals` read from summaries: intervals that ended by `before`. Keeps
    the day counts it read, so that one digest's statements share them (a count read earlier is
    never too high: the summaries it validates stay exact)."""

    def __init__(self, before: datetime, covering: tuple[datetime, datetime] | None = None) -> None:
        self.before = before.astimezone(UTC)
        self._covering = _utc_days(*covering) if covering else []  # the days a caller will need
        self._day_calls: dict[str, int] = {}
        self._days: tuple[str, str] | None = None

    async def ensure(self, store: Storage, grain: str, group: Sequence[str],
                     spans: Sequence[tuple[datetime, datetime]],
                     having: float | None = None) -> set[tuple[datetime, datetime]]:
        """The intervals of `spans` whose summaries of `group` (columns of `grain`) are stored
        and exact after this call: the valid ones as they are, the others computed from the
        rollups and written. With `having`, a summary may keep only the groups spending that
        much (pruned: its seal says at what level, and it serves only reads that keep no less)."""
        if not spans:
            return set()
        label = summary_grain(grain, group)
        wanted = {summary_bucket(a, b): (a, b) for a, b in spans}
        days = sorted({d for a, b in spans for d in _utc_days(a, b)})
        known = self._days is not None and self._days[0] <= days[0] and days[-1] <= self._days[1]
        if not known:
            days = sorted({*days, *self._covering})
        seal_part = ("SELECT 1, bucket, calls, dollars, unpriced FROM cost_rollups "
                     "/*sqlite: INDEXED BY cost_rollups_key*/ WHERE grain = ? AND span = 'seal' "
                     "AND bucket >= ? AND bucket <= ?")
        params: list[Any] = [label, min(wanted), max(wanted)]
        if not known:
            seal_part = ("SELECT 0, bucket, SUM(calls), 0, 0 FROM cost_rollups /*sqlite: INDEXED BY cost_rollups_key*/ "
                         "WHERE grain = ? AND span = 'day' AND bucket >= ? AND bucket <= ? GROUP BY bucket "
                         "UNION ALL " + seal_part)
            params = [_COUNT_GRAIN, days[0], days[-1], *params]
        rows = await store.query(seal_part, params)
        if not known:
            self._day_calls = {bucket: int(calls) for kind, bucket, calls, _, _ in rows if kind == 0}
            self._days = (days[0], days[-1])
        seals = {bucket: (int(calls), float(level), bool(pruned))
                 for kind, bucket, calls, level, pruned in rows if kind == 1}
        counts = {key: sum(self._day_calls.get(d, 0) for d in _utc_days(a, b)) for key, (a, b) in wanted.items()}

        def valid(key: str) -> bool:
            calls, level, pruned = seals.get(key, (-1, 0.0, False))
            return calls == counts[key] and (not pruned or (having is not None and having >= level))

        missing = [key for key in wanted if not valid(key)]
        if missing and not await _write_summaries(store, label, group,
                                                  [(key, wanted[key], counts[key]) for key in missing], having):
            return {wanted[key] for key in wanted if key not in missing}
        return set(wanted.values())


async def _write_summaries(store: Storage, grain: str, group: Sequence[str],
                           spans: Sequence[tuple[str, tuple[datetime, datetime], int]], having: float | None) -> bool:
    """Compute the summaries of `spans` (bucket, interval, seal's count) and replace what is
    stored of them; False if that failed (logged). On PostgreSQL the rows never leave the
    server (INSERT ... SELECT of `totals`' statement): passing ~50,000 values of a 90-day
    digest's users took ~0.25 s of the client's CPU. SQLite reads them in its reader thread and
    hands them to the writer, whose thread would otherwise spend the summing on it, not booking."""
    from gateway.costs.rollups import totals, totals_sql  # (rollups imports this module)

    kept = tuple(group)
    buckets = [key for key, _, _ in spans]
    rows: list[tuple[Any, ...]] = [
        (grain, "seal", key, *([""] * len(KEY)), count, 0, 0, having or 0.0, int(having is not None),
         *([0] * (len(SUMS) - 5))) for key, _, count in spans]
    steps = _replace_steps(grain, buckets, rows)
    if store.backend == "postgresql":
        found = totals_sql([span for _, span, _ in spans], kept, having)
        if found is not None:
            sql, params = found
            sums = [f"t.c{n}" for n in range(len(SUMS))]
            sums[3] = "CASE WHEN abs(t.c3) < 1e-12 THEN 0.0 ELSE t.c3 END"
            steps.append((
                f"INSERT INTO cost_rollups ({', '.join(COLUMNS)}) SELECT ?, 'sum', b.column2, "
                + ", ".join(f"t.{c}" if c in kept else "''" for c in KEY) + f", {', '.join(sums)} FROM ({sql}) AS t "
                f"JOIN (VALUES {', '.join(['(?, ?)'] * len(buckets))}) AS b ON b.column1 = t.iv WHERE t.c0 <> 0"
                + _UPSERT_TAIL, [[grain, *params, *(v for n, key in enumerate(buckets) for v in (n, key))]]))
    else:
        summed = []
        for n, values, t in await totals(store, [span for _, span, _ in spans], kept, having_dollars=having):
            by_column = dict(zip(kept, values, strict=True))
            summed.append((grain, "sum", buckets[n], *(by_column.get(c, "") for c in KEY), t.calls, t.turns,
                           t.model_turns, t.dollars, t.unpriced, t.tokens.input, t.tokens.cache_read,
                           t.tokens.cache_write, t.tokens.output, t.tokens.reasoning))
        steps = _replace_steps(grain, buckets, [*rows, *summed])
    try:
        await execute_many(store, steps)
    except Exception:  # a summary is an optimisation: the rollups still answer
        log.warning("writing cost summaries failed; reading the rollups instead", exc_info=True)
        return False
    return True


async def whole_intervals(store: Storage, grain: str, group: Sequence[str],
                          intervals: Sequence[tuple[datetime, datetime]], sealing: Sealing,
                          having: float | None) -> dict[int, tuple[datetime, datetime]]:
    """The intervals of a series (by number, in UTC) that their summaries answer whole: those
    that ended by `sealing.before`, pruned to `having`."""
    if grain not in SUMMARISED:
        return {}
    closed = {n: (a.astimezone(UTC), b.astimezone(UTC)) for n, (a, b) in enumerate(intervals)
              if a < b <= sealing.before and b - a <= _SERIES_LONGEST}
    usable = await sealing.ensure(store, grain, group, list(closed.values()), having)
    return {n: span for n, span in closed.items() if span in usable}


async def with_blocks(store: Storage, grain: str, group: Sequence[str], plan: list[Piece],
                      sealing: Sealing) -> list[Piece]:
    """One interval's `plan` (see `gateway.costs.rollups.pieces`) with the closed blocks of UTC
    days among its days read from their summaries (complete ones: a `having` is of the whole
    interval)."""
    from gateway.costs.rollups import Piece

    if grain not in SUMMARISED:
        return plan
    out: list[Piece] = []
    for p in plan:
        blocks = _blocks(p.start, p.end, sealing.before) if p.source == "day" and p.sign == 1 else []
        usable = await sealing.ensure(store, grain, group, blocks) if blocks else set()
        at = p.start
        for a, b in blocks:
            if (a, b) in usable:
                if at < a:
                    out.append(Piece(p.interval, 1, "day", at, a))
                out.append(Piece(p.interval, 1, "sum", a, b))
                at = b
        if at < p.end:
            out.append(Piece(p.interval, p.sign, p.source, at, p.end))
    return out


__all__ = ["SUMMARISED", "Sealing", "execute_many", "summary_bucket", "summary_grain", "whole_intervals",
           "with_blocks"]
