"""Discord end to end: the real gateway and the real Discord adapter (discord.py), against a fake
Discord (REST + gateway websocket) and a fake model provider, both on 127.0.0.1, with the config
read from a TOML file and SQLite in a temporary directory.

Each test reads as a conversation: the fake Discord pushes a gateway event, the bot runs a MoA
turn against the fake provider, and the test asserts on what the fake Discord ended up holding.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import App, build_adapters, build_app
from gateway.config import load_config
from gateway.service import Gateway
from tests.fakes.discord_server import Call, FakeDiscord
from tests.fakes.provider_server import FakeProvider, Recorded, Reply

GUILD = "1000000000000000001"
CHANNEL = "1300000000000000001"  # allowed, no configured preset
SETTINGS_CHANNEL = "1300000000000000002"  # allowed: where defaults are changed
DEEP_CHANNEL = "1300000000000000003"  # allowed, configured with the "deep" preset
CLOSED_CHANNEL = "1300000000000000004"  # not allowed
THREAD = "1600000000000000001"  # a thread of DEEP_CHANNEL
CLOSED_THREAD = "1600000000000000002"  # a thread of CLOSED_CHANNEL
ADMIN_ID = "1100000000000000009"
ADMIN_ROLE = "1200000000000000007"
MEMBER_ROLE = "1200000000000000001"

ENV = {"DISCORD_BOT_TOKEN": "fake-bot-token", "FAKE_KEY": "sk-fake-secret"}

CONFIG = """
[gateway]
database = "{db}"
default_preset = "default"

[providers.fake]
api = "openai"
base_url = "{openai_base}"
api_key_env = "FAKE_KEY"
price_in_per_mtok = 1.0
price_out_per_mtok = 2.0
max_retries = 0

[presets.default]
references = ["fake:ref-a", "fake:ref-b"]
aggregator = "fake:agg"
reference_timeout = 5

[presets.deep]
references = ["fake:deep-ref"]
aggregator = "fake:deep-agg"

[presets.fast]
references = ["fake:ref-a"]
aggregator = "fake:agg"

[discord]
token_env = "DISCORD_BOT_TOKEN"
api_base = "{api_base}"
gateway_url = "{gateway_url}"
edit_interval_s = 0.2
guild_ready_timeout_s = 0.05
admins = ["{admin}"]
admin_roles = ["{admin_role}"]
allowed_chats = ["{channel}", "{settings_channel}", "{deep_channel}"]

