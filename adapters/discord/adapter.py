"""The Discord adapter: discord.py 2 connected to the gateway's adapter contract.

Owns the live connection and what comes in: the gateway websocket and REST client of
discord.py, the `/moa` application commands, and the reading of messages and interactions.
Inbound payloads are read by the pure functions of `normalize.py` from the raw dispatch data
(discord.py's documented `on_socket_raw_receive` debug event), so what is tested on recorded
payloads is exactly what runs. Outbound values are rendered into parts by `render.py` and
delivered by `delivery.py` (followup webhook or channel, retries, skipped identical edits).

Addresses: discord.py keeps the REST base (`Route.BASE`) and the gateway URL
(`DiscordWebSocket.DEFAULT_GATEWAY`) class-wide; `start()` sets both from the settings, so one
process talks to one Discord.

Threads: a value for a `ChatRef` with a `thread_id` goes to the thread's channel (`chat_id` is
its parent channel, see `normalize.py`); an interaction's followups land where it was used.

Interactions: each is deferred ("thinking...") before the gateway hears of it; the first
followup replaces the thinking state, so a refusal Notice is what the member sees in its place.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.bounded import Bounded
from adapters.contract import (
    Attachment,
    ChatRef,
    InboundHandler,
    InboundMessage,
    Outbound,
    PlatformLimits,
    Sent,
)
from adapters.discord.commands import build_moa_group
from adapters.discord.delivery import REMEMBERED, Delivery, ledger_nonce
from adapters.discord.normalize import (
    PLATFORM,
    interaction_to_inbound,
    message_to_inbound,
)
from adapters.discord.render import MAX_CONTENT
from adapters.discord.settings import DiscordSettings
from adapters.download import download
from adapters.startup import PlatformUnavailable, host_of, refused, unreachable

log = logging.getLogger(__name__)

__all__ = ["DiscordAdapter", "ledger_nonce"]  # ledger_nonce lives in delivery.py; kept importable here

_LOOKUP_TIMEOUT_S = 10.0  # a channel lookup holds up the messages behind it


class _Client(discord.Client):
    """discord.py's client with the raw dispatch data handed to the adapter."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter

    async def on_socket_raw_receive(self, msg: str) -> None:
        await self._adapter._on_raw_frame(msg)


