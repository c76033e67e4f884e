"""The Telegram adapter end to end: the real python-telegram-bot against a fake Bot API server.

Each test reads like a conversation: push an update (or call send/edit as the gateway would),
then look at what the fake received and what the chat shows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aiohttp
import pytest

from adapters.contract import (
    Answer,
    ChatRef,
    FileOut,
    InboundMessage,
    Notice,
    Progress,
    ReferenceSummary,
    SummaryEntry,
)
from adapters.telegram import TelegramAdapter, TelegramSettings
from adapters.text import utf16_len
from tests.adapters.test_telegram_render import code_heavy_answer
from tests.fakes.telegram_server import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    FakeTelegram,
    group_chat,
    message_update,
    parse_html,
    private_chat,
    user,
)

GROUP_ID = -1001234567890
FORUM_ID = -1009876543210
GROUP = group_chat(GROUP_ID)
FORUM = group_chat(FORUM_ID, forum=True)


@pytest.fixture
async def fake():
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def telegram(fake):
    """A factory: start an adapter on the fake, get it and the queue its inbound lands in."""
    started: list[TelegramAdapter] = []

    async def make(**overrides) -> tuple[TelegramAdapter, asyncio.Queue[InboundMessage]]:
        values = {
            "token": TOKEN,
            "base_url": fake.base_url,
            "base_file_url": fake.base_file_url,
            "poll_timeout_s": 5.0,
            "request_timeout_s": 5.0,
            **overrides,
        }
        adapter = TelegramAdapter(TelegramSettings(**values), presets=("default", "deep"))
        inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
        await adapter.start(inbox.put)
        started.append(adapter)
        return adapter, inbox

    yield make
    for adapter in started:
        await adapter.stop()


async def next_inbound(inbox: asyncio.Queue[InboundMessage]) -> InboundMessage:
    return await asyncio.wait_for(inbox.get(), 5)


def summary(count: int = 2) -> ReferenceSummary:
    return ReferenceSummary(
        preset="default",
        mode="full",
        entries=tuple(
            SummaryEntry(i, f"openrouter:model-{i}", "ok", 900 + i, 0.002, f"Advice number {i}.")
            for i in range(count)
        ),
        total_cost_usd=0.004,
    )


def reply_target(message: InboundMessage) -> ChatRef:
    return ChatRef("telegram", message.chat_id, thread_id=message.thread_id, reply_to_id=message.message_id)


# -- start-up ------------------------------------------------------------------------------------


async def test_start_reads_the_bot_and_registers_the_command_menu(telegram, fake):
    adapter, _ = await telegram()
    assert (adapter.bot_id, adapter.bot_username) == (BOT_ID, BOT_USERNAME)
    assert [command["command"] for command in fake.commands] == ["moa"]
    description = fake.commands[0]["description"]
    assert all(
        word in description for word in ("presets", "default", "cost", "budget", "digest", "new", "help")
    )
    assert adapter.platform == "telegram"
    assert adapter.limits.max_message_chars == 4096 and adapter.limits.edit_interval_s == 1.0


async def test_the_token_never_reaches_the_logs(telegram, fake, caplog):
    caplog.set_level(logging.DEBUG)
    adapter, inbox = await telegram()
    fake.push_update(message_update("/moa hi", chat=GROUP))
    await next_inbound(inbox)
    await adapter.send(ChatRef("telegram", str(GROUP_ID)), Notice("ok"))
    assert caplog.records
    assert TOKEN not in caplog.text


# -- a /moa turn in a group and in a forum topic ---------------------------------------------------


async def test_group_turn_summary_then_answer_as_replies(telegram, fake):
    adapter, inbox = await telegram()
    fake.push_update(message_update(f"/moa@{BOT_USERNAME} why is the sky blue?", chat=GROUP, message_id=10))
    message = await next_inbound(inbox)
    assert (message.chat_id, message.thread_id, message.text, message.is_dm) == (
        str(GROUP_ID),
        None,
        "/moa why is the sky blue?",
        False,
    )

    chat = reply_target(message)
    await adapter.send(chat, summary())
    stream = await adapter.send(chat, Answer("Rayleigh", final=False))
    stream = await adapter.edit(stream, Answer("Rayleigh scattering.", final=True, footer="2 refs · $0.004"))

    shown = fake.chat(GROUP_ID)
    assert [m.kind for m in shown] == ["text", "text"]
    assert shown[0].text.startswith("🧩 2 references") and shown[0].raw.count("<blockquote expandable>") == 2
    assert shown[1].text == "Rayleigh scattering.\n\n2 refs · $0.004"
    assert all(m.reply_to == 10 and m.thread_id is None for m in shown)
    assert stream.message_ids == (str(shown[1].message_id),)


async def test_forum_topic_turn_goes_to_the_topic(telegram, fake):
    adapter, inbox = await telegram()
    topic_root = {
        "message_id": 77,
        "date": 1_767_220_000,
        "chat": FORUM,
        "from": user(5),
        "message_thread_id": 77,
        "is_topic_message": True,
        "forum_topic_created": {"name": "Research", "icon_color": 7322096},
    }
    fake.push_update(
        message_update("/moa compare A and B", chat=FORUM, thread_id=77, message_id=80, reply_to=topic_root)
    )
    message = await next_inbound(inbox)
    assert (message.thread_id, message.reply_to_id, message.message_id) == ("77", None, "80")

    chat = reply_target(message)
    await adapter.send(chat, Progress("references", 1, 2))
    await adapter.send(chat, summary())
    stream = await adapter.send(chat, Answer("A is", final=False))
    await adapter.edit(stream, Answer("A is faster; B is simpler.", final=True))

    shown = fake.chat(FORUM_ID)
    assert len(shown) == 3
    assert all(m.thread_id == 77 for m in shown)
    assert [c.params.get("message_thread_id") for c in fake.calls_of("sendMessage")] == [77, 77, 77]
    assert shown[1].text.startswith("🧩") and shown[2].text == "A is faster; B is simpler."


# -- long answers ----------------------------------------------------------------------------------


async def test_ten_thousand_character_answer_with_code_blocks(telegram, fake):
    adapter, _ = await telegram()
    md = code_heavy_answer(10_000)
    chat = ChatRef("telegram", str(GROUP_ID), reply_to_id="10")
    stream = await adapter.send(chat, Answer(md[:300], final=False))
    stream = await adapter.edit(stream, Answer(md, final=True))

    shown = fake.chat(GROUP_ID)
    assert len(shown) >= 3 and stream.message_ids == tuple(str(m.message_id) for m in shown)
    for message in shown:
        assert message.parse_mode == "HTML"  # Telegram accepted every part's markup
        assert utf16_len(message.text) <= 4096
        assert message.raw.count("<pre") == message.raw.count("</pre>") >= 1
    assert shown[0].reply_to == 10 and all(m.reply_to is None for m in shown[1:])
    code_lines = [line for m in shown for line in m.text.split("\n") if line.startswith("value_")]
    assert code_lines == [line for line in md.split("\n") if line.startswith("value_")]


# -- markup refused --------------------------------------------------------------------------------


async def test_markup_refused_once_then_plain_text(telegram, fake):
    adapter, _ = await telegram()
    fake.fail_next(
        "sendMessage",
        status=400,
        description="Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\"",
    )
    chat = ChatRef("telegram", str(GROUP_ID))
    sent = await adapter.send(chat, Answer("**Bold** claim with `code`."))
    calls = fake.calls_of("sendMessage")
    assert [(c.status, c.params.get("parse_mode")) for c in calls] == [(400, "HTML"), (200, None)]
    [message] = fake.chat(GROUP_ID)
    assert message.text == "**Bold** claim with `code`." and message.parse_mode is None
    assert sent.message_ids == (str(message.message_id),)

    # The next message tries markup again, and an edit refused the same way also falls back.
    fake.fail_next("editMessageText", status=400)
    await adapter.edit(sent, Answer("**Bold** claim, revised."))
    assert fake.chat(GROUP_ID)[0].text == "**Bold** claim, revised."


# -- flood control ---------------------------------------------------------------------------------


async def test_429_in_the_middle_of_a_stream_and_the_full_answer_still_arrives(telegram, fake):
    adapter, _ = await telegram()
    chat = ChatRef("telegram", str(GROUP_ID))
    words = [f"word{i}" for i in range(40)]
    stream = await adapter.send(chat, Answer(" ".join(words[:5]), final=False))
    fake.fail_next("editMessageText", status=429, retry_after=1)
    for n in range(10, 40, 5):  # the gateway keeps streaming while the chat is paused
        stream = await adapter.edit(stream, Answer(" ".join(words[:n]), final=False))
    started = time.monotonic()
    stream = await adapter.edit(stream, Answer(" ".join(words), final=True))

    edits = fake.calls_of("editMessageText")
    assert edits[0].status == 429
    assert len(edits) == 2  # the intermediate edits during the pause were coalesced, not queued
    assert time.monotonic() - started > 0.5  # the final edit waited the pause out
    [message] = fake.chat(GROUP_ID)
    assert message.text == " ".join(words)


async def test_429_on_the_final_edit_waits_and_delivers(telegram, fake):
    adapter, _ = await telegram()
    chat = ChatRef("telegram", str(GROUP_ID))
    stream = await adapter.send(chat, Answer("draft", final=False))
    fake.fail_next("editMessageText", status=429, retry_after=1)
    fake.fail_next("sendMessage", status=429, retry_after=1)
    long_answer = "Final paragraph one.\n\n" + "x " * 3000  # needs a second message
    started = time.monotonic()
    stream = await adapter.edit(stream, Answer(long_answer, final=True))
    assert time.monotonic() - started >= 2.0  # one pause for the edit, one for the new message
    shown = fake.chat(GROUP_ID)
    assert len(stream.message_ids) == len(shown) >= 2
    assert "".join(m.text for m in shown).replace(" ", "").replace("\n", "") == long_answer.replace(
        " ", ""
    ).replace("\n", "")


async def test_identical_edit_is_a_no_op(telegram, fake):
    adapter, _ = await telegram()
    chat = ChatRef("telegram", str(GROUP_ID))
    sent = await adapter.send(chat, Answer("same", final=False))
    await adapter.edit(sent, Answer("same", final=False))
    assert fake.calls_of("editMessageText") == []  # known to be shown: not even asked

    other, _ = await telegram()  # an adapter that does not know what is shown (e.g. restarted)
    again = await other.edit(sent, Answer("same", final=True))
    [call] = fake.calls_of("editMessageText")
    assert call.status == 400  # Telegram: "message is not modified"
    assert again.message_ids == sent.message_ids


# -- timeouts --------------------------------------------------------------------------------------


async def test_a_send_that_timed_out_is_not_repeated_and_a_timed_out_edit_is(telegram, fake):
    adapter, _ = await telegram(request_timeout_s=0.3)
    chat = ChatRef("telegram", str(GROUP_ID))
    fake.stall_next("sendMessage", 0.8)  # delivered, but the answer comes too late
    sent = await adapter.send(chat, Notice("hello"))
    assert sent.message_ids == ()
    await asyncio.sleep(0.6)
    assert len(fake.calls_of("sendMessage")) == 1 and len(fake.chat(GROUP_ID)) == 1

    stream = await adapter.send(chat, Answer("The answer", final=False))
    fake.stall_next("editMessageText", 0.8)
    stream = await adapter.edit(stream, Answer("The answer is 42.", final=True))
    edits = fake.calls_of("editMessageText")
    assert len(edits) == 2 and edits[1].status == 400  # the repeat found it done: not modified
    assert fake.chat(GROUP_ID)[-1].text == "The answer is 42."
    assert len(stream.message_ids) == 1


# -- inbound filtering and de-duplication -----------------------------------------------------------


async def test_other_bots_edited_messages_and_commands_for_other_bots_are_ignored(telegram, fake):
    _, inbox = await telegram()
    fake.push_update(message_update("/moa hi", chat=GROUP, sender=user(99, username="OtherBot", is_bot=True)))
    fake.push_update(message_update("/moa hi (edited)", chat=GROUP, edited=True))
    fake.push_update(message_update("/moa@OtherBot hi", chat=GROUP))
    fake.push_update(
        message_update("my own", chat=GROUP, sender=user(BOT_ID, username=BOT_USERNAME, is_bot=True))
    )
    fake.push_update(message_update(f"@{BOT_USERNAME} the real one", chat=GROUP, message_id=55))
    message = await next_inbound(inbox)
    assert (message.message_id, message.text, message.mentions_bot) == ("55", "the real one", True)
    assert inbox.empty()


async def test_the_same_update_twice_reaches_the_gateway_with_the_same_event_id(telegram, fake):
    _, inbox = await telegram()
    update = message_update("/moa once", chat=GROUP, update_id=4242)
    fake.push_update(update)
    fake.push_update(update)  # a replay of the very same update
    first, second = await next_inbound(inbox), await next_inbound(inbox)
    assert first.event_id == second.event_id == "4242"
    assert first == second


async def test_private_chat_and_captions(telegram, fake):
    _, inbox = await telegram()
    fake.push_update(message_update("hello bot", chat=private_chat(42)))
    fake.push_update(message_update(None, caption="/moa what is in this picture?", chat=GROUP))
    dm, caption = await next_inbound(inbox), await next_inbound(inbox)
    assert dm.is_dm and dm.text == "hello bot" and dm.chat_id == "42"
    assert caption.text == "/moa what is in this picture?" and caption.is_command


# -- webhook mode ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_webhook_refuses_requests_without_the_secret(telegram, fake):
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram"
    _, inbox = await telegram(
        mode="webhook",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        webhook_path="telegram",
        webhook_url=url,
        webhook_secret="s3cret-Token_1",
    )
    assert fake.webhook["url"] == url and fake.webhook["secret_token"] == "s3cret-Token_1"
    update = message_update("/moa via webhook", chat=GROUP, update_id=9001)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update) as response:
            assert response.status == 403
        async with http.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}
        ) as response:
            assert response.status == 403
        assert inbox.empty()
        headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
        async with http.post(url, json=update, headers=headers) as response:
            assert response.status == 200
    message = await next_inbound(inbox)
    assert (message.event_id, message.text) == ("9001", "/moa via webhook")
    assert fake.calls_of("getUpdates") == []


def test_webhook_mode_needs_a_secret():
    with pytest.raises(ValueError, match="webhook_secret"):
        TelegramSettings(token=TOKEN, mode="webhook")
    assert "token" not in repr(TelegramSettings(token=TOKEN)).replace("token=", "")  # repr hides secrets
    assert TOKEN not in repr(TelegramSettings(token=TOKEN))


# -- drafts, files ---------------------------------------------------------------------------------


async def test_draft_streaming_in_a_private_chat(telegram, fake):
    adapter, _ = await telegram(stream="draft")
    chat = ChatRef("telegram", "42", reply_to_id="7")
    stream = await adapter.send(chat, Answer("Thinking about", final=False))
    stream = await adapter.edit(stream, Answer("Thinking about **it**", final=False))
    assert fake.chat(42) == []  # drafts only, nothing persisted yet
    assert list(fake.drafts.values()) == ["Thinking about it"]
    stream = await adapter.edit(stream, Answer("Done: **it** works.", final=True))
    [message] = fake.chat(42)
    assert message.text == "Done: it works." and message.reply_to == 7
    assert stream.message_ids == (str(message.message_id),)


async def test_draft_mode_in_a_group_streams_by_edits(telegram, fake):
    adapter, _ = await telegram(stream="draft")
    chat = ChatRef("telegram", str(GROUP_ID))
    stream = await adapter.send(chat, Answer("one", final=False))
    await adapter.edit(stream, Answer("one two", final=True))
    assert fake.calls_of("sendMessageDraft") == []
    assert [m.text for m in fake.chat(GROUP_ID)] == ["one two"]


async def test_chart_as_photo_and_other_files_as_documents(telegram, fake):
    adapter, _ = await telegram()
    chat = ChatRef("telegram", str(GROUP_ID), thread_id="77")
    png = b"\x89PNG\r\n\x1a\nfake"
    photo = await adapter.send(chat, FileOut("digest.png", png, caption="Spend this week: $12.40"))
    document = await adapter.send(chat, FileOut("costs.csv", b"a,b\n1,2\n", caption="raw", mime="text/csv"))
    first, second = fake.chat(GROUP_ID)
    assert (first.kind, first.data, first.text, first.thread_id) == (
        "photo",
        png,
        "Spend this week: $12.40",
        77,
    )
    assert (second.kind, second.filename, second.data) == ("document", "costs.csv", b"a,b\n1,2\n")
    assert photo.message_ids == (str(first.message_id),) and document.message_ids == (str(second.message_id),)


async def test_summary_of_many_long_references_is_one_message(telegram, fake):
    adapter, _ = await telegram()
    entries = tuple(SummaryEntry(i, f"p:m{i}", "ok", 1000, None, "🎉 long advice " * 500) for i in range(6))
    sent = await adapter.send(
        ChatRef("telegram", str(GROUP_ID)), ReferenceSummary("deep", "full", entries, None)
    )
    [message] = fake.chat(GROUP_ID)
    assert len(sent.message_ids) == 1 and message.parse_mode == "HTML"
    assert utf16_len(parse_html(message.raw)[0]) <= 4096
    assert message.raw.count("<blockquote expandable>") == 6 and message.text.count("unknown") >= 6


# -- odd situations --------------------------------------------------------------------------------


async def test_a_wrong_token_fails_start_cleanly(fake):
    adapter = TelegramAdapter(TelegramSettings(token="1:wrong", base_url=fake.base_url))
    with pytest.raises(RuntimeError, match="refused the bot token") as error:
        await adapter.start(asyncio.Queue().put)
    assert "1:wrong" not in str(error.value)
    await adapter.stop()  # nothing running: a no-op


async def test_progress_edits_are_coalesced_while_the_chat_is_paused(telegram, fake):
    adapter, _ = await telegram()
    chat = ChatRef("telegram", str(GROUP_ID))
    progress = await adapter.send(chat, Progress("references", 0, 3))
    fake.fail_next("editMessageText", status=429, retry_after=1)
    progress = await adapter.edit(progress, Progress("references", 1, 3))
    progress = await adapter.edit(progress, Progress("references", 2, 3))
    assert len(fake.calls_of("editMessageText")) == 1  # the second one did not even try
    await adapter.send(chat, summary())  # a send waits the pause out and goes on
    assert fake.calls_of("sendMessage")[-1].status == 200
    assert [m.text.split("\n")[0] for m in fake.chat(GROUP_ID)] == [
        "⏳ Asking references… 0/3",
        "🧩 2 references · preset default · $0.0040",
    ]


async def test_a_group_upgraded_to_a_supergroup_is_followed(telegram, fake):
    adapter, _ = await telegram()
    fake.fail_next(
        "sendMessage",
        status=400,
        description="Bad Request: group chat was upgraded to a supergroup chat",
        migrate_to_chat_id=GROUP_ID,
    )
    sent = await adapter.send(ChatRef("telegram", "-4242"), Answer("hello"))
    assert [c.params["chat_id"] for c in fake.calls_of("sendMessage")] == [-4242, GROUP_ID]
    await adapter.edit(sent, Answer("hello again"))
    assert [m.text for m in fake.chat(GROUP_ID)] == ["hello again"]


async def test_a_deleted_stream_message_gets_the_final_answer_anew(telegram, fake):
    adapter, _ = await telegram()
    chat = ChatRef("telegram", str(GROUP_ID))
    stream = await adapter.send(chat, Answer("partial", final=False))
    fake.chats[GROUP_ID].clear()  # someone deleted it
    stream = await adapter.edit(stream, Answer("the whole answer", final=True))
    [message] = fake.chat(GROUP_ID)
    assert message.text == "the whole answer" and stream.message_ids == (str(message.message_id),)


async def test_drafts_unavailable_fall_back_to_edits(telegram, fake):
    adapter, _ = await telegram(stream="draft")
    fake.fail_next("sendMessageDraft", status=400, description="Bad Request: method is not available")
    chat = ChatRef("telegram", "42")
    stream = await adapter.send(chat, Answer("first words", final=False))
    stream = await adapter.edit(stream, Answer("first words, then more", final=False))
    stream = await adapter.edit(stream, Answer("first words, then more. Done.", final=True))
    assert len(fake.calls_of("sendMessageDraft")) == 1
    [message] = fake.chat(42)
    assert message.text == "first words, then more. Done." and message.edits == 2


async def test_stream_off_posts_only_the_final_answer(telegram, fake):
    adapter, _ = await telegram(stream="off")
    chat = ChatRef("telegram", str(GROUP_ID), reply_to_id="3")
    stream = await adapter.send(chat, Answer("partial", final=False))
    stream = await adapter.edit(stream, Answer("partial and more", final=False))
    assert fake.chat(GROUP_ID) == [] and stream.message_ids == ()
    stream = await adapter.edit(stream, Answer("the answer", final=True))
    [message] = fake.chat(GROUP_ID)
    assert message.text == "the answer" and message.reply_to == 3


async def test_a_token_revoked_while_polling_is_not_logged(telegram, fake, caplog):
    caplog.set_level(logging.DEBUG)
    await telegram(poll_timeout_s=0.0)
    fake.token = "7000001:revoked"  # from now on the server refuses ours
    await fake.wait_for(lambda: any(c.status == 401 for c in fake.calls_of("getUpdates")))
    await asyncio.sleep(0.1)  # let PTB log the failure
    assert "Invalid token" in caplog.text or "rejected" in caplog.text
    assert TOKEN not in caplog.text
