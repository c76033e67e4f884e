"""Cost rollups, the write side: sums of `model_calls` kept in `cost_rollups`, changed in the
SAME transaction as the call rows they sum (both backends call `rollup_rows` + `UPSERT` from
their insert paths), built from existing rows by `BACKFILL` (migration m009, `migrate-db`'s
rebuild check, the cost benchmark). Reading them is `gateway.costs.rollups`' job.

A rollup row is one *grain* of key columns over one UTC *span* (a day or an hour):

- `call` (per UTC day): platform, chat, user, preset, role, provider, model, status: every report
  filtered by a chat or a user reads this one (through its chat and user indexes);
- `mix` (per UTC day and per UTC hour): preset, role, provider, model, status: `all` reports,
  the digest's presets, models and failure counts, the chart;
- `chat` and `user` (per UTC day and per UTC hour): platform + chat, platform + user: the digest's
  chats and users, budgets.

Columns a grain does not keep hold ''. The narrow grains are projections of `call`; they exist
because the full key barely compresses (a user seldom repeats preset and model within a day),
while a digest over months wants a few rows per day.

Why UTC days *and* hours: reports are periods in a configured time zone (local midnights, a cron
time), and a time zone may change in config; UTC buckets never need rebuilding. A local period
is then whole UTC days, plus or minus whole UTC hours at its edges, plus or minus raw rows for
what is left of an hour (zones at :30 or :45) — see `gateway.costs.rollups`.

Sums per row: calls, turns (calls that are the first row of their turn), model_turns (calls that
are their turn's first row of that role, provider and model), dollars (known costs; unpriced add
0), unpriced (no price and not skipped: a skipped `moa:` slot made no call), and the five token
counts. "First" means the lowest id: rows of one turn are booked one transaction at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

KEY = ("platform", "chat_id", "user_id", "preset", "role", "provider", "model", "status")
GRAINS: dict[str, tuple[str, ...]] = {
    "call": KEY,
    "mix": ("preset", "role", "provider", "model", "status"),
    "chat": ("platform", "chat_id"),
    "user": ("platform", "user_id"),
}
SPANS: dict[str, tuple[str, ...]] = {"call": ("day",), "mix": ("day", "hour"), "chat": ("day", "hour"),
                                     "user": ("day", "hour")}
SPAN_WIDTH = {"day": 10, "hour": 13}  # a bucket is created_at's first 10 or 13 characters (UTC)
TOKENS = ("input", "cache_read", "cache_write", "output", "reasoning")
SUMS = ("calls", "turns", "model_turns", "dollars", "unpriced", *TOKENS)
COLUMNS = ("grain", "span", "bucket", *KEY, *SUMS)

# Portable SQL (gateway.storage.contract): SQLite and PostgreSQL share ON CONFLICT ... excluded.
# Every write of the rollups ends so: a new row's sums are added to the rollup row already there.
ON_CONFLICT_ADD = (f" ON CONFLICT (grain, span, bucket, {', '.join(KEY)}) DO UPDATE SET "
                   + ", ".join(f"{c} = cost_rollups.{c} + excluded.{c}" for c in SUMS))
UPSERT = f"INSERT INTO cost_rollups ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})" + ON_CONFLICT_ADD


def prior_models_sql(count: int) -> str:
    """The (turn, role, provider, model) already stored for `count` turns: who is "first"."""
    return ("SELECT DISTINCT turn_id, role, provider, model FROM model_calls "
            f"WHERE turn_id IN ({', '.join('?' * count)})")


# Per grain: its spans (with their bucket widths) and how its key values are picked from a row's
# full key plus a trailing '' (the columns a grain does not keep) — itemgetters, since this runs
# for every booked call in the writer's thread, which shares the interpreter with the event loop.
_FULL_KEY = itemgetter(*KEY)
_TOKEN_COUNTS = itemgetter(*TOKENS)
_PLAN = tuple(
    (grain, tuple((span, SPAN_WIDTH[span]) for span in SPANS[grain]),
     itemgetter(*(KEY.index(c) if c in kept else len(KEY) for c in KEY)))
    for grain, kept in GRAINS.items()
)


def rollup_rows(rows: Sequence[Mapping[str, Any]], prior: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """The upsert parameters for call rows about to be inserted in this order (`call_values`
    dicts), given what `prior_models_sql` found stored for their turns: one tuple per rollup row
    touched, the rows' sums already added together."""
    seen: dict[int, set[tuple[str, str, str]]] = {}
    for turn_id, role, provider, model in prior:
        seen.setdefault(int(turn_id), set()).add((role, provider, model))
    out: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        models = seen.setdefault(int(row["turn_id"]), set())
        which = (row["role"], row["provider"], row["model"])
        cost = row["cost_usd"]
        sums = (1, 0 if models else 1, 0 if which in models else 1, float(cost or 0.0),
                1 if cost is None and row["status"] != "skipped" else 0, *map(int, _TOKEN_COUNTS(row)))
        models.add(which)
        full = (*_FULL_KEY(row), "")
        created = row["created_at"]
        for grain, spans, pick in _PLAN:
            values = pick(full)
            for span, width in spans:
                key = (grain, span, created[:width], *values)
                old = out.get(key)
                out[key] = list(sums) if old is None else [a + b for a, b in zip(old, sums, strict=True)]
    # In key order: two PostgreSQL transactions upserting shared rows lock them in one order.
    return [(*key, *sums) for key, sums in sorted(out.items())]


