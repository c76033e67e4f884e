"""`moa-gateway migrate-db` and `check-config` with a PostgreSQL database, from outside: the
real command in a subprocess, a SQLite file written through the real Store, a real server."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.contract import ChatRef
from gateway.storage import Store
from gateway.storage.postgres import PostgresStore
from moa_core.values import CallRecord, Cost, Message, Usage
from tests.backends import scratch_schema
from tests.fakes.clock import FakeClock
from tests.gateway.test_cost_rollups import assert_reconciled

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
TABLES = ("sessions", "turns", "messages", "model_calls", "deliveries", "seen_events", "channel_settings",
          "refusal_notices", "digests", "cost_rollups")


@pytest.fixture
def empty_target(pg_database: str):
    """An empty schema of the test database, as the URL `--to` takes."""
    with scratch_schema(pg_database, "m") as url:
        yield url


async def fill(path: Path, turns: int) -> None:
    clock = FakeClock(T0)
    store = await Store.open(path, clock)
    for n in range(turns):
        session = await store.active_session("telegram", str(n % 3), "t" if n % 2 else None)
        turn = await store.start_turn(session_id=session, platform="telegram", chat_id=str(n % 3),
                                      thread_id="t" if n % 2 else None, user_id=f"u{n % 4}", user_name="Ann ✓",
                                      event_id=str(n), message_id=str(n), preset="default", prompt=f"q{n}")
        await store.record_calls(turn, [CallRecord("reference", 0, i, "p", "m", "ok", 10, Usage(1, 2, 3, 4, 1),
                                                   Cost(0.001 if i else None, "config")) for i in range(3)])
        await store.complete_turn(turn, status="done", answer=f"a{n}", cost_usd=0.002,
                                  messages=[Message("assistant", f"a{n} 'quoted' \\ tab\t")],
                                  delivery=(ChatRef("telegram", str(n % 3), reply_to_id=str(n)), "answer",
                                            {"text": f"a{n}"}))
        await store.mark_seen("telegram", f"ev{n}")
        clock.current += timedelta(minutes=1)
    await store.set_channel_preset("telegram", "0", "default", "admin")
    await store.refusal_notice_due("telegram", "1", 60)
    await store.claim_digest(T0 - timedelta(days=7), T0, "baseline", T0)
    await store.close()


async def migrate(*args: str, env_extra: dict | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "migrate-db", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def dump_sqlite(path: Path) -> dict[str, list[tuple]]:
    store = await Store.open(path, FakeClock(T0))
    try:
        return {t: sorted(await store.query(f"SELECT * FROM {t}"), key=repr) for t in TABLES}
    finally:
        await store.close()


async def dump_postgres(url: str) -> dict[str, list[tuple]]:
    store = await PostgresStore.open(url, FakeClock(T0))
    try:
        return {t: sorted(await store.query(f"SELECT * FROM {t}"), key=repr) for t in TABLES}
    finally:
        await store.close()


async def test_migrate_db_copies_every_row(tmp_path: Path, empty_target: str) -> None:
    source = tmp_path / "moa.db"
    await fill(source, 25)
    code, out, err = await migrate("--from", str(source), "--to", empty_target)
    assert code == 0, err
    assert "model_calls: 75 rows" in out and "row counts match" in out
    assert "cost_rollups: " in out  # the rollups are carried, counted like every table
    assert await dump_postgres(empty_target) == await dump_sqlite(source)

    # The copy is a working database: new ids follow the copied ones.
    store = await PostgresStore.open(empty_target, FakeClock(T0 + timedelta(days=1)))
    session = await store.new_session("telegram", "0", None)
    turn = await store.start_turn(session_id=session, platform="telegram", chat_id="0", thread_id=None,
                                  user_id="u", user_name="U", event_id="x", message_id="x", preset="p", prompt="new")
    assert turn == 26 and session > 1
    # ... and the copied rollups go on summing what is booked there.
    await store.book_calls([(turn, CallRecord("aggregator", 0, 0, "p", "m", "ok", 10, Usage(1, 2, 3, 4, 1),
                                              Cost(0.5, "config")))])
    await assert_reconciled(store)
    await store.close()

    # A second copy into the same (now full) database is refused, nothing changed.
    code, out, err = await migrate("--from", str(source), "--to", empty_target)
    assert code == 1 and "already has data" in err and "nothing was copied" in err
    assert "Traceback" not in err


async def test_migrate_db_user_errors(tmp_path: Path, empty_target: str) -> None:
    code, _, err = await migrate("--from", str(tmp_path / "missing.db"), "--to", empty_target)
    assert code == 2 and "no such SQLite database" in err
    source = tmp_path / "moa.db"
    await fill(source, 1)
    code, _, err = await migrate("--from", str(source), "--to", str(tmp_path / "other.db"))
    assert code == 2 and "postgresql:// URL" in err
    code, _, err = await migrate("--from", str(source), "--to", "postgresql://moa:hunter2@127.0.0.1:1/x")
    assert code == 1 and "cannot connect to postgresql://moa@127.0.0.1:1/x" in err
    assert "hunter2" not in err and "Traceback" not in err


CONFIG = """
[gateway]
database = "{database}"
{extra}

[providers.p]
api = "openai"
base_url = "http://127.0.0.1:9/v1"

[presets.default]
references = ["p:r"]
aggregator = "p:m"
"""


async def check_config(tmp_path: Path, database: str, extra: str = "", env_extra: dict | None = None):
    path = tmp_path / "moa-gateway.toml"
    path.write_text(CONFIG.format(database=database, extra=extra))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_check_config_reports_the_backend_and_whether_it_connects(tmp_path: Path, pg_database: str) -> None:
    code, out, err = await check_config(tmp_path, str(tmp_path / "moa.db"))
    assert code == 0 and f"database: SQLite {tmp_path / 'moa.db'} (will be created)" in out, err

    code, out, err = await check_config(tmp_path, pg_database)
    assert code == 0, err
    assert "database: PostgreSQL postgresql://" in out and "(connects, server 1" in out

    code, out, err = await check_config(tmp_path, "postgresql://moa@127.0.0.1:1/moa")
    assert code == 1 and "cannot connect to postgresql://moa@127.0.0.1:1/moa" in err and "Traceback" not in err

    code, out, err = await check_config(tmp_path, pg_database, 'database_password_env = "TEST_PG_PASSWORD"')
    assert code == 1 and "TEST_PG_PASSWORD is not set" in err
    code, out, err = await check_config(tmp_path, pg_database, 'database_password_env = "TEST_PG_PASSWORD"',
                                        {"TEST_PG_PASSWORD": "unused-with-trust-auth"})
    assert code == 0 and "connects" in out and "unused-with-trust-auth" not in out + err