[channels."discord:{deep_channel}"]
preset = "deep"
"""


@dataclass
class World:
    discord: FakeDiscord
    models: FakeProvider
    app: App

    @property
    def gateway(self) -> Gateway:
        return self.app.gateway

    def member(self, user_id: str = "1100000000000000001", name: str = "alice") -> dict[str, Any]:
        return self.discord.user(user_id, name)

    async def mention(self, channel_id: str, text: str, **kwargs: Any) -> dict[str, Any]:
        fake = self.discord
        payload = fake.message_payload(
            channel_id=channel_id,
            guild_id=GUILD,
            author=kwargs.pop("author", None) or self.member(),
            content=f"<@{fake.bot_id}> {text}",
            mentions=(fake.bot_user,),
            **kwargs,
        )
        await fake.dispatch("MESSAGE_CREATE", payload)
        return payload

    async def command(
        self, subcommand: str, options: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        payload = self.discord.interaction_payload(
            subcommand=subcommand,
            options=options,
            channel_id=kwargs.pop("channel_id", CHANNEL),
            guild_id=GUILD,
            user=kwargs.pop("user", None) or self.member(),
            **kwargs,
        )
        await self.discord.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def answered(self, aggregator: str = "agg", count: int = 1) -> None:
        """Wait until `count` turns have reached `aggregator`, then until the gateway is idle
        (so the answer has gone through the delivery ledger)."""
        async with asyncio.timeout(15):
            while len(self.models.for_model(aggregator)) < count:
                await asyncio.sleep(0.01)
            await self.gateway.idle()

    async def followups(self, payload: dict[str, Any], count: int = 1) -> list[Call]:
        """The followup messages posted for an interaction (at least `count` of them)."""
        token = payload["token"]
        return await self.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path == f"/webhooks/{self.discord.application_id}/{token}",
            count=count,
        )

    async def table(self, sql: str) -> list[dict[str, Any]]:
        return await self.app.store.run(lambda db: list(db.query(sql)))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeProvider() as models:
        discord = await FakeDiscord().start()
        path = tmp_path / "moa-gateway.toml"
        path.write_text(
            CONFIG.format(
                db=tmp_path / "gateway.db",
                openai_base=models.openai_base,
                api_base=discord.api_base,
                gateway_url=discord.gateway_url,
                admin=ADMIN_ID,
                admin_role=ADMIN_ROLE,
                channel=CHANNEL,
                settings_channel=SETTINGS_CHANNEL,
                deep_channel=DEEP_CHANNEL,
            ),
            encoding="utf-8",
        )
        config = load_config(path)
        adapters = build_adapters(config, ENV)
        app = await build_app(config, adapters, env=ENV)
        try:
            await app.gateway.start()
            yield World(discord, models, app)
        finally:
            await app.gateway.shutdown(grace_s=2)
            await app.close()
            await discord.close()


def embeds_then_text(messages: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """Index of the (one) summary embed message, and the text messages after it (the answer)."""
    (summary,) = [i for i, m in enumerate(messages) if m["embeds"]]
    return summary, messages[summary + 1 :]


def noting(fake: FakeDiscord, text: str) -> Callable[[Recorded], Reply]:
    """A provider handler that marks the request's arrival in the fake Discord's ordered log."""

    def handler(request: Recorded) -> Reply:
        fake.note("model request", request.model)
        return Reply(text=text)

    return handler


async def test_ready_then_a_mention_gets_the_summary_embed_then_the_answer(world: World) -> None:
    fake = world.discord
    # READY: logged in, /moa synced, gateway identified with message-content intent.
    assert fake.identify is not None and fake.identify["token"] == ENV["DISCORD_BOT_TOKEN"]
    assert [c["name"] for c in fake.commands] == ["moa"]

    world.models.reply("agg", Reply(text="A monad is a **monoid** in the category of endofunctors."))
    question = await world.mention(CHANNEL, "what is a monad?")
    await world.answered()

    # The model saw the question without the bot's mention.
    assert world.models.for_model("ref-a")[0].body["messages"][-1]["content"] == "what is a monad?"
    messages = fake.channel_messages(CHANNEL)
    summary, answer = embeds_then_text(messages)
    embed = messages[summary]["embeds"][0]
    assert embed["title"] == "MoA references · default"
    assert [f["name"] for f in embed["fields"]] == ["1. fake:ref-a", "2. fake:ref-b"]
    (reply,) = answer
    assert reply["content"].startswith(
        "A monad is a **monoid** in the category of endofunctors.\n\n-# default"
    )
    assert str(reply["message_reference"]["message_id"]) == question["id"]  # a reply to the question
    # Nothing went through an interaction webhook; everything stayed in the channel.
    assert not fake.calls_to("POST", r"/webhooks/.*")
    assert {m["channel_id"] for m in fake.messages.values()} == {CHANNEL}


async def test_ask_is_deferred_before_the_first_model_request_then_followups(world: World) -> None:
    fake = world.discord
    for model in ("ref-a", "ref-b"):
        world.models.handler(model, noting(fake, f"advice from {model}"))
    world.models.handler("agg", noting(fake, "Deferred, then answered."))
    payload = await world.command("ask", {"prompt": "Explain monads"})
    await world.answered()

    order = [what if what != "rest" else detail.route for what, detail in fake.log]
    callback = f"POST /interactions/{payload['id']}/{payload['token']}/callback"
    assert order.index(callback) < order.index("model request")
    (defer,) = fake.calls_to("POST", rf"/interactions/{payload['id']}/.*/callback")
    assert defer.json == {"type": 5} and defer.status == 200

    # Progress line, summary embed and answer, all as followups of the interaction.
    followups = await world.followups(payload, count=3)
    assert all(c.status == 200 for c in followups)
    assert not fake.calls_to("POST", r"/channels/\d+/messages")
    summary, (answer,) = embeds_then_text(fake.channel_messages(CHANNEL))
    assert fake.channel_messages(CHANNEL)[summary]["embeds"][0]["fields"][0]["name"] == "1. fake:ref-a"
    assert answer["content"].startswith("Deferred, then answered.\n\n-# ")
    assert answer["interaction_metadata"]["id"] == payload["id"]
    assert world.models.for_model("agg")[0].body["messages"][-1]["content"].startswith("Explain monads")


async def test_a_five_thousand_character_answer_is_split_without_breaking_the_code_block(
    world: World,
) -> None:
    code = "".join(f"    total += weights[{i}] * values[{i}]\n" for i in range(70))
    text = (
        "Here is the approach.\n\n"
        + "The idea is simple and the details matter. " * 25
        + "\n\n```python\ndef score(weights, values):\n    total = 0\n"
        + code
        + "    return total\n```\n\n"
        + "That is all there is to it, really. " * 33
    ).strip()
    assert 5000 <= len(text) < 5500
    fence_start = text.index("```")
    assert fence_start < 2000 < text.index("```", fence_start + 3)  # the block spans the limit
    world.models.reply("agg", Reply(text=text, chunk_chars=700))
    payload = await world.command("ask", {"prompt": "Show me the scoring code"})
    await world.answered()

    _, answer = embeds_then_text(world.discord.channel_messages(CHANNEL))
    contents = [m["content"] for m in answer]
    assert len(contents) >= 3
    for content in contents:
        assert 0 < len(content) <= 2000
        assert content.count("```") % 2 == 0  # every part opens and closes its code block
    for line in text.splitlines():
        assert any(line.strip() in content for content in contents), line  # no line is cut or lost
    assert "-# default" in contents[-1]
    (delivery,) = await world.table("select * from deliveries where kind = 'answer'")
    assert delivery["status"] == "sent"
    assert delivery["message_ids"] == "[" + ", ".join(f'"{m["id"]}"' for m in answer) + "]"
    # All of it through the interaction's webhook (progress line, summary, answer parts), no
    # channel post, and no part posted twice.
    token = re.escape(payload["token"])
    posts = world.discord.calls_to("POST", rf"/webhooks/\d+/{token}")
    assert len(posts) == 2 + len(answer) and all(c.status == 200 for c in posts)
    assert not world.discord.calls_to("POST", r"/channels/\d+/messages")


async def test_a_429_on_an_edit_is_waited_out_and_the_answer_is_complete(world: World) -> None:
    fake = world.discord
    release = asyncio.Event()
    final = "The answer is 42, and here is why: " + "because. " * 60

    async def held(request: Recorded) -> Reply:
        await release.wait()
        return Reply(text=final.strip(), chunk_chars=10_000)

    world.models.handler("agg", held)
    await world.mention(CHANNEL, "why 42?")
    # The summary is posted after the progress line's last edit, so once it is out (and the
    # aggregator, asked beside it, is held) every edit in the channel is an edit of the answer.
    async with asyncio.timeout(10):
        while not (world.models.for_model("agg") and any(m["embeds"] for m in fake.channel_messages(CHANNEL))):
            await asyncio.sleep(0.01)
    # More 429s in a row than discord.py waits out on its own (5): the adapter goes on after it.
    fake.inject_429("PATCH", rf"/channels/{CHANNEL}/messages/\d+", times=6, retry_after=0.02)
    release.set()
    await world.answered()

    _, (answer,) = embeds_then_text(fake.channel_messages(CHANNEL))
    assert answer["content"].startswith(final.strip() + "\n\n-# default")
    edits = fake.calls_to("PATCH", rf"/channels/{CHANNEL}/messages/{answer['id']}")
    assert [c.status for c in edits][:7] == [429] * 6 + [200]
    assert edits[-1].status == 200
    (turn,) = await world.table("select status from turns")
    assert turn["status"] == "done"
    assert not await world.gateway.store.pending_deliveries()


async def test_the_same_interaction_twice_is_answered_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.service")
    fake = world.discord
    world.models.reply("agg", Reply(text="Only once."))
    payload = fake.interaction_payload(
        subcommand="ask",
        options={"prompt": "once please"},
        channel_id=CHANNEL,
        guild_id=GUILD,
        user=world.member(),
    )
    await fake.dispatch("INTERACTION_CREATE", payload)
    await fake.dispatch("INTERACTION_CREATE", payload)  # a replay after a reconnect
    await world.answered()
    async with asyncio.timeout(5):  # the replay reached the gateway and was dropped there
        while f"duplicate discord event {payload['id']} ignored" not in caplog.text:
            await asyncio.sleep(0.01)
    await world.gateway.idle()

    callbacks = fake.calls_to("POST", rf"/interactions/{payload['id']}/.*/callback")
    assert sorted(c.status for c in callbacks) == [200, 400]  # Discord: already acknowledged
    assert len(world.models.for_model("agg")) == 1
    answers = [m for m in fake.channel_messages(CHANNEL) if m["content"].startswith("Only once.")]
    assert len(answers) == 1
    assert len(await world.table("select id from turns")) == 1


async def test_only_admins_by_id_or_role_can_set_the_channel_default(world: World) -> None:
    fake = world.discord
    member = world.member("1100000000000000002", "bob")
    refused = await world.command(
        "default", {"preset": "deep"}, channel_id=SETTINGS_CHANNEL, user=member, roles=(MEMBER_ROLE,)
    )
    (notice,) = await world.followups(refused)
    assert notice.json["content"] == "⚠️ Only admins can change this chat's default preset."
    # The refusal is the first thing after the deferral, so it replaces the "thinking..." state.
    token_calls = [c.route.split("/")[1] for c in fake.calls if refused["token"] in c.path]
    assert token_calls == ["interactions", "webhooks"]
    assert await world.gateway.channel_default("discord", SETTINGS_CHANNEL) == "default"

    by_id = await world.command(
        "default", {"preset": "deep"}, channel_id=SETTINGS_CHANNEL, user=world.member(ADMIN_ID, "root")
    )
    (notice,) = await world.followups(by_id)
    assert notice.json["content"] == "Default preset here is now deep."
    assert await world.gateway.channel_default("discord", SETTINGS_CHANNEL) == "deep"

    by_role = await world.command(
        "default",
        {"preset": "fast"},
        channel_id=SETTINGS_CHANNEL,
        user=member,
        roles=(MEMBER_ROLE, ADMIN_ROLE),
    )
    (notice,) = await world.followups(by_role)
    assert notice.json["content"] == "Default preset here is now fast."
    assert await world.gateway.channel_default("discord", SETTINGS_CHANNEL) == "fast"

    shown = await world.command("default", channel_id=SETTINGS_CHANNEL, user=member)
    (notice,) = await world.followups(shown)
    assert notice.json["content"] == "Default preset here: fast."
    assert not world.models.requests


async def test_a_thread_under_an_allowed_channel_is_answered_in_the_thread(world: World) -> None:
    fake = world.discord
    fake.add_channel(DEEP_CHANNEL, guild_id=GUILD)
    fake.add_channel(THREAD, guild_id=GUILD, type=11, parent_id=DEEP_CHANNEL)
    fake.add_channel(CLOSED_CHANNEL, guild_id=GUILD)
    fake.add_channel(CLOSED_THREAD, guild_id=GUILD, type=11, parent_id=CLOSED_CHANNEL)
    world.models.reply("deep-agg", Reply(text="Answered in the thread."), Reply(text="And in the channel."))

    question = await world.mention(THREAD, "a question in a thread")
    await world.answered("deep-agg")
    # Only the parent channel is in allowed_chats, and its configured preset ("deep") was used.
    assert not world.models.for_model("agg")
    summary, (answer,) = embeds_then_text(fake.channel_messages(THREAD))
    assert fake.channel_messages(THREAD)[summary]["embeds"][0]["title"] == "MoA references · deep"
    assert answer["content"].startswith("Answered in the thread.\n\n-# deep")
    assert str(answer["message_reference"]["message_id"]) == question["id"]
    assert fake.channel_messages(DEEP_CHANNEL) == []

    # The parent channel is a session of its own: it does not see the thread's history.
    await world.mention(DEEP_CHANNEL, "a question in the channel")
    await world.answered("deep-agg", count=2)
    seen_by_channel = str(world.models.for_model("deep-agg")[1].body["messages"])
    assert "a question in the channel" in seen_by_channel
    assert "a question in a thread" not in seen_by_channel
    turns = await world.table("select chat_id, thread_id, session_id from turns order by id")
    assert [(t["chat_id"], t["thread_id"]) for t in turns] == [(DEEP_CHANNEL, THREAD), (DEEP_CHANNEL, "")]
    assert turns[0]["session_id"] != turns[1]["session_id"]

    # A thread under a channel that is not allowed is refused, in that thread, with nothing run.
    await world.mention(CLOSED_THREAD, "let me in")
    (refusal,) = await fake.wait_for_call(lambda c: c.route == f"POST /channels/{CLOSED_THREAD}/messages")
    assert "not allowed" in refusal.json["content"]
    assert len(world.models.requests) == 4  # deep-ref + deep-agg, twice
