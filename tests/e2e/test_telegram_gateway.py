"""The whole bot on Telegram, in this process: the real gateway built from a config file (adapters,
SQLite file, engine), the real Telegram adapter polling a fake Bot API server, the engine calling
a fake model provider. Each test pushes updates and looks at what the chats show."""

from __future__ import annotations

import pytest

from tests.e2e.kit import (
    ADMIN_ID,
    FORUM_ID,
    GROUP_ID,
    STRANGER_GROUP_ID,
    USER_ID,
    InProcess,
    dm_update,
    group_update,
    query,
    start_in_process,
    texts,
    wait_until,
    with_marker,
    write_config,
)
from tests.fakes.provider_server import Reply
from tests.fakes.telegram_server import FakeTelegram

FOOTER = " tokens · "  # only the final answer carries the footer


@pytest.fixture
async def bot(tmp_path, provider, telegram):
    """A factory: write the config (with overrides) and start the gateway on it."""
    started: list[InProcess] = []

    async def start(**overrides) -> InProcess:
        running = await start_in_process(write_config(tmp_path, provider, telegram, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


async def final_answer(telegram: FakeTelegram, chat_id: int, marker: str) -> None:
    await wait_until(lambda: any(FOOTER in t for t in with_marker(telegram, chat_id, marker)),
                     f"the final answer with {marker!r} in chat {chat_id}",
                     explain=lambda: f"chat shows: {texts(telegram, chat_id)}")


def summary_and_answer(telegram: FakeTelegram, chat_id: int, marker: str):
    messages = telegram.chat(chat_id)
    [summary] = [m for m in messages if "fake:ref-a" in m.text and "fake:ref-b" in m.text]
    [answer] = [m for m in messages if marker in m.text]
    return messages, summary, answer


async def test_a_moa_turn_in_a_group(bot, provider, telegram, tmp_path):
    provider.reply("ref-a", Reply(text="Advice from A"))
    provider.reply("ref-b", Reply(text="Advice from B"))
    provider.reply("agg", Reply(text="The group answer GROUP-MARK is **42**.", chunk_chars=5))
    running = await bot()
    telegram.push_update(group_update("/moa what is the answer?", message_id=10))
    await final_answer(telegram, GROUP_ID, "GROUP-MARK")
    await running.app.gateway.idle()

    messages, summary, answer = summary_and_answer(telegram, GROUP_ID, "GROUP-MARK")
    assert messages.index(summary) < messages.index(answer)
    assert "Advice from A" in summary.text and "Advice from B" in summary.text
    assert summary.reply_to == 10 and answer.reply_to == 10
    assert summary.thread_id is None and answer.thread_id is None
    assert answer.text.startswith("The group answer GROUP-MARK is 42.") and "<b>42</b>" in answer.raw
    rows = query(tmp_path / "gateway.db", "select role, model, status, cost_usd from model_calls "
                 "order by role = 'aggregator', idx")
    assert [(r["role"], r["model"], r["status"]) for r in rows] == [
        ("reference", "ref-a", "ok"), ("reference", "ref-b", "ok"), ("aggregator", "agg", "ok")]
    assert all(r["cost_usd"] and r["cost_usd"] > 0 for r in rows)
    [delivery] = query(tmp_path / "gateway.db", "select status, chat_id from deliveries")
    assert delivery == {"status": "sent", "chat_id": str(GROUP_ID)}


async def test_a_moa_turn_in_a_forum_topic_stays_in_its_thread(bot, provider, telegram):
    provider.reply("agg", Reply(text="Topic answer TOPIC-MARK."))
    await bot()
    telegram.push_update(group_update("/moa in the topic", chat_id=FORUM_ID, thread_id=77, message_id=31))
    await final_answer(telegram, FORUM_ID, "TOPIC-MARK")

    messages, summary, answer = summary_and_answer(telegram, FORUM_ID, "TOPIC-MARK")
    assert messages.index(summary) < messages.index(answer)
    assert {m.thread_id for m in messages} == {77}  # progress line included
    assert answer.reply_to == 31
    # The session is the topic: the same group outside the topic is another conversation.
    telegram.push_update(group_update("/moa outside the topic", chat_id=FORUM_ID, message_id=32))
    await wait_until(lambda: len(provider.for_model("agg")) == 2, "the second turn")
    second = provider.for_model("agg")[1].body["messages"]
    assert [m["role"] for m in second] == ["user"]


async def test_the_same_update_twice_is_answered_once(bot, provider, telegram, tmp_path):
    provider.reply("agg", Reply(text="Only once ONCE-MARK."))
    running = await bot()
    update = group_update("/moa answer me once", message_id=12, update_id=5000)
    telegram.push_update(update)
    telegram.push_update(update)  # a replay: the same update_id again, in the same batch
    await final_answer(telegram, GROUP_ID, "ONCE-MARK")
    await wait_until(lambda: len(running.inbound) == 2, "both copies to reach the gateway")
    await running.app.gateway.idle()

    assert [m.event_id for m in running.inbound] == ["5000", "5000"]
    assert len(with_marker(telegram, GROUP_ID, "ONCE-MARK")) == 1
    assert len(provider.for_model("agg")) == 1
    assert len(query(tmp_path / "gateway.db", "select id from turns")) == 1


async def test_a_chat_that_is_not_allowed_gets_nothing_run(bot, provider, telegram, tmp_path):
    running = await bot()
    telegram.push_update(group_update("/moa run this for me", chat_id=STRANGER_GROUP_ID, message_id=1))
    await wait_until(lambda: texts(telegram, STRANGER_GROUP_ID), "the refusal notice")
    telegram.push_update(group_update("/moa and this?", chat_id=STRANGER_GROUP_ID, message_id=2))
    await wait_until(lambda: len(running.inbound) == 2, "the second message to reach the gateway")
    await running.app.gateway.idle()

    [notice] = texts(telegram, STRANGER_GROUP_ID)
    assert "not allowed" in notice
    assert provider.requests == []
    assert query(tmp_path / "gateway.db", "select id from turns") == []


async def test_only_an_admin_changes_the_chat_default(bot, provider, telegram):
    provider.reply("deep-agg", Reply(text="Deep answer DEEP-MARK."))
    await bot()
    telegram.push_update(group_update("/moa default deep", sender=USER_ID, message_id=20))
    await wait_until(lambda: any("Only admins" in t for t in texts(telegram, GROUP_ID)), "the refusal",
                     explain=lambda: str(texts(telegram, GROUP_ID)))
    telegram.push_update(group_update("/moa default deep", sender=ADMIN_ID, message_id=21))
    await wait_until(lambda: any("now deep" in t for t in texts(telegram, GROUP_ID)), "the admin's change",
                     explain=lambda: str(texts(telegram, GROUP_ID)))
    telegram.push_update(group_update("/moa which preset?", sender=USER_ID, message_id=22))
    await final_answer(telegram, GROUP_ID, "DEEP-MARK")

    assert len(provider.for_model("deep-agg")) == 1 and provider.for_model("agg") == []
    refusal, accepted = texts(telegram, GROUP_ID)[:2]
    assert refusal.endswith("Only admins can change this chat's default preset.")
    assert accepted == "Default preset here is now deep."
    assert [m.reply_to for m in telegram.chat(GROUP_ID)[:2]] == [20, 21]


async def test_a_direct_message_needs_no_command(bot, provider, telegram):
    provider.reply("agg", Reply(text="Hello in private DM-MARK."))
    await bot()
    telegram.push_update(dm_update("hello, what can you do?", message_id=5))
    await final_answer(telegram, USER_ID, "DM-MARK")
    assert provider.for_model("agg")[0].body["messages"][-1]["content"].startswith("hello, what can you do?")
    # In a group, the same words without /moa are not a turn.
    telegram.push_update(group_update("hello, what can you do?", message_id=6))
    telegram.push_update(group_update("/moa help", message_id=7))
    await wait_until(lambda: any("/moa" in t for t in texts(telegram, GROUP_ID)), "the help text")
    assert len(provider.for_model("agg")) == 1


async def test_a_429_in_the_middle_of_the_streamed_answer(bot, provider, telegram):
    """The stream's first message is answered late, so the answer has grown by the next edit;
    that edit gets 429 retry_after=1. The chat pauses, then the final answer arrives in full.
    The model writes for about 1.5 s, so the stalled send ends while it still writes (under
    load too): the next edit is a streaming one."""
    answer = "STREAM-MARK " + " ".join(f"word{i}" for i in range(300)) + " END-OF-ANSWER"
    provider.reply("agg", Reply(text=answer, chunk_chars=16, chunk_delay=0.01))

    def streamed(params) -> bool:
        text = params.get("text") or ""
        return "STREAM-MARK" in text and FOOTER not in text

    telegram.stall_next("sendMessage", 0.5, when=streamed)
    telegram.fail_next("editMessageText", status=429, retry_after=1, when=streamed)
    await bot(gateway={"progress": False})
    telegram.push_update(group_update("/moa stream a long one", message_id=40))
    await final_answer(telegram, GROUP_ID, "STREAM-MARK")

    [first] = [call for call in telegram.calls_of("sendMessage") if streamed(call.params)]
    assert len(first.params["text"]) < len(answer)  # posted while the answer was still growing
    edits = telegram.calls_of("editMessageText")
    [refused] = [i for i, call in enumerate(edits) if call.status == 429]
    assert FOOTER not in edits[refused].params["text"]  # it was a streaming edit
    later = [call for call in edits[refused + 1:] if call.status == 200]
    assert later and FOOTER in later[-1].params["text"]
    [shown] = with_marker(telegram, GROUP_ID, "STREAM-MARK")
    assert shown.startswith(answer) and FOOTER in shown
