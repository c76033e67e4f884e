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
loop stores it once the job's future resolved, never from a job that was rolled back, and the
writer thread only reads an entry it was handed. A feature that deletes or edits messages must
drop the entries of their chats (`HistoryCache.forget`).
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
    """A session's last `limit` messages up to message id `last_id`, as a committed job read them."""

    session_id: int
    limit: int
    last_id: int
    messages: tuple[Message, ...]
    chars: int  # of the messages' text: what the cache's bound counts


def read_history(db: sqlite_utils.Database, session_id: int, limit: int,
                 known: KnownHistory | None = None) -> tuple[list[Message], KnownHistory]:
    """The last `limit` messages of a session, oldest first, and what to remember of them:
    given `known` of this session and limit, only the messages stored after it are read."""
    if known is not None and (known.session_id != session_id or known.limit != limit):
        known = None
    rows = db.conn.execute(_SINCE, (session_id, known.last_id if known else 0, limit)).fetchall()
    if not rows and known is not None:
        return list(known.messages), known
    rows.reverse()
    new = messages_of(row[1:] for row in rows)
    chars = sum(map(_chars, new))
    if known is None:
        messages = new
    else:
        messages = [*known.messages, *new]
        chars += known.chars
        if len(messages) > limit:
            cut = len(messages) - limit
            chars -= sum(map(_chars, messages[:cut]))
            messages = messages[cut:]
    return messages, KnownHistory(session_id, limit, rows[-1][0] if rows else 0, tuple(messages), chars)


def _chars(message: Message) -> int:
    return len(message.content) + sum(len(c.arguments) for c in message.tool_calls)


class HistoryCache:
    """The `KnownHistory` of recently active chats, least recently used dropped first, within a
    number of chats and of characters (8 million: about 8 MB of text, more only for text outside
    ASCII; a chat dropped reads its history whole once). Touched by the event loop only."""

    def __init__(self, max_chats: int = 2048, max_chars: int = 8_000_000):
        self._max_chats = max_chats
        self._max_chars = max_chars
        self._entries: OrderedDict[ChatKey, KnownHistory] = OrderedDict()
        self._chars = 0

    def get(self, chat: ChatKey) -> KnownHistory | None:
        return self._entries.get(chat)

    def keep(self, chat: ChatKey, known: KnownHistory) -> None:
        old = self._entries.pop(chat, None)
        if old is not None:
            self._chars -= old.chars
        if known.chars > self._max_chars:
            return  # larger than the whole cache: read again next time
        self._entries[chat] = known
        self._chars += known.chars
        while len(self._entries) > self._max_chats or self._chars > self._max_chars:
            _, dropped = self._entries.popitem(last=False)
            self._chars -= dropped.chars

    def forget(self, chat: ChatKey) -> None:
        old = self._entries.pop(chat, None)
        if old is not None:
            self._chars -= old.chars

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        return self._chars


def history_rows(db: sqlite_utils.Database, session_id: int, limit: int) -> list[Message]:
    """The last `limit` messages of a session, read whole (the reader's `Store.history`)."""
    return read_history(db, session_id, limit)[0]


__all__ = ["ChatKey", "HistoryCache", "KnownHistory", "history_rows", "read_history"]