# Building rollups from the rows (portable SQL). One pass over model_calls into a temporary
# table of (UTC hour, full key) sums, with the "first" flags from window functions; every grain
# and span is then summed from that table. Run in the caller's transaction.
_FIRSTS = (
    "SELECT m.*, CASE WHEN ROW_NUMBER() OVER (PARTITION BY turn_id ORDER BY id) = 1 THEN 1 ELSE 0 END AS first_turn, "
    "CASE WHEN ROW_NUMBER() OVER (PARTITION BY turn_id, role, provider, model ORDER BY id) = 1 "
    "THEN 1 ELSE 0 END AS first_model FROM model_calls m"
)
_BASE = (
    "CREATE TEMPORARY TABLE rollup_base AS "
    f"SELECT substr(created_at, 1, 13) AS bucket, {', '.join(KEY)}, COUNT(*) AS calls, "
    "SUM(first_turn) AS turns, SUM(first_model) AS model_turns, COALESCE(SUM(cost_usd), 0.0) AS dollars, "
    "SUM(CASE WHEN cost_usd IS NULL AND status != 'skipped' THEN 1 ELSE 0 END) AS unpriced, "
    + ", ".join(f"SUM({t}) AS {t}" for t in TOKENS)
    + f" FROM ({_FIRSTS}) AS f GROUP BY substr(created_at, 1, 13), {', '.join(KEY)}"
)


def _fill(grain: str, span: str) -> str:
    kept = GRAINS[grain]
    values = ", ".join(c if c in kept else "''" for c in KEY)
    bucket = f"substr(bucket, 1, {SPAN_WIDTH[span]})"
    return (
        f"INSERT INTO cost_rollups ({', '.join(COLUMNS)}) SELECT '{grain}', '{span}', {bucket}, {values}, "
        + ", ".join(f"SUM({s})" for s in SUMS)
        + f" FROM rollup_base GROUP BY {', '.join([bucket, *kept])}"
    )


BACKFILL: tuple[str, ...] = (
    "DELETE FROM cost_rollups",
    _BASE,
    *(_fill(grain, span) for grain in GRAINS for span in SPANS[grain]),
    "DROP TABLE rollup_base",
)

# The rollups of the rows with id > ? (SQLite: a writer batch's call rows, summed once at its end
# by `gateway.storage.sqlite_connect.RollupSums`): one statement, so the summing runs in SQLite's
# C code, without the interpreter lock the event loop needs, instead of `rollup_rows` in Python
# per job. "First" as everywhere: no row of the turn (of that model) with a lower id. Each narrow
# grain is summed per hour from the rows once, and its days from its hours (fewer rows to sort).
# The call grain's rows are upserted as they are, not summed first: its full key seldom repeats
# within a batch (a turn's calls differ in model or role), so a sort of the batch's rows would
# merge almost none; a repeated key adds to the row an earlier one of the same statement
# inserted (SQLite's upsert, unlike PostgreSQL's, may touch a row twice). 125 rows: ~1.3 against
# ~1.6-1.8 ms with the sort; 25 rows: ~285 against ~350 us.
_FIRST_ROW = "SELECT 1 FROM model_calls e WHERE e.turn_id = m.turn_id AND e.id < m.id"
_NEW_ROWS = (
    f"SELECT substr(created_at, 1, 13) AS bucket, {', '.join(KEY)}, 1 AS calls, "
    f"NOT EXISTS ({_FIRST_ROW}) AS turns, "
    f"NOT EXISTS ({_FIRST_ROW} AND e.role = m.role AND e.provider = m.provider AND e.model = m.model) "
    "AS model_turns, COALESCE(cost_usd, 0.0) AS dollars, "
    "CASE WHEN cost_usd IS NULL AND status != 'skipped' THEN 1 ELSE 0 END AS unpriced, "
    f"{', '.join(TOKENS)} FROM model_calls m WHERE m.id > ?"
)


def _summed(grain: str, span: str, source: str) -> str:
    """One grain and span of rows `source` (hour bucket, the grain's key columns, the sums);
    an hour grain's own hours are its rows as they are."""
    kept = GRAINS[grain]
    values = ", ".join(c if c in kept else "''" for c in KEY)
    if source == f"{grain}_hours" and span == "hour":
        return f"SELECT '{grain}', '{span}', bucket, {values}, {', '.join(SUMS)} FROM {source}"
    bucket = f"substr(bucket, 1, {SPAN_WIDTH[span]})"
    return (f"SELECT '{grain}', '{span}', {bucket}, {values}, " + ", ".join(f"SUM({s})" for s in SUMS)
            + f" FROM {source} GROUP BY {', '.join([bucket, *kept])}")


