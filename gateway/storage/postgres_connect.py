"""Connecting to PostgreSQL: the connection string the gateway uses (the URL as libpq reads it,
plus timeouts, keepalives and JIT off unless the URL says otherwise), a URL shown without its
password, a one-off connection check, and the error that says the database cannot be reached.
The store itself is `gateway.storage.postgres`."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

CONNECT_TIMEOUT_S = 10.0
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class StorageUnavailable(RuntimeError):
    """The database cannot be reached or opened; the message says where and why."""


def describe_url(url: str) -> str:
    """`user@host:port/db` of a libpq URL, without any password (safe to print and log)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise StorageUnavailable(f"bad PostgreSQL URL: {error}") from None
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


def conninfo(url: str, password: str | None) -> str:
    """The libpq connection string the gateway connects with: the URL and its environment as
    `psql` reads them, plus our defaults where the URL sets none."""
    extra: dict[str, Any] = {"application_name": "moa-gateway"}
    if password:
        extra["password"] = password
    given = conninfo_to_dict(url)
    if "connect_timeout" not in given:
        extra["connect_timeout"] = int(CONNECT_TIMEOUT_S)
    if "options" not in given:
        # The gateway's statements are short; JIT compiling a long digest's cost queries took
        # seconds for milliseconds of work (1M-row bench: 6.0 s against 0.36 s without it).
        extra["options"] = "-c jit=off"
    # TCP keepalives (the URL's own settings win): the listening connection of turn wake-ups and
    # idle pool connections send nothing for as long as nothing happens, so a peer gone without a
    # word (a server host down, a NAT entry dropped) was never noticed; now within about a minute.
    for key, value in _KEEPALIVES.items():
        if key not in given:
            extra[key] = value
    return make_conninfo(url, **extra)


async def check_connection(url: str, *, password: str | None = None) -> str:
    """Connect once (schema untouched) and return the server version, e.g. "15.19"."""
    where = describe_url(url)
    try:
        async with await psycopg.AsyncConnection.connect(conninfo(url, password), autocommit=True) as conn:
            cursor = await conn.execute("SHOW server_version")
            row = await cursor.fetchone()
    except psycopg.OperationalError as error:
        raise StorageUnavailable(f"cannot connect to {where}: {reason(error)}") from None
    return str(row[0]).split()[0] if row else "?"


def reason(error: BaseException) -> str:
    """The first line of a driver error (libpq's own reason), for a one-line message."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


__all__ = ["CONNECT_TIMEOUT_S", "StorageUnavailable", "check_connection", "conninfo", "describe_url", "reason"]
