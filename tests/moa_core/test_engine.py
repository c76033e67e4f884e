"""The MoA turn against a fake provider on 127.0.0.1: fan-out, advice, tool loop, cadence, costs."""

from __future__ import annotations

import json

import pytest

from moa_core.advisory import JUDGE_STATE_PROMPT, REFERENCE_SYSTEM_PROMPT
from moa_core.events import (
    Aggregating,
    ReferenceFinished,
    ReferencesDone,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnDone,
)
from moa_core.values import Message, ToolCall
from tests.fakes.provider_server import FakeProvider, Reply
from tests.moa_core.engine_kit import EventLog, engine, preset


def user(text: str) -> list[Message]:
    return [Message("user", text)]


async def test_references_run_concurrently_and_keep_preset_order(fake, http):
    refs = tuple(f"oa:ref-{i}" for i in range(4))
    # Every response is held until all 4 reference requests have arrived: a sequential fan-out
    # would wait forever on the first and hit the reference timeout instead.
    fake.barrier(4)
    for i in range(4):
        fake.reply(f"ref-{i}", Reply(text=f"advice {i}", delay=0.05 * (3 - i)))
    moa = engine(fake, http, preset(refs=refs, reference_timeout=5))
    log = EventLog()
    result = await moa.run_turn("p", user("hello"), on_event=log)

    assert [r.status for r in result.references] == ["ok"] * 4
    assert [r.text for r in result.references] == [f"advice {i}" for i in range(4)]
    finished = [e.result.index for e in log.of(ReferenceFinished)]
    assert sorted(finished) == [0, 1, 2, 3]
    # Reverse delays: the last reference answers first; events come as they finish.
    assert finished[0] == 3
    assert result.answer == "answer from agg"


async def test_failure_timeout_and_recursion_are_labelled_and_the_turn_goes_on(fake, http):
    fake.reply("ref-bad", Reply(status=400))
    fake.reply("ref-slow", Reply(hang=True))
    fake.reply("ref-good", Reply(text="good advice"))
    p = preset(refs=("oa:ref-good", "oa:ref-bad", "oa:ref-slow", "moa:other"), reference_timeout=0.5)
    log = EventLog()
    result = await engine(fake, http, p).run_turn("p", user("q"), on_event=log)

    assert [(r.label, r.status) for r in result.references] == [
        ("oa:ref-good", "ok"),
        ("oa:ref-bad", "failed"),
        ("oa:ref-slow", "timeout"),
        ("moa:other", "skipped"),
    ]
    assert "400" in result.references[1].error
    assert "preset" in result.references[3].error
    assert result.answer == "answer from agg"
    assert result.error is None
    # Every reference (skipped included) is a call record; then the aggregator.
    assert sorted((c.role, c.index, c.status) for c in result.calls) == [
        ("aggregator", 0, "ok"),
        ("reference", 0, "ok"), ("reference", 1, "failed"), ("reference", 2, "timeout"), ("reference", 3, "skipped"),
    ]
    guidance = fake.for_model("agg")[0].body["messages"][-1]["content"]
    assert "good advice" in guidance
    assert "oa:ref-bad" in guidance and "failed" in guidance
    assert len(log.of(ReferencesDone)) == 1
    assert log.kinds()[-1] == "TurnDone"


CONVERSATION = [
    Message("system", "You are the house bot. SECRET-SYSTEM-TEXT"),
    Message("user", "Please compute the total."),
    Message("assistant", "Let me calculate.", (ToolCall("c1", "calculator", '{"expression": "2+2"}'),)),
    Message("tool", "4" + "x" * 9000 + "TAIL", tool_call_id="c1", name="calculator"),
    Message("user", "   "),
    Message("assistant", "The total is 4."),
]


async def test_what_a_reference_receives(fake, http):
    await engine(fake, http, preset(tools=("calculator",))).run_turn("p", CONVERSATION)
    body = fake.for_model("ref-a")[0].body
    messages = body["messages"]
    assert messages[0] == {"role": "system", "content": REFERENCE_SYSTEM_PROMPT}
    assert all(m["role"] in ("user", "assistant") for m in messages[1:])
    assert not any("tool_calls" in m or "tool_call_id" in m for m in messages)
    assert "tools" not in body
    text = json.dumps(messages)
    assert "SECRET-SYSTEM-TEXT" not in text
    assert '[tool call: calculator({\\"expression\\": \\"2+2\\"})]' in text
    assert "characters left out" in text and "TAIL" in text
    assert messages[-1] == {"role": "user", "content": JUDGE_STATE_PROMPT}
    assert "max_tokens" not in body
    assert body["temperature"] == 0.6