def _hours(grain: str) -> str:
    kept = ", ".join(GRAINS[grain])
    return (f"{grain}_hours AS MATERIALIZED (SELECT bucket, {kept}, " + ", ".join(f"SUM({s}) AS {s}" for s in SUMS)
            + f" FROM new_rows GROUP BY bucket, {kept})")


_NARROW = tuple(g for g in GRAINS if g != "call")
UPSERT_ROWS_AFTER = (
    f"WITH new_rows AS MATERIALIZED ({_NEW_ROWS}), " + ", ".join(_hours(g) for g in _NARROW)
    + f" INSERT INTO cost_rollups ({', '.join(COLUMNS)}) SELECT * FROM ("
    + " UNION ALL ".join([f"SELECT 'call', 'day', substr(bucket, 1, {SPAN_WIDTH['day']}), {', '.join(KEY)}, "
                          f"{', '.join(SUMS)} FROM new_rows",
                          *(_summed(g, span, f"{g}_hours") for g in _NARROW for span in SPANS[g])])
    # WHERE true: without it SQLite would read ON CONFLICT as a join's ON (its documented ambiguity).
    + ") WHERE true" + ON_CONFLICT_ADD
)
assert all(SPANS[g] == ("day", "hour") for g in _NARROW) and SPANS["call"] == ("day",)

# The same sums for a few rows (`EACH_ROW_UP_TO` or fewer): each row upserted as it is into
# every grain and span it counts in, no GROUP BY. A row upserting a rollup row an earlier one of
# the same statement inserted adds to it, so the sums are the same; up to ~12 rows the sorters
# of the grouped statement cost more than the extra upserts of the narrow grains (1 row: ~30
# against ~60 us; 5 rows: ~85 against ~110 us; 12 rows: alike; 25 rows: ~340 against ~270 us).
EACH_ROW_UP_TO = 12
_PLAN_ROWS = ", ".join(
    f"('{grain}', '{span}', {SPAN_WIDTH[span]}, " + ", ".join("1" if c in kept else "0" for c in KEY) + ")"
    for grain, kept in GRAINS.items() for span in SPANS[grain])
UPSERT_EACH_ROW_AFTER = (
    f"WITH new_rows AS MATERIALIZED ({_NEW_ROWS}), "
    f"g (grain, span, width, {', '.join(f'keeps_{c}' for c in KEY)}) AS (VALUES {_PLAN_ROWS}) "
    f"INSERT INTO cost_rollups ({', '.join(COLUMNS)}) SELECT g.grain, g.span, substr(n.bucket, 1, g.width), "
    + ", ".join(f"CASE WHEN g.keeps_{c} THEN n.{c} ELSE '' END" for c in KEY) + ", "
    + ", ".join(f"n.{c}" for c in SUMS)
    + " FROM new_rows n CROSS JOIN g WHERE true" + ON_CONFLICT_ADD
)


def expected_sql(grain: str, span: str) -> str:
    """What `cost_rollups` should hold for one grain and span, computed from the rows alone
    (portable SQL): for reconciling the rollups with the rows (tests, `migrate-db`)."""
    kept = GRAINS[grain]
    values = ", ".join(c if c in kept else "''" for c in KEY)
    bucket = f"substr(created_at, 1, {SPAN_WIDTH[span]})"
    return (
        f"SELECT {bucket}, {values}, COUNT(*), SUM(first_turn), SUM(first_model), COALESCE(SUM(cost_usd), 0.0), "
        "SUM(CASE WHEN cost_usd IS NULL AND status != 'skipped' THEN 1 ELSE 0 END), "
        + ", ".join(f"SUM({t})" for t in TOKENS)
        + f" FROM ({_FIRSTS}) AS f GROUP BY {', '.join([bucket, *kept])}"
    )


def stored_sql(grain: str, span: str) -> str:
    """The stored rollups of one grain and span, in `expected_sql`'s columns."""
    return (f"SELECT bucket, {', '.join(KEY)}, {', '.join(SUMS)} FROM cost_rollups "
            f"WHERE grain = '{grain}' AND span = '{span}'")


__all__ = ["BACKFILL", "COLUMNS", "GRAINS", "KEY", "ON_CONFLICT_ADD", "SPANS", "SPAN_WIDTH", "SUMS", "TOKENS", "UPSERT", "UPSERT_EACH_ROW_AFTER",
           "UPSERT_ROWS_AFTER", "EACH_ROW_UP_TO", "expected_sql",
           "prior_models_sql", "rollup_rows", "stored_sql"]
