"""Trimming a session's history to the context budget, oldest first."""

from __future__ import annotations

from collections.abc import Sequence

from moa_core.values import Message


def message_chars(message: Message) -> int:
    return len(message.content) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)


def trim_history(messages: Sequence[Message], budget_chars: int) -> list[Message]:
    """The newest messages that fit `budget_chars`, starting on a user turn.

    The newest message is always kept, even alone over budget. Dropping from the front never
    leaves a tool result without the assistant turn that asked for it.
    """
    if not messages:
        return []
    kept: list[Message] = []
    used = 0
    for message in reversed(messages):
        size = message_chars(message)
        if kept and used + size > budget_chars:
            break
        kept.append(message)
        used += size
    kept.reverse()
    # Start on a user turn so no orphan tool result or assistant reply leads the history.
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept
