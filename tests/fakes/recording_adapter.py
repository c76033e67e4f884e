"""An in-memory platform implementing the adapter contract, for gateway-level tests.

It keeps what each chat "shows" (message id -> current value) and the order of every send and
edit, so a test can push a message and assert on what the chat ended up with.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

from adapters.contract import (
    Answer,
    ChatRef,
    InboundHandler,
    InboundMessage,
    Notice,
    Outbound,
    PlatformLimits,
    ReferenceSummary,
    Sent,
)


class RecordingAdapter:
    def __init__(self, platform: str = "fakechat", edit_interval_s: float = 0.01):
        self.platform = platform
        self.limits = PlatformLimits(max_message_chars=4000, edit_interval_s=edit_interval_s)
        self.on_inbound: InboundHandler | None = None
        self.log: list[tuple[str, ChatRef, Outbound, str]] = []  # (op, chat, item, message id)
        self.shown: dict[str, Outbound] = {}
        self._ids = itertools.count(1)
        self._events = itertools.count(1)
        self.changed = asyncio.Condition()
        self.stopped = False

    async def start(self, on_inbound: InboundHandler) -> None:
        self.on_inbound = on_inbound

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        message_id = str(next(self._ids))
        self.shown[message_id] = item
        self.log.append(("send", chat, item, message_id))
        async with self.changed:
            self.changed.notify_all()
        return Sent(chat, (message_id,))

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        message_id = sent.message_ids[0]
        if self.shown.get(message_id) != item:
            self.shown[message_id] = item
            self.log.append(("edit", sent.chat, item, message_id))
        async with self.changed:
            self.changed.notify_all()
        return sent

    # ----- test helpers ----------------------------------------------------------------------

    def message(self, text: str, *, chat: str = "c1", user: str = "u1", thread: str | None = None,
                dm: bool = False, mention: bool = False, event_id: str | None = None,
                sent_at: datetime | None = None, roles: tuple[str, ...] = ()) -> InboundMessage:
        n = next(self._events)
        return InboundMessage(
            platform=self.platform, chat_id=chat, thread_id=thread, user_id=user, user_name=f"user {user}",
            message_id=f"m{n}", reply_to_id=None, text=text, sent_at=sent_at or datetime.now(UTC), is_dm=dm,
            mentions_bot=mention, replies_to_bot=False, event_id=event_id or f"e{n}", user_roles=roles,
        )

    async def push(self, message: InboundMessage) -> None:
        assert self.on_inbound is not None, "adapter not started"
        await self.on_inbound(message)

    def final_answers(self, chat: str | None = None) -> list[Answer]:
        """Answers as the chat shows them now, in the order their messages were first posted."""
        out = []
        for op, ref, _item, message_id in self.log:
            if op == "send" and (chat is None or ref.chat_id == chat):
                shown = self.shown[message_id]
                if isinstance(shown, Answer) and shown.final:
                    out.append(shown)
        return out

    def notices(self, chat: str | None = None) -> list[str]:
        return [item.text for op, ref, item, _ in self.log
                if op == "send" and isinstance(item, Notice) and (chat is None or ref.chat_id == chat)]

    def summaries(self) -> list[ReferenceSummary]:
        return [item for op, _, item, _ in self.log if op == "send" and isinstance(item, ReferenceSummary)]

    def kinds_in_order(self) -> list[str]:
        """The first appearance of each posted message, by the kind it ended up as."""
        return [type(self.shown[mid]).__name__ for op, _, _, mid in self.log if op == "send"]

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:
        async def waiter():
            async with self.changed:
                await self.changed.wait_for(predicate)
        await asyncio.wait_for(waiter(), timeout)
