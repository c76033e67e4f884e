"""A session's lane: the questions (and commands behind them) of one chat thread, one turn at a
time in arrival order, and the keys a message maps to — the lane it queues in and the chat it is
answered in."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from adapters.contract import ChatRef, InboundMessage
from gateway.commands import Ask, Command
from gateway.config import AccessRules
from moa_core.values import ImagePart, Message


@dataclass(frozen=True, slots=True)
class Waiting:
    """An accepted question whose turn is already stored: `queued`, or `running` when nothing
    was ahead of it (then storing it as running at once saves a write per turn)."""

    message: InboundMessage
    ask: Ask
    turn_id: int
    preset: str
    session_id: int
    queued: bool
    images: tuple[ImagePart, ...] = ()  # bytes of this question's images, held only in memory
    heard: str | None = None
    # The session's history as the turn runs with it, when the store read it with the turn's
    # own write (`take_question`, `start_turn_with_history`); None: read it when the turn starts.
    history: list[Message] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """A command that arrived while its session had a turn queued or running: it is answered
    after them, so `/moa cost` typed after a question reports that question's spend."""

    message: InboundMessage
    command: Command
    rules: AccessRules


@dataclass(slots=True)
class Lane:
    """The queue of one session: turns (and commands behind them) one at a time, in arrival order."""

    waiting: deque[Waiting | QueuedCommand] = field(default_factory=deque)
    worker: asyncio.Task | None = None
    storing: int = 0  # questions of this lane whose turn row is being written
    # Held while a question's files are fetched and its turn stored: a later message of the
    # session waits for it, so questions keep their order however long a download takes.
    intake: asyncio.Lock = field(default_factory=asyncio.Lock)

    def idle(self) -> bool:
        return not self.storing and not self.waiting and (self.worker is None or self.worker.done())


def session_key(message: InboundMessage) -> str:
    return f"{message.platform}:{message.chat_id}:{message.thread_id or ''}"


def chat_ref(message: InboundMessage) -> ChatRef:
    return ChatRef(message.platform, message.chat_id, message.thread_id, message.message_id, message.reply_handle)
