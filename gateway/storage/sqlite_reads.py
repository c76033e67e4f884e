"""The SQLite store's reads (the `Reads` part of `Store`): portable queries, a session's
history read whole, unfinished turns, a user's recent turn costs, one turn, the ledger rows not
yet sent. Each runs on the reader thread's read-only connection and sees every write whose call
has returned, without waiting behind the writes queued after it (WAL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlite_utils

from gateway.storage.contract import Delivery, TurnRow, sqlite_dialect
from gateway.storage.contract import delivery as _delivery
from gateway.storage.contract import turn_row as _turn_row
from gateway.storage.sqlite_connect import dict_rows
from gateway.storage.sqlite_history import HistoryCache, read_history
from moa_core.values import Message


class Reads:
    """The reads of a `Store` (which provides the reader thread they run on)."""

    read: Callable[[Callable[[sqlite_utils.Database], Any]], Awaitable[Any]]
    _histories: HistoryCache

    async def query(self, sql: str, params: Sequence[Any] = (), *, dicts: bool = False) -> list[Any]:
        """One read of portable SQL (see `gateway.storage.contract`): tuples, or dicts."""
        statement, values = sqlite_dialect(sql), list(params)

        def work(db: sqlite_utils.Database) -> list[Any]:
            cursor = db.conn.execute(statement, values)
            return dict_rows(cursor) if dicts else [tuple(row) for row in cursor.fetchall()]

        return await self.read(work)

    async def history(self, session_id: int, limit: int = 500) -> list[Message]:
        """The last `limit` messages of a session, oldest first (a started turn's prompt included):
        a queued turn's, once it begins (a question that runs at once gets its history with its
        turn: `Store.take_question`). A session its chat's last question read is read from there on."""
        found = self._histories.of_session(session_id)
        known = found[1] if found is not None else None
        messages, read = await self.read(lambda db: read_history(db, session_id, limit, known))
        if found is not None:
            self._histories.keep(found[0], read)
        return messages

    async def unfinished_turns(self) -> list[TurnRow]:
        """Turns still queued or running, oldest first: after a restart, the ones a crash cut."""

        def work(db: sqlite_utils.Database) -> list[TurnRow]:
            query = "SELECT * FROM turns WHERE status IN ('queued', 'running') ORDER BY id"
            return [_turn_row(r) for r in dict_rows(db.conn.execute(query))]

        return await self.read(work)

    async def recent_turn_costs(self, platform: str, user_id: str, preset: str, limit: int = 5) -> list[float]:
        """Known dollars of this user's last `limit` finished turns with `preset` (any chat),
        newest first: what the budget check expects the user's next turn to cost."""

        def work(db: sqlite_utils.Database) -> list[float]:
            rows = db.conn.execute(
                "SELECT cost_usd FROM turns WHERE platform = ? AND user_id = ? AND preset = ? "
                "AND status = 'done' AND cost_usd IS NOT NULL ORDER BY id DESC LIMIT ?",
                (platform, user_id, preset, limit),
            ).fetchall()
            return [float(row[0]) for row in rows]

        return await self.read(work)

    async def turn(self, turn_id: int) -> TurnRow | None:
        """One stored turn, or None."""

        def work(db: sqlite_utils.Database) -> TurnRow | None:
            rows = dict_rows(db.conn.execute("SELECT * FROM turns WHERE id = ?", (turn_id,)))
            return _turn_row(rows[0]) if rows else None

        return await self.read(work)

    async def pending_deliveries(self) -> list[Delivery]:
        """Ledger rows not yet sent (pending, or sending when a crash came), oldest first."""

        def work(db: sqlite_utils.Database) -> list[Delivery]:
            cursor = db.conn.execute("SELECT * FROM deliveries WHERE status IN ('pending', 'sending') ORDER BY id")
            return [_delivery(r) for r in dict_rows(cursor)]

        return await self.read(work)


__all__ = ["Reads"]
