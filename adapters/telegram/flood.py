"""Delivery of single Bot API calls to one chat: flood control, timeouts, markup fallback.

- 429 `retry_after`: every call to that chat waits until the time asked has passed. A
  *droppable* call (an intermediate stream edit or progress line) is skipped instead of queued,
  since the next one carries newer text anyway; everything else waits and goes on.
- A call that failed on the network is repeated only when it surely never reached Telegram
  (connect or pool timeout, connection refused) or when it is *idempotent* (an edit: if the
  first try had landed, Telegram answers "not modified"). Otherwise, e.g. a sendMessage whose
  answer timed out, it may have been delivered, so it is logged and reported as UNCERTAIN.
- "can't parse entities": the same message goes out once more as plain text.
- A group upgraded to a supergroup: the call follows the new chat id.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from enum import Enum
from typing import TypeVar

import httpx
from telegram.constants import ParseMode
from telegram.error import BadRequest, ChatMigrated, NetworkError, RetryAfter, TelegramError

from adapters.telegram.render import Part

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_ATTEMPTS = 8
_RETRY_MARGIN_S = 0.1


class Outcome(Enum):
    SKIPPED = "skipped"  # a droppable call not made (flood control): the next one carries it
    UNCERTAIN = "uncertain"  # a send that failed after it may have been delivered


class ChatDelivery:
    """Per-chat flood-control state and the one way the adapter calls the Bot API for a chat."""

    def __init__(self) -> None:
        self._paused_until: dict[str, float] = {}
        self._migrated: dict[str, int] = {}

    async def with_markup_fallback(
        self,
        chat_key: str,
        part: Part,
        make: Callable[[str, str | None], Callable[[int | str], Awaitable[T]]],
        *,
        droppable: bool,
        idempotent: bool,
        what: str,
    ) -> T | Outcome:
        if part.html is not None:
            try:
                return await self.call(
                    chat_key,
                    make(part.html, ParseMode.HTML),
                    droppable=droppable,
                    idempotent=idempotent,
                    what=what,
                )
            except BadRequest as error:
                if "can't parse entities" not in str(error).lower():
                    raise
                log.warning("telegram: %s: markup refused (%s); sending plain text", what, error)
        return await self.call(
            chat_key, make(part.plain, None), droppable=droppable, idempotent=idempotent, what=what
        )

    async def call(
        self,
        chat_key: str,
        op: Callable[[int | str], Awaitable[T]],
        *,
        droppable: bool,
        idempotent: bool,
        what: str,
    ) -> T | Outcome:
        """Run one Bot API call for a chat (`op` gets the chat id to use); see the module docstring."""
        last_error: TelegramError | None = None
        for attempt in range(_MAX_ATTEMPTS):
            if droppable and self.pause_left(chat_key) > 0:
                return Outcome.SKIPPED
            await self._wait_until_unpaused(chat_key)
            try:
                return await op(self.resolve(chat_key))
            except RetryAfter as error:
                seconds = _retry_after_seconds(error)
                self._pause(chat_key, seconds)
                log.warning(
                    "telegram: flood control in chat %s on %s: waiting %.1f s", chat_key, what, seconds
                )
                if droppable:
                    return Outcome.SKIPPED
                last_error = error
            except ChatMigrated as error:
                log.info("telegram: chat %s migrated to %s", chat_key, error.new_chat_id)
                self._migrated[chat_key] = error.new_chat_id
                last_error = error
            except BadRequest:
                raise
            except NetworkError as error:  # including TimedOut
                if not (idempotent or _surely_not_sent(error)):
                    log.warning(
                        "telegram: %s in chat %s failed after it may have reached Telegram (%s); "
                        "not repeating it",
                        what,
                        chat_key,
                        error,
                    )
                    return Outcome.UNCERTAIN
                if droppable:
                    return Outcome.SKIPPED
                log.warning("telegram: %s in chat %s failed (%s); retrying", what, chat_key, error)
                last_error = error
                await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
        assert last_error is not None
        raise last_error

    def _pause(self, chat_key: str, seconds: float) -> None:
        until = asyncio.get_running_loop().time() + seconds + _RETRY_MARGIN_S
        self._paused_until[chat_key] = max(until, self._paused_until.get(chat_key, 0.0))

    def pause_left(self, chat_key: str) -> float:
        until = self._paused_until.get(chat_key)
        if until is None:
            return 0.0
        left = until - asyncio.get_running_loop().time()
        if left <= 0:
            del self._paused_until[chat_key]
            return 0.0
        return left

    async def _wait_until_unpaused(self, chat_key: str) -> None:
        while (left := self.pause_left(chat_key)) > 0:
            await asyncio.sleep(left)

    def resolve(self, chat_key: str) -> int | str:
        if chat_key in self._migrated:
            return self._migrated[chat_key]
        try:
            return int(chat_key)
        except ValueError:
            return chat_key  # "@channelusername"


def _retry_after_seconds(error: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that the int will become a timedelta
        warnings.simplefilter("ignore")
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _surely_not_sent(error: NetworkError) -> bool:
    """True when the request cannot have reached Telegram (so repeating it is safe)."""
    return isinstance(error.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
