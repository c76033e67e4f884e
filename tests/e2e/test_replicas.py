"""Two real `moa-gateway run` replicas on one PostgreSQL database, Telegram in webhook mode on
two ports against the fake Bot API, one fake model provider:

- the same update posted to both replicas (a webhook retry landing on the other) is answered once;
- a replica SIGKILLed mid-turn: the other tells that chat within the lease bound, and answers new
  updates;
- the digest owed at start is sent once, though both replicas start together.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import psycopg
import pytest

from gateway.storage.postgres import PostgresStore
from moa_core.clock import SystemClock
from tests.backends import truncate_all
from tests.e2e.kit import (
    ADMIN_ID,
    GROUP_ID,
    GatewayProcess,
    group_update,
    texts,
    wait_until,
    with_marker,
    write_config,
)
from tests.fakes.provider_server import Reply

SECRET_ENV, SECRET = "E2E_WEBHOOK_SECRET", "replica-secret_1"
LEASE_S = 3.0
# A survivor takes a dead replica's rows over within lease + takeover_every_s (lease / 4);
# the rest is the turn's notice being sent and slow CI.
TAKEOVER_BOUND_S = LEASE_S * 1.25 + 5
FOOTER = " tokens · "
START_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica:
    def __init__(self, process: GatewayProcess, port: int) -> None:
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}/telegram"

    async def post(self, update: dict) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as response:
                return response.status


@pytest.fixture
async def replicas(tmp_path: Path, provider, telegram, pg_database, monkeypatch):
    """Start two replicas (one config each: same database, own webhook port); killed at the end."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    truncate_all(pg_database)
    started: list[Replica] = []

    async def start(n: int = 2, telegram_options: dict | None = None, **tables) -> list[Replica]:
        for index in range(n):
            folder = tmp_path / f"replica{index}"
            folder.mkdir(exist_ok=True)
            port = free_port()
            config = write_config(
                folder, provider, telegram,
                gateway={"database": pg_database, "lease_s": LEASE_S},
                telegram_options={"mode": "webhook", "webhook_listen": "127.0.0.1", "webhook_port": port,
                                  "webhook_path": "telegram", "webhook_url": f"http://127.0.0.1:{port}/telegram",
                                  "webhook_secret_env": SECRET_ENV, "admins": [str(ADMIN_ID)],
                                  **(telegram_options or {})},
                tables=tables,
            )
            started.append(Replica(GatewayProcess(config, f"replica{index}"), port))
        await asyncio.gather(*(r.process.start() for r in started))
        # Start-up only (two interpreters importing the platform SDKs and matplotlib at once can
        # take long on a loaded machine); what is timed below is bounded separately.
        await asyncio.gather(*(r.process.wait_logged("moa-gateway running", timeout=START_S) for r in started))
        return started

    yield start
    for replica in started:
        await replica.process.kill()


def pg_rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


async def test_the_same_update_on_both_replicas_is_answered_once(replicas, provider, telegram, pg_database):
    provider.reply("agg", Reply(text="One answer ONCE-MARK."))
    a, b = await replicas()
    update = group_update("/moa answer me once", message_id=10, update_id=5001)
    assert await asyncio.gather(a.post(update), b.post(update)) == [200, 200]
    await wait_until(lambda: any(FOOTER in t for t in with_marker(telegram, GROUP_ID, "ONCE-MARK")),
                     "the answer", explain=lambda: f"{texts(telegram, GROUP_ID)}\n{a.process.tail()}\n{b.process.tail()}")
    await asyncio.sleep(1.0)  # a second answer, if any, would have come by now
    assert len(with_marker(telegram, GROUP_ID, "ONCE-MARK")) == 1
    assert len(provider.for_model("agg")) == 1
    assert pg_rows(pg_database, "SELECT status FROM turns") == [("done",)]
    assert pg_rows(pg_database, "SELECT status FROM deliveries") == [("sent",)]


async def test_a_replica_killed_mid_turn_is_taken_over_by_the_other(replicas, provider, telegram, pg_database):
    provider.reply("ref-a", Reply(hang=True))
    provider.reply("ref-b", Reply(hang=True))
    a, b = await replicas()
    assert await a.post(group_update("/moa a question cut by a dying replica", message_id=20, update_id=6001)) == 200
    await wait_until(lambda: bool(pg_rows(pg_database, "SELECT id FROM turns WHERE status = 'running'")),
                     "the running turn", explain=a.process.tail)
    await provider.wait_for_requests(2, timeout=20)
    await a.process.kill()
    killed_at = time.monotonic()

    await wait_until(lambda: any("interrupted" in t for t in texts(telegram, GROUP_ID)), "the interruption notice",
                     timeout=TAKEOVER_BOUND_S + 10,
                     explain=lambda: f"chat shows: {texts(telegram, GROUP_ID)}\n{b.process.tail()}")
    took = time.monotonic() - killed_at
    assert took <= TAKEOVER_BOUND_S, f"takeover took {took:.1f} s"
    [notice] = [t for t in texts(telegram, GROUP_ID) if "interrupted" in t]
    assert "a question cut by a dying replica" in notice
    assert pg_rows(pg_database, "SELECT status FROM turns") == [("interrupted",)]

    # The survivor goes on answering.
    provider.reply("ref-a", Reply(text="advice"))
    provider.reply("ref-b", Reply(text="advice"))
    provider.reply("agg", Reply(text="Still here SURVIVOR-MARK."))
    assert await b.post(group_update("/moa are you there", message_id=21, update_id=6002)) == 200
    await wait_until(lambda: any(FOOTER in t for t in with_marker(telegram, GROUP_ID, "SURVIVOR-MARK")),
                     "the survivor's answer", explain=b.process.tail)


async def test_the_digest_owed_at_start_is_sent_once(replicas, telegram, pg_database):
    # A digest was last sent three weeks ago: both replicas find a period owed when they start.
    store = await PostgresStore.open(pg_database, SystemClock())
    end = datetime.now(UTC) - timedelta(days=21)
    await store.claim_digest(end - timedelta(days=7), end, "sent", end)
    await store.close()
    await replicas(**{"digest": {"cron": "0 9 * * 1", "send_to": [f"telegram:{GROUP_ID}"]}})

    def digests() -> list[str]:
        return [t for t in texts(telegram, GROUP_ID) if "MoA cost digest" in t]

    await wait_until(lambda: bool(digests()), "the digest")
    await asyncio.sleep(1.5)  # the other replica has started its scheduler by now
    assert len(digests()) == 1
    statuses = pg_rows(pg_database, "SELECT status FROM digests ORDER BY period_end")
    assert statuses == [("sent",), ("sent",)]


async def test_only_one_replica_polls_telegram(replicas, provider, telegram, pg_database):
    provider.reply("agg", Reply(text="Polled once POLL-MARK."))
    both = await replicas(telegram_options={"mode": "polling"})
    line = "another replica polls this bot"
    assert sorted(line in r.process.log() for r in both) == [False, True], [r.process.tail() for r in both]
    telegram.push_update(group_update("/moa who polls", message_id=30))
    await wait_until(lambda: any(FOOTER in t for t in with_marker(telegram, GROUP_ID, "POLL-MARK")),
                     "the answer", explain=lambda: "\n".join(r.process.tail() for r in both))
    assert len(with_marker(telegram, GROUP_ID, "POLL-MARK")) == 1
