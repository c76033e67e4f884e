"""The Discord adapter against a fake Discord (REST + gateway) on 127.0.0.1, with real discord.py.

Each test reads as a conversation: the fake pushes a gateway event or the gateway half sends an
outbound value, then the test awaits what the fake received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
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
from adapters.discord import DiscordAdapter, DiscordSettings
from tests.fakes.discord_server import FakeDiscord

GUILD = "1000000000000000001"
CHANNEL = "1300000000000000001"
ADMIN_ROLE = "1200000000000000007"
PRESETS = ("default", "deep", "fast")


@dataclass
class Env:
    fake: FakeDiscord
    adapter: DiscordAdapter
    inbox: asyncio.Queue[InboundMessage]
    clock_offset: list[timedelta]

    async def next_inbound(self, timeout: float = 5) -> InboundMessage:
        return await asyncio.wait_for(self.inbox.get(), timeout)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fake = await FakeDiscord().start()
    inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
    offset = [timedelta(0)]

    async def on_inbound(message: InboundMessage) -> None:
        fake.note("inbound", message)
        await inbox.put(message)

    settings = DiscordSettings(
        token="fake-bot-token",
        api_base=fake.api_base,
        gateway_url=fake.gateway_url,
        guild_ready_timeout_s=0.01,
    )
    adapter = DiscordAdapter(settings, presets=PRESETS, clock=lambda: datetime.now(UTC) + offset[0])
    await adapter.start(on_inbound)
    try:
        yield Env(fake, adapter, inbox, offset)
    finally:
        await adapter.stop()
        await fake.close()


def alice(fake: FakeDiscord) -> dict:
    return fake.user("1100000000000000001", "alice")


def summary() -> ReferenceSummary:
    return ReferenceSummary(
        preset="deep",
        mode="full",
        entries=(
            SummaryEntry(1, "openrouter:openai/gpt-5.1", "ok", 812, 0.0031, "Use a `Maybe`."),
            SummaryEntry(2, "openrouter:google/gemini-2.5-pro", "timeout", 120000, None, ""),
        ),
        total_cost_usd=0.0031,
    )


async def test_ready_then_a_mention_is_normalised_and_forwarded(env: Env) -> None:
    fake = env.fake
    # Login, command sync and the gateway handshake happened during start().
    assert [c.route for c in fake.calls[:2]] == ["GET /users/@me", "GET /oauth2/applications/@me"]
    assert fake.identify is not None
    intents = fake.identify["intents"]
    assert intents == (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)  # guilds, guild/DM messages, content
    (moa,) = fake.commands
    assert moa["name"] == "moa"
    assert {o["name"] for o in moa["options"]} == {
        "ask",
        "presets",
        "default",
        "cost",
        "budget",
        "digest",
        "new",
        "help",
    }
    ask = next(o for o in moa["options"] if o["name"] == "ask")
    assert [(o["name"], o["required"], o.get("autocomplete", False)) for o in ask["options"]] == [
        ("prompt", False, False),  # an attachment alone can be the question
        ("preset", False, True),
        ("attachment", False, False),
    ]
    assert ask["options"][2]["type"] == 11  # an attachment option

    payload = fake.message_payload(
        channel_id=CHANNEL,
        guild_id=GUILD,
        author=alice(fake),
        content=f"<@{fake.bot_id}> what is a monad?",
        mentions=(fake.bot_user,),
        roles=(ADMIN_ROLE,),
    )
    await fake.dispatch("MESSAGE_CREATE", payload)
    inbound = await env.next_inbound()
    assert inbound.text == "what is a monad?"
    assert inbound.mentions_bot and not inbound.is_dm and not inbound.is_command
    assert (inbound.chat_id, inbound.thread_id, inbound.user_id) == (CHANNEL, None, "1100000000000000001")
    assert inbound.event_id == payload["id"] and inbound.user_roles == (ADMIN_ROLE,)


async def test_own_and_bot_messages_are_never_forwarded_dms_and_replies_are(env: Env) -> None:
    fake = env.fake
    own = fake.message_payload(channel_id=CHANNEL, guild_id=GUILD, author=fake.bot_user, content="my answer")
    await fake.dispatch("MESSAGE_CREATE", own)
    other_bot = fake.user("1100000000000000005", "otherbot", bot=True)
    await fake.dispatch(
        "MESSAGE_CREATE",
        fake.message_payload(channel_id=CHANNEL, guild_id=GUILD, author=other_bot, content="hi"),
    )
    reply = fake.message_payload(
        channel_id=CHANNEL, guild_id=GUILD, author=alice(fake), content="and then?", reply_to=own
    )
    await fake.dispatch("MESSAGE_CREATE", reply)
    dm = fake.message_payload(
        channel_id="1500000000000000001", author=alice(fake), content="hello in private"
    )
    await fake.dispatch("MESSAGE_CREATE", dm)

    first, second = await env.next_inbound(), await env.next_inbound()
    assert first.event_id == reply["id"] and first.replies_to_bot and first.reply_to_id == own["id"]
    assert second.event_id == dm["id"] and second.is_dm and second.text == "hello in private"
    assert env.inbox.empty()


async def test_a_thread_is_a_thread_of_its_parent_channel_and_answered_in_the_thread(env: Env) -> None:
    fake = env.fake
    thread = "1600000000000000001"
    fake.add_channel(thread, guild_id=GUILD, type=11, parent_id=CHANNEL)
    fake.add_channel(CHANNEL, guild_id=GUILD)
    payloads = [
        fake.message_payload(channel_id=channel, guild_id=GUILD, author=alice(fake), content=text)
        for channel, text in ((thread, "first in thread"), (thread, "second in thread"), (CHANNEL, "top"))
    ]
    for payload in payloads:
        await fake.dispatch("MESSAGE_CREATE", payload)
    for text in ("first in thread", "second in thread"):
        inbound = await env.next_inbound()
        assert (inbound.text, inbound.chat_id, inbound.thread_id) == (text, CHANNEL, thread)
    top = await env.next_inbound()
    assert (top.text, top.chat_id, top.thread_id) == ("top", CHANNEL, None)
    # Each channel asked once, then remembered.
    assert len(fake.calls_to("GET", rf"/channels/{thread}")) == 1
    assert len(fake.calls_to("GET", rf"/channels/{CHANNEL}")) == 1

    # Outbound values of the thread's session go to the thread: posts, replies, edits, deletes.
    chat = ChatRef("discord", CHANNEL, thread_id=thread, reply_to_id=payloads[0]["id"])
    sent = await env.adapter.send(chat, Answer("in the thread " * 200, final=False))
    assert len(sent.message_ids) == 2
    assert [fake.messages[i]["channel_id"] for i in sent.message_ids] == [thread, thread]
    first_post = fake.calls_to("POST", rf"/channels/{thread}/messages")[0]
    assert first_post.json["message_reference"]["channel_id"] == int(thread)
    done = await env.adapter.edit(sent, Answer("short now", final=True))
    assert done.message_ids == sent.message_ids[:1]
    assert fake.calls_to("PATCH", rf"/channels/{thread}/messages/{sent.message_ids[0]}")
    assert fake.calls_to("DELETE", rf"/channels/{thread}/messages/{sent.message_ids[1]}")
    assert [m["content"] for m in fake.channel_messages(thread)] == ["short now"]
    assert not fake.calls_to("POST", rf"/channels/{CHANNEL}/messages")


async def test_an_interaction_in_a_thread_is_a_thread_of_its_parent(env: Env) -> None:
    fake = env.fake
    thread = "1600000000000000002"
    payload = fake.interaction_payload(
        subcommand="ask",
        options={"prompt": "in a thread"},
        channel_id=thread,
        guild_id=GUILD,
        user=alice(fake),
        channel_type=11,
        parent_id=CHANNEL,
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    assert (inbound.chat_id, inbound.thread_id) == (CHANNEL, thread)
    # When the token is refused, the channel fallback goes to the thread, not its parent.
    fake.expire_token(payload["token"])
    chat = ChatRef("discord", inbound.chat_id, inbound.thread_id, reply_handle=inbound.reply_handle)
    sent = await env.adapter.send(chat, Notice("fallback"))
    assert fake.messages[sent.message_ids[0]]["channel_id"] == thread


async def test_ask_is_deferred_before_the_gateway_hears_of_it_then_summary_and_answer(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="ask",
        options={"prompt": "Explain monads", "preset": "deep"},
        channel_id=CHANNEL,
        guild_id=GUILD,
        user=alice(fake),
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    assert inbound.text == "/moa +deep Explain monads" and inbound.is_command
    assert inbound.event_id == payload["id"] and inbound.reply_handle

    # The deferral reached Discord before the gateway was handed the turn.
    kinds = [what if what != "rest" else detail.route for what, detail in fake.log]
    callback = f"POST /interactions/{payload['id']}/{payload['token']}/callback"
    assert kinds.index(callback) < kinds.index("inbound")
    (defer,) = fake.calls_to("POST", rf"/interactions/{payload['id']}/.*/callback")
    assert defer.json == {"type": 5} and defer.status == 200

    chat = ChatRef("discord", inbound.chat_id, inbound.thread_id, inbound.message_id, inbound.reply_handle)
    await env.adapter.send(chat, summary())
    streamed = await env.adapter.send(chat, Answer("Monads are", final=False))
    done = await env.adapter.edit(
        streamed, Answer("Monads are burritos.", final=True, footer="2 refs · $0.0031")
    )
    assert done.message_ids == streamed.message_ids

    followups = fake.calls_to("POST", rf"/webhooks/{fake.application_id}/{payload['token']}")
    assert len(followups) == 2 and not fake.calls_to("POST", r"/channels/\d+/messages")
    embed = followups[0].json["embeds"][0]
    assert embed["title"] == "MoA references · deep"
    assert [f["name"] for f in embed["fields"]] == [
        "1. openrouter:openai/gpt-5.1",
        "2. openrouter:google/gemini-2.5-pro",
    ]
    assert embed["fields"][1]["value"] == "⏱️ timeout · 120.0 s · unknown"
    edits = fake.calls_to("PATCH", rf"/webhooks/{fake.application_id}/{payload['token']}/messages/\d+")
    assert len(edits) == 1
    messages = fake.channel_messages(CHANNEL)
    assert [bool(m["embeds"]) for m in messages] == [True, False]
    assert messages[1]["content"] == "Monads are burritos.\n\n-# 2 refs · $0.0031"


async def test_five_thousand_character_answer_is_split_without_breaking_code_blocks(env: Env) -> None:
    code = "".join(f"    total += weights[{i}] * values[{i}]\n" for i in range(70))
    text = (
        "Here is the approach.\n\n"
        + "The idea is simple and the details matter. " * 25
        + "\n\n```python\ndef score(weights, values):\n    total = 0\n"
        + code
        + "    return total\n```\n\n"
        + "That is all there is to it, really. " * 33
    )
    assert 5000 <= len(text) < 5500
    chat = ChatRef("discord", CHANNEL)
    sent = await env.adapter.send(chat, Answer(text[:1500], final=False))
    sent = await env.adapter.edit(sent, Answer(text[:3600], final=False))
    sent = await env.adapter.edit(sent, Answer(text, final=True))
    assert len(sent.message_ids) >= 3
    contents = [env.fake.messages[i]["content"] for i in sent.message_ids]
    for content in contents:
        assert 0 < len(content) <= 2000
        assert content.count("```") % 2 == 0
    joined = "\n".join(contents)
    for i in range(70):
        assert f"total += weights[{i}] * values[{i}]" in joined
    assert contents[-1].endswith("That is all there is to it, really.")


async def test_a_429_on_an_edit_is_waited_out_and_the_answer_is_complete(env: Env) -> None:
    fake = env.fake
    chat = ChatRef("discord", CHANNEL)
    sent = await env.adapter.send(chat, Answer("The answer is", final=False))
    message_id = sent.message_ids[0]
    # More 429s in a row than discord.py retries on its own (5): the adapter goes on after it.
    fake.inject_429("PATCH", rf"/channels/{CHANNEL}/messages/{message_id}", times=6, retry_after=0.01)
    final = "The answer is 42, and here is why: " + "because. " * 50
    done = await env.adapter.edit(sent, Answer(final, final=True))
    assert done.message_ids == (message_id,)
    patches = fake.calls_to("PATCH", rf"/channels/{CHANNEL}/messages/{message_id}")
    assert [c.status for c in patches] == [429] * 6 + [200]
    assert fake.messages[message_id]["content"] == final.strip()


async def test_an_identical_edit_is_skipped(env: Env) -> None:
    chat = ChatRef("discord", CHANNEL)
    sent = await env.adapter.send(chat, Answer("same text", final=False))
    await env.adapter.edit(sent, Answer("same text", final=False))
    assert not env.fake.calls_to("PATCH", r"/channels/\d+/messages/\d+")
    await env.adapter.edit(sent, Answer("same text, longer", final=False))
    assert len(env.fake.calls_to("PATCH", r"/channels/\d+/messages/\d+")) == 1


async def test_the_same_interaction_twice_gives_the_same_event_id(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="ask", options={"prompt": "hi"}, channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    first = await env.next_inbound()
    await fake.dispatch("INTERACTION_CREATE", payload)  # a replay after a reconnect
    second = await env.next_inbound()
    assert first.event_id == second.event_id == payload["id"]
    assert first.text == second.text == "/moa hi"
    callbacks = fake.calls_to("POST", rf"/interactions/{payload['id']}/.*/callback")
    assert [c.status for c in callbacks] == [200, 400]  # Discord: already acknowledged


async def test_default_command_forwards_the_user_and_roles(env: Env) -> None:
    fake = env.fake
    member = fake.user("1100000000000000002", "bob")
    payload = fake.interaction_payload(
        subcommand="default",
        options={"preset": "deep"},
        channel_id=CHANNEL,
        guild_id=GUILD,
        user=member,
        roles=("1200000000000000003", ADMIN_ROLE),
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    assert inbound.text == "/moa default deep" and inbound.is_command
    assert inbound.user_id == "1100000000000000002"
    assert inbound.user_roles == ("1200000000000000003", ADMIN_ROLE)
    assert inbound.chat_id == CHANNEL and not inbound.is_dm
    # The gateway's refusal for a non-admin is a Notice, sent back as the first followup, which
    # is what replaces the deferred "thinking..." state (discord.py: defer(thinking=True)).
    chat = ChatRef("discord", inbound.chat_id, reply_handle=inbound.reply_handle)
    await env.adapter.send(chat, Notice("Only admins can set the channel default.", level="warning"))
    token_calls = [c for c in fake.calls if payload["token"] in c.path]
    assert [c.route.split("/")[1] for c in token_calls] == ["interactions", "webhooks"]
    assert token_calls[0].json == {"type": 5}
    followup = token_calls[1]
    assert followup.method == "POST" and followup.query.get("wait") in ("1", "true")
    assert followup.json["content"] == "⚠️ Only admins can set the channel default."
    assert not fake.calls_to("POST", r"/channels/\d+/messages")


async def test_preset_autocomplete_answers_from_the_configured_presets(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="ask", options={"preset": "de"}, channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    payload["type"] = 4
    payload["data"]["options"][0]["options"][0]["focused"] = True
    await fake.dispatch("INTERACTION_CREATE", payload)
    (callback,) = await fake.wait_for_call(lambda c: c.path.endswith("/callback"))
    assert callback.json == {
        "type": 8,
        "data": {"choices": [{"name": "default", "value": "default"}, {"name": "deep", "value": "deep"}]},
    }
    assert env.inbox.empty()


async def test_after_the_token_window_answers_go_to_the_channel(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="ask", options={"prompt": "slow one"}, channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    chat = ChatRef(
        "discord", inbound.chat_id, reply_to_id=inbound.message_id, reply_handle=inbound.reply_handle
    )
    streamed = await env.adapter.send(chat, Answer("Thinking it through", final=False))
    assert fake.calls_to("POST", rf"/webhooks/{fake.application_id}/{payload['token']}")

    env.clock_offset[0] = timedelta(minutes=14, seconds=30)  # past the window, before Discord's 15 min
    done = await env.adapter.edit(streamed, Answer("Thinking it through: done.", final=True))
    assert fake.calls_to("PATCH", rf"/channels/{CHANNEL}/messages/{streamed.message_ids[0]}")
    assert fake.messages[done.message_ids[0]]["content"] == "Thinking it through: done."
    later = await env.adapter.send(chat, Notice("One more thing"))
    (post,) = fake.calls_to("POST", rf"/channels/{CHANNEL}/messages")
    assert "message_reference" not in post.json  # an interaction id is no message to reply to
    assert fake.messages[later.message_ids[0]]["channel_id"] == CHANNEL


async def test_a_refused_token_falls_back_to_the_channel(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="help", channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    fake.expire_token(payload["token"])
    sent = await env.adapter.send(
        ChatRef("discord", CHANNEL, reply_handle=inbound.reply_handle), Notice("Usage: ...")
    )
    assert [c.status for c in fake.calls_to("POST", r"/webhooks/.*")] == [401]
    assert fake.messages[sent.message_ids[0]]["content"] == "Usage: ..."


async def test_a_reply_to_a_message_and_a_file_attachment(env: Env) -> None:
    fake = env.fake
    chat = ChatRef("discord", CHANNEL, reply_to_id="1346471099944386560")
    await env.adapter.send(chat, Answer("short answer"))
    (post,) = fake.calls_to("POST", rf"/channels/{CHANNEL}/messages")
    assert str(post.json["message_reference"]["message_id"]) == "1346471099944386560"
    assert post.json["message_reference"]["fail_if_not_exists"] is False
    assert post.json["allowed_mentions"] == {"parse": []}  # model output never pings anyone

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    sent = await env.adapter.send(
        ChatRef("discord", CHANNEL), FileOut("digest.png", png, caption="Weekly digest")
    )
    upload = fake.calls_to("POST", rf"/channels/{CHANNEL}/messages")[-1]
    assert upload.files == [("digest.png", png)]
    assert upload.json["content"] == "Weekly digest"
    assert fake.messages[sent.message_ids[0]]["attachments"][0]["filename"] == "digest.png"


async def test_an_interaction_without_its_raw_frame_is_still_forwarded(env: Env) -> None:
    """The fallback that rebuilds the payload from discord.py's objects (should never be needed)."""

    class Forgetful(dict):
        def __setitem__(self, key: object, value: object) -> None:
            pass

    env.adapter._raw_interactions = Forgetful()  # type: ignore[assignment]
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="cost", options={"period": "week"}, channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    assert (inbound.text, inbound.event_id, inbound.user_id) == (
        "/moa cost week",
        payload["id"],
        alice(fake)["id"],
    )
    assert inbound.chat_id == CHANNEL and not inbound.is_dm and inbound.reply_handle


