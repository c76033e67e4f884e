"""Storage: everything the gateway keeps — sessions, history, turns, model calls, channel
settings, seen events, digest claims and the delivery ledger.

- `contract`: the storage contract (`Storage`) the service, costs and digest speak to, its
  values (`TurnRow`, `Delivery`, ...) and the rules of portable SQL for spend queries;
- `sqlite`: the embedded backend (one writer thread over sqlite-utils), `migrations` its steps;
- `postgres`: the PostgreSQL backend (psycopg 3, async pool), `postgres_schema` the same steps;
- `copy`: `moa-gateway migrate-db`, a SQLite file copied into PostgreSQL.

`open_store(database, clock)` picks the backend: a `postgresql://` URL opens PostgreSQL,
anything else is a SQLite file path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# First: every module of the store imports sqlite_utils, which this imports without numpy.
import gateway.storage.sqlite_utils_import  # noqa: F401, I001
from gateway.storage.contract import (
    DEFAULT_LEASE_S,
    DELIVERY_STATUSES,
    TURN_STATUSES,
    Delivery,
    DigestState,
    LeaseLost,
    Storage,
    TurnRow,
    from_iso,
    is_postgres_url,
    to_iso,
)
from gateway.storage.sqlite import Store
from moa_core.clock import Clock


async def open_store(database: str | Path, clock: Clock, *, password_env: str | None = None,
                     env: Mapping[str, str] | None = None, lease_s: float = DEFAULT_LEASE_S) -> Storage:
    """Open the configured database: PostgreSQL for a `postgresql://` URL (its password from
    the variable `password_env` names, else libpq's own PGPASSWORD), else a SQLite file."""
    if isinstance(database, str) and is_postgres_url(database):
        from gateway.storage.postgres import PostgresStore

        password = (env or {}).get(password_env) if password_env else None
        return await PostgresStore.open(database, clock, password=password or None, lease_s=lease_s)
    return await Store.open(database, clock, lease_s=lease_s)


__all__ = [
    "DELIVERY_STATUSES",
    "TURN_STATUSES",
    "Delivery",
    "DigestState",
    "LeaseLost",
    "Storage",
    "Store",
    "TurnRow",
    "from_iso",
    "is_postgres_url",
    "open_store",
    "to_iso",
]
