"""`moa-gateway migrate-db`: copy a SQLite database into an empty PostgreSQL database.

Both ends are first brought to the current schema by their own migrations (so the SQLite file
is upgraded in place, as `moa-gateway run` would do). Then every table is copied with COPY, in
foreign-key order, ids kept, inside ONE PostgreSQL transaction; identity sequences are moved
past the copied ids; and the row count of every table is compared on both sides before the
commit: a mismatch rolls everything back. A target that already holds rows is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from psycopg import sql

from gateway.storage.postgres import PostgresStore
from gateway.storage.sqlite import Store
from moa_core.clock import Clock

BATCH = 5000


class CopyRefused(RuntimeError):
    """The copy cannot start or did not verify; nothing was committed."""


@dataclass(frozen=True, slots=True)
class CopiedTable:
    name: str
    rows: int


def _tables_in_fk_order(db: sqlite_utils.Database) -> list[str]:
    """The gateway's tables, each after the tables its foreign keys point at."""
    names = [n for n in db.table_names() if not n.startswith(("sqlite_", "_sqlite_"))]
    deps = {n: {fk.other_table for fk in db[n].foreign_keys if fk.other_table != n} for n in names}
    ordered: list[str] = []
    while deps:
        ready = sorted(n for n, d in deps.items() if not d - set(ordered))
        if not ready:
            raise CopyRefused(f"foreign keys form a cycle among {sorted(deps)}")
        ordered.extend(ready)
        for n in ready:
            del deps[n]
    return ordered


def _read_batches(db: sqlite_utils.Database, table: str, columns: list[str], after: int) -> list[tuple]:
    cols = ", ".join(f'"{c}"' for c in columns)
    return db.execute(
        f'SELECT rowid, {cols} FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT {BATCH}', [after]
    ).fetchall()


async def copy_sqlite_to_postgres(source: Path, target: str, clock: Clock, *, password: str | None = None,
                                  progress: Callable[[str], None] = lambda _: None) -> list[CopiedTable]:
    """Copy every row of `source` into the (empty) PostgreSQL database `target`."""
    if not source.is_file():
        raise CopyRefused(f"{source}: no such SQLite database")
    lite = await Store.open(source, clock)
    try:
        pg = await PostgresStore.open(target, clock, password=password, max_size=1)
        try:
            return await _copy(lite, pg, progress)
        finally:
            await pg.close()
    finally:
        await lite.close()


async def _copy(lite: Store, pg: PostgresStore, progress: Callable[[str], None]) -> list[CopiedTable]:
    tables = await lite.run(_tables_in_fk_order)
    copied: list[CopiedTable] = []
    async with pg._connection() as conn, conn.transaction():
        for table in tables:
            cursor = await conn.execute(
                "SELECT column_name, is_identity FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position", [table])
            pg_columns = await cursor.fetchall()
            if not pg_columns:
                raise CopyRefused(f"table {table} is in the SQLite file but not in PostgreSQL")
            columns = [c for c, _ in pg_columns]
            present = await lite.run(lambda db, t=table: [c.name for c in db[t].columns])
            missing = sorted(set(columns) - set(present)) + sorted(set(present) - set(columns))
            if missing:
                raise CopyRefused(f"table {table}: columns differ between the two schemas: {missing}")
            count_sql = sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table))
            already = (await (await conn.execute(count_sql)).fetchone())[0]  # type: ignore[index]
            if already:
                raise CopyRefused(
                    f"the target database already has data ({already} rows in {table}); "
                    "migrate-db copies into an empty database")
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
            after, rows = 0, 0
            async with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                while batch := await lite.run(lambda db, t=table, c=columns, a=after: _read_batches(db, t, c, a)):
                    for row in batch:
                        await copy.write_row(row[1:])
                    after, rows = batch[-1][0], rows + len(batch)
            for column, identity in pg_columns:
                if identity == "YES":
                    await conn.execute(sql.SQL(
                        "SELECT setval(pg_get_serial_sequence({t}, {c}), COALESCE(MAX({col}), 0) + 1, false) FROM {tbl}"
                    ).format(t=sql.Literal(table), c=sql.Literal(column), col=sql.Identifier(column),
                             tbl=sql.Identifier(table)))
            # Verified by counts on both sides before anything is committed.
            source_count = await lite.run(lambda db, t=table: db[t].count)
            target_count = (await (await conn.execute(count_sql)).fetchone())[0]  # type: ignore[index]
            if not source_count == target_count == rows:
                raise CopyRefused(f"table {table}: {source_count} rows in SQLite but {target_count} copied")
            progress(f"{table}: {rows} rows")
            copied.append(CopiedTable(table, rows))
    return copied


__all__ = ["CopiedTable", "CopyRefused", "copy_sqlite_to_postgres"]
