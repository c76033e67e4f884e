"""The PostgreSQL backend of the storage contract, for several gateway replicas on one database
(connecting: `gateway.storage.postgres_connect`).

psycopg 3 with psycopg_pool's `AsyncConnectionPool`: native asyncio, server-side parameters,
`COPY` for `migrate-db`, and the libpq URL and environment (`PGPASSWORD`, `PGSSLMODE`, ...)
exactly as `psql` reads them. Connections are in autocommit mode; a write that must be
all-or-nothing runs in `conn.transaction()`.

Correctness across replicas rests on PostgreSQL's own guarantees: unique keys (seen events, one
open session per chat, digest periods) decide races with `ON CONFLICT`; a read-then-write takes
the row with `FOR UPDATE`. Times come from the injected clock, stored as text as in SQLite
(see `gateway.storage.contract`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from adapters.contract import ChatRef
from gateway.storage import postgres_booking, postgres_schema
from gateway.storage.contract import (
    CLAIM_DIGEST,
    DEFAULT_LEASE_S,
    DELIVERY_STATUSES,
    DIGEST_STATUSES,
    FINISH_DIGEST,
    MESSAGE_COLUMNS,
    TURN_STATUSES,
    DigestState,
    LeaseLost,
    TakenQuestion,
    TurnRow,
    from_iso,
    ledger_values,
    message_values,
    messages_of,
    new_replica_id,
    postgres_dialect,
    require,
    storable,
    thread_key,
    to_iso,
    turn_row,
    turn_values,
)
from gateway.storage.postgres_connect import (
    CONNECT_TIMEOUT_S,
    StorageUnavailable,
    conninfo,
    describe_url,
    reason,
)
from gateway.storage.postgres_replicas import BUSY_ELSEWHERE, WAKEUP_FALLBACK_POLL_S, ReplicaCoordination
from gateway.storage.turn_wakeups import TurnWakeups, notify_sql
from moa_core.clock import Clock
from moa_core.values import CallRecord, ImagePart, Message

log = logging.getLogger(__name__)

POOL_MAX = 16


_MESSAGE_COLUMNS = "session_id, turn_id, " + ", ".join(MESSAGE_COLUMNS) + ", created_at"
# Statements that more than one method sends, alone or inside a larger one.
_MARK_SEEN = "INSERT INTO seen_events (platform, event_id, seen_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
_OPEN_SESSION = ("SELECT id FROM sessions WHERE platform = %s AND chat_id = %s AND thread_id = %s "
                 "AND closed_at IS NULL")
_CHANNEL_PRESET = "SELECT preset FROM channel_settings WHERE platform = %s AND chat_id = %s"


def _insert(table: str, values: dict[str, Any]) -> tuple[str, list[Any]]:
    columns = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id", list(values.values())


class PostgresStore(ReplicaCoordination):
    """The storage contract on a PostgreSQL database shared by every replica."""

    backend = "postgresql"
    writes_in_order = False  # a pool of connections: writes made one after another may commit in any order

    def __init__(self, pool: AsyncConnectionPool, clock: Clock, url: str, lease_s: float = DEFAULT_LEASE_S):
        # Use `PostgresStore.open`.
        self._pool = pool
        self._clock = clock
        self.url = describe_url(url)
        self._closed = False
        self.replica = new_replica_id()
        self.lease_s = lease_s
        # Rows of a dead replica are taken within lease_s + takeover_every_s.
        self.takeover_every_s = max(0.2, lease_s / 4)
        self._renewer: asyncio.Task | None = None
        self._conninfo = url
        self._wakeups: TurnWakeups | None = None  # listening from the first wait_turns_ahead
        self.wakeup_fallback_poll_s = WAKEUP_FALLBACK_POLL_S
        # Turns asked to run that start_turn stored queued (see there); begun by wait_turns_ahead.
        self._deferred: set[int] = set()

    @classmethod
    async def open(cls, url: str, clock: Clock, *, password: str | None = None, max_size: int = POOL_MAX,
                   lease_s: float = DEFAULT_LEASE_S, auto_renew: bool = True) -> PostgresStore:
        """Connect, and bring the schema up to date (replicas starting together migrate once).
        With `auto_renew` (always, but in tests of expiry) the store renews its own leases
        every third of `lease_s` for as long as it is open: a replica whose process dies stops."""
        where, info = describe_url(url), conninfo(url, password)
        # One direct connection first: a wrong URL or a server that is down fails at once with
        # libpq's own reason (a pool would retry until its timeout and say less).
        try:
            async with await psycopg.AsyncConnection.connect(info, autocommit=True) as conn:
                ran = await postgres_schema.apply(conn, at=to_iso(clock.now()))
        except psycopg.OperationalError as error:
            raise StorageUnavailable(f"cannot connect to {where}: {reason(error)}") from None
        pool = AsyncConnectionPool(
            info, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True},
            name="moa-gateway", timeout=CONNECT_TIMEOUT_S,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as error:
            await pool.close()
            raise StorageUnavailable(f"cannot connect to {where}: {reason(error)}") from None
        if ran:
            log.info("database %s: applied migrations %s", where, ", ".join(ran))
        store = cls(pool, clock, url, lease_s)
        store._conninfo = info
        if auto_renew:
            store._renewer = asyncio.create_task(store._renew_forever(), name="moa-lease-renewal")
        return store

    async def close(self) -> None:
        if self._closed:
            return
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self._wakeups is not None:
            await self._wakeups.close()
        self._closed = True
        await self._pool.close()

    def _connection(self):  # noqa: ANN202 - the pool's async context manager
        if self._closed:
            raise RuntimeError("store is closed")
        return self._pool.connection()

    def _now(self) -> str:
        return to_iso(self._clock.now())

    async def query(self, sql: str, params: Sequence[Any] = (), *, dicts: bool = False) -> list[Any]:
        """One read of portable SQL (see `gateway.storage.contract`): tuples, or dicts."""
        statement = postgres_dialect(sql)
        async with self._connection() as conn:
            async with conn.cursor(row_factory=dict_row if dicts else psycopg.rows.tuple_row) as cursor:
                await cursor.execute(statement, list(params))
                return list(await cursor.fetchall())

    async def execute_many(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Portable statements, each run for every one of its parameter rows, in ONE transaction."""
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            for sql, rows in steps:
                if rows:
                    await cursor.executemany(postgres_dialect(sql), rows)

    async def _one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, list(params))
            return await cursor.fetchone()

    async def _rowcount(self, sql: str, params: Sequence[Any]) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute(sql, list(params))
            return cursor.rowcount

    # Sessions and history -------------------------------------------------------------------

    async def active_session(self, platform: str, chat_id: str, thread_id: str | None) -> int:
        """The open session of this chat and thread, opened now if there is none (two replicas
        opening it at once get the same one: the partial unique index decides)."""
        at, thread = self._now(), thread_key(thread_id)
        key = [platform, chat_id, thread]
        async with self._connection() as conn:
            for _ in range(3):
                cursor = await conn.execute(_OPEN_SESSION, key)
                row = await cursor.fetchone()
                if row:
                    return row[0]
                cursor = await conn.execute(
                    "INSERT INTO sessions (platform, chat_id, thread_id, started_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (platform, chat_id, thread_id) WHERE closed_at IS NULL DO NOTHING RETURNING id",
                    [*key, at])
                row = await cursor.fetchone()
                if row:
                    return row[0]
        raise RuntimeError(f"no open session for {platform}:{chat_id} after three tries")

    async def new_session(self, platform: str, chat_id: str, thread_id: str | None) -> int:
        """Close the open session of this chat and thread (if any) and open another."""
        at, key = self._now(), [platform, chat_id, thread_key(thread_id)]
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE sessions SET closed_at = %s WHERE platform = %s AND chat_id = %s AND thread_id = %s "
                "AND closed_at IS NULL", [at, *key])
            cursor = await conn.execute(
                "INSERT INTO sessions (platform, chat_id, thread_id, started_at) VALUES (%s, %s, %s, %s) "
                "RETURNING id", [*key, at])
            row = await cursor.fetchone()
            assert row is not None
            return row[0]

    async def history(self, session_id: int, limit: int = 500) -> list[Message]:
        """The last `limit` messages of a session, oldest first (a started turn's prompt included)."""
        rows = await self.query(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE session_id = ? "
                                "ORDER BY id DESC LIMIT ?", [session_id, limit])
        rows.reverse()
        return messages_of(rows)

    # Turns and model calls ------------------------------------------------------------------

    async def start_turn_with_history(self, *, limit: int = 500, **turn: Any) -> tuple[int, list[Message] | None]:
        """`start_turn`; the history is read once the turn may run (a turn of another replica may
        be ahead of it: see `wait_turns_ahead`)."""
        return await self.start_turn(**turn), None

    async def start_turn(self, *, session_id: int, platform: str, chat_id: str, thread_id: str | None,
                         user_id: str, user_name: str, event_id: str, message_id: str, preset: str,
                         prompt: str, queued: bool = False, images: Sequence[ImagePart] = ()) -> int:
        """Record a turn (see `Store.start_turn`): a running one with its user message, a queued
        one alone, its message added by `begin_turn`.

        One turn at a time per session across replicas rests on two things done here, in one
        transaction and one round trip (pipeline mode). The session's row is locked first (FOR
        NO KEY UPDATE: it does not block the foreign-key checks of other writes), so turns of a
        session take their ids in commit order and a turn's `wait_turns_ahead` sees every turn
        with a lower id. Then a turn asked to run while another replica has an unfinished turn
        of the session (one `busy_elsewhere` could not see yet: it was not committed) is stored
        queued instead, so that its question does not enter the history of the turn ahead;
        `wait_turns_ahead` begins it once its turn comes."""
        at = self._now()
        values = turn_values(
            session_id=session_id, platform=platform, chat_id=chat_id, thread_id=thread_id, user_id=user_id,
            user_name=user_name, event_id=event_id, message_id=message_id, preset=preset, prompt=prompt,
            queued=queued, at=at, images=images, lease=self._lease(),
        )
        if queued:
            insert, params = _insert("turns", values)
            insert += ", status"
        else:
            del values["status"]
            user = message_values(session_id, None, Message("user", prompt, images=tuple(images)), at)
            del user["turn_id"]
            insert = (
                f"WITH ahead AS (SELECT {BUSY_ELSEWHERE.format(session='%s')} AS busy), "
                f"t AS (INSERT INTO turns ({', '.join(values)}, status) SELECT {', '.join(['%s'] * len(values))}, "
                "CASE WHEN ahead.busy THEN 'queued' ELSE 'running' END FROM ahead RETURNING id, status), "
                f"m AS (INSERT INTO messages (turn_id, {', '.join(user)}) "
                f"SELECT t.id, {', '.join(['%s'] * len(user))} FROM t WHERE t.status = 'running') "
                "SELECT id, status FROM t")
            params = [session_id, self.replica, *values.values(), *user.values()]
        async with self._connection() as conn:
            async with conn.pipeline():
                # No Sync between the two statements: they are one implicit transaction,
                # committed by the Sync that ends the pipeline; each has its own snapshot, so
                # the INSERT sees the turns committed while the lock was awaited.
                await conn.execute("SELECT 1 FROM sessions WHERE id = %s FOR NO KEY UPDATE", [session_id])
                cursor = await conn.execute(insert, params)
            row = await cursor.fetchone()  # read after the commit
        assert row is not None
        if row[1] == "queued" and not queued:
            self._deferred.add(row[0])
        return row[0]

    async def begin_turn(self, turn_id: int) -> None:
        """A queued turn starts: marked running, its user message stored, in one statement —
        unless another replica took the turn over (its lease lapsed): `LeaseLost`."""
        at = self._now()
        owner, until = self._lease()
        row = await self._one(
            "WITH t AS (UPDATE turns SET status = 'running', started_at = %s, lease_until = %s "
            "WHERE id = %s AND status = 'queued' AND lease_owner = %s RETURNING id, session_id, prompt, images) "
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT t.session_id, t.id, 'user', COALESCE(t.prompt, ''), "
            "NULL, NULL, NULL, t.images, %s FROM t RETURNING turn_id", [at, until, turn_id, owner, at])
        if row is None:
            found = await self._one("SELECT status, lease_owner FROM turns WHERE id = %s", [turn_id])
            if found is None:
                raise KeyError(f"no turn {turn_id}")
            if found[0] != "queued":
                raise ValueError(f"turn {turn_id} is {found[0]}, not queued")
            raise LeaseLost(f"turn {turn_id} was taken over by another replica")

    async def record_calls(self, turn_id: int, calls: Sequence[CallRecord]) -> None:
        """Store model calls of a turn, with the turn's chat, user and preset copied onto each."""
        if calls:
            await self.book_calls([(turn_id, call) for call in calls])

    async def book_calls(self, calls: Sequence[tuple[int, CallRecord]]) -> None:
        """Store model calls of one or more turns, given as (turn id, call), in ONE transaction,
        each with its turn's chat, user and preset copied onto it (as `record_calls`)."""
        if not calls:
            return
        at = self._now()
        async with self._connection() as conn:
            await postgres_booking.book(conn, calls, at)

    async def complete_turn(self, turn_id: int, *, status: str, answer: str | None, cost_usd: float | None,
                            messages: Sequence[Message], delivery: tuple[ChatRef, str, dict] | None,
                            error: str | None = None, sending: bool = False) -> int | None:
        """Finish a turn in ONE statement (status, answer, produced messages, ledger row): one
        round trip, all or nothing. Fenced: a turn another replica took over (this one stalled
        past its lease) is left as that replica made it, and None is returned (nothing to send)."""
        require(status, TURN_STATUSES, "turn status")
        self._deferred.discard(turn_id)
        at = self._now()
        owner, until = self._lease()
        params: list[Any] = [status, storable(answer), cost_usd, storable(error), at, turn_id, owner]
        parts = ["t AS (UPDATE turns SET status = %s, answer = %s, cost_usd = %s, error = %s, finished_at = %s "
                 "WHERE id = %s AND lease_owner = %s RETURNING id, session_id)"]
        if messages:
            rows = [message_values(0, turn_id, m, at) for m in messages]
            parts.append(
                f"m AS (INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT t.session_id, t.id, m.role, m.content, "
                "m.tool_calls, m.tool_call_id, m.name, m.images, %s FROM t, unnest(%s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY "
                "AS m(role, content, tool_calls, tool_call_id, name, images, n) ORDER BY m.n)")
            params += [at, *([r[c] for r in rows] for c in MESSAGE_COLUMNS)]
        if delivery is not None:
            ledger = ledger_values(turn_id, *delivery, at, lease=(owner, until))
            del ledger["turn_id"]
            if sending:  # ours by the lease just set: the fence of mark_delivery('sending') holds
                ledger["status"] = "sending"
            parts.append(f"d AS (INSERT INTO deliveries (turn_id, {', '.join(ledger)}) "
                         f"SELECT t.id, {', '.join(['%s'] * len(ledger))} FROM t RETURNING id)")
            params += list(ledger.values())
        # The turns waiting behind this one, on any replica, are woken when it commits.
        select = ("SELECT (SELECT id FROM t), " + ("(SELECT id FROM d)" if delivery is not None else "NULL")
                  + f", {notify_sql('t')}")
        row = await self._one(f"WITH {', '.join(parts)} {select}", params)
        assert row is not None
        if row[0] is None:
            if await self._one("SELECT 1 FROM turns WHERE id = %s", [turn_id]) is None:
                raise KeyError(f"no turn {turn_id}")
            log.warning("turn %s was taken over by another replica while this one stalled; its %s result "
                        "is dropped", turn_id, status)
            return None
        return row[1]

    async def mark_turn(self, turn_id: int, status: str, error: str | None = None) -> None:
        """Set a turn's status; stamps `finished_at` unless running. Fenced as `complete_turn`."""
        require(status, TURN_STATUSES, "turn status")
        if status != "running":
            self._deferred.discard(turn_id)
        at = None if status == "running" else self._now()
        update = ("UPDATE turns SET status = %s, error = COALESCE(%s::text, error), finished_at = %s "
                  "WHERE id = %s AND lease_owner = %s")
        if status != "running":  # as in complete_turn: the turns waiting behind it are woken
            update = f"WITH t AS ({update} RETURNING id, session_id) SELECT {notify_sql('t')}"
        await self._rowcount(update, [status, storable(error), at, turn_id, self.replica])

    async def unfinished_turns(self) -> list[TurnRow]:
        """Turns still queued or running, oldest first."""
        rows = await self.query("SELECT * FROM turns WHERE status IN ('queued', 'running') ORDER BY id", dicts=True)
        return [turn_row(r) for r in rows]

    async def recent_turn_costs(self, platform: str, user_id: str, preset: str, limit: int = 5) -> list[float]:
        """Known dollars of this user's last `limit` finished turns with `preset`, newest first."""
        rows = await self.query(
            "SELECT cost_usd FROM turns WHERE platform = ? AND user_id = ? AND preset = ? "
            "AND status = 'done' AND cost_usd IS NOT NULL ORDER BY id DESC LIMIT ?",
            [platform, user_id, preset, limit])
        return [float(row[0]) for row in rows]

    async def turn(self, turn_id: int) -> TurnRow | None:
        rows = await self.query("SELECT * FROM turns WHERE id = ?", [turn_id], dicts=True)
        return turn_row(rows[0]) if rows else None

    # The delivery ledger --------------------------------------------------------------------

    async def mark_delivery(self, delivery_id: int, status: str, message_ids: Sequence[str] = ()) -> None:
        """Move a ledger row on; non-empty `message_ids` replace the ids stored so far.

        Fenced: only the row's owner may start sending it, and only while it is unsent — a
        replica that stalled past its lease, or a retry of a row sent meanwhile, gets `LeaseLost`
        instead of sending it again; its 'pending' (a failed try) then changes nothing. 'sent'
        and 'failed' are recorded whoever reports them: the platform already has the message."""
        require(status, DELIVERY_STATUSES, "delivery status")
        ids = json.dumps(list(message_ids)) if message_ids else None
        fence = " AND lease_owner = %s AND status IN ('pending', 'sending')" if status in ("sending", "pending") else ""
        params = [status, ids, self._now(), delivery_id] + ([self.replica] if fence else [])
        count = await self._rowcount(
            "UPDATE deliveries SET status = %s, message_ids = COALESCE(%s::text, message_ids), updated_at = %s "
            f"WHERE id = %s{fence}", params)
        if count == 1:
            return
        if await self._one("SELECT 1 FROM deliveries WHERE id = %s", [delivery_id]) is None:
            raise KeyError(f"no delivery {delivery_id}")
        if status == "sending":
            raise LeaseLost(f"delivery {delivery_id} was taken over by another replica (or sent)")

    # Inbound de-duplication, channel settings, refusal notices ------------------------------

    async def mark_seen(self, platform: str, event_id: str) -> bool:
        """Remember an inbound event id; True the first time (on any replica), False after."""
        count = await self._rowcount(_MARK_SEEN, [platform, event_id, self._now()])
        return count == 1

    async def prune_seen(self, before: datetime) -> int:
        return await self._rowcount("DELETE FROM seen_events WHERE seen_at < %s", [to_iso(before)])

    async def take_question(self, *, platform: str, event_id: str, chat_id: str, thread_id: str | None,
                            preset_of: Callable[[str | None], str], queued: bool = False, limit: int = 500,
                            **turn: Any) -> TakenQuestion | None:
        """Two round trips for a question in an open session: one statement marks the event seen
        and reads the session, the chat's stored preset and whether another replica has an
        unfinished turn of it (`busy_elsewhere`); then the turn (`start_turn`, pipelined). A new
        chat's session is opened in a trip of its own. The history is read once the turn may
        run (`wait_turns_ahead`)."""
        thread = thread_key(thread_id)
        row = await self._one(
            f"WITH seen AS ({_MARK_SEEN} RETURNING 1), open AS ({_OPEN_SESSION}) "
            f"SELECT EXISTS (SELECT 1 FROM seen), (SELECT id FROM open), ({_CHANNEL_PRESET}), "
            f"{BUSY_ELSEWHERE.format(session='(SELECT id FROM open)')}",
            [platform, event_id, self._now(), platform, chat_id, thread, platform, chat_id, self.replica])
        assert row is not None
        first, session_id, stored, busy = row
        if not first:
            return None
        if session_id is None:  # a new chat (or thread): nothing of it can be running elsewhere
            session_id = await self.active_session(platform, chat_id, thread_id)
        # Several replicas: a turn of this session unfinished on another one queues this one.
        queued = queued or bool(busy)
        preset = preset_of(stored)
        turn_id = await self.start_turn(session_id=session_id, platform=platform, chat_id=chat_id,
                                        thread_id=thread_id, event_id=event_id, preset=preset, queued=queued, **turn)
        return TakenQuestion(turn_id, session_id, preset, queued)

    async def channel_preset(self, platform: str, chat_id: str) -> str | None:
        row = await self._one(_CHANNEL_PRESET, [platform, chat_id])
        return row[0] if row else None

    async def set_channel_preset(self, platform: str, chat_id: str, preset: str | None, by_user: str) -> None:
        if preset is None:
            await self._rowcount("DELETE FROM channel_settings WHERE platform = %s AND chat_id = %s",
                                 [platform, chat_id])
            return
        await self._rowcount(
            "INSERT INTO channel_settings (platform, chat_id, preset, updated_by, updated_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (platform, chat_id) DO UPDATE SET preset = excluded.preset, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            [platform, chat_id, preset, by_user, self._now()])

    async def refusal_notice_due(self, platform: str, chat_id: str, interval_s: float) -> bool:
        """True at most once per `interval_s` per chat (across replicas: one conditional upsert)."""
        now = self._clock.now()
        cutoff = to_iso(now - timedelta(seconds=interval_s))
        count = await self._rowcount(
            "INSERT INTO refusal_notices (platform, chat_id, last_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (platform, chat_id) DO UPDATE SET last_at = excluded.last_at "
            "WHERE refusal_notices.last_at <= %s",
            [platform, chat_id, to_iso(now), cutoff])
        return count == 1

    # Digest claims ---------------------------------------------------------------------------

    async def digest_state(self) -> DigestState:
        row = await self._one(
            "SELECT EXISTS (SELECT 1 FROM digests), "
            "(SELECT MAX(period_end) FROM digests WHERE status IN ('baseline', 'sending', 'sent'))", [])
        assert row is not None
        return DigestState(bool(row[0]), from_iso(row[1]) if row[1] else None)

    async def claim_digest(self, start: datetime, end: datetime, status: str, at: datetime) -> bool:
        """Record a period as `status`; False when already recorded (and not failed) — by any
        replica: the primary key on period_end decides."""
        require(status, DIGEST_STATUSES, "digest status")
        count = await self._rowcount(postgres_dialect(CLAIM_DIGEST),
                                     [to_iso(end), to_iso(start), status, to_iso(at), to_iso(at)])
        return count == 1

    async def finish_digest(self, end: datetime, status: str, at: datetime, dollars: float | None,
                            error: str | None) -> None:
        require(status, DIGEST_STATUSES, "digest status")
        await self._rowcount(postgres_dialect(FINISH_DIGEST), [status, to_iso(at), dollars, error, to_iso(end)])
