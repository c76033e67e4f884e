"""Cost rollups, the read side: spend of any time interval (a local day, week, month, a digest's
period, each local day of a chart) from `cost_rollups` plus the few raw `model_calls` rows the
rollups cannot answer, as one portable SQL statement (`totals`).

The rollups (written by `gateway.storage.rollups`, in the same transaction as the call rows, so
they always include the current partial day and every call just booked) are per UTC day, and
for the narrow grains also per UTC hour. An interval [start, end) in any time zone is summed as:

- the UTC days whose noon lies inside it (their day rollups),
- plus what the interval has before the first / after the last of those days, or minus what
  those days have before its start / after its end (never more than 12 hours each side),
- each such edge as whole UTC hours (hour rollups) and, for what is left of an hour (zones at
  :30 or :45, or an end at "now"), the raw rows; the `call` grain, which has no hour rollups,
  reads its edges from the raw rows (it is only used filtered by one chat or one user: few rows).

So a Berlin local day (22:00 to 22:00 UTC) is one UTC day, plus two hours of the day before,
minus its own last two hours. Counts are exact; dollars are exact up to float rounding.

Why UTC buckets and not the configured zone's days: the zone is config (`[gateway] timezone`,
`[digest] timezone`, they may differ and change) while rollups are written by the store, which
knows no zone; UTC buckets never need rebuilding and answer every zone the same way.

A digest also reads summaries of closed intervals (`gateway.costs.summaries`: its series' local
days, a long period's blocks of days), kept in the same table and made from these sums.

`raw_rows_only()` makes every sum read the raw rows alone (no summaries): tests compare both answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gateway.costs.summaries import Sealing, summary_bucket, summary_grain, whole_intervals, with_blocks
from gateway.costs.values import Tokens, Totals
from gateway.storage import Storage, to_iso
from gateway.storage.rollups import GRAINS, SPAN_WIDTH, SPANS

_DAY, _HOUR, _NOON = timedelta(days=1), timedelta(hours=1), timedelta(hours=12)
_RAW_ONLY: ContextVar[bool] = ContextVar("cost_rollups_raw_only", default=False)
# Smallest first: the narrowest grain that keeps the columns a query needs is read.
_GRAIN_ORDER = ("chat", "user", "mix", "call")
_NO_TOKENS = Tokens()
_SUM_COLUMNS = ("calls", "turns", "model_turns", "dollars", "unpriced", "input", "cache_read", "cache_write",
                "output", "reasoning")


@contextmanager
def raw_rows_only() -> Iterator[None]:
    """Within this block every sum reads the raw rows alone (the reference answer)."""
    token = _RAW_ONLY.set(True)
    try:
        yield
    finally:
        _RAW_ONLY.reset(token)


@dataclass(frozen=True, slots=True)
class Piece:
    """A signed part of interval number `interval`: day or hour rollups, raw rows, or the summary
    of exactly [start, end) (`gateway.costs.summaries`)."""

    interval: int
    sign: Literal[1, -1]
    source: Literal["day", "hour", "raw", "sum"]
    start: datetime
    end: datetime


def _floor(moment: datetime, unit: timedelta) -> datetime:
    utc = moment.astimezone(UTC)
    return utc.replace(minute=0, second=0, microsecond=0, **({"hour": 0} if unit == _DAY else {}))


def _ceil(moment: datetime, unit: timedelta) -> datetime:
    floor = _floor(moment, unit)
    return floor if floor == moment else floor + unit


def _cover(n: int, sign: Literal[1, -1], start: datetime, end: datetime, hourly: bool) -> list[Piece]:
    if start >= end:
        return []
    first, after = _ceil(start, _HOUR), _floor(end, _HOUR)
    if not hourly or first >= after:
        return [Piece(n, sign, "raw", start, end)]
    out = [Piece(n, sign, "hour", first, after)]
    if start < first:
        out.append(Piece(n, sign, "raw", start, first))
    if after < end:
        out.append(Piece(n, sign, "raw", after, end))
    return out


def pieces(intervals: Sequence[tuple[datetime, datetime]], *, hourly: bool) -> list[Piece]:
    """How each interval is summed (see the module docstring); `hourly`: hour rollups exist."""
    out: list[Piece] = []
    for n, (start, end) in enumerate(intervals):
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if start >= end:
            continue
        if _RAW_ONLY.get():
            out.append(Piece(n, 1, "raw", start, end))
            continue
        first, after = _ceil(start - _NOON, _DAY), _ceil(end - _NOON, _DAY)  # days whose noon is inside
        if first >= after:
            out.extend(_cover(n, 1, start, end, hourly))
            continue
        out.append(Piece(n, 1, "day", first, after))
        out.extend(_cover(n, 1, start, first, hourly) if start < first else _cover(n, -1, first, start, hourly))
        out.extend(_cover(n, 1, after, end, hourly) if end > after else _cover(n, -1, end, after, hourly))
    return out


def grain_for(columns: set[str]) -> str:
    """The narrowest rollup grain that keeps every one of `columns`."""
    return next(g for g in _GRAIN_ORDER if columns <= set(GRAINS[g]))


def _bucket(moment: datetime, span: str) -> str:
    return to_iso(moment)[: SPAN_WIDTH[span]]


# Raw rows' sums, one row at a time, each times its piece's sign (`p.sign`).
_FIRST_TURN = "CASE WHEN EXISTS (SELECT 1 FROM model_calls e WHERE e.turn_id = m.turn_id AND e.id < m.id) THEN 0 ELSE 1 END"
_FIRST_MODEL = ("CASE WHEN EXISTS (SELECT 1 FROM model_calls e WHERE e.turn_id = m.turn_id AND e.id < m.id "
                "AND e.role = m.role AND e.provider = m.provider AND e.model = m.model) THEN 0 ELSE 1 END")


def _raw_values(turns: bool) -> tuple[str, ...]:
    return ("1", *((_FIRST_TURN, _FIRST_MODEL) if turns else ("0", "0")), "COALESCE(m.cost_usd, 0.0)",
            "CASE WHEN m.cost_usd IS NULL AND m.status != 'skipped' THEN 1 ELSE 0 END",
            "m.input", "m.cache_read", "m.cache_write", "m.output", "m.reasoning")


def _signed(values: Sequence[str], keep: Sequence[int], sign: int) -> str:
    return ", ".join(f"-({values[n]}) AS c{n}" if sign < 0 else f"{values[n]} AS c{n}" for n in keep)


def _bounds(p: Piece) -> list[str]:
    """A piece's [lo, hi) as the column compares it: created_at, or a day or hour bucket."""
    if p.source == "raw":
        return [to_iso(p.start), to_iso(p.end)]
    return [_bucket(p.start, p.source), _bucket(p.end, p.source)]


