"""Settings of the Telegram adapter, built by the gateway from the `[telegram]` TOML section.

Secrets (the bot token, the webhook secret) arrive here as values already read from the
environment; they are never logged and never shown in `repr`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

# Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and - as a webhook secret token.
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    token: str = field(repr=False)
    base_url: str = "https://api.telegram.org/bot"
    base_file_url: str | None = None
    mode: Literal["polling", "webhook"] = "polling"
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = 8443
    webhook_path: str = "telegram"
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # required in webhook mode
    stream: Literal["edit", "draft", "off"] = "edit"
    edit_interval_s: float = 1.0
    # Added fields (defaults keep the TOML section optional):
    poll_timeout_s: float = 10.0  # getUpdates long-poll timeout
    request_timeout_s: float = 10.0  # connect/read/write timeout of every other Bot API call
    # An album (several photos or files sent at once) arrives as one update per item: items of
    # one album are gathered until none came for this long, then go on as one message.
    album_wait_s: float = 1.0

    @property
    def file_url(self) -> str:
        """Where files are downloaded from: `base_file_url`, else `base_url` with its final
        `/bot` made `/file/bot`, as the Bot API and self-hosted Bot API servers lay it out."""
        if self.base_file_url:
            return self.base_file_url
        return self.base_url.rstrip("/").removesuffix("/bot") + "/file/bot"

    def __post_init__(self) -> None:
        if not self.base_file_url and not self.base_url.rstrip("/").endswith("/bot"):
            raise ValueError("telegram.base_file_url is required when telegram.base_url does not end in /bot")
        if not self.token:
            raise ValueError("telegram: the bot token is empty (check [telegram] token_env)")
        if self.mode not in ("polling", "webhook"):
            raise ValueError(f"telegram.mode must be 'polling' or 'webhook', not {self.mode!r}")
        if self.stream not in ("edit", "draft", "off"):
            raise ValueError(f"telegram.stream must be 'edit', 'draft' or 'off', not {self.stream!r}")
        if self.mode == "webhook":
            if not self.webhook_secret:
                raise ValueError("telegram.webhook_secret is required when telegram.mode = 'webhook'")
            if not _SECRET_TOKEN.fullmatch(self.webhook_secret):
                raise ValueError(
                    "telegram.webhook_secret must be 1-256 characters of A-Z, a-z, 0-9, '_' and '-'"
                )
        if not 0 < self.webhook_port < 65536:
            raise ValueError(f"telegram.webhook_port must be a TCP port, not {self.webhook_port}")
        if self.edit_interval_s < 0:
            raise ValueError("telegram.edit_interval_s must not be negative")
        if self.album_wait_s < 0:
            raise ValueError("telegram.album_wait_s must not be negative")
        if self.poll_timeout_s < 0 or self.request_timeout_s <= 0:
            raise ValueError("telegram.poll_timeout_s / request_timeout_s must be positive")
