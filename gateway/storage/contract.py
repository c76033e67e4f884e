"""The storage contract: what the service, costs and digest may ask of a store, whichever backend.

Two backends implement it — `gateway.storage.sqlite.Store` (one embedded file) and
`gateway.storage.postgres.PostgresStore` (a shared server, for several replicas) — and one test
suite (tests/gateway/test_storage.py) runs against both.

The contract has two parts:

- **Methods that return values** (`Storage` below): sessions and history, turns and their
  model calls, the delivery ledger, seen events, channel settings, refusal notices and digest
  claims. Every write that must be all-or-nothing is one transaction inside the backend.
- **A small read-only query seam** for spend aggregation (`Storage.query`): costs and the
  digest own their SQL and pass it as *portable SQL*, which both backends run unchanged:
    * parameters are `?` placeholders (PostgreSQL's `%s` is produced by the backend; a literal
      `%` must not appear);
    * only functions both dialects share: `COALESCE(SUM(x), 0)` instead of SQLite's `TOTAL`,
      `COUNT(*) - COUNT(x)` instead of summing a boolean;
    * text only SQLite should run is written as a comment, `/*sqlite: ...*/`: SQLite's backend
      unwraps it, PostgreSQL reads a comment. It is for the plan, never the answer: a planner
      hint (`INDEXED BY idx_name`), or an early `SUM`/`GROUP BY` inside a part whose outer
      query regroups the same columns (SQLite then hands up one row per group, where
      PostgreSQL would take parallel workers to it and be slower) — the rows must be the
      same either way, which the storage tests check on both backends.
  Rows come back as tuples (or dicts with `dicts=True`); integers as `int`, reals as `float`.

Shared conventions (both schemas, see `migrations` and `postgres_schema`): times are stored as
fixed-width UTC ISO-8601 text (`to_iso`), so comparing text compares times and portable SQL can
compare a column with a `to_iso` parameter; a missing thread is stored as ''; JSON is text.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from adapters.contract import ChatRef
from moa_core.values import CallRecord, ImagePart, Message, ToolCall

# A lease outlives two missed renewals (renewed every third of it): a live replica never loses
# one; a dead one's rows are taken over within about lease + takeover_every_s.
DEFAULT_LEASE_S = 20.0

TURN_STATUSES = frozenset({"queued", "running", "done", "failed", "interrupted", "refused"})
DELIVERY_STATUSES = frozenset({"pending", "sending", "sent", "failed"})
DIGEST_STATUSES = frozenset({"baseline", "sending", "sent", "failed"})

# Digest claims, in portable SQL (ON CONFLICT ... DO UPDATE ... WHERE is syntax both share):
# a period is inserted, or a failed one taken over; a recorded one is left alone (rowcount 0).
CLAIM_DIGEST = (
    "INSERT INTO digests (period_end, period_start, status, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (period_end) DO UPDATE SET status = excluded.status, "
    "period_start = excluded.period_start, updated_at = excluded.updated_at, error = NULL "
    "WHERE digests.status = 'failed'"
)
FINISH_DIGEST = "UPDATE digests SET status = ?, updated_at = ?, dollars = ?, error = ? WHERE period_end = ?"

_SQLITE_HINT = re.compile(r"/\*sqlite:(.*?)\*/", re.S)


def sqlite_dialect(sql: str) -> str:
    """Portable SQL as SQLite runs it: hint comments unwrapped."""
    return _SQLITE_HINT.sub(lambda m: m.group(1).strip(), sql)


def postgres_dialect(sql: str) -> str:
    """Portable SQL as psycopg runs it: `?` becomes `%s` (hint comments stay comments)."""
    if "%" in sql:
        raise ValueError("portable SQL must not contain '%' (psycopg reads it as a placeholder)")
    return sql.replace("?", "%s")


def is_postgres_url(database: str) -> bool:
    """A `[gateway] database` value names PostgreSQL when it is a libpq URL."""
    return database.startswith(("postgresql://", "postgres://"))


# The last whole second `to_iso` wrote: (year, month, day, hour, minute, second) and its text.
# One tuple, read and replaced whole: the writer thread and the event loop both call to_iso.
_last_second: tuple[tuple[int, ...], str] = ((), "")


def to_iso(moment: datetime) -> str:
    """An aware datetime as fixed-width UTC ISO-8601 text; naive datetimes are refused.

    Called several times per stored turn, on the event loop and in the writer thread, with
    times that share their second: the second's text is kept, only the microseconds are
    formatted (about a third of `isoformat`'s cost, which formats every field)."""
    global _last_second
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"naive datetime {moment!r}: pass an aware datetime")
        moment = moment.astimezone(UTC)
    second = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year)
    known, text = _last_second
    if second != known:
        text = moment.isoformat(timespec="seconds")[:19]
        _last_second = (second, text)
    return f"{text}.{moment.microsecond:06d}+00:00"