def _listable(p: Piece) -> list[str] | None:
    """The buckets of a day piece of one day or of an hour piece (at most 12 hours: an edge), or
    None: a longer piece is read as a range."""
    unit = {"day": _DAY, "hour": _HOUR}.get(p.source)
    if unit is None or p.end - p.start > (unit if p.source == "day" else _NOON):
        return None
    count = (p.end - p.start) // unit
    return [_bucket(p.start + n * unit, p.source) for n in range(count)]


def _rollup_index(scope: dict[str, str]) -> str:
    """The index that seeks a scope's rollups: one chat's or one user's (then the bucket range),
    else the key index (grain, span, bucket)."""
    if "platform" in scope and "chat_id" in scope:
        return "cost_rollups_chat"
    return "cost_rollups_user" if "platform" in scope and "user_id" in scope else "cost_rollups_key"


async def totals(
    store: Storage,
    intervals: Sequence[tuple[datetime, datetime]],
    group: Sequence[str] = (),
    *,
    platform: str | None = None,
    chat_id: str | None = None,
    user_id: str | None = None,
    turns: bool = True,
    dollars_only: bool = False,
    having_dollars: float | None = None,
    sealed: Sealing | None = None,
) -> list[tuple[int, tuple[Any, ...], Totals]]:
    """Sums of the calls in each interval (aware datetimes, any zone) grouped by `group`
    (model_calls key columns), within a scope (None: any), as (interval number, group values,
    totals) for every group that has calls. `turns=False` skips the first-call flags of raw rows
    (their cost is a lookup per row); `dollars_only` sums calls and dollars alone (the rest is
    0: series want no more); `having_dollars` keeps only groups spending that much;
    `sealed`: what ended by its time may be read from (and first written to) summaries of
    closed intervals (`gateway.costs.summaries`: a series' intervals, one interval's blocks of days).

    One statement: a UNION ALL of one SELECT per piece (`pieces`), each an index range of the
    rollups' key index (grain, span, bucket) or scope index (grain, span, platform, chat or
    user, bucket), or of model_calls' time or scope index; in a series (several intervals) the
    pieces of one bucket are one SELECT per span, a seek per listed bucket."""
    scope = {c: v for c, v in (("platform", platform), ("chat_id", chat_id), ("user_id", user_id)) if v is not None}
    grain = grain_for(set(group) | set(scope))
    summarising = sealed if sealed is not None and not scope and not _RAW_ONLY.get() else None
    # A series' closed intervals whole from their summaries (the rest planned as before); one
    # interval's closed blocks of days from theirs.
    whole = (await whole_intervals(store, grain, group, intervals, summarising, having_dollars)
             if summarising and len(intervals) > 1 else {})
    plan = pieces([(a, a) if n in whole else (a, b) for n, (a, b) in enumerate(intervals)],
                  hourly="hour" in SPANS[grain]) + [Piece(n, 1, "sum", a, b) for n, (a, b) in whole.items()]
    if not plan:
        return []
    if summarising and len(intervals) == 1:
        plan = await with_blocks(store, grain, group, plan, summarising)
    keep = (0, 3) if dollars_only else tuple(range(len(_SUM_COLUMNS)))
    sql, params = _statement(plan, len(intervals), group, grain, scope, keep, turns, having_dollars)
    width = len(group)
    out = []
    if dollars_only:  # calls and dollars alone (a series: thousands of rows): nothing else to unpack
        for row in await store.query(sql, params):
            calls, dollars = row[1 + width], float(row[2 + width] or 0.0)
            if calls:  # else everything in it was subtracted again: no calls
                out.append((int(row[0]), tuple(row[1:1 + width]),
                            Totals(int(calls), 0, 0, 0.0 if abs(dollars) < 1e-12 else dollars, 0, _NO_TOKENS)))
        return out
    for row in await store.query(sql, params):
        values = row[1 + width:]
        if not values[0]:
            continue  # everything in it was subtracted again: no calls
        dollars = float(values[3] or 0.0)
        out.append((int(row[0]), tuple(row[1:1 + width]), Totals(
            int(values[0]), int(values[1] or 0), int(values[2] or 0), 0.0 if abs(dollars) < 1e-12 else dollars,
            int(values[4] or 0), Tokens(*(int(v or 0) for v in values[5:])))))
    return out


