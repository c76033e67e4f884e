"""The Slack adapter in Socket Mode against the fake Slack on 127.0.0.1, with the real
slack-bolt / slack-sdk: push an envelope, await what the fake received, assert on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from adapters.contract import (
    Answer,
    ChatRef,
    FileOut,
    InboundMessage,
    Notice,
    ReferenceSummary,
    SummaryEntry,
)
from adapters.slack import SlackAdapter, SlackSettings
from tests.fakes.slack_server import BOT_USER_ID, FakeSlack

Handler = Callable[[InboundMessage], Awaitable[None]]


class Inbox:
    """Collects what the adapter hands the gateway; optionally runs a turn for each."""

    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self.turn: Handler | None = None

    async def __call__(self, message: InboundMessage) -> None:
        self.messages.append(message)
        if self.turn is not None:
            await self.turn(message)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack(users={"U1": "Alice"}).start()
    yield server
    await server.stop()


async def started(fake: FakeSlack, inbox: Inbox, **overrides: object) -> SlackAdapter:
    settings = SlackSettings(
        bot_token="xoxb-test", app_token="xapp-test", base_url=fake.base_url, **overrides
    )  # type: ignore[arg-type]
    adapter = SlackAdapter(settings)
    await adapter.start(inbox)
    return adapter


@pytest.fixture
async def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def slack(fake: FakeSlack, inbox: Inbox) -> AsyncIterator[SlackAdapter]:
    adapter = await started(fake, inbox)
    yield adapter
    await adapter.stop()


def summary() -> ReferenceSummary:
    return ReferenceSummary(
        preset="default",
        mode="full",
        entries=(
            SummaryEntry(0, "openrouter:openai/gpt-5.1", "ok", 812, 0.0031, "Use **a queue**."),
            SummaryEntry(1, "openrouter:google/gemini-2.5-pro", "timeout", 120000, None, ""),
        ),
        total_cost_usd=0.0031,
    )


async def stream(adapter: SlackAdapter, chat: ChatRef, text: str, steps: int = 4) -> None:
    """What the gateway does: one send, growing edits, then the final edit with a footer."""
    sent = await adapter.send(chat, Answer(text[: len(text) // steps], final=False))
    for i in range(2, steps):
        sent = await adapter.edit(sent, Answer(text[: len(text) * i // steps], final=False))
    await adapter.edit(sent, Answer(text, final=True, footer="2 references · $0.0031"))


async def test_slash_command_is_acked_at_once_then_summary_and_answer_in_its_thread(
    fake: FakeSlack, inbox: Inbox, slack: SlackAdapter
) -> None:
    release = asyncio.Event()
    threaded: list[InboundMessage] = []

    async def turn(message: InboundMessage) -> None:
        await release.wait()  # a slow turn must not hold the ack back
        assert message.thread_id is None and "C1" not in fake.messages  # no echo before the verdict
        message = await slack.accepted(message)  # the gateway let it through: now the root
        threaded.append(message)
        chat = ChatRef("slack", message.chat_id, message.thread_id)
        await slack.send(chat, summary())
        await stream(slack, chat, "The answer is **42**, see [docs](https://x.io).")

    inbox.turn = turn
    pushed = time.monotonic()
    envelope = await fake.push_command(
        "what is  the answer &lt;b&gt;", user_id="U1", channel_id="C1", trigger_id="trig-9"
    )
    ack = await fake.wait_for(lambda: fake.ack_for(envelope))
    assert ack.at - pushed < 3.0
    await fake.wait_for(lambda: inbox.messages)
    release.set()

    await fake.wait_for(lambda: threaded)
    message = threaded[0]
    assert message.text == "/moa what is  the answer <b>" and message.is_command
    assert message.event_id == "cmd:trig-9" and message.user_id == "U1" and message.chat_id == "C1"
    root = fake.message("C1", message.thread_id or "")
    assert root["text"] == "<@U1> asked: /moa what is the answer &lt;b&gt;"

    await fake.wait_for(lambda: any(m.get("edits") == 3 for m in fake.thread("C1", root["ts"])))
    turn_posts = fake.calls_to("chat.postMessage")[1:]  # after the adapter's own root message
    assert turn_posts and all(ack.at < call.at for call in turn_posts)
    root_, summary_msg, answer = fake.thread("C1", root["ts"])
    assert summary_msg["blocks"][0]["type"] == "header"
    assert [b["type"] for b in summary_msg["blocks"]].count("section") == 2
    assert "timeout" in summary_msg["blocks"][2]["text"]["text"]
    assert answer["text"] == ("The answer is *42*, see <https://x.io|docs>.\n\n_2 references · $0.0031_")
    assert answer["thread_ts"] == root["ts"]


async def test_a_command_is_forwarded_with_its_caller_for_the_gateway_to_judge(
    fake: FakeSlack, inbox: Inbox, slack: SlackAdapter
) -> None:
    # Admin rules are the gateway's: the adapter forwards who asked, in the /moa grammar.
    await fake.push_command("default deep", user_id="U2", channel_id="C9", trigger_id="trig-2")
    await fake.wait_for(lambda: inbox.messages)
    (message,) = inbox.messages
    assert (message.user_id, message.chat_id, message.text) == ("U2", "C9", "/moa default deep")
    assert message.user_roles == () and message.event_id == "cmd:trig-2"


async def test_app_mention_in_a_thread_continues_that_thread(
    fake: FakeSlack, inbox: Inbox, slack: SlackAdapter
) -> None:
    await fake.push_event(
        {
            "type": "app_mention",
            "user": "U1",
            "text": f"<@{BOT_USER_ID}> and the cost?",
            "ts": "1700000100.000200",
            "thread_ts": "1700000050.000100",
            "channel": "C1",
        },
        event_id="Ev1",
    )
    await fake.push_event(
        {
            "type": "app_mention",
            "user": "U1",
            "text": f"<@{BOT_USER_ID}> new",
            "ts": "1700000200.000300",
            "channel": "C1",
        },
        event_id="Ev2",
    )
    await fake.wait_for(lambda: len(inbox.messages) == 2)
    in_thread, top = sorted(inbox.messages, key=lambda m: m.event_id)
    assert in_thread.thread_id == "1700000050.000100" and in_thread.text == "and the cost?"
    assert in_thread.mentions_bot and in_thread.user_name == "Alice"  # from users.info
    assert top.thread_id == "1700000200.000300"  # the answer threads under the mention


async def test_a_retried_event_is_acked_and_carries_the_same_event_id(
    fake: FakeSlack, inbox: Inbox, slack: SlackAdapter
) -> None:
    event = {
        "type": "message",
        "channel_type": "im",
        "user": "U1",
        "text": "hi",
        "ts": "1700000300.000100",
        "channel": "D1",
    }
    first = await fake.push_event(event, event_id="EvRetry")
    again = await fake.push_event(event, event_id="EvRetry", retry_attempt=1, retry_reason="timeout")
    await fake.wait_for(lambda: fake.ack_for(first) and fake.ack_for(again) and len(inbox.messages) == 2)
    assert [m.event_id for m in inbox.messages] == ["EvRetry", "EvRetry"]  # the gateway de-duplicates
    assert all(m.is_dm and m.thread_id is None for m in inbox.messages)


async def test_bot_messages_and_edits_are_ignored(fake: FakeSlack, inbox: Inbox, slack: SlackAdapter) -> None:
    base = {
        "type": "message",
        "channel_type": "im",
        "channel": "D1",
        "text": "beep",
        "ts": "1700000400.000100",
    }
    envelopes = [
        await fake.push_event({**base, "user": "U9", "bot_id": "B9"}, event_id="EvBot"),
        await fake.push_event({**base, "user": BOT_USER_ID, "bot_id": "BBOT"}, event_id="EvSelf"),
        await fake.push_event(
            {**base, "subtype": "message_changed", "message": {"text": "x"}}, event_id="EvEdit"
        ),
        await fake.push_event({**base, "user": "U1", "text": "real"}, event_id="EvReal"),
    ]
    await fake.wait_for(lambda: all(fake.ack_for(e) for e in envelopes) and inbox.messages)
    await asyncio.sleep(0.1)
    assert [m.event_id for m in inbox.messages] == ["EvReal"]


async def test_a_reply_in_the_bots_thread_is_forwarded(
    fake: FakeSlack, inbox: Inbox, slack: SlackAdapter
) -> None:
    sent = await slack.send(ChatRef("slack", "C1"), Notice("Ask me in this thread"))
    await fake.push_event(
        {
            "type": "message",
            "channel_type": "channel",
            "user": "U1",
            "text": "follow-up",
            "ts": "1700000500.000100",
            "thread_ts": sent.message_ids[0],
            "parent_user_id": BOT_USER_ID,
            "channel": "C1",
        },
        event_id="EvReply",
    )
    await fake.wait_for(lambda: inbox.messages)
    assert inbox.messages[0].replies_to_bot and inbox.messages[0].thread_id == sent.message_ids[0]


async def test_429_while_streaming_still_delivers_the_complete_answer(
    fake: FakeSlack, inbox: Inbox, slack: SlackAdapter
) -> None:
    chat = ChatRef("slack", "C1", "1700000000.000001")
    text = "Streaming answer, " * 20 + "the end."
    sent = await slack.send(chat, Answer(text[:50], final=False))
    fake.rate_limit("chat.update", times=1, retry_after=1)
    started_at = time.monotonic()
    sent = await slack.edit(sent, Answer(text[:200], final=False))
    assert time.monotonic() - started_at >= 0.9  # Retry-After was waited out
    # The final edit meets more 429s than the SDK's retry handler takes: still delivered.
    fake.rate_limit("chat.update", times=3, retry_after=1)
    final = await slack.edit(sent, Answer(text, final=True))
    assert fake.message("C1", final.message_ids[0])["text"] == text
    assert len(fake.calls_to("chat.update", ok_only=False)) - len(fake.calls_to("chat.update")) == 4


async def test_long_answers_grow_into_more_messages_and_identical_edits_are_skipped(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    chat = ChatRef("slack", "C2", "1700000000.000001")
    paragraph = "A sentence that goes on for a while. " * 20 + "\n\n"
    sent = await slack.send(chat, Answer(paragraph, final=False))
    sent = await slack.edit(sent, Answer(paragraph * 12, final=False))
    assert len(sent.message_ids) >= 2
    updates = len(fake.calls_to("chat.update"))
    same = await slack.edit(sent, Answer(paragraph * 12, final=False))
    assert same == sent and len(fake.calls_to("chat.update")) == updates
    texts = [fake.message("C2", ts)["text"] for ts in sent.message_ids]
    assert all(len(t) <= slack.limits.max_message_chars for t in texts)
    assert sum(t.count("A sentence") for t in texts) == 240


async def test_a_timed_out_post_is_not_sent_twice(fake: FakeSlack, inbox: Inbox) -> None:
    adapter = await started(fake, inbox, http_timeout_s=0.5)
    try:
        fake.delay("chat.postMessage", 1.0)  # posted, but the answer comes too late
        chat = ChatRef("slack", "C3", None)
        sent = await adapter.send(chat, Answer("only once", final=True))
        assert [m["text"] for m in fake.messages["C3"]] == ["only once"]
        assert sent.message_ids == (fake.messages["C3"][0]["ts"],)
    finally:
        await adapter.stop()


def long_thread(fake: FakeSlack, channel: str, root: str, replies: int) -> None:
    """A person's thread of `replies` messages: more than one page of conversations.replies."""
    fake.messages.setdefault(channel, []).append({"type": "message", "ts": root, "text": "root", "user": "U1"})
    fake.messages[channel] += [{"type": "message", "ts": f"1600000000.{n:06d}", "text": f"chatter {n}", "user": "U1",
                                "thread_ts": root, "parent_user_id": "U1"} for n in range(replies)]


