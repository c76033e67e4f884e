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

Outbound: see `render`. Rate limits: slack-sdk's AsyncRateLimitErrorRetryHandler waits out
`Retry-After` on a 429; past its retries, a streaming (non-final) edit is skipped (the next one
carries newer text), while a send, a final answer, a summary or a notice keeps waiting out
Retry-After (and server errors) until `final_retry_s`. A `chat.postMessage` that timed out is
looked up in the conversation before being posted again. Ledger sends (`send_once`) carry their
delivery key as message metadata, so a send repeated after a crash finds the message Slack
already has instead of posting it twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
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

from adapters.contract import (
    Answer,
    Attachment,
    ChatRef,
    FileOut,
    InboundHandler,
    InboundMessage,
    Notice,
    Outbound,
    PlatformLimits,
    Progress,
    ReferenceSummary,
    Sent,
)
from adapters.download import download
from adapters.slack.normalize import (
    PLATFORM,
    inbound_from_command,
    inbound_from_event,
    slack_text_to_plain,
)
from adapters.slack.render import (
    MESSAGE_CHARS,
    Payload,
    answer_chunks,
    escape,
    markdown_to_mrkdwn,
    notice_chunks,
    progress_text,
    summary_payload,
)
from adapters.slack.settings import SlackSettings
from adapters.startup import PlatformUnavailable, host_of, reason, refused, unreachable
from adapters.text import shorten

log = logging.getLogger(__name__)

_SERVER_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_BAD_BLOCKS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long"})
_MARKER_EVENT = "moa_delivery"  # message metadata naming the ledger row a message belongs to
_REMEMBERED = 2000  # bounded caches: last payload per message, threads the bot answered in
# A thread Slack said the bot has not posted in is not asked about again for this long (the bot
# may answer there later, mentioned on another replica).
_NOT_BOT_THREAD_S = 30.0


class _Bounded(OrderedDict[Any, Any]):
    def remember(self, key: Any, value: Any = None) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _REMEMBERED:
            self.popitem(last=False)


def _error_code(exc: SlackApiError) -> str:
    try:
        return str(exc.response.get("error") or "")
    except Exception:  # noqa: BLE001 - a response without a body
        return ""


def _retry_after(exc: SlackApiError, default: float = 1.0) -> float:
    headers = getattr(exc.response, "headers", None) or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                break
    return default


def _is_retryable(exc: SlackApiError) -> bool:
    status = getattr(exc.response, "status_code", 200)
    return status == 429 or status >= 500 or _error_code(exc) in _SERVER_ERRORS | {"ratelimited"}