def totals_sql(intervals: Sequence[tuple[datetime, datetime]], group: Sequence[str],
               having_dollars: float | None = None) -> tuple[str, list[Any]] | None:
    """The statement `totals` runs for an unscoped read of every sum (no summaries): columns
    iv, the group's, c0..c9 (`_SUM_COLUMNS`); None when no interval has a piece. For SQL that
    keeps its result (`gateway.costs.summaries` on PostgreSQL: INSERT ... SELECT)."""
    grain = grain_for(set(group))
    plan = pieces(intervals, hourly="hour" in SPANS[grain])
    if not plan:
        return None
    return _statement(plan, len(intervals), group, grain, {}, tuple(range(len(_SUM_COLUMNS))), True, having_dollars)


def _statement(plan: Sequence[Piece], count: int, group: Sequence[str], grain: str, scope: dict[str, str],
               keep: tuple[int, ...], turns: bool, having_dollars: float | None) -> tuple[str, list[Any]]:
    """The one statement of `totals` for a plan of `count` intervals, and its parameters."""
    # One SELECT per piece, its bounds parameters: each planner then sees one index range (with
    # a join to a VALUES list of ranges, PostgreSQL cannot estimate a range per outer row and reads
    # a grain and span of every day instead; SQLite may build a Bloom filter over the whole table).
    # A series' one-bucket pieces (a local day is one UTC day and an hour or two each side) are
    # listed instead: one SELECT per span, a VALUES list (bucket, interval, sign) joined on the
    # bucket, each row an index seek of one bucket; 274 SELECTs over 90 days took PostgreSQL ~12 ms
    # to plan and ran as a parallel append.
    # On SQLite a range part sums its own rows by group (a hint, like INDEXED BY: PostgreSQL reads
    # a comment), so that the outer query regroups a row per group and part, not every rollup row
    # of the range: SQLite hands each row of a UNION ALL up one at a time (the all-rows digest's
    # users: ~50 ms of CPU, ~35 ms so). PostgreSQL planned that early aggregate in parallel
    # workers (by chat over 91 days: 7 -> 18 ms). Listed parts sum nothing first: a bucket's rows
    # are one per group already, and a second sort of them cost more than it saved.
    listed: dict[str, list[Any]] = {"day": [], "hour": [], "sum": []}
    ranged: list[Piece] = []
    for p in plan:
        if p.source == "sum":  # one row per group already, sought by its bucket
            listed["sum"] += [summary_bucket(p.start, p.end), p.interval, p.sign]
            continue
        buckets = _listable(p) if count > 1 else None
        if buckets is None:
            ranged.append(p)
        else:
            listed[p.source] += [v for bucket in buckets for v in (bucket, p.interval, p.sign)]
    parts: list[str] = []
    params: list[Any] = []
    raw_hint = "" if scope else " /*sqlite: INDEXED BY idx_model_calls_created_at*/"
    where_scope = "".join(f" AND {{t}}.{c} = ?" for c in scope)
    rollup_columns = [f"r.{c}" for c in _SUM_COLUMNS]
    for span, values in listed.items():
        if values:
            # CROSS JOIN: SQLite keeps the list outside (a seek per bucket); PostgreSQL plans it
            # freely. The LIMIT tells SQLite's planner how long the list is: without it, given a big
            # history's statistics, it builds a Bloom filter first (a read of the grain's whole span).
            parts.append(
                f"SELECT v.column2 AS iv, {''.join(f'r.{c}, ' for c in group)}"
                + ", ".join(f"v.column3 * {rollup_columns[n]} AS c{n}" for n in keep)
                + f" FROM (SELECT * FROM (VALUES {', '.join(['(?, ?, ?)'] * (len(values) // 3))}) AS w "
                f"LIMIT {len(values) // 3}) AS v CROSS JOIN cost_rollups r "
                f"/*sqlite: INDEXED BY {_rollup_index(scope)}*/ WHERE r.grain = ? AND r.span = '{span}' "
                "AND r.bucket = v.column1" + where_scope.format(t="r"))
            params += [*values, summary_grain(grain, group) if span == "sum" else grain, *scope.values()]
    for p in ranged:
        if p.source == "raw":
            parts.append(
                f"SELECT {p.interval} AS iv, {''.join(f'm.{c}, ' for c in group)}"
                f"{_signed(_raw_values(turns), keep, p.sign)} FROM model_calls m{raw_hint} "
                "WHERE m.created_at >= ? AND m.created_at < ?" + where_scope.format(t="m"))
            params += [*_bounds(p), *scope.values()]
        else:
            parts.append(
                f"SELECT {p.interval} AS iv, {''.join(f'r.{c}, ' for c in group)}"
                f"{_signed([f'/*sqlite: SUM(*/{c}/*sqlite: )*/' for c in rollup_columns], keep, p.sign)} "
                f"FROM cost_rollups r /*sqlite: INDEXED BY {_rollup_index(scope)}*/ WHERE r.grain = ? "
                f"AND r.span = '{p.source}' AND r.bucket >= ? AND r.bucket < ?" + where_scope.format(t="r")
                + (f" /*sqlite: GROUP BY {', '.join(f'r.{c}' for c in group)}*/" if group else ""))
            params += [grain, *_bounds(p), *scope.values()]
    cols = "".join(f"{c}, " for c in group)
    outer = ", ".join(f"SUM(c{n}) AS c{n}" for n in keep)
    having = " HAVING SUM(c3) >= ?" if having_dollars is not None else ""
    sql = (f"SELECT iv, {cols}{outer} FROM ({' UNION ALL '.join(parts)}) AS x "
           f"GROUP BY {', '.join(['iv', *group])}{having}")
    if having_dollars is not None:
        params.append(having_dollars)
    return sql, params


async def total(store: Storage, start: datetime, end: datetime, **scope: Any) -> Totals:
    """The sums of one interval within a scope (see `totals`), without grouping."""
    found = await totals(store, [(start, end)], (), **scope)
    return found[0][2] if found else Totals()


__all__ = ["Piece", "Totals", "grain_for", "pieces", "raw_rows_only", "total", "totals", "totals_sql"]
