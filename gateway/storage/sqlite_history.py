"""Reading a session's history on SQLite, and what the store remembers of it between questions.

A question's history is read in its writer job (`Store.take_question`), which every other write
of the gateway waits behind: reading a long session whole on each question (500 messages: about
2 ms of the writer's time, against 0.3 ms for the rest of the question and its answer) would make
every long conversation slow everyone else's turns down. So the store keeps, per chat, the
history its last question read (`KnownHistory`), and the next question's job reads only the
messages stored since then.

Why that gives the same history as a whole read: rows of `messages` are never changed or
deleted, and SQLite gives a new row an id above every id in the table (an INTEGER PRIMARY KEY of
a table nothing is deleted from), so a session's messages up to an id once read stay exactly
what was read, and the ones stored since (by this process or another on the same file) are
those with a higher id. An entry is only ever made from what a committed job read: the event
loop stores it once the job's future resolved, never from a job that was rolled back, and a
thread only reads an entry it was handed. A queued turn's history (`Store.history`, once the
turn has begun) is read the same way on the reader's connection, which sees the last commit: a
row committed later got an id above every id that read saw (one writer at a time holds the
file). A feature that deletes or edits messages must drop the entries of their chats
(`HistoryCache.forget`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import sqlite_utils

from gateway.storage.contract import MESSAGE_COLUMNS, messages_of
from moa_core.values import Message

ChatKey = tuple[str, str, str]  # platform, chat id, thread key

_SINCE = (f"SELECT id, {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE session_id = ? AND id > ? "
          "ORDER BY id DESC LIMIT ?")


@dataclass(frozen=True, slots=True)
class KnownHistory:
    """A session's last `limit` messages up to message id `last_id`, as a committed read saw them."""

    session_id: int
    limit: int
    last_id: int
    messages: tuple[Message, ...]
    size: int  # about how many bytes the messages take: what the cache's bound counts


def read_history(db: sqlite_utils.Database, session_id: int, limit: int,
                 known: KnownHistory | None = None) -> tuple[list[Message], KnownHistory]:
    """The last `limit` messages of a session, oldest first, and what to remember of them:
    given `known` of this session and limit, only the messages stored after it are read."""
    if limit < 0:  # SQLite would read all (LIMIT -1), PostgreSQL refuse: refused alike
        raise ValueError(f"a history limit cannot be negative (got {limit})")
    if known is not None and (known.session_id != session_id or known.limit != limit):
        known = None
    rows = db.conn.execute(_SINCE, (session_id, known.last_id if known else 0, limit)).fetchall()
    if not rows and known is not None:
        return list(known.messages), known
    rows.reverse()
    new = messages_of(row[1:] for row in rows)
    size = sum(map(_size, new))
    if known is None:
        messages = new
    else:
        messages = [*known.messages, *new]
        size += known.size
        if len(messages) > limit:
            cut = len(messages) - limit
            size -= sum(map(_size, messages[:cut]))
            messages = messages[cut:]
    return messages, KnownHistory(session_id, limit, rows[-1][0] if rows else 0, tuple(messages), size)


# A message's objects (the Message, its strings' headers, the tuple slot) beside its text: a
# history of many short messages is bounded too.
_MESSAGE_OVERHEAD = 200


def _size(message: Message) -> int:
    return _MESSAGE_OVERHEAD + len(message.content) + sum(len(c.arguments) for c in message.tool_calls)


class HistoryCache:
    """The `KnownHistory` of recently active chats, least recently used dropped first, within a
    number of chats and of bytes (about: text as one byte a character, more only outside ASCII,
    and each message's objects; a chat dropped reads its history whole once). Touched by the
    event loop only."""

    def __init__(self, max_chats: int = 2048, max_bytes: int = 16_000_000):
        self._max_chats = max_chats
        self._max_bytes = max_bytes
        self._entries: OrderedDict[ChatKey, KnownHistory] = OrderedDict()
        self._chat_of: dict[int, ChatKey] = {}  # the session of each entry, back to its chat
        self._bytes = 0

    def get(self, chat: ChatKey) -> KnownHistory | None:
        return self._entries.get(chat)

    def of_session(self, session_id: int) -> tuple[ChatKey, KnownHistory] | None:
        """The chat whose entry is of this session, and the entry."""
        chat = self._chat_of.get(session_id)  # kept in step with the entries by keep and forget
        return None if chat is None else (chat, self._entries[chat])

    def keep(self, chat: ChatKey, known: KnownHistory) -> None:
        self.forget(chat)
        if known.size > self._max_bytes:
            return  # larger than the whole cache: read again next time
        self._entries[chat] = known
        self._chat_of[known.session_id] = chat
        self._bytes += known.size
        while len(self._entries) > self._max_chats or self._bytes > self._max_bytes:
            self.forget(next(iter(self._entries)))

    def forget(self, chat: ChatKey) -> None:
        old = self._entries.pop(chat, None)
        if old is not None:
            self._bytes -= old.size
            del self._chat_of[old.session_id]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes


__all__ = ["ChatKey", "HistoryCache", "KnownHistory", "read_history"]