class _ShardedClient(discord.AutoShardedClient):
    """The same, running the shards `shard_ids` of `shard_count` (one replica's share)."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter

    async def on_socket_raw_receive(self, msg: str) -> None:
        await self._adapter._on_raw_frame(msg)


class DiscordAdapter:
    """Discord through discord.py: `/moa` commands, mentions, DMs and replies in; parts out."""

    platform = PLATFORM

    def __init__(
        self,
        settings: DiscordSettings,
        *,
        presets: Sequence[str] = (),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.limits = PlatformLimits(max_message_chars=MAX_CONTENT, edit_interval_s=settings.edit_interval_s)
        self._presets = tuple(presets)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._client: _Client | None = None
        self._tree: app_commands.CommandTree | None = None
        self._runner: asyncio.Task[None] | None = None
        self._on_inbound: InboundHandler | None = None
        self._raw_interactions = Bounded(REMEMBERED)  # interaction id -> its raw payload
        # channel id -> its parent when it is a thread, None when it is not
        self._thread_parents = Bounded(REMEMBERED)
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._files: aiohttp.ClientSession | None = None  # attachment downloads only
        self._delivery = Delivery(settings, client=self._require_client, clock=self._clock)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, on_inbound: InboundHandler) -> None:
        """Log in, register the `/moa` commands, connect the gateway; returns once READY."""
        if self._client is not None:
            raise RuntimeError("the Discord adapter is already started")
        self._on_inbound = on_inbound
        Route.BASE = self.settings.api_base.rstrip("/")
        # DEFAULT_GATEWAY is a yarl.URL; its own type builds ours without importing yarl here.
        gateway_type = type(DiscordWebSocket.DEFAULT_GATEWAY)
        DiscordWebSocket.DEFAULT_GATEWAY = gateway_type(self.settings.gateway_url)

        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True
        sharding: dict[str, Any] = {}
        if self.settings.shard_count is not None:
            sharding = {"shard_count": self.settings.shard_count,
                        "shard_ids": list(self.settings.shard_ids) if self.settings.shard_ids else None}
        client = (_ShardedClient if sharding else _Client)(
            self,
            **sharding,
            intents=intents,
            enable_debug_events=True,  # for on_socket_raw_receive
            guild_ready_timeout=self.settings.guild_ready_timeout_s,
            # Model output must never ping @everyone, roles or users.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        tree = app_commands.CommandTree(client)
        tree.add_command(build_moa_group(self._presets, self._on_command))
        self._client, self._tree = client, tree
        api, gateway = self.settings.api_base, self.settings.gateway_url
        url = api  # what is being called, for the one-line error if it fails
        try:
            await client.login(self.settings.token)
            if self.settings.sync_commands:
                await tree.sync()
            url = gateway
            self._spawn(self._read_messages())
            self._runner = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
            ready = asyncio.create_task(client.wait_until_ready())
            done, _ = await asyncio.wait(
                {ready, self._runner},
                timeout=self.settings.ready_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ready not in done:
                ready.cancel()
                if self._runner in done:
                    self._runner.result()  # raises what stopped the connection
                    raise ConnectionError("the Discord gateway closed before READY")
                raise PlatformUnavailable(
                    f"discord: no READY from the gateway at {host_of(gateway)} within "
                    f"{self.settings.ready_timeout_s:g} s; check [discord] gateway_url and the network"
                )
        except discord.LoginFailure:
            await self.stop()
            raise refused("discord", api, "bot token", "the variable [discord] token_env names "
                          "(the bot's token from the Developer Portal)") from None
        except discord.Forbidden:
            await self.stop()
            raise refused("discord", api, "request to register the /moa commands",
                          "the bot's applications.commands scope, or set [discord] sync_commands = false") from None
        except (discord.HTTPException, discord.GatewayNotFound, discord.ConnectionClosed, aiohttp.ClientError,
                OSError) as error:  # TimeoutError is an OSError
            await self.stop()
            where = "[discord] api_base" if url == api else "[discord] gateway_url"
            raise unreachable("discord", url, error, f"{where} and this machine's network") from None
        except BaseException:
            await self.stop()
            raise
        log.info("discord: connected as %s (%s)", client.user, client.user.id if client.user else "?")

    async def stop(self) -> None:
        client, runner = self._client, self._runner
        self._client, self._tree, self._runner = None, None, None
        if client is not None:
            await client.close()
        if runner is not None:
            try:
                await asyncio.wait_for(runner, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:  # the connection's end is not the stop's concern
                log.debug("discord: gateway task ended with an error", exc_info=True)
        # The reader and any hand-over still running: the gateway has stopped taking turns.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        files, self._files = self._files, None
        if files is not None:
            await files.close()

    # -- files ---------------------------------------------------------------------------------

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The file from Discord's CDN (its signed URL needs no token); any other URL is refused."""
        if self._files is None:
            self._files = aiohttp.ClientSession()
        cdn = self.settings.cdn_url.rstrip("/")
        prefixes = [f"{cdn}/attachments", f"{cdn}/ephemeral-attachments"]
        if cdn == "https://cdn.discordapp.com":
            prefixes += ["https://media.discordapp.net/attachments", "https://media.discordapp.net/ephemeral-attachments"]
        return await download(self._files, attachment.ref, name=attachment.name, service="Discord",
                              prefixes=prefixes, max_bytes=max_bytes)

    # -- inbound -------------------------------------------------------------------------------

    async def _on_raw_frame(self, msg: str | bytes) -> None:
        # Cheap test first: every gateway frame passes here, few are of interest.
        if isinstance(msg, bytes) or ("MESSAGE_CREATE" not in msg and "INTERACTION_CREATE" not in msg):
            return
        try:
            frame = json.loads(msg)
        except ValueError:
            return
        event, data = frame.get("t"), frame.get("d")
        if not isinstance(data, dict):
            return
        if event == "INTERACTION_CREATE":
            # Kept for `_on_command`, which runs after discord.py has parsed the same frame.
            self._raw_interactions.remember(str(data.get("id")), data)
        elif event == "MESSAGE_CREATE":
            # Queued before any await, so messages reach the gateway in the order Discord sent them.
            self._messages.put_nowait(data)

    async def _read_messages(self) -> None:
        """Normalise queued messages one by one; each goes to the gateway in a task of its own."""
        while True:
            data = await self._messages.get()
            try:
                inbound = await self._message_inbound(data)
            except Exception:
                log.exception("discord: could not read message %s", data.get("id"))
                continue
            if inbound is not None:
                # Started in order; the gateway may take its time with each.
                self._spawn(self._forward(inbound))

    async def _message_inbound(self, data: dict[str, Any]) -> InboundMessage | None:
        client = self._client
        if client is None or client.user is None:
            return None
        author = data.get("author") or {}
        if author.get("bot") or data.get("webhook_id") or str(author.get("id")) == str(client.user.id):
            return None  # before any lookup: never our own messages, nor other bots'
        parent_id: str | None = None
        role_ids: tuple[str, ...] = ()
        guild_id = data.get("guild_id")
        if guild_id is not None:
            parent_id = await self._thread_parent(int(data["channel_id"]))
            guild = client.get_guild(int(guild_id))
            if guild is not None and guild.self_role is not None:
                role_ids = (str(guild.self_role.id),)
        return message_to_inbound(
            data,
            bot_user_id=str(client.user.id),
            bot_name=client.user.name,
            bot_role_ids=role_ids,
            parent_id=parent_id,
        )

    async def _thread_parent(self, channel_id: int) -> str | None:
        """The parent channel of a guild channel that is a thread, None for any other channel:
        from discord.py's cache, else asked once."""
        assert self._client is not None
        channel = self._client.get_channel(channel_id)
        if channel is not None:
            return _parent_of(channel)
        if channel_id in self._thread_parents:
            return self._thread_parents[channel_id]
        try:
            fetched = await asyncio.wait_for(self._client.fetch_channel(channel_id), _LOOKUP_TIMEOUT_S)
        except (discord.NotFound, discord.Forbidden) as exc:
            # Not a channel we may read: a definite answer, so asked once only.
            self._thread_parents.remember(channel_id, None)
            log.info("discord: channel %s is not readable (%s); taken as no thread", channel_id, exc.status)
            return None
        except (TimeoutError, discord.HTTPException, discord.InvalidData) as exc:
            log.warning("discord: could not look up channel %s: %r", channel_id, exc)
            return None
        parent = _parent_of(fetched)
        self._thread_parents.remember(channel_id, parent)
        return parent

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_command(self, interaction: discord.Interaction) -> None:
        """A `/moa` subcommand: defer at once (Discord allows 3 s), then hand it to the gateway."""
        try:
            await interaction.response.defer(thinking=True)
        except discord.HTTPException as exc:
            # Already acknowledged (the same interaction delivered again) or expired: the
            # gateway still hears of it, de-duplicates by event id, and answers in the channel.
            log.warning("discord: could not defer interaction %s: %s", interaction.id, exc)
        payload = self._raw_interactions.get(str(interaction.id)) or _interaction_payload(interaction)
        inbound = interaction_to_inbound(payload, parent_id=_parent_of(interaction.channel))
        if inbound is not None:
            await self._forward(inbound)

    async def _forward(self, inbound: InboundMessage) -> None:
        if self._on_inbound is None:
            return
        try:
            await self._on_inbound(inbound)
        except Exception:  # one bad message never takes the adapter down
            log.exception("discord: the gateway failed on event %s", inbound.event_id)

    # -- outbound ------------------------------------------------------------------------------

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        return await self._delivery.send(chat, item)

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str, retry: bool) -> Sent:
        """A ledger send: each part's enforced nonce is derived from `key`, so the same row sent
        again after a restart gets the message Discord already has instead of a second one
        (Discord checks nonces over the past few minutes)."""
        return await self._delivery.send_once(chat, item, key=key)

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        return await self._delivery.edit(sent, item)

    def _require_client(self) -> _Client:
        if self._client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self._client


