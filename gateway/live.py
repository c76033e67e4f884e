"""A message that is posted once and then edited in place, at most every `interval` seconds.

Used for the progress line and the streamed answer: updates only set the latest value; a
background flusher edits with whatever is latest, so a slow or rate-limited platform never stalls
the engine and intermediate states are coalesced. `not_before` holds the message's first post
until what must appear above it in the chat (the batched summary) has been posted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from adapters.contract import Adapter, ChatRef, Outbound, Sent

log = logging.getLogger(__name__)


class LiveMessage:
    def __init__(self, adapter: Adapter, chat: ChatRef, interval: float | None = None, *,
                 not_before: Callable[[], Awaitable[None]] | None = None):
        self._adapter = adapter
        self._chat = chat
        self._interval = adapter.limits.edit_interval_s if interval is None else interval
        self._latest: Outbound | None = None
        self._make: Callable[[], Outbound] | None = None  # builds the latest value when it is shown
        self._shown: Outbound | None = None
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._not_before = not_before
        self.sent: Sent | None = None

    def update(self, item: Outbound) -> None:
        self._latest, self._make = item, None
        self._flush_soon()

    def update_from(self, make: Callable[[], Outbound]) -> None:
        """`update` with a value built only when it is shown: a streamed answer changes with
        every piece of text, and is shown a few times a second at most."""
        self._make = make
        self._flush_soon()

    def _flush_soon(self) -> None:
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop())

    def _current(self) -> Outbound | None:
        return self._make() if self._make is not None else self._latest

    async def _flush_loop(self) -> None:
        while not self._stop.is_set():
            await self._changed.wait()
            self._changed.clear()
            if self._stop.is_set():
                return
            await self._show()
            try:  # the pause between edits; `close` ends it early
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def _show(self) -> None:
        item = self._current()
        if item is None or item == self._shown:
            return
        try:
            if self.sent is None:
                if self._not_before is not None:
                    await self._not_before()
                    item = self._current()  # it may have grown while waiting
                self.sent = await self._adapter.send(self._chat, item)
            elif self._adapter.limits.supports_edit:
                self.sent = await self._adapter.edit(self.sent, item)
            self._shown = item
        except asyncio.CancelledError:
            raise
        except Exception:
            # A failed intermediate update is not fatal: the next one (or the final) retries.
            log.warning("live update on %s failed", self._chat.platform, exc_info=True)

    async def stop(self) -> Sent | None:
        """Stop the flusher without showing anything more: what comes next replaces this
        message anyway (the final answer's delivery edits it). A post under way is awaited."""
        self._stop.set()
        self._changed.set()
        if self._task is not None:
            await self._task
            self._task = None
        return self.sent

    async def close(self, final: Outbound | None = None) -> Sent | None:
        """Stop the flusher; show `final` (or the latest value) once more if it differs.

        An update already being sent is awaited, never cancelled, so nothing is posted twice.
        """
        await self.stop()
        if final is not None:
            self._latest, self._make = final, None
        await self._show()
        return self.sent
