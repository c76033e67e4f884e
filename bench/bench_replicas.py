"""Storage backends and replicas: the gateway benchmark's two figures on SQLite, on PostgreSQL
with one replica, and on PostgreSQL with two replicas.

Run:  python bench/bench_replicas.py [--json] [--url postgresql://postgres@127.0.0.1:5432/postgres]
(the URL names a server where a scratch database is created and dropped; default
MOA_TEST_POSTGRES_URL or the one shown).

1. Stored turns per second, 50 at a time: the store calls the gateway makes for a plain question
   (take_question, 5 calls booked through a CallBook as each ends, complete_turn with the ledger
   row, mark_delivery) — `question_turn` of bench/bench_gateway.py; on PostgreSQL the completion
   waits for the turn's bookings to be written, as `run_booked_turn` does on a store whose writes
   may commit out of order. Two replicas = two stores (two connection pools, two CallBooks) on one
   database, 25 at a time each. (Until session 7: active_session + start_turn + record_calls +
   complete_turn + mark_delivery, a sequence the gateway no longer makes.)
2. 200 sessions active at once through the real Gateway (RecordingAdapter platform, lean fake
   provider in another process, 4 references); the gateway's added time of a turn = inbound to
   final answer delivered minus the engine's run_turn. Two replicas = two Gateways on one
   database, 100 sessions each.

3. A session's history of 500 messages read whole (`Storage.history`), process CPU per read:
   on PostgreSQL every question's history is read so, on the event loop's thread; on SQLite a
   question, and a queued turn once it begins, read only what is new since what the store
   remembers of the chat (gateway/storage/sqlite_history.py): a whole read is left for a chat it
   does not remember (the first question after a start, or one dropped from its bounds).

4. Round trips to PostgreSQL of one stored turn (as in 1, in a chat's open session; the bookings
   of one turn's 5 calls, which a busy gateway shares with other turns, counted whole), counted
   in libpq's protocol trace:
   each Sync (extended protocol) or Query (simple protocol) the client sends ends one.

Both replicas run in this one process (one event loop, one core): the two-replica figures show
what sharing one database costs (leases, unique keys, per-session ordering), not the capacity a
second machine adds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from psycopg import pq, sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from bench.bench_gateway import TimedAdapter, question_turn  # noqa: E402
from bench.bench_turns import start_fake  # noqa: E402
from bench.report import Figures, wants_json  # noqa: E402
from gateway.booking import CallBook  # noqa: E402
from gateway.config import AccessRules, PlatformSection, parse_config  # noqa: E402
from gateway.heap import settle_heap  # noqa: E402
from gateway.service import Gateway  # noqa: E402
from gateway.storage import Storage, open_store  # noqa: E402
from gateway.storage.postgres import PostgresStore  # noqa: E402
from moa_core.clock import SystemClock  # noqa: E402
from moa_core.engine import MoaEngine  # noqa: E402
from moa_core.providers.client import ProviderClient  # noqa: E402
from moa_core.providers.http import make_http_client  # noqa: E402

SESSIONS = 200


async def storage(database: str, replicas: int, total: int = 3000, concurrency: int = 50) -> float:
    stores: list[Storage] = [await open_store(database, SystemClock()) for _ in range(replicas)]
    books = [CallBook(store) for store in stores]

    async def one(i: int) -> None:
        await question_turn(stores[i % replicas], books[i % replicas], i)

    try:
        await asyncio.gather(*(one(-1 - i) for i in range(concurrency)))  # warm each pool
        started = time.perf_counter()
        for batch in range(0, total, concurrency):
            await asyncio.gather(*(one(batch + i) for i in range(concurrency)))
        for book in books:
            await book.settle()
        return total / (time.perf_counter() - started)
    finally:
        for store in stores:
            await store.close()


async def history_read(database: str, messages: int = 500, reads: int = 100) -> float:
    """Process CPU ms of one whole read of a session's history of `messages` messages
    (`Storage.history`: every question's on PostgreSQL; on SQLite a queued turn's in a chat
    whose history the store does not remember)."""
    store = await open_store(database, SystemClock())
    try:
        session = await store.new_session("bench", "history", None)
        rows = [(session, "user" if i % 2 == 0 else "assistant", "q" * 300 if i % 2 == 0 else "a" * 600,
                 "2026-01-01T00:00:00.000000+00:00") for i in range(messages)]
        await store.execute_many([("INSERT INTO messages (session_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                                   rows)])
        for _ in range(10):
            assert len(await store.history(session)) == messages
        cpu = time.process_time()
        for _ in range(reads):
            await store.history(session)
        return (time.process_time() - cpu) / reads * 1000
    finally:
        await store.close()


async def sessions(directory: Path, database: str, url: str, replicas: int) -> tuple[float, float]:
    raw = {
        "gateway": {"database": database, "default_preset": "p", "progress": True},
        "providers": {"lean": {"api": "openai", "base_url": url + "/v1", "max_retries": 0,
                               "price_in_per_mtok": 1, "price_out_per_mtok": 2}},
        "presets": {"p": {"references": [f"lean:ref{i}-300" for i in range(4)], "aggregator": "lean:agg-200"}},
    }
    config = parse_config(raw, directory / "bench.toml")
    config = dataclasses.replace(config, platforms={"fakechat": PlatformSection("fakechat", AccessRules(allow_all=True))},
                                 gateway=dataclasses.replace(config.gateway, max_concurrent_turns=SESSIONS))
    clock = SystemClock()
    http = make_http_client()
    engine_time: dict[str, float] = {}
    gateways: list[tuple[Gateway, TimedAdapter]] = []
    for _ in range(replicas):
        store = await open_store(database, clock)
        engine = MoaEngine(config.engine, ProviderClient(http, env={}, clock=clock), tools={}, clock=clock)
        run_turn = engine.run_turn

        async def timed(*args, session: str, _run=run_turn, **kwargs):
            started = time.perf_counter()
            try:
                return await _run(*args, session=session, **kwargs)
            finally:
                engine_time[session] = time.perf_counter() - started

        engine.run_turn = timed  # type: ignore[method-assign]
        adapter = TimedAdapter(edit_interval_s=0.25)
        gateway = Gateway(config, store, engine, {adapter.platform: adapter}, clock)
        await gateway.start()
        gateways.append((gateway, adapter))
    try:
        for round_ in range(2):  # round 0 warms connections
            engine_time.clear()
            pushes = []
            for i in range(SESSIONS):
                gateway, adapter = gateways[i % replicas]
                pushes.append((adapter, adapter.message(f"/moa question {round_}-{i}", chat=f"chat{i}",
                                                         event_id=f"r{round_}-{i}")))
            for _, adapter in gateways:
                adapter.answered.clear()
            started = time.perf_counter()
            await asyncio.gather(*(adapter.push(m) for adapter, m in pushes))
            for gateway, _ in gateways:
                await gateway.idle()
        answered = {chat: at for _, adapter in gateways for chat, at in adapter.answered.items()}
        added = sorted(answered[f"chat{i}"] - started - engine_time[f"fakechat:chat{i}:"] for i in range(SESSIONS))
        return statistics.median(added) * 1000, added[int(len(added) * 0.95) - 1] * 1000
    finally:
        for gateway, _ in gateways:
            await gateway.shutdown(grace_s=1)
            await gateway.store.close()
        await http.aclose()


async def round_trips(database: str) -> int:
    """Round trips of one stored turn on one connection, from libpq's trace of what it sent."""
    store = await PostgresStore.open(database, SystemClock(), max_size=1, auto_renew=False)
    book = CallBook(store)
    try:
        await question_turn(store, book, 10_000)  # the session exists, as for a chat's later turns
        await book.settle()
        with tempfile.TemporaryFile("w+") as trace:
            async with store._pool.connection() as conn:
                conn.pgconn.trace(trace.fileno())
                conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            await question_turn(store, book, 10_050)  # the same chat (see question_turn)
            await book.settle()
            async with store._pool.connection() as conn:
                conn.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t") for line in trace.read().splitlines() if line.startswith("F")]
        return sum(1 for fields in sent if len(fields) > 2 and fields[2].strip() in ("Sync", "Query"))
    finally:
        await store.close()


