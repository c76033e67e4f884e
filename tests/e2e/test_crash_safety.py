"""Crash safety with a real process: `python -m gateway.cli run` as a subprocess, talking to the
fake Bot API and the fake model provider in this test process, killed at the worst moments.

(a) SIGKILL after the answer is recorded in the ledger but before Telegram got it: after a
    restart the chat shows the answer exactly once and the ledger row is `sent`.
(b) SIGKILL in the middle of the reference fan-out: after a restart the chat is told its question
    was interrupted, the turn is `interrupted`, and no stored row was lost or corrupted.
(c) SIGTERM during a turn: no new turns are taken, the running one finishes within the grace,
    and the process exits 0.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from adapters.telegram.adapter import RECOVERED_MARK
from tests.e2e.kit import (
    GROUP_ID,
    GatewayProcess,
    group_update,
    query,
    texts,
    wait_until,
    with_marker,
    write_config,
)
from tests.fakes.provider_server import Reply
from tests.fakes.telegram_server import FakeTelegram

FOOTER = " tokens · "  # only the final answer carries the footer


def db(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


async def wait_for_final(telegram: FakeTelegram, marker: str, process: GatewayProcess) -> None:
    await wait_until(lambda: any(FOOTER in t for t in with_marker(telegram, GROUP_ID, marker)),
                     f"the final answer with {marker!r}",
                     explain=lambda: f"chat shows: {texts(telegram, GROUP_ID)}\n{process.tail()}")


async def wait_for_row(path: Path, sql: str, what: str, process: GatewayProcess) -> None:
    await wait_until(lambda: path.exists() and bool(query(path, sql)), what, explain=process.tail)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
async def test_killed_after_the_answer_is_recorded_but_before_it_is_sent(
    stream, tmp_path, provider, telegram, spawn
):
    provider.reply("agg", Reply(text="The recorded answer RECORDED-MARK is here."))
    config = write_config(tmp_path, provider, telegram, gateway={"stream": stream})
    # Streamed, the final answer is an edit of the streamed message; otherwise a new message.
    method = "editMessageText" if stream else "sendMessage"
    final = telegram.hold_next(method, when=lambda p: "RECORDED-MARK" in p["text"] and FOOTER in p["text"])

    first = await spawn(config, "first")
    telegram.push_update(group_update("/moa crash while sending", message_id=10))
    await wait_until(final.arrived.is_set, f"the final answer's {method}", explain=first.tail)
    await first.kill()

    [turn] = query(db(tmp_path), "select status, answer from turns")
    assert turn["status"] == "done" and "RECORDED-MARK" in turn["answer"]
    [delivery] = query(db(tmp_path), "select kind, status from deliveries")
    assert delivery["kind"] == "answer" and delivery["status"] != "sent"
    assert not any(FOOTER in t for t in texts(telegram, GROUP_ID))

    second = await spawn(config, "restart")
    await wait_for_final(telegram, "RECORDED-MARK", second)
    await wait_for_row(db(tmp_path), "select id from deliveries where status = 'sent'", "the ledger row sent", second)

    [shown] = with_marker(telegram, GROUP_ID, "RECORDED-MARK")
    # Streamed, the final answer edits the streamed message (idempotent). Not streamed, the send
    # was under way when the process died: Telegram cannot tell whether it applied it, so the
    # one send after the restart is marked as recovered (see the next test for the repeat).
    answer = shown.removeprefix(RECOVERED_MARK + "\n\n") if not stream else shown
    assert answer.startswith("The recorded answer RECORDED-MARK is here.") and FOOTER in shown
    assert shown.startswith(RECOVERED_MARK) is (not stream)
    assert [d["status"] for d in query(db(tmp_path), "select status from deliveries")] == ["sent"]
    assert len(provider.for_model("agg")) == 1  # delivered from the ledger, not asked again


async def test_killed_after_telegram_applied_a_send_but_before_it_was_recorded(tmp_path, provider, telegram, spawn):
    # The window: Telegram applied sendMessage, the process died before it heard back. The Bot
    # API cannot say whether a send was applied, so the rule is: after a restart, send once
    # more, marked "recovered". At most one repeat, and it reads as one.
    provider.reply("agg", Reply(text="The applied answer APPLIED-MARK is here."))
    config = write_config(tmp_path, provider, telegram, gateway={"stream": False})
    telegram.stall_next("sendMessage", 60, when=lambda p: "APPLIED-MARK" in p["text"])

    first = await spawn(config, "first")
    telegram.push_update(group_update("/moa crash after applying", message_id=10))
    await wait_until(lambda: bool(with_marker(telegram, GROUP_ID, "APPLIED-MARK")), "the applied send",
                     explain=first.tail)
    await first.kill()
    [delivery] = query(db(tmp_path), "select status from deliveries where kind = 'answer'")
    assert delivery["status"] == "sending"

    second = await spawn(config, "restart")
    await wait_for_row(db(tmp_path), "select id from deliveries where status = 'sent'", "the ledger row sent", second)
    original, recovered = with_marker(telegram, GROUP_ID, "APPLIED-MARK")
    assert original.startswith("The applied answer APPLIED-MARK is here.")
    assert recovered.startswith(RECOVERED_MARK) and "The applied answer APPLIED-MARK is here." in recovered
    await wait_until(lambda: second.exited or "moa-gateway running" in second.log(), "the gateway running",
                     explain=second.tail)
    assert len(with_marker(telegram, GROUP_ID, "APPLIED-MARK")) == 2  # once more, never again
    assert len(provider.for_model("agg")) == 1


async def test_killed_during_the_fan_out(tmp_path, provider, telegram, spawn):
    provider.reply("ref-a", Reply(text="advice A"), Reply(hang=True))
    provider.reply("ref-b", Reply(text="advice B"), Reply(hang=True))
    provider.reply("agg", Reply(text="First answer FIRST-MARK."))
    config = write_config(tmp_path, provider, telegram)

    first = await spawn(config, "first")
    telegram.push_update(group_update("/moa a first question", message_id=10))
    await wait_for_final(telegram, "FIRST-MARK", first)
    await wait_for_row(db(tmp_path), "select id from deliveries where status = 'sent'", "the first answer sent", first)
    telegram.push_update(group_update("/moa a question cut by a crash", message_id=11))
    await provider.wait_for_requests(5, timeout=20)  # 3 of the first turn, both references again
    await wait_for_row(db(tmp_path), "select id from turns where status = 'running'", "the running turn", first)
    before = {table: query(db(tmp_path), f"select * from {table} order by id")
              for table in ("sessions", "turns", "messages", "model_calls", "deliveries")}
    assert len(before["model_calls"]) == 3 and before["messages"]
    await first.kill()

    second = await spawn(config, "restart")
    await wait_until(lambda: any("interrupted" in t for t in texts(telegram, GROUP_ID)), "the interruption notice",
                     explain=lambda: f"chat shows: {texts(telegram, GROUP_ID)}\n{second.tail()}")
    await wait_for_row(db(tmp_path), "select id from deliveries where status = 'sent' and kind = 'notice'",
                       "the notice's ledger row sent", second)

    [notice] = [t for t in texts(telegram, GROUP_ID) if "interrupted" in t]
    assert "a question cut by a crash" in notice
    [cut] = query(db(tmp_path), "select status from turns where message_id = '11'")
    assert cut["status"] == "interrupted"
    assert query(db(tmp_path), "pragma integrity_check") == [{"integrity_check": "ok"}]
    for table, rows in before.items():
        after = {row["id"]: row for row in query(db(tmp_path), f"select * from {table}")}
        for row in rows:
            if table == "turns" and row["status"] == "running":
                continue  # the cut turn: now interrupted, checked above
            if table == "deliveries":
                row = {**row, "updated_at": after[row["id"]]["updated_at"]}
            assert after.get(row["id"]) == row, f"{table} row {row['id']} lost or changed"
    assert len(provider.requests) == 5  # nothing was run again


async def test_a_question_queued_behind_a_cut_turn_is_answered_after_the_restart(tmp_path, provider, telegram,
                                                                                  spawn):
    provider.reply("ref-a", Reply(hang=True), Reply(text="advice A"))
    provider.reply("ref-b", Reply(hang=True), Reply(text="advice B"))
    provider.reply("agg", Reply(text="The queued answer QUEUED-MARK."))
    config = write_config(tmp_path, provider, telegram)

    first = await spawn(config, "first")
    telegram.push_update(group_update("/moa the question that is cut", message_id=10))
    await provider.wait_for_requests(2, timeout=20)
    telegram.push_update(group_update("/moa the question that waits", message_id=11))
    await wait_for_row(db(tmp_path), "select id from turns where status = 'queued'", "the queued turn", first)
    await first.kill()

    second = await spawn(config, "restart")
    await wait_for_final(telegram, "QUEUED-MARK", second)
    [notice] = [t for t in texts(telegram, GROUP_ID) if "interrupted" in t]
    assert "the question that is cut" in notice  # the turn really cut is told; the waiting one is run
    turns = query(db(tmp_path), "select message_id, status from turns order by id")
    assert [(t["message_id"], t["status"]) for t in turns] == [("10", "interrupted"), ("11", "done")]
    asked = provider.for_model("ref-a")[-1].body["messages"][-1]["content"]
    assert "the question that waits" in asked


async def test_sigterm_finishes_the_running_turn_and_takes_no_new_one(tmp_path, provider, telegram, spawn):
    provider.reply("agg", Reply(text="Finished in the grace GRACE-MARK.", delay=1.5))
    config = write_config(tmp_path, provider, telegram, gateway={"shutdown_grace_s": 8.0})

    process = await spawn(config, "run")
    telegram.push_update(group_update("/moa finish before stopping", message_id=10))
    await wait_until(lambda: len(provider.for_model("agg")) == 1, "the aggregator call", explain=process.tail)
    started = time.monotonic()
    await process.signal(signal.SIGTERM)
    await process.wait_logged("shutting down")
    telegram.push_update(group_update("/moa too late", message_id=11))
    code = await process.wait(timeout=20)

    assert code == 0, process.tail()
    assert time.monotonic() - started < 8.0 + 5.0
    [shown] = with_marker(telegram, GROUP_ID, "GRACE-MARK")
    assert FOOTER in shown
    assert [t["status"] for t in query(db(tmp_path), "select status from turns")] == ["done"]
    assert [d["status"] for d in query(db(tmp_path), "select status from deliveries")] == ["sent"]
    assert len(provider.requests) == 3  # nothing asked for "too late"
