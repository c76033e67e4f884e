"""Every model call is handed over (`CallFinished`) the moment it ends, so its spend can be booked
before the turn is over; a cancelled turn hands over the calls it cut, with estimated usage."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from moa_core.events import CallFinished, ReferencesDone, TextDelta
from moa_core.values import Message
from tests.fakes.provider_server import Reply
from tests.moa_core.engine_kit import EventLog, engine, preset


def user(text: str) -> list[Message]:
    return [Message("user", text)]


def key(record) -> tuple:
    return (record.role, record.step, record.index, record.status, record.late)


async def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_each_call_is_handed_over_once_as_it_ends(fake, http):
    fake.reply("agg", Reply(tool_calls=[("c1", "calculator", {"expression": "2+2"})]), Reply(text="four"))
    p = preset(refs=("oa:ref-a", "oa:ref-b", "moa:other"), tools=("calculator",))
    log = EventLog()
    result = await engine(fake, http, p).run_turn("p", user("q"), on_event=log)

    booked = [e.record for e in log.of(CallFinished)]
    assert Counter(booked) == Counter(result.calls)
    assert len(booked) == 5  # 3 references (one skipped) and 2 aggregator steps
    # A reference's record comes before the fan-out is over, the aggregator's right after its step.
    kinds = log.kinds()
    assert kinds.index("CallFinished") < kinds.index("ReferencesDone")
    assert [r.step for r in booked if r.role == "aggregator"] == [1, 2]


async def test_reused_advice_makes_no_call_and_hands_over_nothing_for_it(fake, http):
    moa = engine(fake, http, preset())
    await moa.run_turn("p", user("same"), session="s")
    log = EventLog()
    await moa.run_turn("p", user("same"), session="s", on_event=log)
    assert [key(e.record) for e in log.of(CallFinished)] == [("aggregator", 1, 0, "ok", False)]


async def test_a_late_reference_is_handed_over_once_when_it_ends(fake, http):
    fake.reply("ref-c", Reply(text="slow c", delay=0.5))
    p = preset(refs=("oa:ref-a", "oa:ref-b", "oa:ref-c"), quorum=2, quorum_grace=0.05, reference_timeout=5)
    log = EventLog()
    result = await engine(fake, http, p).run_turn("p", user("q"), on_event=log)
    late = [e.record for e in log.of(CallFinished) if e.record.late]
    assert [(r.index, r.status) for r in late] == [(2, "ok")]
    assert len(log.of(CallFinished)) == len(result.calls) == 4


async def test_a_turn_cancelled_while_the_aggregator_hangs_hands_over_what_ran(fake, http):
    fake.reply("ref-a", Reply(text="advice a"))
    fake.reply("ref-b", Reply(text="advice b"))
    fake.reply("agg", Reply(hang=True))
    log = EventLog()
    moa = engine(fake, http, preset(agg="local:agg", stream=False))
    turn = asyncio.create_task(moa.run_turn("p", user("q" * 400), on_event=log))
    await wait_for(lambda: len(fake.for_model("agg")) == 1, "the aggregator call")
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn

    booked = [e.record for e in log.of(CallFinished)]
    assert sorted(key(r) for r in booked) == [
        ("aggregator", 1, 0, "cut", False), ("reference", 1, 0, "ok", False), ("reference", 1, 1, "ok", False),
    ]
    [cut] = [r for r in booked if r.status == "cut"]
    assert cut.usage.source == "estimated" and cut.usage.input >= 100  # 400 characters asked
    assert cut.cost.usd == 0.0 and cut.cost.source == "config"  # priced from the estimate
    assert "cut" in cut.error


class _StallingLog(EventLog):
    """Stops reading the stream after three pieces of text (the cancellation lands there)."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = asyncio.Event()

    async def __call__(self, event) -> None:
        await super().__call__(event)
        if isinstance(event, TextDelta) and len(self.of(TextDelta)) == 3:
            self.stalled.set()
            await asyncio.Event().wait()


async def test_a_stream_cut_by_cancellation_counts_the_text_received(fake, http):
    fake.reply("agg", Reply(text="x" * 4000, chunk_chars=40))
    log = _StallingLog()
    moa = engine(fake, http, preset(refs=(), stream=True))
    turn = asyncio.create_task(moa.run_turn("p", user("q"), on_event=log))
    await asyncio.wait_for(log.stalled.wait(), 5)
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    [cut] = [e.record for e in log.of(CallFinished)]
    assert cut.status == "cut" and cut.usage.source == "estimated"
    assert cut.usage.output == 30  # 120 characters received, about four a token


async def test_a_turn_cancelled_during_the_fan_out_hands_over_the_cut_references(fake, http):
    fake.reply("ref-a", Reply(text="advice a"))
    fake.reply("ref-b", Reply(hang=True))
    log = EventLog()
    turn = asyncio.create_task(engine(fake, http, preset(reference_timeout=30)).run_turn("p", user("q"), on_event=log))
    await wait_for(lambda: any(e.record.index == 0 for e in log.of(CallFinished)), "reference a")
    await wait_for(lambda: len(fake.for_model("ref-b")) == 1, "reference b asked")
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    assert sorted(key(e.record) for e in log.of(CallFinished)) == [
        ("reference", 1, 0, "ok", False), ("reference", 1, 1, "cut", False),
    ]
    assert not log.of(ReferencesDone)


async def test_a_straggler_is_cut_and_handed_over_when_the_turn_is_cancelled(fake, http):
    fake.reply("ref-c", Reply(hang=True))
    fake.reply("agg", Reply(hang=True))
    p = preset(refs=("oa:ref-a", "oa:ref-b", "oa:ref-c"), quorum=2, quorum_grace=0.05, reference_timeout=30)
    log = EventLog()
    turn = asyncio.create_task(engine(fake, http, p).run_turn("p", user("q"), on_event=log))
    await wait_for(lambda: len(fake.for_model("agg")) == 1, "the aggregator call")
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    assert sorted(key(e.record) for e in log.of(CallFinished)) == [
        ("aggregator", 1, 0, "cut", False), ("reference", 1, 0, "ok", False), ("reference", 1, 1, "ok", False),
        ("reference", 1, 2, "cut", True),
    ]


class _BrokenAggregator:
    """A client whose aggregator call raises a bug (not a ProviderError) after the references."""

    def __init__(self, inner):
        self.inner = inner

    async def complete(self, request, on_text=None):
        if request.model == "agg":
            raise KeyError("a bug below the engine")
        return await self.inner.complete(request, on_text)


async def test_a_call_that_raises_a_bug_is_handed_over_as_failed_before_the_error(fake, http):
    moa = engine(fake, http, preset())
    moa._client = _BrokenAggregator(moa._client)
    log = EventLog()
    with pytest.raises(KeyError):
        await moa.run_turn("p", user("q"), on_event=log)
    assert sorted(key(e.record) for e in log.of(CallFinished)) == [
        ("aggregator", 1, 0, "failed", False), ("reference", 1, 0, "ok", False), ("reference", 1, 1, "ok", False),
    ]
