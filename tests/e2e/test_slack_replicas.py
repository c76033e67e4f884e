"""Two real `moa-gateway run` replicas on one PostgreSQL database against the fake Slack:

- HTTP mode on two ports (what a load balancer spreads Slack's requests over): the same signed
  event, and the same slash command, delivered to both replicas (Slack's retry after a slow ack,
  landing on the other replica) are each answered once;
- Socket Mode, one connection per replica (Slack spreads an app's events over up to 10): events
  spread over both connections are each answered once, by the replica that got them; the same
  event, and the same slash command, delivered on both connections are answered once; every
  envelope is acknowledged on the connection it came on."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.backends import truncate_all
from tests.e2e.kit import KEY_ENV, GatewayProcess, _toml, wait_until
from tests.e2e.replica_kit import free_port, pg_rows, start_all
from tests.fakes.provider_server import Reply
from tests.fakes.slack_server import BOT_USER_ID, FakeSlack, command_body, event_body, sign

CHANNEL = "C0000000001"
MEMBER_ID = "U0000000001"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_ENV = {"E2E_SLACK_BOT_TOKEN": "xoxb-e2e", "E2E_SLACK_SIGNING_SECRET": SECRET,
             "E2E_SLACK_APP_TOKEN": "xapp-e2e"}


@pytest.fixture
async def slack():
    server = await FakeSlack(users={MEMBER_ID: "Alice"}).start()
    yield server
    await server.stop()


def replica_config(folder: Path, provider, slack: FakeSlack, database: str, intake: dict) -> Path:
    config = folder / "moa-gateway.toml"
    config.write_text(_toml({
        "gateway": {"database": database, "default_preset": "default", "lease_s": 3.0},
        "providers.fake": {"api": "openai", "base_url": provider.openai_base, "api_key_env": KEY_ENV,
                           "max_retries": 0},
        "presets.default": {"references": ["fake:ref-a", "fake:ref-b"], "aggregator": "fake:agg",
                            "reference_timeout": 15, "tools": []},
        "slack": {"bot_token_env": "E2E_SLACK_BOT_TOKEN", "base_url": slack.base_url, "edit_interval_s": 0.2,
                  "allowed_chats": [CHANNEL], **intake},
    }), encoding="utf-8")
    return config


@pytest.fixture
async def two_replicas(tmp_path: Path, provider, slack, pg_database, monkeypatch):
    for name, value in SLACK_ENV.items():
        monkeypatch.setenv(name, value)
    truncate_all(pg_database)
    urls, processes = [], []
    for index in range(2):
        folder = tmp_path / f"replica{index}"
        folder.mkdir()
        port = free_port()
        config = replica_config(folder, provider, slack, pg_database, {
            "signing_secret_env": "E2E_SLACK_SIGNING_SECRET", "http_host": "127.0.0.1", "http_port": port,
            "http_path": "/slack/events"})
        processes.append(GatewayProcess(config, f"replica{index}"))
        urls.append(f"http://127.0.0.1:{port}/slack/events")
    try:
        await start_all(processes)
        yield urls, processes
    finally:
        for process in processes:
            await process.kill()


@pytest.fixture
async def two_socket_replicas(tmp_path: Path, provider, slack, pg_database, monkeypatch):
    """Two replicas in Socket Mode: each opens its own connection to the fake Slack."""
    for name, value in SLACK_ENV.items():
        monkeypatch.setenv(name, value)
    truncate_all(pg_database)
    processes = []
    for index in range(2):
        folder = tmp_path / f"replica{index}"
        folder.mkdir()
        config = replica_config(folder, provider, slack, pg_database, {"app_token_env": "E2E_SLACK_APP_TOKEN"})
        processes.append(GatewayProcess(config, f"replica{index}"))
    try:
        await start_all(processes)
        await slack.wait_connections(2, timeout=20)
        yield processes
    finally:  # also when they did not start or connect: no process is left behind
        for process in processes:
            await process.kill()


async def post(url: str, body: str, content_type: str, **extra: str) -> int:
    headers = {**sign(SECRET, body), "Content-Type": content_type, **extra}
    async with aiohttp.ClientSession() as http, http.post(url, data=body.encode(), headers=headers) as response:
        return response.status


async def test_the_same_event_and_command_on_both_replicas_are_answered_once(two_replicas, provider, slack,
                                                                             pg_database):
    (a, b), processes = two_replicas

    def answer(request) -> Reply:
        asked = request.body["messages"][-1]["content"]
        return Reply(text="Command answer COMMAND-MARK." if "a command for both" in asked else "Mention answer MENTION-MARK.")

    provider.handler("agg", answer)
    event = {"type": "app_mention", "user": MEMBER_ID, "text": f"<@{BOT_USER_ID}> a mention for both",
             "ts": f"{time.time():.6f}", "channel": CHANNEL}
    body = json.dumps(event_body(event, event_id="EvBoth"))
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    command = urlencode(command_body("a command for both", user_id=MEMBER_ID, channel_id=CHANNEL,
                                     trigger_id="trig-both", base=slack.base_url))
    form = "application/x-www-form-urlencoded"
    statuses = await asyncio.gather(post(a, body, "application/json"), post(b, body, "application/json", **retry),
                                    post(a, command, form), post(b, command, form))
    assert statuses == [200, 200, 200, 200]

    def posted(mark: str) -> list[dict]:
        return [m for m in slack.messages.get(CHANNEL, []) if mark in m["text"]]

    def explain() -> str:
        return f"{slack.messages.get(CHANNEL)}\n" + "\n".join(p.tail() for p in processes)

    await wait_until(lambda: bool(posted("MENTION-MARK")) and bool(posted("COMMAND-MARK")), "both answers",
                     explain=explain)
    await wait_until(lambda: len(pg_rows(pg_database, "SELECT id FROM deliveries WHERE status = 'sent'")) == 2,
                     "both ledger rows sent", explain=explain)
    await asyncio.sleep(1.0)  # a second answer, if any, would have come by now
    assert len(posted("MENTION-MARK")) == 1 and len(posted("COMMAND-MARK")) == 1
    assert len(posted("asked: /moa a command for both")) == 1  # the command's root message, once too
    assert len(provider.for_model("agg")) == 2
    assert pg_rows(pg_database, "SELECT status FROM turns") == [("done",), ("done",)]


async def test_socket_mode_on_two_replicas_answers_each_event_once(two_socket_replicas, provider, slack,
                                                                  pg_database):
    processes = two_socket_replicas
    first, second = slack.connections

    def answer(request) -> Reply:
        asked = re.search(r"please answer (\w+)", json.dumps(request.body["messages"]))
        return Reply(text=f"Answer to {asked.group(1).upper() if asked else '?'}.")

    provider.handler("agg", answer)
    start = time.time()

    def mention(n: int, mark: str) -> dict:
        return {"type": "app_mention", "user": MEMBER_ID, "text": f"<@{BOT_USER_ID}> please answer {mark}",
                "ts": f"{start + n / 100:.6f}", "channel": CHANNEL}

    # Four events, spread over the two connections in turn, as Slack does.
    spread = [await slack.push_event(mention(n, f"spread{n}"), event_id=f"EvSpread{n}") for n in range(4)]
    # One event delivered on both connections (a redelivery landing on the other replica), and
    # a slash command too; the second copy of the event is Slack's retry of it.
    twice = mention(9, "twice")
    both = await asyncio.gather(
        slack.push_event(twice, event_id="EvTwice", connection=first),
        slack.push_event(twice, event_id="EvTwice", connection=second, retry_attempt=1),
        slack.push_command("please answer command", user_id=MEMBER_ID, channel_id=CHANNEL, trigger_id="trig-two",
                           connection=first),
        slack.push_command("please answer command", user_id=MEMBER_ID, channel_id=CHANNEL, trigger_id="trig-two",
                           connection=second))
    marks = [f"SPREAD{n}" for n in range(4)] + ["TWICE", "COMMAND"]

    def posted(mark: str) -> list[dict]:
        return [m for channel in slack.messages.values() for m in channel if f"Answer to {mark}." in m["text"]]

    def explain() -> str:
        return f"{slack.messages.get(CHANNEL)}\n" + "\n".join(p.tail() for p in processes)

    await wait_until(lambda: all(posted(mark) for mark in marks), "every answer", explain=explain)
    await wait_until(lambda: len(pg_rows(pg_database, "SELECT id FROM deliveries WHERE status = 'sent'")) == 6,
                     "every ledger row sent", explain=explain)
    await asyncio.sleep(1.0)  # a second answer, if any, would have come by now
    assert {mark: len(posted(mark)) for mark in marks} == dict.fromkeys(marks, 1)
    assert len(provider.for_model("agg")) == 6
    assert pg_rows(pg_database, "SELECT status FROM turns") == [("done",)] * 6
    # Every envelope was acknowledged, on the connection it came on.
    envelopes = [*zip(spread, [first, second] * 2, strict=True), *zip(both, [first, second] * 2, strict=True)]
    acks = {envelope: slack.ack_for(envelope) for envelope, _ in envelopes}
    assert {envelope: ack.connection if ack else None for envelope, ack in acks.items()} == dict(envelopes)
    # The spread events were run by the replica that received them: both replicas ran turns.
    assert pg_rows(pg_database, "SELECT COUNT(DISTINCT lease_owner) FROM turns") == [(2,)]


async def test_socket_mode_a_reply_in_the_bots_thread_reaches_the_other_replica(two_socket_replicas, provider,
                                                                                slack, pg_database):
    """The bot answered a mention in a thread under the person's message (so Slack's
    `parent_user_id` is the person's); a reply there without a mention, delivered to the other
    replica, is still a reply to the bot: answered in that thread, with the thread's history."""
    processes = two_socket_replicas
    first, second = slack.connections

    def answer(request) -> Reply:
        asked = re.findall(r"please answer (\w+)", json.dumps(request.body["messages"]))
        return Reply(text=f"Answer to {asked[-1].upper() if asked else '?'}.")

    provider.handler("agg", answer)
    root = f"{time.time():.6f}"
    await slack.push_event({"type": "app_mention", "user": MEMBER_ID, "text": f"<@{BOT_USER_ID}> please answer root",
                            "ts": root, "channel": CHANNEL}, event_id="EvRoot", connection=first)

    def in_thread(mark: str) -> list[dict]:
        return [m for m in slack.thread(CHANNEL, root) if f"Answer to {mark}." in m["text"]]

    def explain() -> str:
        return f"{slack.messages.get(CHANNEL)}\n" + "\n".join(p.tail() for p in processes)

    await wait_until(lambda: bool(in_thread("ROOT")), "the answer in the thread", explain=explain)
    reply = {"type": "message", "user": MEMBER_ID, "text": "please answer followup", "ts": f"{time.time():.6f}",
             "thread_ts": root, "parent_user_id": MEMBER_ID, "channel": CHANNEL, "channel_type": "channel"}
    await slack.push_event(reply, event_id="EvFollowup", connection=second)
    await wait_until(lambda: bool(in_thread("FOLLOWUP")), "the follow-up answered in the thread", explain=explain)
    followup = provider.for_model("agg")[-1].body["messages"]
    assert "Answer to ROOT." in json.dumps(followup)  # the thread's history came with it
    assert pg_rows(pg_database, "SELECT COUNT(DISTINCT session_id), COUNT(DISTINCT lease_owner) FROM turns") == [
        (1, 2)]