def scratch_database(server: str) -> tuple[str, str]:
    name = f"moa_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, make_conninfo(server, dbname=name)


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def as_url(conninfo: str) -> str:
    from tests.backends import as_url as to_url

    return to_url(conninfo)


def truncate(url: str) -> None:
    from tests.backends import truncate_all

    truncate_all(url)


async def main(as_json: bool, server: str) -> None:
    figures = Figures("bench_replicas")
    figures.calibrate()
    settle_heap()
    name, conninfo = scratch_database(server)
    pg = as_url(conninfo)
    process, url = start_fake()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cases = (("sqlite", str(Path(tmp) / "bench.db"), 1), ("pg1", pg, 1), ("pg2", pg, 2))
            for label, database, replicas in cases:
                if label != "sqlite":
                    await (await open_store(database, SystemClock())).close()  # schema
                    truncate(database)
                rate = await storage(database, replicas)
                figures[f"{label}_stored_turns_per_s"] = rate
                if label != "sqlite":
                    truncate(database)
                folder = Path(tmp) / label
                folder.mkdir()
                db = str(folder / "gw.db") if label == "sqlite" else database
                p50, p95 = await sessions(folder, db, url, replicas)
                figures[f"{label}_added_p50_ms_{SESSIONS}"] = p50
                figures[f"{label}_added_p95_ms_{SESSIONS}"] = p95
                print(f"{label:>6}: {rate:6.0f} stored turns/s (50 at a time); {SESSIONS} sessions: gateway-added "
                      f"p50 {p50:.0f} ms, p95 {p95:.0f} ms")
                if replicas == 1:
                    history_ms = await history_read(database)
                    figures[f"{label}_history_500_cpu_ms"] = history_ms
                    print(f"{label:>6}: a 500-message history read whole: {history_ms:.2f} ms of CPU")
            truncate(pg)
            trips = await round_trips(pg)
            figures["pg_round_trips_per_stored_turn"] = trips
            print(f"PostgreSQL round trips per stored turn: {trips}")
    finally:
        process.stdin.close()
        process.wait(timeout=10)
        drop_database(server, name)
    if as_json:
        print(figures.as_json())


if __name__ == "__main__":
    args = sys.argv[1:]
    server = os.environ.get("MOA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if "--url" in args:
        server = args[args.index("--url") + 1]
    asyncio.run(main(wants_json(), server))
