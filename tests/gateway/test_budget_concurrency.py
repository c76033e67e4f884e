"""Budgets hold when one user fires many turns at once: admission counts what the turns already
running are expected to cost, so the refusal comes at once and the overshoot stays bounded."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import BudgetSettings
from gateway.costs.commands import DEFAULT_OUTPUT_TOKENS, estimate_turn_usd
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import make_gateway

LIMIT = 0.0001
GROUPS = tuple(f"g{i}" for i in range(20))


async def spent(gw) -> float:
    return await gw.store.run(lambda db: db.execute("select total(cost_usd) from model_calls").fetchone()[0])


async def fire(gw, chat, text: str, groups=GROUPS) -> None:
    await asyncio.gather(*(chat.push(chat.message(text, chat=group, user="u1")) for group in groups))


def refusals(chat) -> list[str]:
    return [n for n in chat.notices() if "Nothing was run" in n]


async def test_twenty_turns_at_once_in_twenty_groups_stay_within_the_budget(fake, http, tmp_path):
    release = asyncio.Event()

    async def held_aggregator(_):
        await release.wait()
        return Reply(text="an answer")

    fake.handler("agg", held_aggregator)
    gw, chat = await make_gateway(fake, http, tmp_path, allowed=GROUPS,
                                  budgets=BudgetSettings(per_user_usd_day=LIMIT, per_chat_usd_month=None))
    await fire(gw, chat, "/moa spend my budget")
    # The refusals come at once, while the admitted turn still waits for its aggregator.
    await chat.wait_for(lambda: len(refusals(chat)) == 19)
    assert not release.is_set() and len(fake.for_model("agg")) == 1
    assert "held for 1 running turn" in refusals(chat)[0]
    release.set()
    await gw.idle()

    assert len(chat.final_answers()) == 1
    total = await spent(gw)
    assert 0 < total <= LIMIT  # before the fix: all 20 ran, about 11x the limit
    turns = await gw.store.run(lambda db: list(db.query("select status, count(*) n from turns group by status")))
    assert {t["status"]: t["n"] for t in turns} == {"done": 1, "refused": 19}


async def test_the_estimate_comes_from_recent_turns_once_there_are_some(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path, allowed=GROUPS,
                                  budgets=BudgetSettings(per_user_usd_day=LIMIT, per_chat_usd_month=None))
    await chat.push(chat.message("/moa a first turn", chat="g0", user="u1"))
    await gw.idle()
    one_turn = await spent(gw)
    assert one_turn < LIMIT / 1.5  # room for exactly one more turn at this price

    release = asyncio.Event()

    async def held_aggregator(_):
        await release.wait()
        return Reply(text="answer from agg")

    fake.handler("agg", held_aggregator)
    await fire(gw, chat, "/moa a first turn", GROUPS[1:])
    await chat.wait_for(lambda: len(refusals(chat)) == 18)
    release.set()
    await gw.idle()
    assert len(chat.final_answers()) == 2
    # Overshoot: at most the turn already running beyond what the check expected of it.
    assert await spent(gw) <= LIMIT + one_turn


async def test_a_hold_shrinks_as_the_turn_books_its_calls(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    gw.reservations.reserve(1, ["user_day:p:u"], 0.5)
    assert gw.reservations.held("user_day:p:u") == (0.5, 1)
    from moa_core.values import CallRecord, Cost, Usage

    gw.reservations.booked(1, CallRecord("reference", 1, 0, "f", "m", "ok", 1, Usage(), Cost(0.2, "config")))
    assert gw.reservations.held("user_day:p:u") == pytest.approx((0.3, 1))
    gw.reservations.booked(1, CallRecord("aggregator", 1, 0, "f", "m", "ok", 1, Usage(), Cost(0.9, "config")))
    assert gw.reservations.held("user_day:p:u") == (0.0, 1)  # never negative: the rows count instead
    gw.reservations.release(1)
    assert gw.reservations.held("user_day:p:u") == (0.0, 0)


def test_the_price_estimate_assumes_long_answers_when_max_tokens_is_unset(tmp_path):
    from gateway.config import parse_config

    raw = {
        "gateway": {"database": str(tmp_path / "x.db")},
        "providers": {"fake": {"api": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "K",
                               "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0}},
        "presets": {"default": {"references": ["fake:a", "fake:b"], "aggregator": "fake:agg"}},
    }
    config = parse_config(raw, tmp_path / "c.toml")
    estimate = estimate_turn_usd(config.engine.presets["default"], config.engine.providers, 400)
    out = DEFAULT_OUTPUT_TOKENS
    assert estimate == pytest.approx((2 * (100 + 2 * out) + (100 + 2 * out) + 2 * out) / 1e6)
