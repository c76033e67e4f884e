"""Delivery of Slack messages through the Web API: posting, updating, deleting, uploading.

Owns the retry policy and the bookkeeping of what was posted. slack-sdk's
AsyncRateLimitErrorRetryHandler (installed by the adapter) waits out `Retry-After` on a 429;
past its retries, a streaming (non-final) edit is skipped (the next one carries newer text),
while a send, a final answer, a summary or a notice keeps waiting out Retry-After (and server
errors) until `final_retry_s`. A `chat.postMessage` that timed out is looked up in the
conversation before being posted again. Ledger sends (`send_once`) carry their delivery key as
message metadata, so a send repeated after a crash finds the message Slack already has instead
of posting it twice. Blocks Slack refuses fall back to the plain-text payload; identical
updates are skipped (`Bounded` keeps the last fingerprint per message).

It holds no connection of its own: it is handed a function that returns the started client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.bounded import Bounded
from adapters.contract import Answer, ChatRef, FileOut, Outbound, Progress, Sent
from adapters.slack.render import Payload, markdown_to_mrkdwn, render
from adapters.slack.settings import SlackSettings

log = logging.getLogger(__name__)

_SERVER_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_BAD_BLOCKS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long"})
_MARKER_EVENT = "moa_delivery"  # message metadata naming the ledger row a message belongs to
# Reading a conversation back (a lookup after a timeout or a crash, "did the bot post here"): pages
# of this many messages, followed by Slack's cursor; past the last page read, a long thread is
# not searched further (a lookup must not turn into minutes of rate-limited calls).
PAGE_SIZE = 200
MAX_PAGES = 25


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


async def conversation_pages(client: AsyncWebClient, channel: str, thread_ts: str | None, *,
                             metadata: bool = False, max_pages: int = MAX_PAGES) -> AsyncIterator[list[dict[str, Any]]]:
    """The messages of a thread (conversations.replies: the parent, then replies oldest first) or
    of a channel's top level (conversations.history: newest first), a page at a time: slack-sdk's
    response follows `response_metadata.next_cursor` while it is iterated. One page was a bug: a
    thread's first 200 (or 50) messages, so in a long thread the newest — the post just made, the
    marked message of a crashed send — was never found, and the answer was posted twice."""
    args: dict[str, Any] = {"channel": channel, "limit": PAGE_SIZE}
    if metadata:
        args["include_all_metadata"] = True
    if thread_ts:
        first = await client.conversations_replies(ts=thread_ts, **args)
    else:
        first = await client.conversations_history(**args)
    read = 0
    async for page in first:
        yield list(page.get("messages") or ())
        read += 1
        if read >= max_pages:
            if page.get("has_more"):
                log.info("slack: %s in %s has more than %d messages; the rest is not searched",
                         f"thread {thread_ts}" if thread_ts else "the channel", channel, read * PAGE_SIZE)
            return


class Delivery:
    """Sends, updates and deletes the messages of outbound values through a started client."""

    def __init__(
        self,
        settings: SlackSettings,
        *,
        client: Callable[[], AsyncWebClient],
        bot_threads: Bounded,
        posted_by_bot: Callable[[dict[str, Any]], bool],
    ) -> None:
        self.settings = settings
        self._client = client  # raises while the adapter is not started
        self._bot_threads = bot_threads  # shared with the adapter, which reads replies by it
        self._posted_by_bot = posted_by_bot  # the bot's identity is known only once started
        self._last = Bounded()  # "channel:ts" -> fingerprint of what it shows

    @property
    def client(self) -> AsyncWebClient:
        return self._client()

    async def post_root(self, channel: str, text: str) -> str:
        """The root message of a slash command's thread, tried once (see `SlackAdapter.accepted`)."""
        resp = await self._call(lambda: self.client.chat_postMessage(channel=channel, text=text), persistent=False)
        ts = str(resp["ts"])
        self._last.remember(f"{channel}:{ts}", _fingerprint(Payload(text)))
        return ts

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        if isinstance(item, FileOut):
            return await self._upload(chat, item)
        ids = [await self._post(chat, payload) for payload in render(item)]
        return Sent(chat=chat, message_ids=tuple(ids))

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str, retry: bool) -> Sent:
        """A ledger send: each message carries `key` (and its part) as message metadata; after a
        crash (`retry`) the conversation is searched for that marker first and only the parts
        Slack does not have yet are posted."""
        if isinstance(item, FileOut):
            return await self._upload(chat, item)
        found = await self._find_marked(chat, key) if retry else {}
        ids = []
        for index, payload in enumerate(render(item)):
            ts = found.get(index)
            if ts is None:
                marker = {"event_type": _MARKER_EVENT, "event_payload": {"key": key, "part": index}}
                ts = await self._post(chat, payload, metadata=marker)
            ids.append(ts)
        return Sent(chat=chat, message_ids=tuple(ids))

    async def _find_marked(self, chat: ChatRef, key: str) -> dict[int, str]:
        """Our messages in this thread (or channel) marked with ledger `key`: part -> ts. When
        the conversation cannot be read, nothing is found (the send goes out: at worst twice)."""
        found: dict[int, str] = {}
        try:
            # A channel's newest messages come first: an earlier attempt is on the first pages.
            async for page in conversation_pages(self.client, chat.chat_id, chat.thread_id, metadata=True,
                                                 max_pages=MAX_PAGES if chat.thread_id else 5):
                for msg in page:
                    meta = msg.get("metadata") or {}
                    payload = meta.get("event_payload") or {}
                    if meta.get("event_type") == _MARKER_EVENT and payload.get("key") == key:
                        found[int(payload.get("part") or 0)] = str(msg["ts"])
        except (SlackApiError, TimeoutError) as exc:
            log.warning("slack: could not look for an earlier attempt of %s (%s); posting it", key, exc)
            return {}
        return found

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        chat = sent.chat
        if isinstance(item, FileOut):
            return await self._upload(chat, item)  # a file cannot be edited: post it again
        persistent = not (isinstance(item, Answer) and not item.final) and not isinstance(item, Progress)
        payloads = render(item)
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
        newest: str | None = None
        try:
            # A thread is read to its end (the post is its newest message); a channel's top level
            # comes newest first, so its first page holds the post if Slack has it.
            async for page in conversation_pages(self.client, chat.chat_id, chat.thread_id,
                                                 max_pages=MAX_PAGES if chat.thread_id else 1):
                for msg in page:
                    if self._posted_by_bot(msg) and msg.get("text") == text:
                        if not chat.thread_id:
                            return str(msg["ts"])
                        newest = str(msg["ts"])
        except (SlackApiError, TimeoutError) as exc:
            log.warning("slack: a post timed out and could not be checked (%s); not re-sending it", exc)
            raise TimeoutError("chat.postMessage timed out; delivery unknown") from exc
        return newest

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
