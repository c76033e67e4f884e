"""`moa-gateway run` when a platform cannot be reached or refuses its token: one line naming the
platform, the host and what to check; exit 1; no traceback. Real console script, real fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.kit import Ran, clean_env, moa_gateway
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import FakeTelegram

BASE = """
[gateway]
database = "moa.db"

[providers.p]
api = "openai"
base_url = "http://127.0.0.1:9/v1"

[presets.default]
references = ["p:a"]
aggregator = "p:b"
"""
DEAD = "127.0.0.1:1"  # nothing listens on port 1


async def run_with(tmp_path: Path, section: str, **env: str) -> Ran:
    (tmp_path / "moa-gateway.toml").write_text(BASE + section)
    return await moa_gateway("run", env=clean_env(tmp_path, **env), cwd=tmp_path)


def assert_one_line_error(ran: Ran, *parts: str) -> None:
    assert ran.code == 1, ran.err
    assert "Traceback" not in ran.err, ran.err
    line = ran.last_err_line
    assert line.startswith("error: "), ran.err
    for part in parts:
        assert part in line, line


@pytest.mark.parametrize(
    ("section", "platform"),
    [
        (f'[telegram]\ntoken_env = "TOK"\nbase_url = "http://{DEAD}/bot"\nallow_all = true\n', "telegram"),
        (f'[discord]\ntoken_env = "TOK"\napi_base = "http://{DEAD}/api/v10"\n', "discord"),
        (f'[slack]\nbot_token_env = "TOK"\napp_token_env = "APP"\nbase_url = "http://{DEAD}/api/"\n', "slack"),
    ],
)
async def test_an_unreachable_platform_is_one_line(tmp_path, section, platform):
    ran = await run_with(tmp_path, section, TOK="123:not-a-real-token", APP="xapp-x")
    assert_one_line_error(ran, f"{platform}: cannot reach {DEAD}", "Connection refused", "check [")
    assert "123:not-a-real-token" not in ran.err


async def test_telegram_refusing_the_token(tmp_path):
    telegram = FakeTelegram()
    await telegram.start()
    try:
        section = f'[telegram]\ntoken_env = "TOK"\nbase_url = "{telegram.base_url}"\nallow_all = true\n'
        ran = await run_with(tmp_path, section, TOK="999:wrong-token")
    finally:
        await telegram.stop()
    assert_one_line_error(ran, f"telegram: 127.0.0.1:{telegram.port} refused the bot token", "token_env")
    assert "wrong-token" not in ran.err


async def test_discord_refusing_the_token(tmp_path):
    discord = FakeDiscord()
    discord.refused_token = "wrong-token"
    await discord.start()
    try:
        section = f'[discord]\ntoken_env = "TOK"\napi_base = "{discord.api_base}"\ngateway_url = "{discord.gateway_url}"\n'
        ran = await run_with(tmp_path, section, TOK="wrong-token")
    finally:
        await discord.close()
    assert_one_line_error(ran, f"discord: 127.0.0.1:{discord.port} refused the bot token", "token_env")


async def test_slack_refusing_the_token(tmp_path):
    slack = await FakeSlack().start()
    try:
        section = f'[slack]\nbot_token_env = "TOK"\napp_token_env = "APP"\nbase_url = "{slack.base_url}"\n'
        ran = await run_with(tmp_path, section, TOK="not-a-slack-token", APP="xapp-fake")
    finally:
        await slack.stop()
    assert_one_line_error(ran, f"slack: 127.0.0.1:{slack.port} refused the bot token", "bot_token_env")
