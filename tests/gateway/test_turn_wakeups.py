"""A turn waiting behind another replica's turn of its session is woken by that turn's finish
(PostgreSQL LISTEN/NOTIFY, `gateway.storage.turn_wakeups`), not by polling; when the listening
connection is lost, waiting turns poll again until it is back.

The polls are set to an hour here, so a wait that ends at all was woken (a test that hangs past
its bound fails)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg

from gateway.storage.postgres import PostgresStore
from tests.backends import truncate_all
from tests.fakes.clock import FakeClock

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
HOUR = 3600.0
BOUND_S = 20.0  # a hang guard, not a measurement


async def start(store: PostgresStore, session: int, prompt: str, *, queued: bool = False) -> int:
    return await store.start_turn(session_id=session, platform="slack", chat_id="C", thread_id=None, user_id="u",
                                  user_name="U", event_id=f"ev-{prompt}", message_id=prompt, preset="p",
                                  prompt=prompt, queued=queued)


async def waiting(store: PostgresStore, session: int) -> None:
    """Until a wait of this session is registered (and, shortly after, checking or asleep)."""
    for _ in range(200):
        wakeups = getattr(store, "_wakeups", None)
        if wakeups is not None and session in wakeups._waiters:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)


async def test_a_turn_waiting_on_one_replica_is_woken_when_the_turn_ahead_finishes_on_another(
        pg_database: str) -> None:
    truncate_all(pg_database)
    clock = FakeClock(T0)
    a, b = await asyncio.gather(*(PostgresStore.open(pg_database, clock, max_size=2) for _ in range(2)))
    b.wakeup_fallback_poll_s = HOUR
    try:
        session = await a.active_session("slack", "C", None)
        ahead = await start(a, session, "first")
        behind = await start(b, session, "second", queued=True)
        wait = asyncio.create_task(b.wait_turns_ahead(session, behind, poll_s=HOUR))
        await waiting(b, session)
        assert not wait.done()
        await a.complete_turn(ahead, status="done", answer="one", cost_usd=None, messages=(), delivery=None)
        await asyncio.wait_for(wait, BOUND_S)
        # A turn finished by mark_turn (refused, interrupted ...) wakes its waiters too.
        await b.begin_turn(behind)
        third = await start(a, session, "third", queued=True)
        wait = asyncio.create_task(a.wait_turns_ahead(session, third, poll_s=HOUR))
        a.wakeup_fallback_poll_s = HOUR
        await waiting(a, session)
        await b.mark_turn(behind, "interrupted", "cut")
        await asyncio.wait_for(wait, BOUND_S)
    finally:
        await a.close()
        await b.close()


async def test_a_lost_listener_falls_back_to_polling_and_listens_again(pg_database: str) -> None:
    truncate_all(pg_database)
    clock = FakeClock(T0)
    a, b = await asyncio.gather(*(PostgresStore.open(pg_database, clock, max_size=2) for _ in range(2)))
    b.wakeup_fallback_poll_s = HOUR
    try:
        session = await a.active_session("slack", "C", None)
        await b.wait_turns_ahead(session, 1)  # nothing ahead; b listens from now on
        assert b._wakeups is not None and b._wakeups.listening
        lost = b._wakeups.backend_pid
        ahead = await start(a, session, "first")
        behind = await start(b, session, "second", queued=True)
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", [lost])
        while b._wakeups.listening and b._wakeups.backend_pid == lost:
            await asyncio.sleep(0.01)
        # Not listening: the wait polls at poll_s, so the finish is seen even if its
        # notification went nowhere.
        wait = asyncio.create_task(b.wait_turns_ahead(session, behind, poll_s=0.05))
        await a.complete_turn(ahead, status="done", answer="one", cost_usd=None, messages=(), delivery=None)
        await asyncio.wait_for(wait, BOUND_S)
        # It listens again (a new connection), and waits are woken by notifications again.
        while not b._wakeups.listening:
            await asyncio.sleep(0.05)
        assert b._wakeups.backend_pid not in (None, lost)
        await b.begin_turn(behind)
        third = await start(a, session, "third", queued=True)
        a.wakeup_fallback_poll_s = HOUR
        wait = asyncio.create_task(a.wait_turns_ahead(session, third, poll_s=HOUR))
        await waiting(a, session)
        await b.complete_turn(behind, status="done", answer="two", cost_usd=None, messages=(), delivery=None)
        await asyncio.wait_for(wait, BOUND_S)
    finally:
        await a.close()
        await b.close()