def _parent_of(channel: object) -> str | None:
    """The parent channel id of a discord.py thread, None for anything else."""
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return str(channel.parent_id)
    return None


def _interaction_payload(interaction: discord.Interaction) -> dict[str, Any]:
    """The raw shape of an interaction rebuilt from discord.py's object (a fallback only)."""
    user = interaction.user
    user_data = {"id": str(user.id), "username": user.name, "global_name": user.global_name, "bot": user.bot}
    channel = interaction.channel
    payload: dict[str, Any] = {
        "id": str(interaction.id),
        "type": interaction.type.value,
        "application_id": str(interaction.application_id),
        "token": interaction.token,
        "data": interaction.data or {},
        "channel_id": str(interaction.channel_id),
    }
    if channel is not None and getattr(channel, "type", None) is not None:
        payload["channel"] = {"id": str(channel.id), "type": channel.type.value}  # type: ignore[union-attr]
        if (parent := _parent_of(channel)) is not None:
            payload["channel"]["parent_id"] = parent
    if interaction.guild_id is not None:
        payload["guild_id"] = str(interaction.guild_id)
    if isinstance(user, discord.Member):
        payload["member"] = {
            "user": user_data,
            "nick": user.nick,
            "roles": [str(r.id) for r in user.roles if not r.is_default()],  # cached guilds only
        }
    else:
        payload["user"] = user_data
    return payload