def _fingerprint(payload: Payload) -> str:
    blocks = json.dumps(payload.blocks, sort_keys=True) if payload.blocks is not None else ""
    return payload.text + "\x00" + blocks


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
        self._roots = _Bounded()
        self._last: _Bounded = _Bounded()  # "channel:ts" -> fingerprint of what it shows
        self._bot_threads: _Bounded = _Bounded()  # (channel, thread_ts) the bot answered in
        self._not_bot_threads: _Bounded = _Bounded()  # (channel, thread_ts) -> when Slack said no
        self._user_names: _Bounded = _Bounded()

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
        try:
            resp = await self.client.conversations_replies(channel=thread[0], ts=thread[1], limit=200)
        except (SlackApiError, aiohttp.ClientError, OSError) as error:  # TimeoutError is an OSError
            log.info("slack: cannot read thread %s in %s (%s); its reply is not taken as one to the bot",
                     thread[1], thread[0], reason(error))
            return False
        posted = any(m.get("user") == self.bot_user_id or (self.bot_id and m.get("bot_id") == self.bot_id)
                     for m in resp.get("messages") or ())
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
            resp = await self._call(lambda: self.client.chat_postMessage(channel=channel, text=text), persistent=False)
        except (SlackApiError, TimeoutError) as exc:
            log.warning("slack: could not post the root message for /moa in %s: %s", channel, exc)
            return message
        ts = str(resp["ts"])
        self._last.remember(f"{channel}:{ts}", _fingerprint(Payload(text)))
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

    # --- outbound ------------------------------------------------------------------------

    def render(self, item: Outbound) -> list[Payload]:
        """The Slack messages an outbound value becomes."""
        if isinstance(item, Answer):
            return [Payload(t) for t in answer_chunks(item.text, limit=MESSAGE_CHARS, footer=item.footer)]
        if isinstance(item, ReferenceSummary):
            return [summary_payload(item)]
        if isinstance(item, Progress):
            return [Payload(progress_text(item))]
        if isinstance(item, Notice):
            return [Payload(t) for t in notice_chunks(item)]
        raise TypeError(f"cannot render {type(item).__name__} as Slack messages")

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        if isinstance(item, FileOut):
            return await self._upload(chat, item)
        ids = [await self._post(chat, payload) for payload in self.render(item)]
        return Sent(chat=chat, message_ids=tuple(ids))

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str, retry: bool) -> Sent:
        """A ledger send: each message carries `key` (and its part) as message metadata; after a
        crash (`retry`) the conversation is searched for that marker first and only the parts
        Slack does not have yet are posted."""
        if isinstance(item, FileOut):
            return await self._upload(chat, item)
        found = await self._find_marked(chat, key) if retry else {}
        ids = []
        for index, payload in enumerate(self.render(item)):
            ts = found.get(index)
            if ts is None:
                marker = {"event_type": _MARKER_EVENT, "event_payload": {"key": key, "part": index}}
                ts = await self._post(chat, payload, metadata=marker)
            ids.append(ts)
        return Sent(chat=chat, message_ids=tuple(ids))

    async def _find_marked(self, chat: ChatRef, key: str) -> dict[int, str]:
        """Our messages in this thread (or channel) marked with ledger `key`: part -> ts. When
        the conversation cannot be read, nothing is found (the send goes out: at worst twice)."""
        try:
            if chat.thread_id:
                resp = await self.client.conversations_replies(
                    channel=chat.chat_id, ts=chat.thread_id, limit=200, include_all_metadata=True
                )
            else:
                resp = await self.client.conversations_history(
                    channel=chat.chat_id, limit=100, include_all_metadata=True
                )
        except (SlackApiError, TimeoutError) as exc:
            log.warning("slack: could not look for an earlier attempt of %s (%s); posting it", key, exc)
            return {}
        found: dict[int, str] = {}
        for msg in resp.get("messages") or []:
            meta = msg.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == _MARKER_EVENT and payload.get("key") == key:
                found[int(payload.get("part") or 0)] = str(msg["ts"])
        return found

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        chat = sent.chat
        if isinstance(item, FileOut):
            return await self._upload(chat, item)  # a file cannot be edited: post it again
        persistent = not (isinstance(item, Answer) and not item.final) and not isinstance(item, Progress)
        payloads = self.render(item)
        ids = list(sent.message_ids)
        out: list[str] = []
        for i, payload in enumerate(payloads):
            if i < len(ids):
                ts = await self._update(chat, ids[i], payload, persistent=persistent)
                if ts is None:  # a streaming edit skipped under rate limiting: try again next time
                    return Sent(chat=chat, message_ids=tuple(out + ids[i:]))
                out.append(ts)
            else:
                out.append(await self._post(chat, payload))
        for ts in ids[len(payloads) :]:
            await self._delete(chat, ts)
        return Sent(chat=chat, message_ids=tuple(out))

    async def _call(self, request: Callable[[], Awaitable[Any]], *, persistent: bool) -> Any:
        """Run one Web API call; when `persistent`, keep waiting out 429s (Retry-After) and
        server errors until `final_retry_s` (the SDK's retry handler has already tried)."""
        deadline = time.monotonic() + self.settings.final_retry_s
        backoff = 1.0
        while True:
            try:
                return await request()
            except SlackApiError as exc:
                if not persistent or not _is_retryable(exc):
                    raise
                wait = _retry_after(exc, backoff)
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("slack: %s; retrying in %.1f s", _error_code(exc) or "server error", wait)
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, 30.0)

    async def _post(self, chat: ChatRef, payload: Payload, *, metadata: dict[str, Any] | None = None) -> str:
        kwargs: dict[str, Any] = {"channel": chat.chat_id, "unfurl_links": False, "unfurl_media": False}
        if metadata is not None:
            kwargs["metadata"] = metadata
        if chat.thread_id:
            kwargs["thread_ts"] = chat.thread_id
        attempt = payload
        for _ in range(3):
            try:
                resp = await self._call(
                    lambda p=attempt: self.client.chat_postMessage(**kwargs, **p.as_kwargs()), persistent=True
                )
                break
            except SlackApiError as exc:
                if attempt.blocks is not None and _error_code(exc) in _BAD_BLOCKS:
                    log.warning(
                        "slack: blocks refused (%s); posting the plain-text fallback", _error_code(exc)
                    )
                    attempt = Payload(attempt.text)
                    continue
                raise
            except TimeoutError:
                found = await self._find_posted(chat, attempt.text)
                if found is not None:
                    resp = {"ts": found}
                    break
                log.info("slack: a timed-out post is not in the conversation; posting it again")
        else:
            raise TimeoutError("chat.postMessage kept timing out")
        ts = str(resp["ts"])
        self._last.remember(f"{chat.chat_id}:{ts}", _fingerprint(payload))
        if chat.thread_id:
            self._bot_threads.remember((chat.chat_id, chat.thread_id))
        return ts

    async def _find_posted(self, chat: ChatRef, text: str) -> str | None:
        """After a timed-out post: the ts of our message with this text if Slack has it, None if
        it does not. When the conversation cannot be read, raise: the post is not repeated blindly."""
        try:
            if chat.thread_id:
                resp = await self.client.conversations_replies(
                    channel=chat.chat_id, ts=chat.thread_id, limit=50
                )
            else:
                resp = await self.client.conversations_history(channel=chat.chat_id, limit=20)
        except (SlackApiError, TimeoutError) as exc:
            log.warning("slack: a post timed out and could not be checked (%s); not re-sending it", exc)
            raise TimeoutError("chat.postMessage timed out; delivery unknown") from exc
        for msg in reversed(resp.get("messages") or []):
            mine = (self.bot_id and msg.get("bot_id") == self.bot_id) or msg.get("user") == self.bot_user_id
            if mine and msg.get("text") == text:
                return str(msg["ts"])
        return None

    async def _update(self, chat: ChatRef, ts: str, payload: Payload, *, persistent: bool) -> str | None:
        key = f"{chat.chat_id}:{ts}"
        fingerprint = _fingerprint(payload)
        if self._last.get(key) == fingerprint:
            return ts  # identical content: nothing to do
        attempt = payload
        for _ in range(3):
            try:
                await self._call(
                    lambda p=attempt: self.client.chat_update(channel=chat.chat_id, ts=ts, **p.as_kwargs()),
                    persistent=persistent,
                )
                self._last.remember(key, fingerprint)
                return ts
            except TimeoutError:
                continue  # chat.update is idempotent: trying it again is safe
            except SlackApiError as exc:
                code = _error_code(exc)
                if attempt.blocks is not None and code in _BAD_BLOCKS:
                    attempt = Payload(attempt.text)
                    continue
                if code in _GONE and persistent:
                    return await self._post(chat, payload)  # the old message cannot change: post anew
                if not persistent:
                    log.info("slack: streaming edit of %s skipped (%s)", ts, code or exc)
                    return None
                raise
        if persistent:
            raise TimeoutError(f"chat.update of {ts} kept timing out")
        return None

    async def _delete(self, chat: ChatRef, ts: str) -> None:
        try:
            await self.client.chat_delete(channel=chat.chat_id, ts=ts)
        except (SlackApiError, TimeoutError) as exc:
            log.info("slack: could not delete %s: %s", ts, exc)
        self._last.pop(f"{chat.chat_id}:{ts}", None)

    async def _upload(self, chat: ChatRef, item: FileOut) -> Sent:
        kwargs: dict[str, Any] = {
            "channel": chat.chat_id,
            "file": item.data,
            "filename": item.filename,
            "title": item.filename,
        }
        if chat.thread_id:
            kwargs["thread_ts"] = chat.thread_id
        if item.caption:
            kwargs["initial_comment"] = markdown_to_mrkdwn(item.caption)
        resp = await self._call(lambda: self.client.files_upload_v2(**kwargs), persistent=True)
        file = resp.get("file") or (resp.get("files") or [{}])[0]
        return Sent(chat=chat, message_ids=(str(file.get("id", "")),))


__all__ = ["SlackAdapter", "SlackSettings"]
