"""Spend is booked when a call ends, not when its turn ends: a real `moa-gateway run` process whose
aggregator hangs after both references answered is stopped (SIGTERM past a 1 s grace) or killed
(SIGKILL); the references' rows are in `model_calls` all the same, and after a restart
`/moa cost`, `/moa budget` and the digest count them."""

from __future__ import annotations

import signal
from pathlib import Path

from adapters.figures import format_usd
from tests.e2e.kit import (
    ADMIN_ID,
    GROUP_ID,
    GatewayProcess,
    group_update,
    query,
    texts,
    wait_until,
    write_config,
)
from tests.fakes.provider_server import FakeProvider, Reply
from tests.fakes.telegram_server import FakeTelegram


def calls(db: Path) -> list[dict]:
    return query(db, "select turn_id, role, idx, status, usage_source, cost_usd, input, output "
                     "from model_calls order by role desc, idx")


async def start_a_turn_whose_aggregator_hangs(tmp_path: Path, provider: FakeProvider, telegram: FakeTelegram,
                                              spawn, **gateway) -> tuple[Path, GatewayProcess]:
    provider.reply("ref-a", Reply(text="advice A"))
    provider.reply("ref-b", Reply(text="advice B"))
    provider.reply("agg", Reply(hang=True), Reply(text="later answer"))
    config = write_config(tmp_path, provider, telegram, gateway={"shutdown_grace_s": 1.0, **gateway})
    process = await spawn(config, "first")
    telegram.push_update(group_update("/moa a question cut mid-turn", message_id=10))
    # The summary (with the references' dollars) is in the chat and the aggregator is asked.
    await wait_until(lambda: any("advice A" in t and "advice B" in t for t in texts(telegram, GROUP_ID)),
                     "the reference summary", explain=process.tail)
    await wait_until(lambda: len(provider.for_model("agg")) == 1, "the aggregator call", explain=process.tail)
    return config, process


async def test_sigkill_mid_turn_keeps_the_rows_of_the_references_that_answered(tmp_path, provider, telegram,
                                                                                 spawn):
    db = tmp_path / "gateway.db"
    config, process = await start_a_turn_whose_aggregator_hangs(tmp_path, provider, telegram, spawn)
    await process.kill()

    rows = calls(db)
    assert [(r["role"], r["idx"], r["status"]) for r in rows] == [("reference", 0, "ok"), ("reference", 1, "ok")]
    assert all(r["cost_usd"] > 0 for r in rows)
    [turn] = query(db, "select id, status from turns")
    assert {r["turn_id"] for r in rows} == {turn["id"]} and turn["status"] == "running"

    # After a restart the cut turn is reported, and its spend is counted by /moa cost and budgets.
    restarted = await spawn(config, "restart")
    await wait_until(lambda: any("interrupted" in t for t in texts(telegram, GROUP_ID)), "the interrupted notice",
                     explain=restarted.tail)
    spent = sum(r["cost_usd"] for r in rows)
    telegram.push_update(group_update("/moa cost", message_id=11))
    await wait_until(lambda: any("This chat" in t for t in texts(telegram, GROUP_ID)), "the cost report",
                     explain=restarted.tail)
    [report] = [t for t in texts(telegram, GROUP_ID) if "This chat" in t]
    assert "This chat — day from" in report and format_usd(spent) in report.split("\n")[0]
    # The digest (an admin's /moa digest: the period so far) counts them too.
    shown = len(texts(telegram, GROUP_ID))
    telegram.push_update(group_update("/moa digest", sender=ADMIN_ID, message_id=12))
    await wait_until(lambda: any(format_usd(spent) in t for t in texts(telegram, GROUP_ID)[shown:]),
                     "the digest with the cut turn's spend",
                     explain=lambda: f"chat shows: {texts(telegram, GROUP_ID)[shown:]}\n{restarted.tail()}")
    assert calls(db) == rows  # nothing booked twice after the restart


async def test_sigterm_past_the_grace_books_the_references_and_the_cut_aggregator(tmp_path, provider, telegram,
                                                                                  spawn):
    db = tmp_path / "gateway.db"
    config, process = await start_a_turn_whose_aggregator_hangs(tmp_path, provider, telegram, spawn)
    await process.signal(signal.SIGTERM)
    assert await process.wait(timeout=20) == 0, process.tail()

    rows = calls(db)
    assert [(r["role"], r["idx"], r["status"]) for r in rows] == [
        ("reference", 0, "ok"), ("reference", 1, "ok"), ("aggregator", 0, "cut")]
    cut = rows[-1]
    assert cut["usage_source"] == "estimated" and cut["input"] > 0 and cut["cost_usd"] > 0
    [turn] = query(db, "select status from turns")
    assert turn["status"] == "interrupted"
    assert any("interrupted" in t for t in texts(telegram, GROUP_ID))

    # The budget after a restart counts the cut turn: it is already over a limit below its spend.
    spent = sum(r["cost_usd"] for r in rows)
    with config.open("a", encoding="utf-8") as extra:
        extra.write(f"\n[budgets]\nper_user_usd_day = {spent / 2!r}\n")
    restarted = await spawn(config, "restart")
    telegram.push_update(group_update("/moa budget", message_id=11))
    await wait_until(lambda: any("Budgets:" in t for t in texts(telegram, GROUP_ID)), "the budget report",
                     explain=restarted.tail)
    [budget] = [t for t in texts(telegram, GROUP_ID) if "Budgets:" in t]
    assert f"{format_usd(spent)} of {format_usd(spent / 2)} spent" in budget
    telegram.push_update(group_update("/moa may I ask again?", message_id=12))
    await wait_until(lambda: any("Nothing was run" in t for t in texts(telegram, GROUP_ID)), "the budget refusal",
                     explain=restarted.tail)
    assert len(provider.for_model("agg")) == 1