async def test_a_timed_out_post_in_a_long_thread_is_found_and_not_sent_twice(fake: FakeSlack, inbox: Inbox) -> None:
    # Before: only the thread's first 50 messages were read, so the post (the newest) was not
    # found and went out twice.
    long_thread(fake, "C3", "1600000000.000000", 260)
    adapter = await started(fake, inbox, http_timeout_s=0.5)
    try:
        fake.delay("chat.postMessage", 1.0)  # posted, but the answer comes too late
        sent = await adapter.send(ChatRef("slack", "C3", "1600000000.000000"), Answer("only once", final=True))
        ours = [m for m in fake.messages["C3"] if m.get("bot_id")]
        assert [m["text"] for m in ours] == ["only once"] and sent.message_ids == (ours[0]["ts"],)
        assert len(fake.calls_to("conversations.replies")) == 2  # two pages of 200
    finally:
        await adapter.stop()


async def test_a_ledger_send_repeated_after_a_crash_in_a_long_thread_finds_its_marker(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    # Before: the first 200 messages of the thread were searched; the marked answer came after.
    long_thread(fake, "C6", "1600000000.000000", 450)
    chat = ChatRef("slack", "C6", "1600000000.000000")
    first = await slack.send_once(chat, Answer("exactly once"), key="moa-delivery-7", retry=False)
    again = await slack.send_once(chat, Answer("exactly once"), key="moa-delivery-7", retry=True)
    assert again.message_ids == first.message_ids
    assert [m["text"] for m in fake.messages["C6"] if m.get("bot_id")] == ["exactly once"]


async def test_files_are_uploaded_into_the_thread(fake: FakeSlack, slack: SlackAdapter) -> None:
    chat = ChatRef("slack", "C4", "1700000000.000009")
    sent = await slack.send(chat, FileOut("digest.png", b"\x89PNG fake", caption="Weekly **cost**"))
    file_id = sent.message_ids[0]
    assert fake.uploads[file_id] == b"\x89PNG fake"
    (posted,) = fake.messages["C4"]
    assert posted["thread_ts"] == "1700000000.000009" and posted["text"] == "Weekly *cost*"
    steps = [c.method for c in fake.calls if c.method.startswith("files.") or c.method == "upload"]
    assert steps == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]