def from_iso(text: str) -> datetime:
    """Stored text back to an aware UTC datetime."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # not written by us; read as UTC rather than guess
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def new_replica_id() -> str:
    """A lease owner id: host and process, plus randomness so that a restarted pid differs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def require(value: str, allowed: frozenset[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")


def storable(text: str | None) -> str | None:
    """Text as both backends store it: a NUL character (PostgreSQL's text refuses it, and the
    whole write with it — a binary page in a tool result, a NUL in a prompt) becomes U+FFFD, on
    SQLite too, so both hold the same."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def thread_key(thread_id: str | None) -> str:
    return thread_id or ""


def thread_value(stored: str | None) -> str | None:
    return stored or None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of the outbound ledger: what to post where, and how far it got.

    `message_ids` are the platform ids already posted for it (a `sending` row may have some).
    """

    id: int
    turn_id: int | None
    chat: ChatRef
    kind: str
    payload: dict = field(hash=False)
    status: str
    message_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnRow:
    """A stored turn, as its columns; `thread_id` is None when the turn had no thread."""

    id: int
    session_id: int
    platform: str
    chat_id: str
    thread_id: str | None
    user_id: str
    user_name: str
    event_id: str
    message_id: str
    preset: str
    prompt: str
    status: str
    answer: str | None
    cost_usd: float | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class TakenQuestion:
    """What `Storage.take_question` stored: the turn, its session and preset, whether it was
    stored queued, and the history it runs with (None: read it when it starts)."""

    turn_id: int
    session_id: int
    preset: str
    queued: bool
    history: list[Message] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DigestState:
    """What the digest table says: whether any period is recorded, and the end of the last one
    not owed any more (baseline, sending or sent)."""

    any_recorded: bool
    last_end: datetime | None


class LeaseLost(RuntimeError):
    """This store no longer owns the row: its lease lapsed (the replica stalled) and another
    replica took the row over, or the row was sent meanwhile. What was about to be written or
    sent is dropped (see `PostgresStore`; SQLite has one process per file and never raises it)."""


class HeldLock(Protocol):
    """A lock taken with `Storage.try_lock`; `stop()` releases it (App.close stops extras)."""

    name: str

    async def stop(self) -> None: ...


class Storage(Protocol):
    """What the gateway needs from a store. Times come from the store's injected clock.

    Leases: every unfinished turn and unsent ledger row names the store that owns it
    (`replica`, one per open store) and until when (`lease_s` from the last renewal). The owner
    renews its leases while it lives; `claim_cut_turns` and `pending_deliveries` hand a store
    the rows whose owner is gone — on PostgreSQL those whose lease expired (rows locked by
    another claimant are skipped: FOR UPDATE SKIP LOCKED), on SQLite every row another store
    wrote, since a SQLite file has one gateway process and any earlier one has ended.
    """

    backend: str  # "sqlite" or "postgresql"
    replica: str  # this store's lease owner id
    lease_s: float
    takeover_every_s: float  # how often the gateway should look for rows whose owner is gone
    # True when a write made after another commits with it or after it (SQLite's one writer):
    # a caller may then hand a write over and wait only for a later one (gateway.booking).
    writes_in_order: bool

    async def close(self) -> None: ...

    async def query(self, sql: str, params: Sequence[Any] = (), *, dicts: bool = False) -> list[Any]:
        """Run one read-only statement of portable SQL (see the module docstring)."""
        ...

    async def execute_many(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Portable statements, each run for every one of its parameter rows, all in ONE
        transaction (the cost summaries `gateway.costs.summaries` keeps)."""
        ...

    # Sessions and history
    async def active_session(self, platform: str, chat_id: str, thread_id: str | None) -> int: ...
    async def new_session(self, platform: str, chat_id: str, thread_id: str | None) -> int: ...
    async def history(self, session_id: int, limit: int = 500) -> list[Message]: ...

    # Turns and model calls
    async def start_turn(self, *, session_id: int, platform: str, chat_id: str, thread_id: str | None,
                         user_id: str, user_name: str, event_id: str, message_id: str, preset: str,
                         prompt: str, queued: bool = False, images: Sequence[ImagePart] = ()) -> int: ...
    async def start_turn_with_history(self, *, session_id: int, platform: str, chat_id: str,
                                      thread_id: str | None, user_id: str, user_name: str, event_id: str,
                                      message_id: str, preset: str, prompt: str, queued: bool = False,
                                      images: Sequence[ImagePart] = (),
                                      limit: int = 500) -> tuple[int, list[Message] | None]:
        """`start_turn`, and the session's `history(session_id, limit)` as the turn will run with
        it, read in the same trip to the store — or None when it could still change before the
        turn runs (a queued turn; on PostgreSQL always, since a turn of another replica may be
        ahead: `wait_turns_ahead`), and the caller reads it then."""
        ...
    async def begin_turn(self, turn_id: int) -> None: ...
    async def record_calls(self, turn_id: int, calls: Sequence[CallRecord]) -> None: ...
    async def book_calls(self, calls: Sequence[tuple[int, CallRecord]]) -> None:
        """Model calls of one or more turns, as (turn id, call), in ONE transaction (the gateway
        books calls as they end, those that ended together at once)."""
        ...
    async def recent_turn_costs(self, platform: str, user_id: str, preset: str, limit: int = 5) -> list[float]:
        """Known dollars of this user's last `limit` done turns with `preset`, newest first."""
        ...
    async def complete_turn(self, turn_id: int, *, status: str, answer: str | None, cost_usd: float | None,
                            messages: Sequence[Message], delivery: tuple[ChatRef, str, dict] | None,
                            error: str | None = None, sending: bool = False) -> int | None:
        """`sending=True`: the ledger row is stored as 'sending' (its sender is about to send it:
        one write instead of completing and then marking it)."""
        ...
    async def mark_turn(self, turn_id: int, status: str, error: str | None = None) -> None: ...
    async def unfinished_turns(self) -> list[TurnRow]: ...
    async def claim_cut_turns(self) -> list[TurnRow]:
        """Unfinished turns whose owner is gone, now owned by this store, oldest first."""
        ...
    async def renew_leases(self) -> int:
        """Extend this store's leases on its unfinished turns and unsent ledger rows."""
        ...

    # One turn at a time per session across replicas, in arrival (id) order
    async def busy_elsewhere(self, session_id: int) -> bool:
        """Whether another store (replica) has an unfinished turn in this session: a new turn
        then queues. SQLite: always False (one process; its lanes know its own turns)."""
        ...
    async def wait_turns_ahead(self, session_id: int, turn_id: int) -> None:
        """Return once no earlier turn of this session is unfinished, on any replica (a dead
        replica's are interrupted by the takeover). SQLite: at once (the lanes order turns).
        PostgreSQL: a turn asked to run that `start_turn` stored queued (a turn of another
        replica was unfinished) is begun (`begin_turn`) before this returns."""
        ...
    async def turn(self, turn_id: int) -> TurnRow | None: ...

    # The delivery ledger
    async def mark_delivery(self, delivery_id: int, status: str, message_ids: Sequence[str] = ()) -> None: ...
    async def pending_deliveries(self) -> list[Delivery]:
        """Unsent ledger rows this store should deliver: its own and those whose owner is gone
        (now its own), oldest first."""
        ...

    # Seen events, channel settings, refusal notices
    async def mark_seen(self, platform: str, event_id: str) -> bool: ...
    async def take_question(self, *, platform: str, event_id: str, chat_id: str, thread_id: str | None,
                            user_id: str, user_name: str, message_id: str, prompt: str,
                            preset_of: Callable[[str | None], str], queued: bool = False,
                            limit: int = 500) -> TakenQuestion | None:
        """A new question taken in as few trips to the store as the backend allows (SQLite: one
        writer job, one transaction): the event marked seen (None for a duplicate: nothing is
        stored), the chat's open session (opened if there is none), the turn's preset
        (`preset_of(the chat's stored default or None)`, called once) and the turn stored as
        `start_turn_with_history` stores it. PostgreSQL: two round trips (a new chat's session
        takes a third), and the turn is also `queued` when another replica has an unfinished
        turn of the session (`busy_elsewhere`)."""
        ...
    async def prune_seen(self, before: datetime) -> int: ...
    async def channel_preset(self, platform: str, chat_id: str) -> str | None: ...
    async def set_channel_preset(self, platform: str, chat_id: str, preset: str | None, by_user: str) -> None: ...
    async def refusal_notice_due(self, platform: str, chat_id: str, interval_s: float) -> bool: ...

    # Exclusive roles across replicas (e.g. the one Telegram poller)
    async def try_lock(self, name: str) -> HeldLock | None:
        """Take the named lock for as long as this store is open (or until `stop`), or None
        when another live store holds it. On SQLite (one process) it is always granted."""
        ...

    # Digest claims: a period is claimed before it is sent, so it is sent once
    async def digest_state(self) -> DigestState: ...
    async def claim_digest(self, start: datetime, end: datetime, status: str, at: datetime) -> bool: ...
    async def finish_digest(self, end: datetime, status: str, at: datetime, dollars: float | None,
                            error: str | None) -> None: ...


# Row mapping shared by the backends (rows as dicts of column name to stored value) ----------


def turn_row(row: dict[str, Any]) -> TurnRow:
    return TurnRow(
        id=row["id"],
        session_id=row["session_id"],
        platform=row["platform"],
        chat_id=row["chat_id"],
        thread_id=thread_value(row["thread_id"]),
        user_id=row["user_id"],
        user_name=row["user_name"] or "",
        event_id=row["event_id"] or "",
        message_id=row["message_id"] or "",
        preset=row["preset"],
        prompt=row["prompt"] or "",
        status=row["status"],
        answer=row["answer"],
        cost_usd=row["cost_usd"],
        error=row["error"],
        started_at=from_iso(row["started_at"]),
        finished_at=from_iso(row["finished_at"]) if row["finished_at"] else None,
    )


def delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(
        id=row["id"],
        turn_id=row["turn_id"],
        chat=ChatRef(
            platform=row["platform"],
            chat_id=row["chat_id"],
            thread_id=thread_value(row["thread_id"]),
            reply_to_id=row["reply_to_id"],
            reply_handle=row["reply_handle"],
        ),
        kind=row["kind"],
        payload=json.loads(row["payload"]),
        status=row["status"],
        message_ids=tuple(json.loads(row["message_ids"] or "[]")),
    )


def turn_values(*, session_id: int, platform: str, chat_id: str, thread_id: str | None, user_id: str,
                user_name: str, event_id: str, message_id: str, preset: str, prompt: str, queued: bool,
                at: str, images: Sequence[ImagePart] = (), lease: tuple[str, str]) -> dict[str, Any]:
    return {
        "lease_owner": lease[0],
        "lease_until": lease[1],
        "session_id": session_id,
        "platform": platform,
        "chat_id": chat_id,
        "thread_id": thread_key(thread_id),
        "user_id": user_id,
        "user_name": storable(user_name),
        "event_id": event_id,
        "message_id": message_id,
        "preset": preset,
        "prompt": storable(prompt),
        "images": images_json(images),
        "status": "queued" if queued else "running",
        "answer": None,
        "cost_usd": None,
        "error": None,
        "started_at": at,
        "finished_at": None,
    }


def ledger_values(turn_id: int, chat: ChatRef, kind: str, payload: dict, at: str, *,
                  lease: tuple[str, str]) -> dict[str, Any]:
    return {
        "lease_owner": lease[0],
        "lease_until": lease[1],
        "turn_id": turn_id,
        "platform": chat.platform,
        "chat_id": chat.chat_id,
        "thread_id": thread_key(chat.thread_id),
        "reply_to_id": chat.reply_to_id,
        "reply_handle": chat.reply_handle,
        "kind": kind,
        "payload": json.dumps(payload),
        "status": "pending",
        "message_ids": "[]",
        "created_at": at,
        "updated_at": at,
    }


def message_values(session_id: int, turn_id: int | None, message: Message, at: str) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "turn_id": turn_id,
        "role": message.role,
        "content": storable(message.content),
        "tool_calls": (
            json.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls])
            if message.tool_calls
            else None
        ),
        "tool_call_id": storable(message.tool_call_id),
        "name": storable(message.name),
        "images": images_json(message.images),
        "created_at": at,
    }


