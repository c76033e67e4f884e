"""A reply in a thread under a person's message, without a mention, is a reply to the bot when
the bot has posted in that thread — also when another replica (or this process before a
restart) did the posting: the adapter then asks Slack (conversations.replies), and remembers a
"no" for a while so that chatter in people's threads does not cost a call per message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from adapters.contract import InboundMessage
from adapters.slack import SlackAdapter, SlackSettings
from tests.fakes.slack_server import BOT_ID, BOT_USER_ID, FakeSlack

ROOT_TS = "1700000600.000100"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack(users={"U1": "Alice"}).start()
    # A person's message, the root of a thread.
    server.messages["C1"] = [{"type": "message", "ts": ROOT_TS, "text": "<@UBOT> hi", "user": "U1"}]
    yield server
    await server.stop()


@pytest.fixture
async def adapter(fake: FakeSlack) -> AsyncIterator[tuple[SlackAdapter, list[InboundMessage], Clock]]:
    inbox: list[InboundMessage] = []
    clock = Clock()

    async def on_inbound(message: InboundMessage) -> None:
        inbox.append(message)

    slack = SlackAdapter(SlackSettings(bot_token="xoxb-test", app_token="xapp-test", base_url=fake.base_url),
                         clock=clock)  # type: ignore[arg-type]
    await slack.start(on_inbound)
    yield slack, inbox, clock
    await slack.stop()


def reply(n: int) -> dict:
    return {"type": "message", "channel_type": "channel", "user": "U1", "text": f"follow-up {n}",
            "ts": f"1700000700.{n:06d}", "thread_ts": ROOT_TS, "parent_user_id": "U1", "channel": "C1"}


async def acked(fake: FakeSlack, envelope: str) -> None:
    await fake.wait_for(lambda: fake.ack_for(envelope))
    await asyncio.sleep(0.2)  # what the adapter does after the ack (a lookup, a hand-over) is done


async def test_a_reply_where_another_replica_answered_is_forwarded(fake: FakeSlack, adapter) -> None:
    _, inbox, _ = adapter
    # The answer another replica posted in the thread.
    fake.messages["C1"].append({"type": "message", "ts": "1700000650.000100", "text": "answer", "user": BOT_USER_ID,
                                "bot_id": BOT_ID, "thread_ts": ROOT_TS, "parent_user_id": "U1"})
    await fake.push_event(reply(1), event_id="EvReply1")
    await fake.wait_for(lambda: inbox)
    assert inbox[0].replies_to_bot and inbox[0].thread_id == ROOT_TS
    await acked(fake, await fake.push_event(reply(2), event_id="EvReply2"))
    assert [m.event_id for m in inbox] == ["EvReply1", "EvReply2"]
    assert len(fake.calls_to("conversations.replies")) == 1  # known from then on


async def test_a_reply_in_a_thread_the_bot_never_posted_in_is_ignored_and_slack_asked_once_a_while(
        fake: FakeSlack, adapter) -> None:
    _, inbox, clock = adapter
    await acked(fake, await fake.push_event(reply(1), event_id="EvReply1"))
    await acked(fake, await fake.push_event(reply(2), event_id="EvReply2"))
    assert inbox == []
    assert len(fake.calls_to("conversations.replies")) == 1
    clock.now += timedelta(seconds=31)  # the bot may have answered there since
    await acked(fake, await fake.push_event(reply(3), event_id="EvReply3"))
    assert inbox == []
    assert len(fake.calls_to("conversations.replies")) == 2


async def test_a_reply_in_a_long_thread_the_bot_answered_late_in_is_forwarded(fake: FakeSlack, adapter) -> None:
    # Before: only the thread's first 200 messages were read: the bot's answer after them was not seen.
    _, inbox, _ = adapter
    fake.messages["C1"] += [{"type": "message", "ts": f"1700000610.{n:06d}", "text": f"chatter {n}", "user": "U1",
                             "thread_ts": ROOT_TS, "parent_user_id": "U1"} for n in range(300)]
    fake.messages["C1"].append({"type": "message", "ts": "1700000650.000100", "text": "answer", "user": BOT_USER_ID,
                                "bot_id": BOT_ID, "thread_ts": ROOT_TS, "parent_user_id": "U1"})
    await fake.push_event(reply(1), event_id="EvReply1")
    await fake.wait_for(lambda: inbox)
    assert inbox[0].replies_to_bot and len(fake.calls_to("conversations.replies")) == 2
