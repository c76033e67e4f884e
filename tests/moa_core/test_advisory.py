"""Invariants of the advisory view (hypothesis) and the guidance block."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from moa_core.advisory import (
    JUDGE_STATE_PROMPT,
    advisory_view,
    cut_middle,
    guidance_block,
    view_key,
    with_guidance,
)
from moa_core.events import ReferenceResult
from moa_core.values import UNKNOWN_COST, UNKNOWN_USAGE, Message, ToolCall

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
tool_calls = st.builds(ToolCall, st.text(min_size=1, max_size=8), st.sampled_from(["calculator", "fetch_url"]),
                       st.one_of(st.just(""), st.builds(lambda x: json.dumps({"q": x}), texts)))
messages = st.one_of(
    st.builds(Message, st.just("system"), texts),
    st.builds(Message, st.just("user"), st.one_of(texts, st.sampled_from(["", "   ", "\n\t"]))),
    st.builds(lambda c, calls: Message("assistant", c, tuple(calls)), texts, st.lists(tool_calls, max_size=3)),
    st.builds(lambda c, n: Message("tool", c, tool_call_id="x", name=n), st.text(max_size=12_000),
              st.sampled_from(["calculator", None])),
)
conversations = st.lists(messages, max_size=25)


@settings(max_examples=300, deadline=None)
@given(conversations, st.integers(min_value=50, max_value=6000))
def test_advisory_view_invariants(conversation, budget):
    view = advisory_view(conversation, budget)
    assert view, "never empty"
    assert all(m.role in ("user", "assistant") for m in view), "no system or tool role"
    assert all(not m.tool_calls and m.tool_call_id is None for m in view), "no tool_calls arrays"
    assert view[-1].role == "user", "ends on a user turn"
    assert all(a.role != b.role for a, b in zip(view, view[1:], strict=False)), "roles alternate"
    for message in conversation:
        if message.role == "user" and message.content.strip():
            assert any(message.content in m.content for m in view if m.role == "user"), "user text kept"
        if message.role == "tool" and len(message.content) > budget:
            # A long tool result is cut to the budget around a marker, never replayed whole.
            assert all(message.content not in m.content for m in view)
            assert any(f"{len(message.content) - budget} characters left out" in m.content for m in view)
    # Nothing is deleted from the end: the latest non-empty state is visible.
    non_empty = [m for m in conversation if m.role in ("user", "assistant") and m.content.strip()]
    if non_empty and non_empty[-1].role == "assistant":
        assert view[-1].content == JUDGE_STATE_PROMPT
        assert non_empty[-1].content.strip() in view[-2].content


@given(conversations)
def test_identical_state_gives_identical_key(conversation):
    a = view_key(advisory_view(conversation), "p", ["x:y"])
    assert a == view_key(advisory_view(list(conversation)), "p", ["x:y"])
    assert a != view_key(advisory_view(conversation), "other", ["x:y"])


@given(st.text(max_size=20_000), st.integers(min_value=10, max_value=5000))
def test_cut_middle_keeps_head_and_tail_and_says_what_is_left_out(text, budget):
    out = cut_middle(text, budget)
    if len(text) <= budget:
        assert out == text
    else:
        head = budget // 2
        assert out.startswith(text[:head]) and out.endswith(text[len(text) - (budget - head):])
        assert f"{len(text) - budget} characters left out" in out


def test_system_messages_are_dropped():
    view = advisory_view([Message("system", "SYSTEM-ONLY-TEXT"), Message("user", "hi")])
    assert view == (Message("user", "hi"),)


def test_tool_calls_and_results_become_text():
    view = advisory_view([
        Message("user", "fetch it"),
        Message("assistant", "", (ToolCall("1", "fetch_url", '{"url": "https://example.org"}'),)),
        Message("tool", "page body", tool_call_id="1", name="fetch_url"),
    ])
    assert [m.role for m in view] == ["user", "assistant", "user"]
    assert '[tool call: fetch_url({"url": "https://example.org"})]' in view[1].content
    assert "[tool result from fetch_url:\npage body]" in view[1].content


def test_only_whitespace_users_falls_back_to_latest_user_text():
    assert advisory_view([Message("system", "s"), Message("user", "  ")]) == (Message("user", "  "),)
    assert advisory_view([]) == (Message("user", JUDGE_STATE_PROMPT),)


def test_guidance_goes_to_the_last_user_turn_or_a_new_one():
    results = [
        ReferenceResult(0, 2, "a:m", "ok", "Do X.", UNKNOWN_USAGE, UNKNOWN_COST, 10),
        ReferenceResult(1, 2, "b:m", "timeout", "", UNKNOWN_USAGE, UNKNOWN_COST, 10, error="slow"),
    ]
    block = guidance_block("p", "agg:m", results)
    assert "Do X." in block and "b:m" in block and "timeout" in block
    convo = [Message("user", "Q"), Message("assistant", "", (ToolCall("1", "calculator", "{}"),)),
             Message("tool", "1", tool_call_id="1")]
    out = with_guidance(convo, block)
    assert out[0].content == f"Q\n\n{block}" and out[1:] == tuple(convo[1:])
    assert with_guidance([Message("system", "s")], block)[-1] == Message("user", block)


def _result(index: int, status: str) -> ReferenceResult:
    text = "Do X." if status == "ok" else ""
    return ReferenceResult(index, 2, f"r{index}:m", status, text, UNKNOWN_USAGE, UNKNOWN_COST, 10,
                           error=None if status == "ok" else "no answer within 5 s")


def test_guidance_says_none_answered_when_every_reference_failed():
    block = guidance_block("p", "agg:m", [_result(0, "timeout"), _result(1, "failed")])
    assert "none answered" in block and "no advice to weigh" in block
    assert "gave private advice" not in block and "2 advisor model(s)" in block


def test_guidance_counts_the_references_that_answered():
    some = guidance_block("p", "agg:m", [_result(0, "ok"), _result(1, "timeout")])
    assert "only 1 answered" in some and "gave private advice" not in some
    every = guidance_block("p", "agg:m", [_result(0, "ok"), _result(1, "ok")])
    assert "2 advisor model(s) of the 'p' mixture gave private advice" in every
