"""The Discord adapter (discord.py 2): `/moa` application commands, mentions, DMs, replies.

`settings` holds the `[discord]` section, `normalize` reads raw gateway payloads into
`InboundMessage`s, `render` turns outbound values into message parts (embeds for the reference
summary), `commands` declares the `/moa` command group, `delivery` posts, edits and retries
those parts, and `adapter` runs the connection and reads what comes in.
"""

from adapters.discord.adapter import DiscordAdapter
from adapters.discord.settings import DiscordSettings

__all__ = ["DiscordAdapter", "DiscordSettings"]