async def test_a_channel_send_cut_off_is_retried_with_its_nonce_and_posted_once(env: Env) -> None:
    fake = env.fake
    fake.inject_disconnect("POST", rf"/channels/{CHANNEL}/messages")
    sent = await env.adapter.send(ChatRef("discord", CHANNEL), Answer("exactly once"))
    posts = fake.calls_to("POST", rf"/channels/{CHANNEL}/messages")
    assert [c.status for c in posts] == [-1, 200]
    assert posts[0].json["nonce"] == posts[1].json["nonce"] and posts[1].json["enforce_nonce"] is True
    assert [m["content"] for m in fake.channel_messages(CHANNEL)] == ["exactly once"]
    assert sent.message_ids == (fake.channel_messages(CHANNEL)[0]["id"],)


async def test_a_ledger_send_repeated_after_a_restart_gets_the_first_message(env: Env) -> None:
    # Two processes (before and after a crash) sending the same ledger row: the nonce comes from
    # the row's key, so Discord returns the message it already has.
    fake = env.fake
    first = await env.adapter.send_once(ChatRef("discord", CHANNEL), Answer("exactly once"), key="moa-delivery-7",
                                        retry=False)
    again = await env.adapter.send_once(ChatRef("discord", CHANNEL), Answer("exactly once"), key="moa-delivery-7",
                                        retry=True)
    other = await env.adapter.send_once(ChatRef("discord", CHANNEL), Answer("another row"), key="moa-delivery-8",
                                        retry=False)
    assert [m["content"] for m in fake.channel_messages(CHANNEL)] == ["exactly once", "another row"]
    assert first.message_ids == again.message_ids != other.message_ids
    posts = fake.calls_to("POST", rf"/channels/{CHANNEL}/messages")
    assert posts[0].json["nonce"] == posts[1].json["nonce"] != posts[2].json["nonce"]
    assert all(len(str(c.json["nonce"])) <= 25 and c.json["enforce_nonce"] is True for c in posts)


