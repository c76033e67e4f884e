"""`[discord] shard_ids` / `shard_count`: a replica runs its share of the bot's gateway shards
through discord.py's sharding, against the fake Discord, and answers what arrives on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.discord.settings import DiscordSettings
from gateway.app import build_adapters, build_app
from gateway.config import ConfigError, load_config
from tests.e2e.test_discord_gateway import (
    ADMIN_ID,
    ADMIN_ROLE,
    CHANNEL,
    CONFIG,
    DEEP_CHANNEL,
    ENV,
    SETTINGS_CHANNEL,
    World,
)
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.provider_server import FakeProvider, Reply


def write(tmp_path: Path, models: FakeProvider, discord: FakeDiscord, shard_keys: str) -> Path:
    path = tmp_path / "moa-gateway.toml"
    text = CONFIG.format(db=tmp_path / "gateway.db", openai_base=models.openai_base, api_base=discord.api_base,
                         gateway_url=discord.gateway_url, admin=ADMIN_ID, admin_role=ADMIN_ROLE, channel=CHANNEL,
                         settings_channel=SETTINGS_CHANNEL, deep_channel=DEEP_CHANNEL)
    path.write_text(text.replace("[discord]\n", f"[discord]\n{shard_keys}\n"), encoding="utf-8")
    return path


async def test_a_replica_identifies_as_its_shard_and_answers(tmp_path: Path) -> None:
    async with FakeProvider() as models:
        discord = await FakeDiscord().start()
        config = load_config(write(tmp_path, models, discord, "shard_count = 2\nshard_ids = [1]"))
        app = await build_app(config, build_adapters(config, ENV), env=ENV)
        try:
            await app.gateway.start()
            assert discord.identify is not None and discord.identify["shard"] == [1, 2]
            world = World(discord, models, app)
            models.reply("agg", Reply(text="Answered on shard one."))
            await world.mention(CHANNEL, "which shard?")
            await world.answered()
            assert any("Answered on shard one." in m["content"] for m in discord.channel_messages(CHANNEL))
        finally:
            await app.gateway.shutdown(grace_s=2)
            await app.close()
            await discord.close()


async def test_shard_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shard_count"):
        DiscordSettings(token="t", shard_ids=(0,))
    with pytest.raises(ValueError, match="from 0 to 1"):
        DiscordSettings(token="t", shard_ids=(2,), shard_count=2)
    with pytest.raises(ValueError, match="at least 1"):
        DiscordSettings(token="t", shard_count=0)
    assert DiscordSettings(token="t", shard_ids=[0, 1], shard_count=2).shard_ids == (0, 1)  # type: ignore[arg-type]
    async with FakeProvider() as models:
        discord = await FakeDiscord().start()
        try:
            config = load_config(write(tmp_path, models, discord, 'shard_count = 2\nshard_ids = ["a"]'))
            with pytest.raises(ConfigError, match=r"\[discord\].*shard_ids"):
                build_adapters(config, ENV)
            with pytest.raises(ConfigError, match="shard_count"):
                load_config(write(tmp_path, models, discord, 'shard_count = "two"'))
        finally:
            await discord.close()
