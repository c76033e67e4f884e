"""One turn at a time per session across replicas, in arrival order, on the real PostgreSQL
backend: two stores (two replicas) start turns of one session at the same instant, and each turn
runs only after every turn with a lower id has finished, seeing their questions and answers (and
no later question) in its history.

The stores are driven as the gateway drives them (`Gateway._enqueue` and `_admit_and_run`): a
turn is stored queued when this replica's lane is busy or `busy_elsewhere` says so, then it
waits with `wait_turns_ahead`, and a queued one is begun with `begin_turn`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import pytest

from gateway.storage.postgres import PostgresStore
from moa_core.values import Message
from tests.backends import scratch_schema
from tests.fakes.clock import FakeClock

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


@pytest.fixture
def schema_url(pg_database: str):
    """An empty schema of its own (the trigger below must not reach other tests); dropped after."""
    with scratch_schema(pg_database, "order") as url:
        yield url


@dataclass
class Replica:
    """A store and what the gateway's lanes of one replica know: its own unfinished turns."""

    store: PostgresStore
    own: int = 0


@dataclass
class Runs:
    """What the turns saw while they ran."""

    running: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)
    overlaps: list[tuple[int, ...]] = field(default_factory=list)
    histories: dict[int, list[Message]] = field(default_factory=dict)


async def ask(replica: Replica, session: int, prompt: str, runs: Runs, hold_s: float = 0.0) -> int:
    store = replica.store
    queued = replica.own > 0  # this replica's lane is busy with the session
    replica.own += 1
    try:
        queued = queued or await store.busy_elsewhere(session)
        turn_id = await store.start_turn(
            session_id=session, platform="slack", chat_id="C", thread_id=None, user_id="u", user_name="U",
            event_id=f"ev-{prompt}", message_id=prompt, preset="p", prompt=prompt, queued=queued)
        await store.wait_turns_ahead(session, turn_id)
        if queued:
            await store.begin_turn(turn_id)
        if runs.running:
            runs.overlaps.append((turn_id, *sorted(runs.running)))
        runs.running.add(turn_id)
        runs.order.append(turn_id)
        runs.histories[turn_id] = await store.history(session)
        await asyncio.sleep(hold_s)  # the models answering
        runs.running.discard(turn_id)
        await store.complete_turn(turn_id, status="done", answer=f"re {prompt}", cost_usd=None,
                                  messages=[Message("assistant", f"re {prompt}")], delivery=None)
        return turn_id
    finally:
        replica.own -= 1


async def two_replicas(url: str) -> tuple[Replica, Replica]:
    clock = FakeClock(T0)
    one, two = await asyncio.gather(*(PostgresStore.open(url, clock, max_size=4) for _ in range(2)))
    return Replica(one), Replica(two)


def prompts_by_id(runs: Runs, prompts: dict[int, str]) -> None:
    """Each turn saw exactly the turns before it (question, answer) and then its own question."""
    for turn_id, history in runs.histories.items():
        earlier = [t for t in sorted(prompts) if t < turn_id]
        expected = [m for t in earlier for m in (Message("user", prompts[t]), Message("assistant", f"re {prompts[t]}"))]
        assert history == [*expected, Message("user", prompts[turn_id])], f"turn {turn_id}"


async def test_a_turn_whose_id_was_taken_first_but_committed_last_still_runs_first(schema_url: str) -> None:
    """Replica A takes turn id 1 and is slow to commit it (a trigger sleeps inside its INSERT);
    replica B takes id 2 meanwhile. B's turn must not run before, nor while, A's runs."""
    a, b = await two_replicas(schema_url)
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute("""CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.prompt = 'slow' THEN PERFORM pg_sleep(0.5); END IF; RETURN NEW; END $$""")
        conn.execute("CREATE TRIGGER slow_insert BEFORE INSERT ON turns FOR EACH ROW EXECUTE FUNCTION slow_insert()")
    runs = Runs()
    try:
        session = await a.store.active_session("slack", "C", None)
        first = asyncio.create_task(ask(a, session, "slow", runs, hold_s=0.2))
        with psycopg.connect(schema_url, autocommit=True) as watch:  # until A sleeps inside its INSERT
            while not watch.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                                    "AND datname = current_database())").fetchone()[0]:
                await asyncio.sleep(0.01)
        second = asyncio.create_task(ask(b, session, "fast", runs, hold_s=0.8))
        slow_id, fast_id = await asyncio.gather(first, second)
        assert slow_id < fast_id  # A's id was taken first
        assert runs.overlaps == []
        assert runs.order == [slow_id, fast_id]
        prompts_by_id(runs, {slow_id: "slow", fast_id: "fast"})
    finally:
        await a.store.close()
        await b.store.close()


async def test_many_turns_started_at_once_on_two_replicas_run_one_at_a_time_in_id_order(schema_url: str) -> None:
    a, b = await two_replicas(schema_url)
    runs = Runs()
    try:
        session = await a.store.active_session("slack", "C", None)
        prompts = [f"q{n}" for n in range(24)]
        ids = await asyncio.gather(*(ask((a, b)[n % 2], session, p, runs, hold_s=0.005) for n, p in enumerate(prompts)))
        assert runs.overlaps == []
        assert runs.order == sorted(ids)
        prompts_by_id(runs, dict(zip(ids, prompts, strict=True)))
        with psycopg.connect(schema_url) as conn:
            assert conn.execute("SELECT COUNT(*) FROM turns WHERE status != 'done'").fetchone() == (0,)
    finally:
        await a.store.close()
        await b.store.close()
