"""What is particular to the PostgreSQL backend: its schema and migration steps (the same names
as SQLite's), all-or-nothing writes, several stores on one database (replicas), and errors a
user can cause (a server that does not answer)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from adapters.contract import ChatRef
from gateway.storage import open_store, postgres_schema
from gateway.storage.migrations import migrations
from gateway.storage.postgres import LeaseLost, PostgresStore, StorageUnavailable, describe_url
from moa_core.values import Message
from tests.backends import as_url, with_database
from tests.fakes.clock import FakeClock

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)

EXPECTED_TABLES = {
    "sessions", "messages", "turns", "model_calls", "channel_settings", "seen_events", "deliveries",
    "refusal_notices", "digests", "cost_rollups", "_moa_migrations",
}


def schema_url(database: str, schema: str) -> str:
    return as_url(with_database(database, psycopg.conninfo.conninfo_to_dict(database)["dbname"],
                                options=f"-csearch_path={schema}"))


@pytest.fixture
def schemas(pg_database: str):
    """Make empty schemas in the test database on demand; dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"s_{secrets.token_hex(4)}"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        made.append(name)
        return schema_url(pg_database, name)

    yield make
    with psycopg.connect(pg_database, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def dump(url: str) -> dict[str, object]:
    """Tables, columns (name, type, null, default) and index definitions of the URL's schema."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
            "FROM information_schema.columns WHERE table_schema = current_schema() "
            "ORDER BY table_name, ordinal_position").fetchall()
        indexes = conn.execute(
            "SELECT indexname, replace(indexdef, current_schema() || '.', '') FROM pg_indexes "
            "WHERE schemaname = current_schema() ORDER BY indexname").fetchall()
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2, 3").fetchall()
    return {"columns": columns, "indexes": indexes, "constraints": constraints}


def test_the_postgres_steps_are_the_sqlite_steps() -> None:
    """A migration added to one backend must be added to the other under the same name."""
    assert postgres_schema.step_names() == [m.name for m in migrations._migrations]


async def test_empty_database_gets_the_current_schema(schemas) -> None:
    url = schemas()
    store = await PostgresStore.open(url, FakeClock(T0))
    await store.close()
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        names = [r[0] for r in conn.execute("SELECT name FROM _moa_migrations ORDER BY id")]
    assert tables == EXPECTED_TABLES
    assert names == postgres_schema.step_names()
    indexes = {name for name, _ in dump(url)["indexes"]}  # type: ignore[union-attr]
    assert {"sessions_open", "turns_unfinished", "deliveries_open", "idx_model_calls_chat_spend",
            "idx_model_calls_user_spend", "cost_rollups_key", "cost_rollups_chat", "cost_rollups_user",
            "idx_turns_status_started"} <= indexes
    # m009: reports read the rollups; these indexes only slowed every booked call down.
    assert not {"turns_running", "idx_model_calls_model_spend", "idx_model_calls_preset_created_at",
                "idx_turns_started_status"} & indexes


@pytest.mark.parametrize("step", postgres_schema.step_names()[1:])
async def test_database_of_an_earlier_step_migrates_to_current(schemas, step: str) -> None:
    fresh, old = schemas(), schemas()
    await (await PostgresStore.open(fresh, FakeClock(T0))).close()
    async with await psycopg.AsyncConnection.connect(old, autocommit=True) as conn:
        await postgres_schema.apply(conn, stop_before=step, at="2026-01-01T00:00:00.000000+00:00")
        assert step not in await postgres_schema.applied(conn)
        # Data written under the old schema must survive the upgrade.
        await conn.execute("INSERT INTO sessions (platform, chat_id, thread_id, started_at) "
                           "VALUES ('slack', 'C1', '', '2026-01-01T00:00:00.000000+00:00')")
    store = await PostgresStore.open(old, FakeClock(T0))
    assert await store.active_session("slack", "C1", None) == 1
    await store.close()
    assert dump(old) == dump(fresh)


async def test_m009_builds_the_rollups_of_rows_stored_before(schemas) -> None:
    from gateway.storage.contract import postgres_dialect
    from tests.gateway.test_storage import assert_old_rows_rolled_up, old_rows_sql

    url = schemas()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await postgres_schema.apply(conn, stop_before="m009_cost_rollups", at="2026-01-01T00:00:00.000000+00:00")
        for statement, params in old_rows_sql():
            await conn.execute(postgres_dialect(statement), params)
    store = await PostgresStore.open(url, FakeClock(T0))
    rows = await store.query("SELECT span, bucket, calls, turns, model_turns, dollars, unpriced FROM cost_rollups "
                             "WHERE grain = 'chat' ORDER BY span, bucket")
    await store.close()
    assert_old_rows_rolled_up(rows)


async def test_replicas_starting_together_migrate_once(schemas) -> None:
    url = schemas()
    stores = await asyncio.gather(*(PostgresStore.open(url, FakeClock(T0)) for _ in range(4)))
    for store in stores:
        await store.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM _moa_migrations").fetchone() == (len(postgres_schema.STEPS),)


async def test_complete_turn_is_all_or_nothing(schemas) -> None:
    url = schemas()
    store = await PostgresStore.open(url, FakeClock(T0))
    session = await store.active_session("telegram", "1", None)
    turn_id = await store.start_turn(session_id=session, platform="telegram", chat_id="1", thread_id=None,
                                     user_id="u", user_name="U", event_id="e", message_id="m", preset="p",
                                     prompt="hi")
    with psycopg.connect(url, autocommit=True) as conn:  # make the ledger insert fail, last
        conn.execute("CREATE FUNCTION no_ledger() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'no ledger'; END $$")
        conn.execute("CREATE TRIGGER no_ledger BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION no_ledger()")
    with pytest.raises(psycopg.errors.RaiseException):
        await store.complete_turn(turn_id, status="done", answer="x", cost_usd=0.1,
                                  messages=[Message("assistant", "x")],
                                  delivery=(ChatRef("telegram", "1"), "answer", {}))
    row = await store.turn(turn_id)
    assert row is not None and row.status == "running" and row.answer is None
    assert await store.history(session) == [Message("user", "hi")]
    await store.close()


async def test_two_replicas_on_one_database(pg_database: str) -> None:
    """The guarantees replicas rely on come from unique keys, whichever store asks."""
    from tests.backends import truncate_all

    truncate_all(pg_database)
    clock = FakeClock(T0)
    a, b = PostgresStore.open(pg_database, clock), PostgresStore.open(pg_database, clock)
    one, two = await asyncio.gather(a, b)
    try:
        # One inbound event delivered to both replicas: exactly one of them runs it.
        for n in range(20):
            results = await asyncio.gather(one.mark_seen("telegram", f"u{n}"), two.mark_seen("telegram", f"u{n}"))
            assert sorted(results) == [False, True]
        # One open session per chat, whoever opens it.
        sessions = await asyncio.gather(*(s.active_session("slack", "C", None) for s in (one, two) * 5))
        assert len(set(sessions)) == 1
        # A digest period is claimed once across replicas.
        week = timedelta(days=7)
        claims = await asyncio.gather(*(s.claim_digest(T0, T0 + week, "sending", T0) for s in (one, two) * 3))
        assert claims.count(True) == 1
        # A refusal notice is due once per interval across replicas.
        due = await asyncio.gather(*(s.refusal_notice_due("telegram", "9", 60) for s in (one, two) * 3))
        assert due.count(True) == 1
    finally:
        await one.close()
        await two.close()


async def test_a_server_that_does_not_answer_is_a_clear_error() -> None:
    with pytest.raises(StorageUnavailable) as caught:
        await open_store("postgresql://nobody:s3cret@127.0.0.1:1/nothing?connect_timeout=2", FakeClock(T0))
    message = str(caught.value)
    assert "cannot connect to postgresql://nobody@127.0.0.1:1/nothing" in message
    assert "s3cret" not in message


def test_describe_url_hides_the_password() -> None:
    assert describe_url("postgresql://moa:pw@db.internal:6432/moa") == "postgresql://moa@db.internal:6432/moa"
    assert describe_url("postgresql://db/moa") == "postgresql://db/moa"


async def test_a_replica_that_stalled_past_its_lease_cannot_finish_what_a_survivor_took_over(
        pg_database: str) -> None:
    """Fencing: replica A stops renewing (a stalled event loop, a paused VM) but is not dead; B
    takes its rows over. When A wakes, its completing writes are refused by lease ownership, so
    the chat is not told twice nor sent an answer B already reported as cut."""
    from tests.backends import truncate_all

    truncate_all(pg_database)
    clock = FakeClock(T0)
    a = await PostgresStore.open(pg_database, clock, max_size=2, lease_s=20, auto_renew=False)
    b = await PostgresStore.open(pg_database, clock, max_size=2, lease_s=20, auto_renew=False)
    chat = ChatRef("telegram", "1")
    try:
        session = await a.active_session("telegram", "1", None)
        common = dict(session_id=session, platform="telegram", chat_id="1", thread_id=None, user_id="u",
                      user_name="U", preset="p")
        running = await a.start_turn(**common, event_id="e1", message_id="1", prompt="running")
        queued = await a.start_turn(**common, event_id="e2", message_id="2", prompt="queued", queued=True)
        other = await a.active_session("telegram", "2", None)
        done = await a.start_turn(**{**common, "session_id": other, "chat_id": "2"}, event_id="e3",
                                  message_id="3", prompt="answered")
        recorded = await a.complete_turn(done, status="done", answer="A", cost_usd=None, messages=(),
                                         delivery=(ChatRef("telegram", "2"), "answer", {"text": "A"}))
        assert recorded is not None
        await clock.sleep(21)  # A missed its renewals: its leases lapsed

        assert [t.id for t in await b.claim_cut_turns()] == [running, queued]
        assert [d.id for d in await b.pending_deliveries()] == [recorded]
        notice = await b.complete_turn(running, status="interrupted", answer=None, cost_usd=None, messages=(),
                                       delivery=(chat, "notice", {"text": "cut"}), error="interrupted")

        # A wakes up and tries to finish each of them.
        assert await a.complete_turn(running, status="done", answer="late", cost_usd=0.1,
                                     messages=[Message("assistant", "late")],
                                     delivery=(chat, "answer", {"text": "late"})) is None
        with pytest.raises(LeaseLost):
            await a.begin_turn(queued)
        await a.mark_turn(queued, "refused", "over budget")
        with pytest.raises(LeaseLost):
            await a.mark_delivery(recorded, "sending")
        await a.mark_delivery(recorded, "pending")  # its failed try changes nothing
        assert await a.renew_leases() == 0  # and it renews nothing it lost

        cut = await b.turn(running)
        assert cut is not None and cut.status == "interrupted" and cut.answer is None
        assert (await b.turn(queued)).status == "queued"  # type: ignore[union-attr]
        assert await b.history(session) == [Message("user", "running")]
        with psycopg.connect(pg_database) as conn:
            ledger = conn.execute("SELECT id, kind, status, lease_owner FROM deliveries ORDER BY id").fetchall()
        assert ledger == [(recorded, "answer", "pending", b.replica), (notice, "notice", "pending", b.replica)]

        # B goes on as the owner; once a row is sent, nobody starts sending it again.
        await b.begin_turn(queued)
        await b.mark_delivery(recorded, "sending")
        await b.mark_delivery(recorded, "sent", ["9"])
        with pytest.raises(LeaseLost):
            await b.mark_delivery(recorded, "sending")
    finally:
        await a.close()
        await b.close()


async def test_a_row_sent_while_the_retry_loop_held_it_is_not_sent_again(pg_database: str) -> None:
    """The retry loop claims a pending row; before it gets to it, the turn's own delivery sends
    it. The loop's try to start sending is refused, and its failed try leaves the row sent (put
    back to pending it would be sent a second time)."""
    from tests.backends import truncate_all

    truncate_all(pg_database)
    store = await PostgresStore.open(pg_database, FakeClock(T0), max_size=2, auto_renew=False)
    try:
        session = await store.active_session("telegram", "1", None)
        turn = await store.start_turn(session_id=session, platform="telegram", chat_id="1", thread_id=None,
                                      user_id="u", user_name="U", event_id="e", message_id="m", preset="p",
                                      prompt="hi")
        row = await store.complete_turn(turn, status="done", answer="x", cost_usd=None, messages=(),
                                        delivery=(ChatRef("telegram", "1"), "answer", {"text": "x"}))
        assert [d.id for d in await store.pending_deliveries()] == [row]  # the loop holds it
        await store.mark_delivery(row, "sending")  # meanwhile the turn delivers it
        await store.mark_delivery(row, "sent", ["5"])
        with pytest.raises(LeaseLost):
            await store.mark_delivery(row, "sending")
        await store.mark_delivery(row, "pending")
        assert await store.pending_deliveries() == []
    finally:
        await store.close()


async def test_the_gateway_connects_with_jit_off_unless_the_url_sets_options(pg_database: str) -> None:
    """JIT compiled a long digest's statements for seconds; the URL's own options still win."""
    store = await open_store(pg_database, FakeClock(T0))
    try:
        assert await store.query("SHOW jit") == [("off",)]
    finally:
        await store.close()
    separator = "&" if "?" in pg_database else "?"
    store = await open_store(f"{pg_database}{separator}options=-c%20jit%3Don", FakeClock(T0))
    try:
        assert await store.query("SHOW jit") == [("on",)]
    finally:
        await store.close()


async def test_connections_send_tcp_keepalives_unless_the_url_sets_them(pg_database: str) -> None:
    """An idle connection (the turn wake-ups' listener, the pool's) notices a vanished server:
    before, no keepalives were set and a silent peer was waited for forever."""
    import os
    import socket

    def keepalive(conn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
        finally:
            sock.close()

    separator = "&" if "?" in pg_database else "?"
    for url, idle in ((pg_database, 30), (f"{pg_database}{separator}keepalives_idle=7", 7)):
        store = await open_store(url, FakeClock(T0))
        try:
            async with store._connection() as conn:  # type: ignore[attr-defined]
                on, seconds = keepalive(conn)
            assert on and seconds == idle
        finally:
            await store.close()


async def test_a_question_in_an_open_session_takes_two_round_trips(schemas) -> None:
    # The duplicate check, the session, the stored preset and whether another replica is busy
    # in one statement, then the turn (pipelined): 2 round trips between a question's arrival
    # and its engine run, instead of one per step.
    import tempfile

    from psycopg import pq

    store = await PostgresStore.open(schemas(), FakeClock(T0), max_size=1, auto_renew=False)
    fields = dict(platform="telegram", chat_id="1", thread_id=None, user_id="u", user_name="U",
                  preset_of=lambda stored: stored or "default")
    first = await store.take_question(event_id="e1", message_id="m1", prompt="first", **fields)  # type: ignore[arg-type]
    assert first is not None
    await store.complete_turn(first.turn_id, status="done", answer="one", cost_usd=0.0,
                              messages=[Message("assistant", "one")], delivery=None)
    await store.set_channel_preset("telegram", "1", "deep", "admin")
    with tempfile.TemporaryFile("w+") as trace:
        async with store._pool.connection() as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        second = await store.take_question(event_id="e2", message_id="m2", prompt="second", **fields)  # type: ignore[arg-type]
        async with store._pool.connection() as conn:
            conn.pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines() if line.startswith("F")]
    trips = sum(1 for f in sent if len(f) > 2 and f[2].strip() in ("Sync", "Query"))
    assert second is not None and (second.session_id, second.preset, second.queued) == (first.session_id, "deep", False)
    assert trips == 2
    assert await store.take_question(event_id="e2", message_id="m2", prompt="again", **fields) is None  # type: ignore[arg-type]
    row = await store.turn(second.turn_id)
    assert row is not None and (row.status, row.prompt, row.preset) == ("running", "second", "deep")
    await store.close()
