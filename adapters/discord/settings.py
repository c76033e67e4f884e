"""Settings of the Discord adapter, built by the gateway from the `[discord]` TOML section.

The bot token arrives here as a value already read from the environment; it is never logged and
never shown in `repr`. `api_base` and `gateway_url` point discord.py at another Discord (a proxy,
or the fake server of the tests); discord.py keeps both class-wide, so one process talks to one
Discord.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DiscordSettings:
    token: str = field(repr=False)
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg"
    edit_interval_s: float = 1.0
    sync_commands: bool = True  # tree.sync() on start (global commands)
    # Added fields (defaults keep the TOML section optional):
    # Interaction tokens live 15 minutes; followups are used until this many seconds after the
    # interaction was created, plain channel messages after that (a margin for slow requests).
    followup_window_s: float = 14 * 60.0
    # discord.py waits this long after READY for the guilds' GUILD_CREATE before "ready".
    guild_ready_timeout_s: float = 2.0
    # How long start() waits for the gateway's READY before giving up.
    ready_timeout_s: float = 60.0
    # Where attachments are downloaded from; a file URL elsewhere is refused.
    cdn_url: str = "https://cdn.discordapp.com"
    # Several replicas: each runs some of the bot's gateway shards (discord.py's sharding).
    # `shard_count` is the bot's total; `shard_ids` those this replica runs (all when unset).
    shard_ids: tuple[int, ...] | None = None
    shard_count: int | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("discord: the bot token is empty (check [discord] token_env)")
        if not self.api_base.startswith(("http://", "https://")):
            raise ValueError(f"discord.api_base must be an http(s) URL, not {self.api_base!r}")
        if not self.gateway_url.startswith(("ws://", "wss://")):
            raise ValueError(f"discord.gateway_url must be a ws(s) URL, not {self.gateway_url!r}")
        if not self.cdn_url.startswith(("http://", "https://")):
            raise ValueError(f"discord.cdn_url must be an http(s) URL, not {self.cdn_url!r}")
        if self.edit_interval_s < 0:
            raise ValueError("discord.edit_interval_s must not be negative")
        if not 0 < self.followup_window_s <= 15 * 60:
            raise ValueError("discord.followup_window_s must be within (0, 900] seconds")
        if self.guild_ready_timeout_s < 0 or self.ready_timeout_s <= 0:
            raise ValueError("discord.guild_ready_timeout_s / ready_timeout_s must be positive")
        if self.shard_count is not None and (isinstance(self.shard_count, bool) or not isinstance(self.shard_count, int)
                                             or self.shard_count < 1):
            raise ValueError(f"discord.shard_count must be a whole number of at least 1, not {self.shard_count!r}")
        if self.shard_ids is not None:
            ids = tuple(self.shard_ids)
            if self.shard_count is None:
                raise ValueError("discord.shard_ids needs discord.shard_count (the bot's total number of shards)")
            if not ids or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.shard_count
                              for i in ids) or len(set(ids)) != len(ids):
                raise ValueError(f"discord.shard_ids must be distinct whole numbers from 0 to "
                                 f"{self.shard_count - 1}, not {list(ids)!r}")
            object.__setattr__(self, "shard_ids", ids)
