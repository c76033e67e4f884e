"""Storage backends for tests: a SQLite file in a tmp dir, or a PostgreSQL database of this run.

PostgreSQL tests connect to `MOA_TEST_POSTGRES_URL` (default
postgresql://postgres@127.0.0.1:5432/postgres), create one database for the whole test session
(`moa_test_<pid>_<random>`) and drop it at the end; between tests its tables are truncated, so
every test starts empty (ids from 1) without paying for a new database. With no server the
PostgreSQL cases are skipped with that reason — unless `CI` is set, where it is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gateway.storage import Storage, Store
from moa_core.clock import Clock

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")


def server_url() -> str:
    return os.environ.get("MOA_TEST_POSTGRES_URL", DEFAULT_URL)


def with_database(url: str, dbname: str, **extra: str) -> str:
    """The same server and user, another database (and extra libpq options)."""
    return make_conninfo(url, dbname=dbname, **extra)


def as_url(conninfo: str) -> str:
    """A conninfo as a postgresql:// URL (what `[gateway] database` takes)."""
    parts = conninfo_to_dict(conninfo)
    user = parts.get("user", "")
    auth = f"{user}@" if user else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in parts.items()
                     if k not in ("user", "host", "port", "dbname"))
    return f"postgresql://{auth}{parts.get('host', '')}{port}/{parts.get('dbname', '')}" + (
        f"?{query}" if query else "")


@contextmanager
def scratch_schema(url: str, prefix: str = "s") -> Iterator[str]:
    """An empty schema of the URL's database, as a URL whose search_path is that schema (what
    `[gateway] database` takes); dropped with everything in it afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield as_url(with_database(url, conninfo_to_dict(url)["dbname"], options=f"-csearch_path={name}"))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required when CI is set: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, as a URL; dropped at the end."""
    admin = server_url()
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        _unavailable(f"{error}".strip().splitlines()[0] if str(error).strip() else repr(error))
        raise  # not reached: skip/fail raise
    name = f"moa_test_{os.getpid()}_{secrets.token_hex(3)}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield as_url(with_database(admin, name))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def truncate_all(url: str) -> None:
    """Empty every table of the gateway (not the migration record), identities back to 1."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename != '_moa_migrations'"
        )]
        if tables:
            names = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))


@dataclass(slots=True)
class Backend:
    """Where a test's store lives; `open` may be called again (a restart) and sees the same data."""

    name: str
    location: str  # a SQLite path or a PostgreSQL URL

    async def open(self, clock: Clock, *, lease_s: float = 20.0, auto_renew: bool = True) -> Storage:
        if self.name == "sqlite":
            return await Store.open(self.location, clock, lease_s=lease_s)
        from gateway.storage.postgres import PostgresStore

        return await PostgresStore.open(self.location, clock, max_size=4, lease_s=lease_s, auto_renew=auto_renew)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each test that takes it runs twice: on SQLite and on PostgreSQL (truncated first)."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "gw.db"))
    url = request.getfixturevalue("pg_database")
    truncate_all(url)
    return Backend("postgresql", url)