async def test_a_followup_cut_off_is_not_sent_blindly_again(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="ask", options={"prompt": "once"}, channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    fake.inject_disconnect("POST", rf"/webhooks/{fake.application_id}/.*")
    with pytest.raises(aiohttp.ClientError):
        await env.adapter.send(
            ChatRef("discord", CHANNEL, reply_handle=inbound.reply_handle), Answer("maybe posted")
        )
    assert len(fake.calls_to("POST", r"/webhooks/.*")) == 1
    assert not fake.calls_to("POST", r"/channels/\d+/messages")
    assert [m["content"] for m in fake.channel_messages(CHANNEL)] == ["maybe posted"]


async def test_a_file_goes_through_the_followup_too(env: Env) -> None:
    fake = env.fake
    payload = fake.interaction_payload(
        subcommand="digest", channel_id=CHANNEL, guild_id=GUILD, user=alice(fake)
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    inbound = await env.next_inbound()
    assert inbound.text == "/moa digest"
    chat = ChatRef("discord", CHANNEL, reply_handle=inbound.reply_handle)
    await env.adapter.send(chat, FileOut("digest.png", b"\x89PNG-chart", caption="Cost digest"))
    (upload,) = fake.calls_to("POST", rf"/webhooks/{fake.application_id}/{payload['token']}")
    assert upload.files == [("digest.png", b"\x89PNG-chart")] and upload.json["content"] == "Cost digest"
