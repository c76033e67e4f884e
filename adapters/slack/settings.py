"""Settings of the Slack adapter, built by the gateway from the `[slack]` TOML section.

Secrets arrive as values already read from the environment; they are never logged (the
dataclass hides them from `repr`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SlackSettings:
    bot_token: str = field(repr=False)
    app_token: str | None = field(default=None, repr=False)  # Socket Mode when set
    signing_secret: str | None = field(default=None, repr=False)  # HTTP mode (Events API + slash commands)
    base_url: str = "https://slack.com/api/"
    # Where shared files are downloaded from (with the bot token); a URL elsewhere is refused.
    files_url: str = "https://files.slack.com"
    http_host: str = "0.0.0.0"
    http_port: int = 3000
    http_path: str = "/slack/events"
    edit_interval_s: float = 1.0
    reply_in_thread: bool = True
    # Seconds before one Web API call is given up (a timed-out post is checked, not re-sent blindly).
    http_timeout_s: float = 30.0
    # How long a final answer keeps being retried through 429s and server errors.
    final_retry_s: float = 120.0

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)

    def validate(self) -> None:
        """Raise ValueError naming the field at fault."""
        if not self.bot_token:
            raise ValueError("slack: bot_token is required (bot_token_env names an empty variable?)")
        if not self.app_token and not self.signing_secret:
            raise ValueError(
                "slack: set app_token (Socket Mode) or signing_secret (HTTP mode); neither is set"
            )
        if not self.http_path.startswith("/"):
            raise ValueError(f"slack: http_path must start with '/', got {self.http_path!r}")
