"""How PostgreSQL replicas share work (the `ReplicaCoordination` part of `PostgresStore`):
leases on the turns and deliveries a replica owns, renewed while it lives; the unfinished work of
a replica whose lease expired, claimed by another (`FOR UPDATE SKIP LOCKED`: never waited for);
the order of one session's turns across replicas (wait for the turns ahead, woken by NOTIFY);
and named locks that die with their holder (session advisory locks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.storage.contract import Delivery, HeldLock, TurnRow, delivery, to_iso, turn_row
from gateway.storage.turn_wakeups import TurnWakeups
from moa_core.clock import Clock

log = logging.getLogger("gateway.storage.postgres")  # the store's log, as before this split

# A turn waiting behind another re-checks this often while notifications arrive (they wake it
# at once; this only covers one that was lost), and every `poll_s` while they do not.
WAKEUP_FALLBACK_POLL_S = 1.0
# Whether another replica (lease owner %s) has an unfinished turn of the session `{session}`.
BUSY_ELSEWHERE = ("EXISTS (SELECT 1 FROM turns WHERE session_id = {session} AND status IN ('queued', 'running') "
                   "AND lease_owner IS DISTINCT FROM %s)")


class ReplicaCoordination:
    """Leases, takeover, per-session order and named locks of a `PostgresStore` (which provides
    the connection pool, the clock and the statements these run through)."""

    replica: str
    lease_s: float
    wakeup_fallback_poll_s: float
    _clock: Clock
    _conninfo: str
    _wakeups: TurnWakeups | None
    _deferred: set[int]
    _connection: Callable[[], Any]
    _one: Callable[[str, Sequence[Any]], Awaitable[tuple[Any, ...] | None]]
    _now: Callable[[], str]
    begin_turn: Callable[[int], Awaitable[None]]

    async def _renew_forever(self) -> None:
        # Real time, not the injected clock: the lease protects against a process that stopped.
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_leases()
            except Exception:
                log.warning("renewing leases failed; retrying", exc_info=True)

    def _lease(self) -> tuple[str, str]:
        return self.replica, to_iso(self._clock.now() + timedelta(seconds=self.lease_s))

    async def pending_deliveries(self) -> list[Delivery]:
        """Unsent ledger rows (pending, or sending when a crash came) that are ours or whose
        owner's lease expired — those become ours — oldest first. Rows another replica is
        claiming right now are skipped, never waited for."""
        rows = await self._claim(
            "deliveries", "status IN ('pending', 'sending') AND (lease_owner = %s OR lease_until IS NULL "
            "OR lease_until < %s)")
        return [delivery(r) for r in rows]

    async def _claim(self, table: str, where: str) -> list[dict[str, Any]]:
        owner, until = self._lease()
        async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                f"WITH claimed AS (SELECT id FROM {table} WHERE {where} ORDER BY id FOR UPDATE SKIP LOCKED) "
                f"UPDATE {table} t SET lease_owner = %s, lease_until = %s FROM claimed WHERE t.id = claimed.id "
                "RETURNING t.*", [owner, self._now(), owner, until])
            rows = await cursor.fetchall()
        return sorted(rows, key=lambda r: r["id"])

    async def claim_cut_turns(self) -> list[TurnRow]:
        """Unfinished turns of a replica whose lease expired (a replica that died, or this
        database's gateway before a restart), now ours, oldest first."""
        rows = await self._claim(
            "turns", "status IN ('queued', 'running') AND lease_owner IS DISTINCT FROM %s "
            "AND (lease_until IS NULL OR lease_until < %s)")
        return [turn_row(r) for r in rows]

    async def renew_leases(self) -> int:
        owner, until = self._lease()
        row = await self._one(
            "WITH t AS (UPDATE turns SET lease_until = %s WHERE lease_owner = %s "
            "AND status IN ('queued', 'running') RETURNING 1), "
            "d AS (UPDATE deliveries SET lease_until = %s WHERE lease_owner = %s "
            "AND status IN ('pending', 'sending') RETURNING 1) "
            "SELECT (SELECT COUNT(*) FROM t) + (SELECT COUNT(*) FROM d)", [until, owner, until, owner])
        return int(row[0]) if row else 0

    async def busy_elsewhere(self, session_id: int) -> bool:
        row = await self._one(
            f"SELECT {BUSY_ELSEWHERE.format(session='%s')}", [session_id, self.replica])
        return bool(row and row[0])

    async def wait_turns_ahead(self, session_id: int, turn_id: int, poll_s: float = 0.1) -> None:
        """Ids of a session's turns are taken under its row lock (`start_turn`), so id order is
        the order turns reached the database and every lower id is visible here. The wait ends
        when the turn ahead finishes, on any replica: its NOTIFY wakes this one (see
        `turn_wakeups`); the database is re-checked every `wakeup_fallback_poll_s` anyway, and
        every `poll_s` while notifications are not arriving. A turn that `start_turn` stored
        queued though it was asked to run is begun before this returns."""
        if self._wakeups is None:
            self._wakeups = TurnWakeups(self._conninfo)
        wakeups = self._wakeups
        await wakeups.start()
        while True:
            woken = wakeups.waiter(session_id)  # before the check: a finish after it is not missed
            try:
                row = await self._one(
                    "SELECT EXISTS (SELECT 1 FROM turns WHERE session_id = %s AND id < %s "
                    "AND status IN ('queued', 'running'))", [session_id, turn_id])
                if not (row and row[0]):
                    break
                try:
                    await asyncio.wait_for(woken.wait(), self.wakeup_fallback_poll_s if wakeups.listening else poll_s)
                except TimeoutError:
                    pass
            finally:
                wakeups.forget(session_id, woken)
        if turn_id in self._deferred:
            self._deferred.discard(turn_id)
            await self.begin_turn(turn_id)

    async def try_lock(self, name: str) -> HeldLock | None:
        """A session-level advisory lock on a connection of its own (not the pool's): held
        while that connection lives, so a replica that dies releases it with its socket."""
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [name])
            row = await cursor.fetchone()
        except BaseException:
            await conn.close()
            raise
        if not row or not row[0]:
            await conn.close()
            return None
        return _AdvisoryLock(name, conn)



class _AdvisoryLock:
    def __init__(self, name: str, conn: psycopg.AsyncConnection) -> None:
        self.name, self._conn = name, conn

    async def stop(self) -> None:
        if not self._conn.closed:
            await self._conn.close()  # the server drops the session's advisory locks
