"""Config validation: good files load; bad ones fail with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """
[gateway]
database = "x.db"
default_preset = "default"

[providers.openrouter]
api = "openai"
base_url = "https://openrouter.ai/api/v1"
api_key_env = "OPENROUTER_API_KEY"

[presets.default]
references = ["openrouter:openai/gpt-5.1", "openrouter:google/gemini-2.5-pro"]
aggregator = "openrouter:anthropic/claude-sonnet-4.5"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "moa-gateway.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


def test_the_example_config_and_the_spec_shape_load():
    config = load_config(ROOT / "deploy" / "moa-gateway.example.toml")
    preset = config.engine.presets["default"]
    assert [s.label for s in preset.references] == ["openrouter:openai/gpt-5.1", "openrouter:google/gemini-2.5-pro"]
    assert preset.aggregator.label == "openrouter:anthropic/claude-sonnet-4.5"
    assert (preset.reference_temperature, preset.aggregator_temperature, preset.reference_timeout) == (0.6, 0.4, 120)
    assert preset.tools == ("fetch_url", "calculator", "current_time") and preset.summary == "full"
    assert config.engine.presets["deep"].fanout.mode == "per_iteration"


def test_full_spec_section_5_config(tmp_path):
    text = BASE + """
[telegram]
token_env = "TELEGRAM_BOT_TOKEN"
base_url = "https://api.telegram.org/bot"
admins = ["123456789"]
allowed_chats = ["-1001234567890"]

[discord]
token_env = "DISCORD_BOT_TOKEN"
api_base = "https://discord.com/api/v10"
gateway_url = "wss://gateway.discord.gg"
admins = ["42"]

[slack]
bot_token_env = "SLACK_BOT_TOKEN"
app_token_env = "SLACK_APP_TOKEN"
base_url = "https://slack.com/api/"
admins = ["U012345"]

[channels."telegram:-1001234567890"]
preset = "default"
budget_usd_month = 50

[budgets]
per_user_usd_day = 2.0
per_chat_usd_month = 100.0

[digest]
cron = "0 9 * * 1"
timezone = "Europe/Berlin"
send_to = ["telegram:123456789", "slack:C0123456"]
"""
    config = load_config(write(tmp_path, text))
    assert config.platforms["telegram"].access.admins == {"123456789"}
    assert config.platforms["telegram"].options["token_env"] == "TELEGRAM_BOT_TOKEN"
    assert config.channels["telegram:-1001234567890"].budget_usd_month == 50
    assert config.digest.send_to == ("telegram:123456789", "slack:C0123456")
    assert config.engine.providers["openrouter"].request_cost  # OpenRouter reports cost when asked


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('aggregator = "openrouter:anthropic/claude-sonnet-4.5"', 'aggregator = "nope:model"'),
         "presets.default.aggregator: preset 'default', aggregator slot 'nope:model': unknown provider 'nope'"),
        (('aggregator = "openrouter:anthropic/claude-sonnet-4.5"', 'aggregator = "moa:default"'),
         "presets.default.aggregator: preset 'default', aggregator slot 'moa:default'"),
        (('references = ["openrouter:openai/gpt-5.1", "openrouter:google/gemini-2.5-pro"]', "references = []"),
         "presets.default.references: preset 'default': needs at least one reference slot"),
        (('"openrouter:google/gemini-2.5-pro"', '"other:gemini"'),
         "presets.default.references: preset 'default', reference #2 slot 'other:gemini': unknown provider"),
        (('api = "openai"', 'api = "grpc"'), "providers.openrouter.api: must be"),
        (('default_preset = "default"', 'default_preset = "missing"'), "gateway.default_preset: names preset 'missing'"),
        (('api_key_env = "OPENROUTER_API_KEY"', 'api_key_env = "sk-live-123"'), "providers.openrouter.api_key_env"),
        (('[presets.default]', '[presets.default]\nfanout = "sometimes"'), "presets.default.fanout"),
        (('[presets.default]', '[presets.default]\ntools = ["shell"]'), "presets.default.tools: preset 'default': unknown tool 'shell'"),
        (('[presets.default]', '[presets.default]\nreference_temperature = "hot"'), "presets.default.reference_temperature: must be a number"),
        (('[presets.default]', '[presets.default]\nrefrences = []'), "presets.default.refrences: unknown key"),
    ],
)
def test_bad_config_names_file_key_preset_and_slot(tmp_path, change, expected):
    old, new = change
    assert old in BASE
    message = error_of(tmp_path, BASE.replace(old, new, 1))
    assert str(tmp_path / "moa-gateway.toml") in message
    assert expected in message


def test_a_recursive_reference_is_allowed_and_skipped_at_run_time(tmp_path):
    text = BASE.replace('"openrouter:google/gemini-2.5-pro"', '"moa:default"')
    config = load_config(write(tmp_path, text))
    assert config.engine.presets["default"].references[1].is_recursive


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")
    assert "not valid TOML" in error_of(tmp_path, "[gateway\n")


def test_bad_digest_and_channels(tmp_path):
    assert "digest.cron" in error_of(tmp_path, BASE + '[digest]\ncron = "every monday"\nsend_to = []\n')
    assert "digest.timezone" in error_of(tmp_path, BASE + '[digest]\ncron = "0 9 * * 1"\ntimezone = "Mars/Base"\n')
    assert 'channels."nochat"' in error_of(tmp_path, BASE + '[channels."nochat"]\npreset = "default"\n')
    assert "names preset 'ghost'" in error_of(tmp_path, BASE + '[channels."slack:C1"]\npreset = "ghost"\n')


@pytest.mark.parametrize("section, line, expected", [
    ("discord", 'edit_interval_s = "fast"', "discord.edit_interval_s: must be a number, got 'fast'"),
    ("telegram", 'webhook_port = "8443"', "telegram.webhook_port: must be an integer"),
    ("slack", "reply_in_thread = 1", "slack.reply_in_thread: must be true or false"),
    ("discord", "enabled = \"no\"", "discord.enabled: must be true or false"),
])
def test_a_platform_option_of_the_wrong_type_names_its_key(tmp_path, section, line, expected):
    token_key = "bot_token_env" if section == "slack" else "token_env"
    assert expected in error_of(tmp_path, BASE + f'[{section}]\n{token_key} = "T"\n{line}\n')


def test_a_value_an_adapter_refuses_is_a_config_error_naming_section_and_key(tmp_path):
    from gateway.app import build_adapters

    config = load_config(write(tmp_path, BASE + '[discord]\ntoken_env = "T"\nguild_ready_timeout_s = -1\n'))
    assert config.platforms["discord"].options["guild_ready_timeout_s"] == -1.0
    with pytest.raises(ConfigError) as caught:
        build_adapters(config, {"T": "token"})
    assert "[discord]" in str(caught.value) and "guild_ready_timeout_s" in str(caught.value)
    assert "token" not in str(caught.value).replace("token_env", "")  # the secret is not echoed
