"""The gateway's SQLite schema, as a list of named migration steps (sqlite-utils 4 `Migrations`).

Each function is one schema step, recorded by name in `_sqlite_migrations` when applied, inside
the same transaction as its DDL. A step that has shipped is never edited: change the schema by
adding a new function at the end.

Conventions: timestamps are UTC ISO-8601 text with microseconds and a `+00:00` offset (fixed
width, so text order is time order); a missing thread is stored as '' so that it can take part
in keys and unique indexes; JSON columns hold text.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("moa_gateway")


@migrations()
def m001_conversations(db: Database) -> None:
    """Sessions, their messages, turns and one row per model call."""
    db["sessions"].create(
        {
            "id": int,
            "platform": str,
            "chat_id": str,
            "thread_id": str,
            "started_at": str,
            "closed_at": str,
        },
        pk="id",
        not_null={"platform", "chat_id", "thread_id", "started_at"},
        defaults={"thread_id": ""},
    )
    # At most one open session per platform + chat + thread.
    db.execute(
        "CREATE UNIQUE INDEX sessions_open ON sessions (platform, chat_id, thread_id) "
        "WHERE closed_at IS NULL"
    )

    db["turns"].create(
        {
            "id": int,
            "session_id": int,
            "platform": str,
            "chat_id": str,
            "thread_id": str,
            "user_id": str,
            "user_name": str,
            "event_id": str,
            "message_id": str,
            "preset": str,
            "prompt": str,
            "status": str,
            "answer": str,
            "cost_usd": float,
            "error": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
        not_null={"session_id", "platform", "chat_id", "thread_id", "user_id", "preset", "status",
                  "started_at"},
        defaults={"thread_id": ""},
    )
    db["turns"].create_index(["session_id"])
    db["turns"].create_index(["platform", "chat_id", "started_at"])
    db["turns"].create_index(["platform", "user_id", "started_at"])
    db["turns"].create_index(["started_at"])
    # Turns cut by a crash are looked up at every start: keep that index tiny.
    db.execute("CREATE INDEX turns_running ON turns (id) WHERE status = 'running'")

    db["messages"].create(
        {
            "id": int,
            "session_id": int,
            "turn_id": int,
            "role": str,
            "content": str,
            "tool_calls": str,
            "tool_call_id": str,
            "name": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id"), ("turn_id", "turns", "id")],
        not_null={"session_id", "role", "content", "created_at"},
        defaults={"content": ""},
    )
    db["messages"].create_index(["session_id", "id"])
    db["messages"].create_index(["turn_id"])

    db["model_calls"].create(
        {
            "id": int,
            "turn_id": int,
            "role": str,
            "step": int,
            "idx": int,
            "provider": str,
            "model": str,
            "status": str,
            "latency_ms": int,
            "input": int,
            "cache_read": int,
            "cache_write": int,
            "output": int,
            "reasoning": int,
            "usage_source": str,
            "cost_usd": float,
            "cost_source": str,
            "error": str,
            "late": int,
            "created_at": str,
            # Copied from the turn so that cost queries never join.
            "platform": str,
            "chat_id": str,
            "user_id": str,
            "preset": str,
        },
        pk="id",
        foreign_keys=[("turn_id", "turns", "id")],
        not_null={"turn_id", "role", "step", "idx", "provider", "model", "status", "latency_ms",
                  "input", "cache_read", "cache_write", "output", "reasoning", "usage_source",
                  "cost_source", "late", "created_at", "platform", "chat_id", "user_id", "preset"},
        defaults={"late": 0},
    )
    db["model_calls"].create_index(["turn_id"])
    db["model_calls"].create_index(["created_at"])
    db["model_calls"].create_index(["platform", "chat_id", "created_at"])
    db["model_calls"].create_index(["platform", "user_id", "created_at"])
    db["model_calls"].create_index(["preset", "created_at"])


@migrations()
def m002_gateway_state(db: Database) -> None:
    """Channel defaults, seen inbound events, the delivery ledger and refusal-notice times."""
    db["channel_settings"].create(
        {"platform": str, "chat_id": str, "preset": str, "updated_by": str, "updated_at": str},
        pk=("platform", "chat_id"),
        not_null={"platform", "chat_id", "preset", "updated_at"},
    )

    db["seen_events"].create(
        {"platform": str, "event_id": str, "seen_at": str},
        pk=("platform", "event_id"),
        not_null={"platform", "event_id", "seen_at"},
    )
    db["seen_events"].create_index(["seen_at"])

    db["deliveries"].create(
        {
            "id": int,
            "turn_id": int,
            "platform": str,
            "chat_id": str,
            "thread_id": str,
            "reply_to_id": str,
            "reply_handle": str,
            "kind": str,
            "payload": str,
            "status": str,
            "message_ids": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("turn_id", "turns", "id")],
        not_null={"platform", "chat_id", "thread_id", "kind", "payload", "status", "message_ids",
                  "created_at", "updated_at"},
        defaults={"thread_id": "", "message_ids": "[]"},
    )
    db["deliveries"].create_index(["turn_id"])
    # Unfinished deliveries are scanned at every start: keep that index tiny.
    db.execute(
        "CREATE INDEX deliveries_open ON deliveries (id) WHERE status IN ('pending', 'sending')"
    )

    db["refusal_notices"].create(
        {"platform": str, "chat_id": str, "last_at": str},
        pk=("platform", "chat_id"),
        not_null={"platform", "chat_id", "last_at"},
    )


@migrations()
def m003_digests(db: Database) -> None:
    """The cost digests: one row per period, claimed before sending so none is sent twice.

    status: baseline (the first start: the period before it is not owed), sending, sent, failed.
    """
    db["digests"].create(
        {
            "period_end": str,
            "period_start": str,
            "status": str,
            "dollars": float,
            "error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="period_end",
        not_null={"period_end", "period_start", "status", "created_at", "updated_at"},
    )


@migrations()
def m004_spend_indexes(db: Database) -> None:
    """Budget checks and per-chat sums read only the index: add cost_usd to the chat and user
    indexes of model_calls (the new ones replace the old, whose columns they start with)."""
    db["model_calls"].create_index(
        ["platform", "chat_id", "created_at", "cost_usd"], index_name="idx_model_calls_chat_spend"
    )
    db["model_calls"].create_index(
        ["platform", "user_id", "created_at", "cost_usd"], index_name="idx_model_calls_user_spend"
    )
    db.execute("DROP INDEX idx_model_calls_platform_chat_id_created_at")
    db.execute("DROP INDEX idx_model_calls_platform_user_id_created_at")


@migrations()
def m005_model_spend_index(db: Database) -> None:
    """The digest's per-day chart reads spend by model over time from an index alone."""
    db.table("model_calls").create_index(
        ["provider", "model", "created_at", "cost_usd"], index_name="idx_model_calls_model_spend"
    )


