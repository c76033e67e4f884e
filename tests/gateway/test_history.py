"""History trimming keeps the newest messages within the budget and starts on a user turn."""

from hypothesis import given
from hypothesis import strategies as st

from gateway.history import message_chars, trim_history
from moa_core.values import Message, ToolCall

msgs = st.lists(st.one_of(
    st.builds(Message, st.just("user"), st.text(max_size=200)),
    st.builds(lambda c: Message("assistant", c, (ToolCall("1", "calculator", "{}"),)), st.text(max_size=200)),
    st.builds(lambda c: Message("tool", c, tool_call_id="1"), st.text(max_size=400)),
    st.builds(Message, st.just("assistant"), st.text(max_size=200)),
), max_size=40)


@given(msgs, st.integers(min_value=1, max_value=3000))
def test_trim_history(messages, budget):
    kept = trim_history(messages, budget)
    if not messages:
        assert kept == []
        return
    assert kept[-1] == messages[-1], "the newest message is always kept"
    assert kept == messages[len(messages) - len(kept):], "a suffix, order kept"
    if len(kept) > 1:
        assert kept[0].role == "user"
        assert sum(message_chars(m) for m in kept) <= budget
