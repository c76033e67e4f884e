"""Attachments on Discord, end to end: message attachments and the `/moa ask` attachment option,
downloaded from the fake Discord's CDN (only from there), seen by the vision reference only."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from gateway.app import build_adapters, build_app
from gateway.config import load_config
from tests.e2e.test_discord_gateway import (
    ADMIN_ID,
    ADMIN_ROLE,
    CHANNEL,
    CONFIG,
    DEEP_CHANNEL,
    ENV,
    GUILD,
    SETTINGS_CHANNEL,
    World,
    embeds_then_text,
)
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.provider_server import FakeProvider, Reply

VISION = """
[providers.eye]
api = "openai"
base_url = "{openai_base}"
api_key_env = "FAKE_KEY"
max_retries = 0
vision = true

[presets.default]
references = ["eye:ref-eye", "fake:ref-a"]
aggregator = "eye:agg"
reference_timeout = 5
"""


def png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeProvider() as models:
        discord = await FakeDiscord().start()
        base = CONFIG.replace('[presets.default]\nreferences = ["fake:ref-a", "fake:ref-b"]\naggregator = "fake:agg"\n'
                              'reference_timeout = 5\n', VISION)
        base = base.replace("edit_interval_s = 0.2\n", 'edit_interval_s = 0.2\ncdn_url = "{cdn_url}"\n')
        path = tmp_path / "moa-gateway.toml"
        path.write_text(base.format(
            db=tmp_path / "gateway.db", openai_base=models.openai_base, api_base=discord.api_base,
            gateway_url=discord.gateway_url, admin=ADMIN_ID, admin_role=ADMIN_ROLE, channel=CHANNEL,
            settings_channel=SETTINGS_CHANNEL, deep_channel=DEEP_CHANNEL, cdn_url=discord.cdn_url,
        ), encoding="utf-8")
        config = load_config(path)
        app = await build_app(config, build_adapters(config, ENV), env=ENV)
        try:
            await app.gateway.start()
            yield World(discord, models, app)
        finally:
            await app.gateway.shutdown(grace_s=2)
            await app.close()
            await discord.close()


def image_of(request_body: dict) -> bytes:
    part = request_body["messages"][-1]["content"][1]
    return base64.b64decode(part["image_url"]["url"].split(",", 1)[1])


async def test_a_photo_sent_with_moa_what_is_this_is_seen_by_the_vision_reference_only(world: World) -> None:
    picture = png()
    attachment = world.discord.add_file(picture, "screen.png", "image/png", channel_id=CHANNEL, width=40, height=30)
    world.models.reply("agg", Reply(text="A green square."))
    payload = world.discord.message_payload(channel_id=CHANNEL, guild_id=GUILD, author=world.member(),
                                            content="/moa what is this?", attachments=(attachment,))
    await world.discord.dispatch("MESSAGE_CREATE", payload)
    await world.answered()

    assert image_of(world.models.for_model("ref-eye")[0].body) == picture
    assert image_of(world.models.for_model("agg")[0].body) == picture
    assert world.models.for_model("ref-a")[0].body["messages"][-1]["content"] == (
        "what is this?\n[image: screen.png, 40×30, not visible to you]")
    messages = world.discord.channel_messages(CHANNEL)
    summary, (answer,) = embeds_then_text(messages)
    fields = messages[summary]["embeds"][0]["fields"]
    assert "saw the image" in fields[0]["value"] and "image as text only" in fields[1]["value"]
    assert answer["content"].startswith("A green square.")


async def test_the_ask_command_takes_an_attachment(world: World) -> None:
    picture = png(20, 10)
    attachment = world.discord.add_file(picture, "chart.png", "image/png", channel_id=CHANNEL, width=20, height=10)
    payload = world.discord.interaction_payload(
        subcommand="ask", options={"prompt": "what is this?"}, channel_id=CHANNEL, guild_id=GUILD,
        user=world.member(), attachment=attachment)
    await world.discord.dispatch("INTERACTION_CREATE", payload)
    await world.answered()
    assert image_of(world.models.for_model("ref-eye")[0].body) == picture
    assert world.discord.downloads == [attachment["proxy_url"].removeprefix(world.discord.cdn_url)]


async def test_a_file_url_on_another_host_is_refused_by_name(world: World) -> None:
    elsewhere = world.discord.add_file(b"secret", "notes.txt", "text/plain", channel_id=CHANNEL)
    elsewhere["url"] = elsewhere["url"].replace(world.discord.cdn_url, world.models.url)
    await world.mention(CHANNEL, "read my notes", attachments=(elsewhere,))
    await world.answered()
    notices = [m["content"] for m in world.discord.channel_messages(CHANNEL) if "Not used" in (m["content"] or "")]
    assert notices and "notes.txt: refused, the file is not on Discord's file service (127.0.0.1)" in notices[0]
    assert world.discord.downloads == []
    assert world.models.for_model("ref-a")[0].body["messages"][-1]["content"] == "read my notes"


async def test_the_ask_command_with_only_an_attachment_asks_about_it(world: World) -> None:
    """No prompt: the file is the question (as a photo captioned "/moa" is), with the preset option."""
    picture = png(12, 8)
    attachment = world.discord.add_file(picture, "what.png", "image/png", channel_id=CHANNEL, width=12, height=8)
    world.models.reply("agg", Reply(text="A small green picture."))
    payload = world.discord.interaction_payload(
        subcommand="ask", options={"preset": "default"}, channel_id=CHANNEL, guild_id=GUILD,
        user=world.member(), attachment=attachment)
    await world.discord.dispatch("INTERACTION_CREATE", payload)
    await world.answered()
    (part,) = world.models.for_model("ref-eye")[0].body["messages"][-1]["content"]  # the image is all
    assert base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == picture
    assert "what.png" in world.models.for_model("ref-a")[0].body["messages"][-1]["content"]
    assert embeds_then_text(world.discord.channel_messages(CHANNEL))[1][0]["content"].startswith("A small green")
