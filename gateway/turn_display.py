"""What one running turn shows in its chat: the progress line, the batched summary of the
references' advice, and the streamed answer.

The engine reports events; posting them is a platform round trip each, and none of it may hold
the engine up: when the references are done the aggregator is asked at once, while the summary
is posted beside it (after the references' calls are booked, so the dollars it shows are
stored). Posts that must appear in order — the progress line's last state, then the summary —
run one after another in a chain, and the streamed answer's first message waits for that chain,
so nothing of the answer ever overtakes the summary in the chat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from adapters.contract import Adapter, Answer, ChatRef, Progress, Sent
from gateway.live import LiveMessage
from gateway.presentation import reference_summary
from moa_core.events import (
    Event,
    ReferenceFinished,
    ReferencesDone,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)

log = logging.getLogger(__name__)

INCOMPLETE_MARK = "⚠️ _Incomplete: the answer was cut off here._"


class PostsInOrder:
    """Chat posts made off the engine's path, each started after the one before it ended."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def then(self, post: Callable[[], Awaitable[object]], what: str) -> None:
        previous = self._tasks[-1] if self._tasks else None

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # its failure is its own, logged there
            try:
                await post()
            except Exception:  # a display problem never breaks the turn
                log.warning("posting the %s failed", what, exc_info=True)

        self._tasks.append(asyncio.create_task(run()))

    async def drain(self) -> None:
        """Wait until every post asked for so far has ended."""
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = [task for task in self._tasks if not task.done()]

    async def abandon(self) -> None:
        """The turn is cut short (shutdown): posts not yet done are dropped."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


class TurnDisplay:
    """One turn's chat side. `on_event` is the engine's event handler; `finish` or `cut` ends it."""

    def __init__(self, adapter: Adapter, chat: ChatRef, *, preset_name: str, aggregator_label: str,
                 summary_mode: str | None, show_progress: bool, stream_tool_use: bool, stream_text: bool,
                 heard: str | None, settled_so_far: Callable[[], Awaitable[None]]):
        self._adapter = adapter
        self._chat = chat
        self._preset_name = preset_name
        self._aggregator_label = aggregator_label
        self._summary_mode = summary_mode
        self._stream_tool_use = stream_tool_use
        self._stream_text = stream_text
        self._heard = heard
        self._settled_so_far = settled_so_far
        self._posts = PostsInOrder()
        self._progress = LiveMessage(adapter, chat) if show_progress else None
        self._stream = LiveMessage(adapter, chat, not_before=self._posts.drain)
        self._summary_asked = False
        self._step: int | None = None
        self._references_done = 0
        self._pieces: list[str] = []  # the answer streamed so far, of the current aggregator step

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def _streamed(self) -> Answer:
        return Answer("".join(self._pieces), final=False)

    async def on_event(self, event: Event) -> None:
        progress = self._progress
        if isinstance(event, TextDelta):
            if self._step != event.step:
                self._step, self._pieces = event.step, []
            self._pieces.append(event.text)
            if self._stream_text:  # the text is joined only when the stream is next shown
                self._stream.update_from(self._streamed)
        elif isinstance(event, ReferenceFinished) and progress is not None:
            self._references_done += 1
            progress.update(Progress("references", self._references_done, event.result.count, event.result.label))
        elif isinstance(event, ReferencesDone):
            if progress is not None:
                done = len(event.results)
                self._posts.then(lambda: progress.close(Progress("aggregating", done, done, self._aggregator_label)),
                                 "progress line")
            if not self._summary_asked and self._summary_mode != "off" and event.results:
                self._summary_asked = True
                results = event.results
                # The references' rows are queued by now: waited for from now on (a task, so a
                # summary dropped at shutdown leaves no coroutine never awaited).
                booked = asyncio.ensure_future(self._settled_so_far())

                async def post_summary() -> None:
                    await booked  # the dollars the chat is shown are stored first
                    await self._adapter.send(self._chat, reference_summary(
                        self._preset_name, self._summary_mode, results, heard=self._heard))

                self._posts.then(post_summary, "summary")
        elif isinstance(event, ToolCallStarted):
            if progress is not None:  # the progress line names the tool while it runs
                name = event.call.name
                self._posts.then(lambda: progress.close(Progress("tool", 0, 0, name)), "progress line")
            if self._stream_tool_use:
                self._stream.update(Answer(f"{self.text}\n\n_using {event.call.name}…_".strip(), final=False))
        elif isinstance(event, ToolCallFinished) and progress is not None:
            self._posts.then(lambda: progress.close(Progress("aggregating", 0, 0, self._aggregator_label)),
                             "progress line")

    async def finish(self, *, incomplete: bool) -> Sent | None:
        """The engine returned: end every post; the streamed message, if any, for the final
        answer to edit (`incomplete`: an aggregator failure, what was streamed says it stops short)."""
        await self._posts.drain()
        await _close_quietly(self._progress)
        if incomplete:
            await self._stream.close()
            await self._mark_incomplete()
        else:  # the final answer's delivery edits the streamed message: no edit before it
            await self._stream.stop()
        return self._stream.sent

    async def cut(self, *, shutdown: bool) -> None:
        """The turn failed or is interrupted: what was streamed says it stops short."""
        if shutdown:
            await self._posts.abandon()
        else:
            await self._posts.drain()  # the summary, if on its way, comes before the error notice
        await _close_quietly(self._progress, self._stream)
        await self._mark_incomplete()

    async def _mark_incomplete(self) -> None:
        """A streamed part stays in the chat when its turn is cut (an aggregator failure, an
        error, shutdown): say in that same message that it stops short."""
        if self._stream.sent is None or not self.text.strip():
            return
        try:
            await self._stream.close(Answer(f"{self.text.rstrip()}\n\n{INCOMPLETE_MARK}", final=True))
        except Exception:  # the notice that follows still tells the chat
            log.warning("could not mark a cut answer as incomplete", exc_info=True)


async def _close_quietly(*lives: LiveMessage | None) -> None:
    for live in lives:
        if live is not None:
            try:
                await live.close()
            except Exception:
                log.warning("closing a live message failed", exc_info=True)
