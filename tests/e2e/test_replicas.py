"""Two real `moa-gateway run` replicas on one PostgreSQL database, Telegram in webhook mode on
two ports against the fake Bot API, one fake model provider:

- the same update posted to both replicas (a webhook retry landing on the other) is answered once;
- a replica SIGKILLed mid-turn with questions queued behind it and an answer recorded but not
  sent: the other tells that chat within the lease bound, runs the queued questions in order,
  delivers the answer, and answers new updates;
- the digest owed at start is sent once, though both replicas start together.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from adapters.telegram.adapter import RECOVERED_MARK
from gateway.storage.postgres import PostgresStore
from moa_core.clock import SystemClock
from tests.backends import truncate_all
from tests.e2e.kit import (
    ADMIN_ID,
    FORUM_ID,
    GROUP_ID,
    GatewayProcess,
    group_update,
    texts,
    wait_until,
    with_marker,
    write_config,
)
from tests.e2e.replica_kit import free_port, pg_rows, start_all
from tests.fakes.provider_server import Reply

SECRET_ENV, SECRET = "E2E_WEBHOOK_SECRET", "replica-secret_1"
LEASE_S = 3.0
# A survivor takes a dead replica's rows over within lease + takeover_every_s (lease / 4);
# the rest is the turn's notice being sent and slow CI.
TAKEOVER_BOUND_S = LEASE_S * 1.25 + 5
FOOTER = " tokens · "


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

    async def start(n: int = 2, telegram_options: dict | None = None, gateway_options: dict | None = None,
                    **tables) -> list[Replica]:
        for index in range(n):
            folder = tmp_path / f"replica{index}"
            folder.mkdir(exist_ok=True)
            port = free_port()
            config = write_config(
                folder, provider, telegram,
                gateway={"database": pg_database, "lease_s": LEASE_S, **(gateway_options or {})},
                telegram_options={"mode": "webhook", "webhook_listen": "127.0.0.1", "webhook_port": port,
                                  "webhook_path": "telegram", "webhook_url": f"http://127.0.0.1:{port}/telegram",
                                  "webhook_secret_env": SECRET_ENV, "admins": [str(ADMIN_ID)],
                                  **(telegram_options or {})},
                tables=tables,
            )
            started.append(Replica(GatewayProcess(config, f"replica{index}"), port))
        await start_all([r.process for r in started])
        return started

    yield start
    for replica in started:
        await replica.process.kill()


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
    """All a survivor takes over from a replica SIGKILLed mid-turn: the running turn is told as
    cut within the lease bound, the two questions queued behind it in that chat run (in order,
    each seeing the one before), the answer the dead replica recorded in another chat but never
    got sent is delivered once (not asked again) — and new updates to the survivor are answered."""
    def by_question(answer: str):
        def reply(request) -> Reply:
            # The question asked is the last mark in the last message (a cut turn's question
            # stays in the history of the next, unanswered, so it may come first).
            asked = request.body["messages"][-1]["content"]
            mark = max(("CUT-Q", "QUEUED-ONE", "QUEUED-TWO", "RECORDED", "SURVIVOR"), key=asked.rfind)
            return Reply(hang=True) if mark == "CUT-Q" else Reply(text=answer.format(mark=mark))
        return reply

    provider.handler("ref-a", by_question("advice"))
    provider.handler("ref-b", by_question("advice"))
    provider.handler("agg", by_question("Answer {mark}-MARK."))
    # Not streamed, an answer is one sendMessage: this one is held (neither applied nor
    # answered), a request cut off by the replica's death.
    unsent = telegram.hold_next("sendMessage", when=lambda p: "RECORDED-MARK" in p["text"] and FOOTER in p["text"])
    a, b = await replicas(gateway_options={"stream": False})

    assert await a.post(group_update("/moa RECORDED answer", chat_id=FORUM_ID, message_id=40, update_id=8001)) == 200
    await wait_until(unsent.arrived.is_set, "the held answer", explain=a.process.tail)
    assert await a.post(group_update("/moa CUT-Q cut by a dying replica", message_id=41, update_id=8002)) == 200
    await wait_until(lambda: bool(pg_rows(pg_database, "SELECT id FROM turns WHERE status = 'running'")),
                     "the running turn", explain=a.process.tail)
    assert await a.post(group_update("/moa QUEUED-ONE first in line", message_id=42, update_id=8003)) == 200
    assert await a.post(group_update("/moa QUEUED-TWO second in line", message_id=43, update_id=8004)) == 200
    await wait_until(lambda: len(pg_rows(pg_database, "SELECT id FROM turns WHERE status = 'queued'")) == 2,
                     "two queued turns", explain=a.process.tail)
    assert pg_rows(pg_database, "SELECT kind, status FROM deliveries") == [("answer", "sending")]
    await a.process.kill()
    killed_at = time.monotonic()

    def explain() -> str:
        return f"group: {texts(telegram, GROUP_ID)}\nforum: {texts(telegram, FORUM_ID)}\n{b.process.tail()}"

    def answers() -> list[str]:
        return [t for t in texts(telegram, GROUP_ID) if FOOTER in t]

    await wait_until(lambda: any("interrupted" in t for t in texts(telegram, GROUP_ID)), "the interruption notice",
                     timeout=TAKEOVER_BOUND_S + 10, explain=explain)
    took = time.monotonic() - killed_at
    assert took <= TAKEOVER_BOUND_S, f"takeover took {took:.1f} s"
    # Each queued question is one turn of the fake (no reference timeout): seconds, not tens.
    await wait_until(lambda: len(answers()) == 2 and bool(with_marker(telegram, FORUM_ID, "RECORDED-MARK")),
                     "the queued answers and the recorded one", timeout=10, explain=explain)
    shown = texts(telegram, GROUP_ID)
    [notice] = [t for t in shown if "interrupted" in t]
    assert "CUT-Q cut by a dying replica" in notice
    assert [t.split(".")[0] for t in answers()] == ["Answer QUEUED-ONE-MARK", "Answer QUEUED-TWO-MARK"]
    assert shown.index(notice) < shown.index(answers()[0])
    [second] = [r.body["messages"] for r in provider.for_model("agg") if "QUEUED-TWO" in r.body["messages"][-1]["content"]]
    assert any("QUEUED-ONE-MARK" in m["content"] for m in second if m["role"] == "assistant")
    [recorded] = with_marker(telegram, FORUM_ID, "RECORDED-MARK")
    assert recorded.startswith(RECOVERED_MARK)  # Telegram cannot say whether the cut send applied
    assert len([r for r in provider.for_model("agg") if "RECORDED" in r.body["messages"][-1]["content"]]) == 1
    assert pg_rows(pg_database, "SELECT message_id, status FROM turns ORDER BY id") == [
        ("40", "done"), ("41", "interrupted"), ("42", "done"), ("43", "done")]

    # The survivor goes on answering.
    assert await b.post(group_update("/moa SURVIVOR are you there", message_id=44, update_id=8005)) == 200
    await wait_until(lambda: len(answers()) == 3, "the survivor's answer", timeout=10, explain=explain)
    assert answers()[-1].startswith("Answer SURVIVOR-MARK.")
    await wait_until(lambda: {s for (s,) in pg_rows(pg_database, "SELECT status FROM deliveries")} == {"sent"},
                     "every ledger row sent", explain=b.process.tail)


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
