"""Configured secrets never reach the logs of `moa-gateway run`, whoever logs them."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from gateway.config import parse_config
from gateway.secrets import configured_secrets, mask_secrets_in_logs, secret_env_names

TOKEN = "123456:AAE-telegram-bot-token-value"
ENV = {"OR_KEY": "sk-or-v1-0123456789abcdef", "LOCAL_KEY": "k", "TG_TOKEN": TOKEN,
       "SLACK_SIGNING": "8f14e45fceea167a5a36dedd4bea2543", "SLACK_BOT": "xoxb-1-2-slack-bot-token"}


def config(tmp_path: Path):
    raw = {
        "gateway": {"database": str(tmp_path / "db.sqlite")},
        "providers": {"or": {"api": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "OR_KEY"},
                      "local": {"api": "openai", "base_url": "http://127.0.0.1:2/v1", "api_key_env": "LOCAL_KEY"}},
        "presets": {"default": {"references": ["or:a"], "aggregator": "local:b"}},
        "telegram": {"token_env": "TG_TOKEN", "allow_all": True},
        "slack": {"bot_token_env": "SLACK_BOT", "app_token_env": "SLACK_APP_UNSET",
                  "signing_secret_env": "SLACK_SIGNING", "allow_all": True},
    }
    return parse_config(raw, tmp_path / "moa-gateway.toml")


def test_every_named_secret_is_found(tmp_path):
    cfg = config(tmp_path)
    assert set(secret_env_names(cfg)) == {"OR_KEY", "LOCAL_KEY", "TG_TOKEN", "SLACK_BOT", "SLACK_APP_UNSET",
                                          "SLACK_SIGNING"}
    # Unset and too-short values are not masked (a key "k" would garble every message).
    assert set(configured_secrets(cfg, ENV)) == {ENV["OR_KEY"], TOKEN, ENV["SLACK_SIGNING"], ENV["SLACK_BOT"]}


def test_log_records_and_tracebacks_are_masked(tmp_path):
    root = logging.Logger("test-root")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root.addHandler(handler)
    mask_secrets_in_logs(config(tmp_path), ENV, root)
    child = logging.Logger("telegram.ext", logging.DEBUG)
    child.parent = root  # a library's logger, propagating to the root's handlers
    child.info("POST https://api.telegram.org/bot%s/getMe failed", TOKEN)
    try:
        raise ConnectionError(f"signature check with {ENV['SLACK_SIGNING']} and {ENV['SLACK_BOT']}")
    except ConnectionError:
        child.exception("request failed for key %s", ENV["OR_KEY"])
    child.info("kept as is: keep looking, ok-a")
    text = stream.getvalue()
    assert "bot***/getMe" in text and "request failed for key ***" in text
    assert "signature check with *** and ***" in text  # inside the traceback
    assert "kept as is: keep looking, ok-a" in text
    for secret in (TOKEN, ENV["SLACK_SIGNING"], ENV["SLACK_BOT"], ENV["OR_KEY"]):
        assert secret not in text
