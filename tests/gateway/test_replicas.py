"""Two real Gateways (two stores, two adapters) on one PostgreSQL database, in this process:
questions of one chat arriving at both replicas run one at a time, in arrival order, each with
the history of the ones before; a question seen by both runs once."""

from __future__ import annotations

import asyncio

import pytest

from tests.backends import truncate_all
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import make_gateway, raw_config


@pytest.fixture
async def two(fake, http, tmp_path, pg_database):
    truncate_all(pg_database)
    made = []
    for n in range(2):
        folder = tmp_path / f"r{n}"
        folder.mkdir()
        made.append(await make_gateway(fake, http, folder, raw=raw_config(fake, pg_database)))  # type: ignore[arg-type]
    yield made
    for gw, _ in made:
        await gw.shutdown(grace_s=2)
        await gw.store.close()


async def test_one_chat_on_two_replicas_runs_one_turn_at_a_time_in_arrival_order(fake, two):
    (a, chat_a), (b, chat_b) = two
    release = asyncio.Event()

    async def held_first(request):
        if "first" in request.body["messages"][-1]["content"]:
            await release.wait()
            return Reply(text="answer one")
        return Reply(text="answer two")

    fake.handler("agg", held_first)
    await chat_a.push(chat_a.message("/moa first", event_id="ev-1"))
    await fake.wait_for_requests(3)  # references and the held aggregator of the first turn
    await chat_b.push(chat_b.message("/moa second", event_id="ev-2"))  # same chat, other replica
    await asyncio.sleep(0.5)
    assert len(fake.for_model("agg")) == 1  # the second waits for the first, on the other replica
    release.set()
    await a.idle()
    await b.idle()
    first, second = (r.body["messages"] for r in fake.for_model("agg"))
    assert "second" not in str(first)
    # The second turn ran after the first and sees it: question, answer, then its own question.
    assert [m["role"] for m in second][:3] == ["user", "assistant", "user"]
    assert "answer one" in second[1]["content"]
    assert [x.text for x in chat_a.final_answers()] == ["answer one"]
    assert [x.text for x in chat_b.final_answers()] == ["answer two"]


async def test_the_same_event_on_both_replicas_runs_once(fake, two):
    (a, chat_a), (b, chat_b) = two
    fake.reply("agg", Reply(text="only once"))
    await asyncio.gather(chat_a.push(chat_a.message("/moa hello", event_id="same")),
                         chat_b.push(chat_b.message("/moa hello", event_id="same")))
    await a.idle()
    await b.idle()
    assert len(fake.for_model("agg")) == 1
    assert len(chat_a.final_answers()) + len(chat_b.final_answers()) == 1