async def test_what_the_aggregator_receives(fake, http):
    fake.reply("ref-a", Reply(text="ADVICE-A"))
    fake.reply("ref-b", Reply(text="ADVICE-B"))
    convo = [*CONVERSATION, Message("user", "And now double it.")]
    await engine(fake, http, preset(tools=("calculator", "current_time"))).run_turn("p", convo)
    body = fake.for_model("agg")[0].body
    messages = body["messages"]
    # The full, untrimmed conversation: system prompt, tool call and the whole tool result.
    assert messages[0]["content"].endswith("SECRET-SYSTEM-TEXT")
    assert messages[2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert messages[3]["role"] == "tool" and messages[3]["content"].endswith("TAIL")
    assert len(messages[3]["content"]) == 9005
    last = messages[-1]
    assert last["role"] == "user" and last["content"].startswith("And now double it.")
    assert "ADVICE-A" in last["content"] and "ADVICE-B" in last["content"]
    assert sorted(t["function"]["name"] for t in body["tools"]) == ["calculator", "current_time"]
    assert body["temperature"] == 0.4
    assert "max_tokens" not in body


def tool_loop(fake: FakeProvider, steps: int = 3) -> None:
    replies = [
        Reply(tool_calls=[(f"call{i}", "calculator", {"expression": f"{i}+1"})]) for i in range(1, steps)
    ]
    fake.reply("agg", *replies, Reply(text="final answer"))


async def test_user_turn_cadence_runs_references_once_across_a_tool_loop(fake, http):
    tool_loop(fake)
    log = EventLog()
    result = await engine(fake, http, preset(tools=("calculator",))).run_turn("p", user("q"), on_event=log)
    assert result.answer == "final answer" and result.steps == 3
    assert len(fake.for_model("ref-a")) == 1 and len(fake.for_model("ref-b")) == 1
    assert len(fake.for_model("agg")) == 3
    assert [e.output for e in log.of(ToolCallFinished)] == ["2", "3"]
    assert len(log.of(ToolCallStarted)) == 2
    # The advice stays with the aggregator on every step.
    assert all("moa-reference-advice" in json.dumps(r.body["messages"]) for r in fake.for_model("agg"))
    assert [m.role for m in result.new_messages] == ["assistant", "tool", "assistant", "tool", "assistant"]


async def test_per_iteration_cadence_runs_references_after_each_tool_result(fake, http):
    tool_loop(fake)
    log = EventLog()
    p = preset(tools=("calculator",), fanout="per_iteration")
    result = await engine(fake, http, p).run_turn("p", user("q"), on_event=log)
    assert len(fake.for_model("ref-a")) == 3
    assert len(log.of(ReferencesDone)) == 3
    # The third fan-out saw both tool results.
    third = json.dumps(fake.for_model("ref-a")[2].body["messages"])
    assert "tool result from calculator" in third and third.count("[tool call: calculator") == 2
    assert len([c for c in result.calls if c.role == "reference"]) == 6


async def test_every_n_cadence(fake, http):
    tool_loop(fake, steps=4)
    p = preset(tools=("calculator",), fanout="every_n:2")
    await engine(fake, http, p).run_turn("p", user("q"))
    assert len(fake.for_model("ref-a")) == 2  # steps 1 and 3 of 4


async def test_identical_state_twice_runs_nothing_new(fake, http):
    moa = engine(fake, http, preset())
    first = await moa.run_turn("p", user("same"), session="s1")
    log = EventLog()
    second = await moa.run_turn("p", user("same"), session="s1", on_event=log)
    assert len(fake.for_model("ref-a")) == 1
    assert not log.of(ReferenceFinished) and not log.of(ReferencesDone)
    assert [c.role for c in second.calls] == ["aggregator"]
    assert first.answer == second.answer
    # The cached advice still reaches the aggregator.
    assert "answer from ref-a" in fake.for_model("agg")[1].body["messages"][-1]["content"]
    # Another session with the same state is a different cache entry.
    await moa.run_turn("p", user("same"), session="s2")
    assert len(fake.for_model("ref-a")) == 2


async def test_disabled_preset_runs_the_aggregator_alone(fake, http):
    result = await engine(fake, http, preset(enabled=False)).run_turn("p", user("q"))
    assert not fake.for_model("ref-a") and not fake.for_model("ref-b")
    assert result.answer == "answer from agg" and result.references == ()
    assert fake.for_model("agg")[0].body["messages"] == [{"role": "user", "content": "q"}]


async def test_all_references_failed_the_aggregator_still_answers(fake, http):
    fake.reply("ref-a", Reply(status=401))
    fake.reply("ref-b", Reply(malformed=True))
    result = await engine(fake, http, preset()).run_turn("p", user("q"))
    assert [r.status for r in result.references] == ["failed", "failed"]
    assert result.answer == "answer from agg" and result.error is None


async def test_usage_and_dollars_per_reference_at_its_own_rate(fake, http):
    # ref-a reports its own cost; ref-b is priced by config at zero (local); agg unknown price.
    fake.reply("ref-a", Reply(text="a", cost=0.0125, usage={"input": 100, "cache_read": 40, "output": 20}))
    fake.reply("ref-b", Reply(text="b", usage={"input": 1000, "output": 500}))
    fake.reply("agg", Reply(text="done", usage={"input": 50, "output": 5}))
    p = preset(refs=("oa:ref-a", "local:ref-b"), agg="oa:agg-unknown-model")
    fake.reply("agg-unknown-model", Reply(text="done"))
    result = await engine(fake, http, p).run_turn("p", user("q"))
    a, b = result.references
    assert (a.cost.usd, a.cost.source) == (0.0125, "provider")
    assert (a.usage.input, a.usage.cache_read, a.usage.output) == (100, 40, 20)
    assert (b.cost.usd, b.cost.source) == (0.0, "config")
    assert result.aggregator_cost.usd is None and result.aggregator_cost.source == "unknown"
    assert result.total_cost_usd == pytest.approx(0.0125)


async def test_anthropic_reference_and_aggregator_with_tools(fake, http):
    fake.reply("claude-agg", Reply(tool_calls=[("tu1", "calculator", {"expression": "6*7"})]),
               Reply(text="It is 42."))
    p = preset(refs=("an:claude-ref",), agg="an:claude-agg", tools=("calculator",))
    log = EventLog()
    result = await engine(fake, http, p).run_turn("p", user("6 times 7?"), on_event=log)
    assert result.answer == "It is 42."
    ref_body = fake.for_model("claude-ref")[0].body
    assert ref_body["system"] == REFERENCE_SYSTEM_PROMPT and "tools" not in ref_body
    second = fake.for_model("claude-agg")[1].body
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"
    assert second["messages"][-1]["content"][0]["content"] == "42"
    assert "".join(e.text for e in log.of(TextDelta) if e.step == 2) == "It is 42."


async def test_streamed_text_arrives_as_deltas_in_order(fake, http):
    fake.reply("agg", Reply(text="The quick brown fox jumps over the lazy dog.", chunk_chars=5))
    log = EventLog()
    result = await engine(fake, http, preset()).run_turn("p", user("q"), on_event=log)
    deltas = log.of(TextDelta)
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == result.answer
    kinds = log.kinds()
    assert kinds.index("ReferencesDone") < kinds.index("Aggregating") < kinds.index("TextDelta")
    assert isinstance(log.events[-1], TurnDone)
    assert log.of(Aggregating)[0].label == "oa:agg"


async def test_step_limit_gives_a_clear_answer(fake, http):
    fake.reply("agg", Reply(tool_calls=[("c", "calculator", {"expression": "1+1"})]))
    result = await engine(fake, http, preset(tools=("calculator",), max_steps=2)).run_turn("p", user("q"))
    assert result.step_limit_hit and result.steps == 2
    assert "step limit" in result.answer


async def test_aggregator_failure_is_reported_with_the_calls_so_far(fake, http):
    fake.reply("agg", Reply(status=400))
    result = await engine(fake, http, preset()).run_turn("p", user("q"))
    assert result.error and "400" in result.error
    assert [c.role for c in result.calls].count("reference") == 2
    assert result.calls[-1].status == "failed"


async def test_quorum_leaves_a_straggler_late_but_counts_its_cost(fake, http):
    fake.reply("ref-a", Reply(text="fast a"))
    fake.reply("ref-b", Reply(text="fast b"))
    fake.reply("ref-c", Reply(text="slow c", delay=0.8, cost=0.5))
    p = preset(refs=("oa:ref-a", "oa:ref-b", "oa:ref-c"), quorum=2, quorum_grace=0.1, reference_timeout=5)
    result = await engine(fake, http, p).run_turn("p", user("q"))
    first_three = result.references[:3]
    assert [r.status for r in first_three] == ["ok", "ok", "timeout"]
    assert "slow c" not in fake.for_model("agg")[0].body["messages"][-1]["content"]
    late = [c for c in result.calls if c.late]
    assert len(late) == 1 and late[0].status == "ok" and late[0].cost.usd == 0.5
    assert result.total_cost_usd == pytest.approx(0.5 + sum(
        c.cost.usd for c in result.calls if not c.late and c.cost.usd is not None))


async def test_traces_written_when_on_and_not_when_off(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="trace advice a"))
    on = tmp_path / "on"
    await engine(fake, http, preset(), trace_dir=on).run_turn("p", user("traced question"), session="chat:1")
    lines = (on / "chat_1.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    ref = record["references"][0]
    assert ref["output"] == "trace advice a" and ref["input"][0]["content"] == REFERENCE_SYSTEM_PROMPT
    assert "cost_usd" in ref and "usage" in ref
    assert "trace advice a" in record["aggregator"]["input"][-1]["content"]
    assert record["aggregator"]["output"] == "answer from agg"
    assert "sk-test-openai-secret" not in lines[0]

    off = tmp_path / "off"
    await engine(fake, http, preset()).run_turn("p", user("untraced"), session="chat:2")
    assert not off.exists() and not (tmp_path / "traces").exists()


async def test_a_broken_trace_directory_never_breaks_a_turn(fake, http, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = await engine(fake, http, preset(), trace_dir=blocker / "sub").run_turn("p", user("q"))
    assert result.answer == "answer from agg"
