"""The SQLite store's small tables (the `SmallTables` part of `Store`): inbound event ids seen
(de-duplication), each chat's default preset, when a chat was last told it is not allowed, the
digest periods claimed and sent — and the replica methods, which on one process per file have
nothing to coordinate. Each is one short statement on the writer or the reader thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlite_utils

from gateway.storage.contract import (
    CLAIM_DIGEST,
    DIGEST_STATUSES,
    FINISH_DIGEST,
    DigestState,
    HeldLock,
    from_iso,
    require,
    to_iso,
)
from moa_core.clock import Clock


class SmallTables:
    """Seen events, channel presets, refusal notices, digest claims of a `Store` (which provides
    the writer and reader threads and the clock these run through)."""

    _clock: Clock
    _now: Callable[[], str]
    _write: Callable[[Callable[[sqlite_utils.Database], Any]], Awaitable[Any]]
    read: Callable[[Callable[[sqlite_utils.Database], Any]], Awaitable[Any]]

    async def mark_seen(self, platform: str, event_id: str) -> bool:
        """Remember an inbound event id; True the first time, False for a duplicate."""
        at = self._now()

        return await self._write(lambda db: mark_seen_in(db, platform, event_id, at))

    async def prune_seen(self, before: datetime) -> int:
        """Forget event ids seen before `before`; returns how many were dropped."""
        cutoff = to_iso(before)

        def work(db: sqlite_utils.Database) -> int:
            return db.conn.execute("DELETE FROM seen_events WHERE seen_at < ?", (cutoff,)).rowcount

        return await self._write(work)

    async def channel_preset(self, platform: str, chat_id: str) -> str | None:
        """The default preset an admin set for this chat, or None."""

        return await self.read(lambda db: channel_preset_of(db, platform, chat_id))

    async def set_channel_preset(self, platform: str, chat_id: str, preset: str | None, by_user: str) -> None:
        """Set this chat's default preset; None clears it."""
        at = self._now()

        def work(db: sqlite_utils.Database) -> None:
            if preset is None:
                db.conn.execute(
                    "DELETE FROM channel_settings WHERE platform = ? AND chat_id = ?", (platform, chat_id)
                )
                return
            db.conn.execute(
                "INSERT INTO channel_settings (platform, chat_id, preset, updated_by, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, chat_id) DO UPDATE SET preset = excluded.preset, "
                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                (platform, chat_id, preset, by_user, at),
            )

        await self._write(work)

    async def refusal_notice_due(self, platform: str, chat_id: str, interval_s: float) -> bool:
        """True at most once per `interval_s` per chat; a True answer records the time."""
        now = self._clock.now()
        at = to_iso(now)

        def work(db: sqlite_utils.Database) -> bool:
            row = db.conn.execute(
                "SELECT last_at FROM refusal_notices WHERE platform = ? AND chat_id = ?", (platform, chat_id)
            ).fetchone()
            if row is not None and (now - from_iso(row[0])).total_seconds() < interval_s:
                return False
            db.conn.execute(
                "INSERT INTO refusal_notices (platform, chat_id, last_at) VALUES (?, ?, ?) "
                "ON CONFLICT (platform, chat_id) DO UPDATE SET last_at = excluded.last_at",
                (platform, chat_id, at),
            )
            return True

        return await self._write(work)

    async def busy_elsewhere(self, session_id: int) -> bool:
        return False  # one process per file: the gateway's lanes already see every turn

    async def wait_turns_ahead(self, session_id: int, turn_id: int) -> None:
        return None

    async def try_lock(self, name: str) -> HeldLock | None:
        """Always granted: one gateway process uses a SQLite file."""
        return _ProcessLock(name)

    # Digest claims ---------------------------------------------------------------------------

    async def digest_state(self) -> DigestState:
        """Whether any digest period is recorded, and the end of the last one not owed any more."""

        def work(db: sqlite_utils.Database) -> DigestState:
            row = db.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM digests), "
                "(SELECT MAX(period_end) FROM digests WHERE status IN ('baseline', 'sending', 'sent'))"
            ).fetchone()
            return DigestState(bool(row[0]), from_iso(row[1]) if row[1] else None)

        return await self.read(work)

    async def claim_digest(self, start: datetime, end: datetime, status: str, at: datetime) -> bool:
        """Record the period ending `end` as `status`; False when it was already recorded (and
        not failed): whoever gets True sends it."""
        require(status, DIGEST_STATUSES, "digest status")
        values = [to_iso(end), to_iso(start), status, to_iso(at), to_iso(at)]
        return await self._write(lambda db: db.conn.execute(CLAIM_DIGEST, values).rowcount == 1)

    async def finish_digest(self, end: datetime, status: str, at: datetime, dollars: float | None,
                            error: str | None) -> None:
        require(status, DIGEST_STATUSES, "digest status")
        values = [status, to_iso(at), dollars, error, to_iso(end)]
        await self._write(lambda db: db.conn.execute(FINISH_DIGEST, values))


def mark_seen_in(db: sqlite_utils.Database, platform: str, event_id: str, at: str) -> bool:
    """Remember an inbound event id: True the first time, False for a duplicate."""
    cursor = db.conn.execute("INSERT OR IGNORE INTO seen_events (platform, event_id, seen_at) VALUES (?, ?, ?)",
                             (platform, event_id, at))
    return cursor.rowcount == 1


def channel_preset_of(db: sqlite_utils.Database, platform: str, chat_id: str) -> str | None:
    row = db.conn.execute("SELECT preset FROM channel_settings WHERE platform = ? AND chat_id = ?",
                          (platform, chat_id)).fetchone()
    return row[0] if row else None


@dataclass(slots=True)
class _ProcessLock:
    name: str

    async def stop(self) -> None:
        return None


__all__ = ["SmallTables", "channel_preset_of", "mark_seen_in"]
