"""The Slack adapter: slack-bolt's AsyncApp in Socket Mode or HTTP mode, posting via slack-sdk.

Inbound: `/moa` slash command, `app_mention`, DMs and replies in the bot's threads, turned into
`InboundMessage`s by `normalize` and handed to the gateway in background tasks, so Slack is
acknowledged at once (slash commands within its 3-second window; events before any work, so
Slack has no reason to retry). A retried event carries the same `event_id`; the gateway
de-duplicates it. A reply without a mention in a thread under a person's message is the bot's
when the bot posted there: known here if this process did; otherwise (another replica, or
before a restart) Slack is asked with conversations.replies, and a "no" is remembered briefly.

A slash command has no message to thread under: when `reply_in_thread` is set, the adapter
posts a short root message ("<@user> asked: …") and uses its ts as the thread, so the summary,
the answer and later replies form one thread (one session). It posts it only in `accepted`,
once the gateway has let the command through (allowed, not a duplicate): a refused channel or
a replayed command sees no echo.

Outbound: values become payloads in `render` and are delivered by `delivery` (rate limits,
retries, timed-out posts looked up before posting again, ledger sends marked with message
metadata). This module owns the connection, the reading of what comes in, and the bot's identity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

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
from adapters.download import download
from adapters.slack.delivery import Delivery, conversation_pages
from adapters.slack.normalize import (
    PLATFORM,
    inbound_from_command,
    inbound_from_event,
    slack_text_to_plain,
)
from adapters.slack.render import MESSAGE_CHARS, Payload, escape, render
from adapters.slack.settings import SlackSettings
from adapters.startup import PlatformUnavailable, host_of, reason, refused, unreachable
from adapters.text import shorten

log = logging.getLogger(__name__)

# A thread Slack said the bot has not posted in is not asked about again for this long (the bot
# may answer there later, mentioned on another replica).
_NOT_BOT_THREAD_S = 30.0


class SlackAdapter:
    """The gateway's Slack platform (see module docstring)."""

    platform = PLATFORM

    def __init__(
        self,
        settings: SlackSettings,
        *,
        presets: Sequence[str] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        settings.validate()
        self.settings = settings
        self._files: aiohttp.ClientSession | None = None  # shared-file downloads only
        # Known preset names; Slack slash commands have no option autocomplete, so they are
        # only kept for parity with the other adapters.
        self.presets = tuple(presets)
        # Per message: MESSAGE_CHARS of mrkdwn `text`; summaries use blocks (render.py).
        self.limits = PlatformLimits(
            max_message_chars=MESSAGE_CHARS, edit_interval_s=settings.edit_interval_s
        )
        self._clock = clock
        self._on_inbound: InboundHandler | None = None
        self._client: AsyncWebClient | None = None
        self._app: AsyncApp | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.http_port: int | None = None  # the bound port in HTTP mode (http_port may be 0)
        self._tasks: set[asyncio.Task[None]] = set()
        # Slash commands waiting for the gateway's verdict: event id -> the root message text.
        self._roots = Bounded()
        self._bot_threads: Bounded = Bounded()  # (channel, thread_ts) the bot answered in
        self._not_bot_threads: Bounded = Bounded()  # (channel, thread_ts) -> when Slack said no
        self._user_names: Bounded = Bounded()
        self._delivery = Delivery(
            settings, client=lambda: self.client, bot_threads=self._bot_threads, posted_by_bot=self._posted_by_bot
        )

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def client(self) -> AsyncWebClient:
        if self._client is None:
            raise RuntimeError("SlackAdapter.start() has not been called")
        return self._client

    async def start(self, on_inbound: InboundHandler) -> None:
        s = self.settings
        self._on_inbound = on_inbound
        client = AsyncWebClient(token=s.bot_token, base_url=s.base_url, timeout=s.http_timeout_s)  # type: ignore[arg-type]
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        self._client = client
        try:
            auth = await client.auth_test()
        except SlackApiError as error:
            code = error.response.get("error") if error.response is not None else None
            if code in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"):
                raise refused("slack", s.base_url, f"bot token ({code})",
                              "the variable [slack] bot_token_env names (an xoxb- token)") from None
            raise unreachable("slack", s.base_url, error, "[slack] base_url") from None
        except (aiohttp.ClientError, OSError) as error:  # TimeoutError is an OSError
            raise unreachable("slack", s.base_url, error, "[slack] base_url and this machine's network") from None
        self.bot_user_id = auth.get("user_id")
        self.bot_id = auth.get("bot_id")

        app = AsyncApp(
            client=client,
            signing_secret=s.signing_secret or "",
            request_verification_enabled=not s.socket_mode,
            process_before_response=False,
        )
        app.command("/moa")(self._on_command)
        app.event("app_mention")(self._on_event)
        app.event("message")(self._on_event)
        self._app = app

        if s.socket_mode:
            self._socket = AsyncSocketModeHandler(app, s.app_token)
            try:
                # The SDK retries a failed connect forever: bound it, so a bad app token is an error.
                await asyncio.wait_for(self._socket.connect_async(), timeout=s.http_timeout_s)
            except (TimeoutError, SlackApiError, aiohttp.ClientError, OSError) as error:
                await self._socket.close_async()
                self._socket = None
                raise PlatformUnavailable(
                    f"slack: Socket Mode did not connect via {host_of(s.base_url)} ({reason(error)}); check the "
                    "variable [slack] app_token_env names (an xapp- token with connections:write)"
                ) from None
            log.info("slack: Socket Mode connected as %s", self.bot_user_id)
        else:
            web_app = web.Application()
            web_app.router.add_post(s.http_path, self._on_http)
            self._runner = web.AppRunner(web_app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, s.http_host, s.http_port)
            try:
                await site.start()
            except OSError as error:
                await self._runner.cleanup()
                self._runner = None
                raise PlatformUnavailable(
                    f"slack: cannot listen on {s.http_host}:{s.http_port} ({reason(error)}); "
                    "check [slack] http_host and http_port"
                ) from None
            addresses = self._runner.addresses
            self.http_port = int(addresses[0][1]) if addresses else s.http_port
            log.info("slack: HTTP mode on %s:%s%s", s.http_host, self.http_port, s.http_path)

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """A shared file from Slack's file host, with the bot token; any other URL is refused."""
        if self._files is None:
            self._files = aiohttp.ClientSession()
        return await download(
            self._files, attachment.ref, name=attachment.name, service="Slack",
            prefixes=[self.settings.files_url.rstrip("/") + "/"], max_bytes=max_bytes,
            headers={"Authorization": f"Bearer {self.settings.bot_token}"},
        )

    async def stop(self) -> None:
        files, self._files = self._files, None
        if files is not None:
            await files.close()
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._on_inbound = None

    # --- inbound -------------------------------------------------------------------------

    async def _on_http(self, request: web.Request) -> web.Response:
        assert self._app is not None
        # Bolt parses the timestamp as an int and answers 500 when it is not one: refuse first.
        if not request.headers.get("X-Slack-Request-Timestamp", "").strip().isdigit():
            return web.Response(status=401, text="invalid request timestamp")
        bolt_resp = await self._app.async_dispatch(await to_bolt_request(request))
        resp = await to_aiohttp_response(bolt_resp)
        if request.headers.get("X-Slack-Retry-Num"):
            # Acknowledged: tell Slack not to retry this delivery again (the event id is the same).
            resp.headers["X-Slack-No-Retry"] = "1"
        return resp

    async def _on_event(self, body: dict[str, Any]) -> None:
        # Bolt has already acknowledged the event (auto-ack before this listener runs).
        message = inbound_from_event(
            body,
            bot_user_id=self.bot_user_id,
            reply_in_thread=self.settings.reply_in_thread,
            bot_threads=self._bot_threads,
        )
        if message is not None:
            self._spawn(self._deliver(message))
        elif (unknown := self._unknown_thread(body)) is not None:
            # A reply in a thread this process has not answered in: another replica (or this
            # one before a restart) may have. Slack knows; ask it, off Bolt's listener.
            self._spawn(self._deliver_if_bot_thread(*unknown))

    def _unknown_thread(self, body: dict[str, Any]) -> tuple[tuple[str, str], InboundMessage] | None:
        """(channel, thread_ts) of an event that would be a reply to the bot had the bot posted
        in its thread, with the message it would then be; None for any other event."""
        event = body.get("event") or {}
        if not event.get("thread_ts"):
            return None
        thread = (str(event.get("channel", "")), str(event["thread_ts"]))
        assumed = inbound_from_event(body, bot_user_id=self.bot_user_id,
                                     reply_in_thread=self.settings.reply_in_thread, bot_threads=(thread,))
        return None if assumed is None else (thread, assumed)

    async def _deliver_if_bot_thread(self, thread: tuple[str, str], message: InboundMessage) -> None:
        if not await self._bot_posted_in(thread):
            return
        self._bot_threads.remember(thread)
        await self._deliver(message)

    async def _bot_posted_in(self, thread: tuple[str, str]) -> bool:
        now = self._clock()
        said_no = self._not_bot_threads.get(thread)
        if said_no is not None and (now - said_no).total_seconds() < _NOT_BOT_THREAD_S:
            return False
        posted = False
        try:
            async for page in conversation_pages(self.client, thread[0], thread[1]):
                if any(self._posted_by_bot(m) for m in page):
                    posted = True
                    break
        except (SlackApiError, aiohttp.ClientError, OSError) as error:  # TimeoutError is an OSError
            log.info("slack: cannot read thread %s in %s (%s); its reply is not taken as one to the bot",
                     thread[1], thread[0], reason(error))
            return False
        if not posted:
            self._not_bot_threads.remember(thread, now)
        return posted

    async def _on_command(self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any]) -> None:
        await ack()  # first, within Slack's 3 s; the turn runs after, in the background
        self._spawn(self._run_command(body, self._clock()))

    async def _run_command(self, body: dict[str, Any], received_at: datetime) -> None:
        message = inbound_from_command(body, received_at=received_at)
        if message is None:
            return
        if self.settings.reply_in_thread:
            # The command's text arrives Slack-escaped: unescape, shorten, escape again.
            asked = shorten(" ".join(slack_text_to_plain(str(body.get("text") or "")).split()), 280)
            self._roots.remember(message.event_id, f"<@{message.user_id}> asked: /moa {escape(asked)}".rstrip())
        await self._deliver(message)

    async def accepted(self, message: InboundMessage) -> InboundMessage:
        """The gateway let this message through: a slash command gets its root message now
        (see module docstring), and the message is threaded under it."""
        text = self._roots.pop(message.event_id, None)
        if text is None or message.thread_id:
            return message
        channel = message.chat_id
        try:
            ts = await self._delivery.post_root(channel, text)
        except (SlackApiError, TimeoutError) as exc:
            log.warning("slack: could not post the root message for /moa in %s: %s", channel, exc)
            return message
        return replace(message, thread_id=ts, message_id=ts)

    async def _deliver(self, message: InboundMessage) -> None:
        if self._on_inbound is None:
            return
        try:
            if message.user_name == message.user_id:
                message = replace(message, user_name=await self._user_name(message.user_id))
            await self._on_inbound(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("slack: handling event %s failed", message.event_id)

    async def _user_name(self, user_id: str) -> str:
        if user_id in self._user_names:
            return str(self._user_names[user_id])
        name = user_id
        try:
            info = await asyncio.wait_for(self.client.users_info(user=user_id), timeout=5)
            user = info.get("user") or {}
            profile = user.get("profile") or {}
            name = profile.get("display_name") or profile.get("real_name") or user.get("name") or user_id
        except Exception as exc:  # noqa: BLE001 - a name is a nicety; the id is enough
            log.debug("slack: users.info %s failed: %s", user_id, exc)
        self._user_names.remember(user_id, name)
        return str(name)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _posted_by_bot(self, message: dict[str, Any]) -> bool:
        """Whether a message of conversations.replies/history is this bot's own."""
        return bool(message.get("user") == self.bot_user_id or (self.bot_id and message.get("bot_id") == self.bot_id))

    # --- outbound (delivery.py) ----------------------------------------------------------

    def render(self, item: Outbound) -> list[Payload]:
        """The Slack messages an outbound value becomes."""
        return render(item)

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        return await self._delivery.send(chat, item)

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str, retry: bool) -> Sent:
        """A ledger send: each message carries `key` (and its part) as message metadata; after a
        crash (`retry`) the conversation is searched for that marker first and only the parts
        Slack does not have yet are posted."""
        return await self._delivery.send_once(chat, item, key=key, retry=retry)

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        return await self._delivery.edit(sent, item)


__all__ = ["SlackAdapter", "SlackSettings"]