def images_json(images: Sequence[ImagePart]) -> str | None:
    """Images described for storage: never their bytes."""
    if not images:
        return None
    return json.dumps([
        {"name": i.name, "media_type": i.media_type, "width": i.width, "height": i.height, "sha256": i.digest}
        for i in images
    ])


def images_from_json(text: str | None) -> tuple[ImagePart, ...]:
    return tuple(
        ImagePart(d["name"], d["media_type"], b"", d.get("width"), d.get("height"), d.get("sha256") or "")
        for d in json.loads(text or "[]")
    )


# A history read's columns, in the order `messages_of` takes them.
MESSAGE_COLUMNS = ("role", "content", "tool_calls", "tool_call_id", "name", "images")


def messages_of(rows: Iterable[Sequence[Any]]) -> list[Message]:
    """Messages from rows of `MESSAGE_COLUMNS`, in their order. A question reads up to 500 of
    them: nearly every one has no tool calls and no images and is built from its tuple at once,
    the rest by `message` (which gives the plain ones the same value)."""
    return [Message(role, content or "", (), call_id, name) if not calls and not images
            else message(dict(zip(MESSAGE_COLUMNS, (role, content, calls, call_id, name, images), strict=True)))
            for role, content, calls, call_id, name, images in rows]


def message(row: dict[str, Any]) -> Message:
    calls = json.loads(row["tool_calls"]) if row["tool_calls"] else []
    return Message(
        role=row["role"],
        content=row["content"] or "",
        tool_calls=tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in calls),
        tool_call_id=row["tool_call_id"],
        name=row["name"],
        images=images_from_json(row.get("images")),
    )


def call_values(turn: dict[str, Any], call: CallRecord, at: str) -> dict[str, Any]:
    return {
        "turn_id": turn["id"],
        "role": call.role,
        "step": call.step,
        "idx": call.index,
        "provider": call.provider,
        "model": call.model,
        "status": call.status,
        "latency_ms": call.latency_ms,
        "input": call.usage.input,
        "cache_read": call.usage.cache_read,
        "cache_write": call.usage.cache_write,
        "output": call.usage.output,
        "reasoning": call.usage.reasoning,
        "usage_source": call.usage.source,
        "cost_usd": call.cost.usd,
        "cost_source": call.cost.source,
        "error": storable(call.error),
        "late": int(call.late),
        "created_at": at,
        "platform": turn["platform"],
        "chat_id": turn["chat_id"],
        "user_id": turn["user_id"],
        "preset": turn["preset"],
    }
