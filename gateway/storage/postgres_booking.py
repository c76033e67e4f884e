"""Booking model calls on PostgreSQL: the call rows of one or more turns and their cost rollups,
in ONE transaction and two round trips (pipeline mode), each table written by ONE statement.
`PostgresStore.book_calls` and `record_calls` come here."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from gateway.storage import rollups
from gateway.storage.contract import call_values, postgres_dialect
from moa_core.values import CallRecord


async def book(conn: psycopg.AsyncConnection, calls: Sequence[tuple[int, CallRecord]], at: str) -> None:
    """Model-call rows of one or more turns and their cost rollups, in ONE transaction and two
    round trips (pipeline mode): BEGIN, the turns' columns and the models they already booked;
    then the rows, the rollup upserts and COMMIT. The turns' rows are locked (FOR UPDATE, in id
    order) before the prior models are read, so that two transactions booking calls of one turn
    agree on its first call (the rollups' turn counts); the upsert itself is atomic per row."""
    turn_ids = sorted({turn_id for turn_id, _ in calls})
    async with conn.pipeline(), conn.transaction():
        columns = conn.cursor(row_factory=dict_row)
        await columns.execute("SELECT id, session_id, platform, chat_id, user_id, preset FROM turns "
                              "WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [turn_ids])
        prior = await conn.execute(postgres_dialect(rollups.prior_models_sql(len(turn_ids))), turn_ids)
        turns = {row["id"]: row for row in await columns.fetchall()}  # the first round trip
        booked = await prior.fetchall()
        if missing := [t for t in turn_ids if t not in turns]:
            raise KeyError(f"no turn {missing[0]}")
        rows = [call_values(turns[turn_id], call, at) for turn_id, call in calls]
        names = tuple(rows[0])
        # The calls and their rollups (unique keys, in key order: two transactions upserting shared
        # rows lock them in one order) each as ONE statement of one JSON parameter, typed by the
        # table's own row type: executemany ran a statement per row (a booking of 5 calls was ~40),
        # about half the client CPU of a stored turn; a multi-row VALUES list is longer than
        # psycopg's query cache takes and was parsed again each time (slower still).
        await conn.execute(_from_json("model_calls", names), [_json_rows(rows)])
        sums = rollups.rollup_rows(rows, booked)
        await conn.execute(_UPSERT_ROLLUPS, [_json_rows([dict(zip(rollups.COLUMNS, row, strict=True)) for row in sums])])


@functools.lru_cache(maxsize=8)
def _from_json(table: str, columns: tuple[str, ...]) -> str:
    """`INSERT INTO table (columns) SELECT columns FROM` a JSON array of objects, in its order."""
    names = ", ".join(columns)
    return (f"INSERT INTO {table} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{table}, %s::json) "
            "WITH ORDINALITY AS r ORDER BY r.ordinality")


_UPSERT_ROLLUPS = _from_json("cost_rollups", rollups.COLUMNS) + postgres_dialect(rollups.ON_CONFLICT_ADD)


def _json_rows(rows: Sequence[dict[str, Any]]) -> str:
    return orjson.dumps(rows).decode()


__all__ = ["book"]