async def test_notices_go_to_the_thread(fake: FakeSlack, slack: SlackAdapter) -> None:
    await slack.send(
        ChatRef("slack", "C5", "1700000000.000042"), Notice("Only admins can do that", "warning")
    )
    (posted,) = fake.messages["C5"]
    assert posted["thread_ts"] == "1700000000.000042"
    assert posted["text"] == ":warning: Only admins can do that"


async def test_a_ledger_send_repeated_after_a_crash_finds_its_marker_and_posts_nothing(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    chat = ChatRef("slack", "C1", "1700000000.000001")
    first = await slack.send_once(chat, Answer("exactly once"), key="moa-delivery-3", retry=False)
    (posted,) = fake.messages["C1"]
    assert posted["metadata"] == {"event_type": "moa_delivery", "event_payload": {"key": "moa-delivery-3", "part": 0}}
    again = await slack.send_once(chat, Answer("exactly once"), key="moa-delivery-3", retry=True)
    assert again.message_ids == first.message_ids and len(fake.messages["C1"]) == 1
    # A retry of a row Slack never got is posted; a send that is no retry does not look first.
    lookups = len(fake.calls_to("conversations.replies"))
    fresh = await slack.send_once(chat, Answer("never arrived"), key="moa-delivery-4", retry=True)
    assert len(fake.calls_to("conversations.replies")) == lookups + 1
    assert fresh.message_ids != first.message_ids and len(fake.messages["C1"]) == 2
    await slack.send_once(chat, Answer("plain"), key="moa-delivery-5", retry=False)
    assert len(fake.calls_to("conversations.replies")) == lookups + 1 and len(fake.messages["C1"]) == 3
