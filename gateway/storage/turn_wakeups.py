"""Prompt wake-ups, across replicas, for a turn waiting behind the turns ahead of it in its
session (`PostgresStore.wait_turns_ahead`), over PostgreSQL's LISTEN/NOTIFY.

The statement that finishes a turn also NOTIFYs `CHANNEL` with the turn's session id when a
later turn of the session is unfinished (delivered when it commits, to every listening replica).
Each store keeps one listening connection of its own, opened on the first wait, and wakes the
waiters of that session. A notification can be
missed (while the listener reconnects, or a session lost in between), so a waiter re-checks the
database anyway: slowly while the listener is up, as often as before while it is down.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "moa_turn_done"
RECONNECT_S = 1.0  # real time between tries to listen again
START_WAIT_S = 2.0  # how long a first waiter waits for the listener before it polls


def notify_sql(finished: str) -> str:
    """A scalar subquery that NOTIFYs the session of the turn in `finished` (a CTE of the
    finishing statement, with id and session_id) — only when a later turn of that session is
    unfinished, i.e. may be waiting: a NOTIFY serializes commits server-wide, so turns nobody
    waits for send none. (A waiting turn this statement's snapshot missed re-checks by poll.)"""
    return (f"(SELECT pg_notify('{CHANNEL}', f.session_id::text) FROM {finished} f WHERE EXISTS "
            "(SELECT 1 FROM turns w WHERE w.session_id = f.session_id AND w.id > f.id "
            "AND w.status IN ('queued', 'running')))")


class TurnWakeups:
    """Waiters by session id, woken by the listening connection's notifications."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._listening = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.backend_pid: int | None = None  # the listening connection's server process (tests)

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def start(self) -> None:
        """Start listening (once); wait a little for it, then go on either way (waiters poll)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="moa-turn-wakeups")
        if not self.listening:
            try:
                await asyncio.wait_for(self._listening.wait(), START_WAIT_S)
            except TimeoutError:
                pass

    def waiter(self, session_id: int) -> asyncio.Event:
        """An event set when a turn of this session finishes; `forget` it after the wait."""
        event = asyncio.Event()
        self._waiters.setdefault(session_id, set()).add(event)
        return event

    def forget(self, session_id: int, event: asyncio.Event) -> None:
        waiters = self._waiters.get(session_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[session_id]

    def _wake(self, session_id: int | None) -> None:
        sessions = list(self._waiters) if session_id is None else [session_id]
        for session in sessions:
            for event in self._waiters.get(session, ()):
                event.set()

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    self._listening.set()
                    self._wake(None)  # whatever finished while nobody listened: re-check
                    async for note in conn.notifies():
                        try:
                            self._wake(int(note.payload))
                        except ValueError:
                            continue  # not ours
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the server went away, a restart, a network cut
                log.warning("listening for finished turns failed (%s); waiting turns poll until it is back",
                            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
            finally:
                self._listening.clear()
                self.backend_pid = None
            await asyncio.sleep(RECONNECT_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
