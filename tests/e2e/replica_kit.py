"""Pieces shared by the end-to-end tests of several `moa-gateway run` replicas on one
PostgreSQL database: free loopback ports, the database read as any other process would, and
the wait for start-up (timed apart from what a test measures)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import psycopg

from tests.e2e.kit import GatewayProcess

# Two interpreters importing the platform SDKs and matplotlib at once can take long on a loaded
# machine; what the tests time is bounded separately.
START_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


async def start_all(processes: Sequence[GatewayProcess]) -> None:
    await asyncio.gather(*(p.start() for p in processes))
    await asyncio.gather(*(p.wait_logged("moa-gateway running", timeout=START_S) for p in processes))
