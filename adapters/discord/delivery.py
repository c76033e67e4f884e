"""Delivery of rendered Discord parts: posting, editing, deleting, and retrying the REST calls.

Owns where a part goes (an interaction's followup webhook while its token is good, else the
chat's channel or thread), the fingerprints of posted parts (so identical edits are skipped),
the enforced nonces of channel messages, and the retry policy for 429s and timeouts. It holds
no connection of its own: it is handed a function that returns the started discord.py client.

Delivery rules:
- whatever the gateway sends for an interaction goes through the followup webhook while the
  token is valid (`followup_window_s`), as channel messages after; a refused token (401, 403,
  404) falls back to the channel;
- 429s are waited out (discord.py's buckets, then ours if discord.py gives up) and the value is
  sent anyway; identical edits are skipped;
- a channel message carries a nonce Discord enforces, so a send that timed out is retried with
  the same nonce (Discord returns the first message instead of posting twice); a followup that
  timed out is not retried, as webhooks have no such guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import discord

from adapters.bounded import Bounded
from adapters.contract import ChatRef, FileOut, Outbound, Sent
from adapters.discord.normalize import InteractionHandle
from adapters.discord.render import MAX_CONTENT, Part, render
from adapters.discord.settings import DiscordSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

REMEMBERED = 2048  # posted parts kept to skip identical edits; raw interactions kept
_MAX_OWN_RETRIES = 4  # after discord.py's own five tries
_MAX_RETRY_AFTER_S = 60.0
# What a followup webhook answers when the interaction token is no longer good.
_TOKEN_REFUSED = frozenset({401, 403, 404})
_TIMEOUT_ERRORS = (asyncio.TimeoutError, aiohttp.ServerTimeoutError, aiohttp.ClientConnectionError)
# The upload limit of a server without boosts; an interaction says its own limit.
_DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


def ledger_nonce(key: str, index: int) -> str:
    """A Discord nonce (at most 25 characters) for part `index` of the ledger send `key`."""
    return hashlib.blake2b(f"{key}:{index}".encode(), digest_size=10).hexdigest()


class Delivery:
    """Sends, edits and deletes the parts of outbound values through a started client."""

    def __init__(
        self,
        settings: DiscordSettings,
        *,
        client: Callable[[], discord.Client],
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self._client = client  # raises while the adapter is not started
        self._clock = clock
        self._posted = Bounded(REMEMBERED)  # message id -> part fingerprint

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        ids: list[str] = []
        for index, part in enumerate(render(item)):
            ids.append(await self._post(chat, part, as_reply=index == 0))
        return Sent(chat=chat, message_ids=tuple(ids))

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str) -> Sent:
        """Each part's enforced nonce is derived from `key` (see `DiscordAdapter.send_once`)."""
        ids: list[str] = []
        for index, part in enumerate(render(item)):
            ids.append(await self._post(chat, part, as_reply=index == 0, nonce=ledger_nonce(key, index)))
        return Sent(chat=chat, message_ids=tuple(ids))

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        if isinstance(item, FileOut):  # an attachment is posted anew, never swapped in place
            return await self.send(sent.chat, item)
        parts = render(item)
        old = list(sent.message_ids)
        ids: list[str] = []
        for index, part in enumerate(parts):
            if index < len(old):
                ids.append(await self._edit_one(sent.chat, old[index], part))
            else:
                ids.append(await self._post(sent.chat, part, as_reply=False))
        for extra in old[len(parts) :]:  # the new value needs fewer messages than the old one
            await self._delete(sent.chat, extra)
        return Sent(chat=sent.chat, message_ids=tuple(ids))

    def _followup_handle(self, chat: ChatRef) -> InteractionHandle | None:
        handle = InteractionHandle.decode(chat.reply_handle)
        if handle is not None and handle.usable(self._clock(), self.settings.followup_window_s):
            return handle
        return None

    def _webhook(self, handle: InteractionHandle) -> discord.Webhook:
        return discord.Webhook.partial(
            int(handle.application_id), handle.token, client=self._client()
        )

    def _channel(self, chat: ChatRef) -> discord.PartialMessageable:
        """Where channel messages of `chat` go: its thread when it has one, else the chat."""
        return self._client().get_partial_messageable(int(chat.thread_id or chat.chat_id))

    async def _post(self, chat: ChatRef, part: Part, *, as_reply: bool, nonce: str | None = None) -> str:
        handle = self._followup_handle(chat)
        if handle is not None:
            try:
                message_id = await self._post_followup(handle, part)
            except discord.HTTPException as exc:
                if exc.status not in _TOKEN_REFUSED:
                    raise
                # The token was refused (expired early, or the interaction is gone): the
                # followup was not posted, so the channel gets it instead.
                log.warning("discord: followup refused (%s); posting to the channel", exc.status)
            else:
                self._posted.remember(message_id, part.fingerprint())
                return message_id
        message_id = await self._post_channel(
            chat, part, as_reply=as_reply, handle=InteractionHandle.decode(chat.reply_handle), nonce=nonce
        )
        self._posted.remember(message_id, part.fingerprint())
        return message_id

    async def _post_followup(self, handle: InteractionHandle, part: Part) -> str:
        webhook = self._webhook(handle)

        async def attempt() -> discord.WebhookMessage:
            kwargs = _message_kwargs(part, upload_limit=None)
            return await webhook.send(wait=True, **kwargs)

        message = await self._with_retries(attempt, resend_safe=False)
        return str(message.id)

    async def _post_channel(
        self, chat: ChatRef, part: Part, *, as_reply: bool, handle: InteractionHandle | None,
        nonce: str | None = None,
    ) -> str:
        channel = self._channel(chat)
        reference = None
        # An interaction's id is no message to reply to.
        if as_reply and chat.reply_to_id and (handle is None or handle.interaction_id != chat.reply_to_id):
            reference = discord.MessageReference(
                message_id=int(chat.reply_to_id), channel_id=channel.id, fail_if_not_exists=False
            )
        if nonce is None:
            nonce = str(secrets.randbits(63))  # Discord enforces it: a repeat returns the first message

        async def attempt() -> discord.Message:
            kwargs = _message_kwargs(part, upload_limit=_DEFAULT_UPLOAD_LIMIT)
            if reference is not None:
                kwargs["reference"] = reference
            return await channel.send(nonce=nonce, **kwargs)

        message = await self._with_retries(attempt, resend_safe=True)
        return str(message.id)

    async def _edit_one(self, chat: ChatRef, message_id: str, part: Part) -> str:
        fingerprint = part.fingerprint()
        if self._posted.get(message_id) == fingerprint:
            return message_id  # identical edit: nothing to do
        content = part.content
        embeds = [discord.Embed.from_dict(e) for e in part.embeds]
        handle = self._followup_handle(chat)
        edited = False
        if handle is not None:
            webhook = self._webhook(handle)
            try:
                await self._with_retries(
                    lambda: webhook.edit_message(int(message_id), content=content, embeds=embeds),
                    resend_safe=True,
                )
                edited = True
            except discord.HTTPException as exc:
                if exc.status not in _TOKEN_REFUSED:
                    raise
                log.warning("discord: followup edit refused (%s); editing through the channel", exc.status)
        if not edited:
            message = self._channel(chat).get_partial_message(int(message_id))
            try:
                await self._with_retries(
                    lambda: message.edit(content=content, embeds=embeds), resend_safe=True
                )
            except discord.NotFound:
                # The message is gone (deleted by someone): post the part anew, so nothing of
                # the answer is lost.
                log.warning("discord: message %s vanished; posting its part anew", message_id)
                return await self._post(chat, part, as_reply=False)
        self._posted.remember(message_id, fingerprint)
        return message_id

    async def _delete(self, chat: ChatRef, message_id: str) -> None:
        handle = self._followup_handle(chat)
        try:
            if handle is not None:
                await self._webhook(handle).delete_message(int(message_id))
            else:
                await self._channel(chat).get_partial_message(int(message_id)).delete()
        except discord.HTTPException as exc:
            log.warning("discord: could not delete surplus message %s: %s", message_id, exc)
        self._posted.pop(message_id, None)

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], *, resend_safe: bool) -> T:
        """Run one REST call, waiting out 429s discord.py gave up on.

        A call that timed out is repeated only when `resend_safe` (an edit, or a send guarded by
        an enforced nonce).
        """
        tries = 0
        while True:
            try:
                return await attempt()
            except discord.RateLimited as exc:  # only with max_ratelimit_timeout, kept for safety
                delay = exc.retry_after
            except discord.HTTPException as exc:
                if exc.status != 429:
                    raise
                delay = await _retry_after(exc)
            except _TIMEOUT_ERRORS:
                if not resend_safe or tries >= 1:
                    raise
                delay = 0.5
            tries += 1
            if tries > _MAX_OWN_RETRIES:
                raise RuntimeError(f"Discord kept refusing a request after {tries} retries")
            log.warning("discord: retrying a request in %.2f s", delay)
            await asyncio.sleep(min(max(delay, 0.0), _MAX_RETRY_AFTER_S))


def _message_kwargs(part: Part, *, upload_limit: int | None) -> dict[str, Any]:
    """discord.py keyword arguments for one part (a fresh File each call: attempts consume it)."""
    kwargs: dict[str, Any] = {}
    content = part.content
    if part.embeds:
        kwargs["embeds"] = [discord.Embed.from_dict(e) for e in part.embeds]
    if part.file is not None:
        if upload_limit is not None and len(part.file.data) > upload_limit:
            note = f"({part.file.filename} is too large to attach: {len(part.file.data) // 1024} KiB)"
            content = f"{content}\n{note}" if content else note
        else:
            kwargs["file"] = discord.File(io.BytesIO(part.file.data), filename=part.file.filename)
    if content is not None:
        kwargs["content"] = content[:MAX_CONTENT]
    return kwargs


async def _retry_after(exc: discord.HTTPException) -> float:
    """Seconds to wait after a 429: the body's precise `retry_after`, else the header's."""
    response = exc.response
    if response is None:
        return 1.0
    try:
        body = await response.json(content_type=None)  # already read: aiohttp keeps the body
        return float(body["retry_after"])
    except Exception:
        pass
    try:
        return float(response.headers.get("Retry-After", 1.0))
    except ValueError:
        return 1.0