@migrations()
def m006_unfinished_turns_index(db: Database) -> None:
    """Turns can wait in a queue (status `queued`): the start-up scan for turns a crash cut
    covers those as well as running ones, from a partial index of both."""
    db.execute("DROP INDEX turns_running")
    db.execute("CREATE INDEX turns_unfinished ON turns (id) WHERE status IN ('queued', 'running')")


@migrations()
def m007_attachment_metadata(db: Database) -> None:
    """Images that came with a user message are described, never stored: name, media type,
    pixel size and sha256 digest as JSON in `messages.images` (NULL when none), and the same on
    the turn (`turns.images`) so that a queued turn's message gets them when it begins."""
    db["messages"].add_column("images", str)
    db["turns"].add_column("images", str)


@migrations()
def m008_leases(db: Database) -> None:
    """Leases: which store (gateway replica) owns an unfinished turn or an unsent ledger row, and
    until when it must renew (see gateway.storage.contract). On SQLite there is one process, so
    another owner is always a process that has ended; the columns keep both schemas alike."""
    for table in ("turns", "deliveries"):
        db[table].add_column("lease_owner", str)
        db[table].add_column("lease_until", str)


# The cost rollups' table (gateway.storage.rollups), written once here for both schemas: the
# types are spelt so that SQLite and PostgreSQL read them alike (BIGINT sums, DOUBLE PRECISION
# dollars; SQLite gives both its INTEGER and REAL affinity).
M009_ROLLUPS = (
    "CREATE TABLE cost_rollups (grain TEXT NOT NULL, span TEXT NOT NULL, bucket TEXT NOT NULL, "
    "platform TEXT NOT NULL, chat_id TEXT NOT NULL, user_id TEXT NOT NULL, preset TEXT NOT NULL, "
    "role TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL, "
    "calls BIGINT NOT NULL, turns BIGINT NOT NULL, model_turns BIGINT NOT NULL, dollars DOUBLE PRECISION NOT NULL, "
    "unpriced BIGINT NOT NULL, input BIGINT NOT NULL, cache_read BIGINT NOT NULL, cache_write BIGINT NOT NULL, "
    "output BIGINT NOT NULL, reasoning BIGINT NOT NULL)",
    # The upsert's conflict target; it also serves time-range reads of one grain and span.
    "CREATE UNIQUE INDEX cost_rollups_key ON cost_rollups "
    "(grain, span, bucket, platform, chat_id, user_id, preset, role, provider, model, status)",
    "CREATE INDEX cost_rollups_chat ON cost_rollups (grain, span, platform, chat_id, bucket)",
    "CREATE INDEX cost_rollups_user ON cost_rollups (grain, span, platform, user_id, bucket)",
    # Reports read spend from the rollups now: these two indexes of model_calls served only the
    # chart's per-model scan and per-preset tables, and every booked call paid for them.
    "DROP INDEX idx_model_calls_model_spend",
    "DROP INDEX idx_model_calls_preset_created_at",
    # Turn counts of a period (started, not refused) read from the index alone.
    "CREATE INDEX idx_turns_started_status ON turns (started_at, status)",
)


@migrations()
def m009_cost_rollups(db: Database) -> None:
    """Cost rollups: sums of model_calls per UTC day and hour (gateway.storage.rollups), kept in
    the same transaction as the rows, built here from the rows already stored."""
    from gateway.storage.rollups import BACKFILL

    for statement in (*M009_ROLLUPS, *BACKFILL):
        db.execute(statement)


# A period's turn counts (digest: started, refused, failed or interrupted): the whole period is
# counted on idx_turns_started_at, the few refused and failed ones sought by status, instead of
# reading every turn's status in the period (idx_turns_started_status, which only that served).
M010_TURN_COUNTS = (
    "CREATE INDEX idx_turns_status_started ON turns (status, started_at)",
    "DROP INDEX idx_turns_started_status",
)


@migrations()
def m010_turn_status_counts(db: Database) -> None:
    """Turn counts by status seek the status (gateway.costs.digest)."""
    for statement in M010_TURN_COUNTS:
        db.execute(statement)
