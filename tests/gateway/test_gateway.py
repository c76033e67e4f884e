"""The gateway end to end through the adapter contract: triggers, commands, queueing, presets,
access, de-duplication, costs recorded, delivery ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.contract import Answer, Notice, Progress, ReferenceSummary
from gateway.storage import Store
from moa_core.clock import SystemClock
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import make_gateway


async def model_calls(store: Store) -> list[dict]:
    # Calls are booked as they end (references in the order they answer): read them in turn
    # order, references by preset position, then the aggregator's steps.
    return await store.run(lambda db: list(db.query(
        "select * from model_calls order by turn_id, role = 'aggregator', step, idx, id")))


async def test_a_moa_turn_end_to_end(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="Advice A", usage={"input": 100, "output": 50}))
    fake.reply("ref-b", Reply(text="Advice B", usage={"input": 200, "output": 100}))
    fake.reply("agg", Reply(text="The final **answer**.", usage={"input": 300, "output": 30}, chunk_chars=4),
               Reply(text="Second answer."))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa what is MoA?"))
    await gw.idle()

    kinds = chat.kinds_in_order()
    assert kinds.index("ReferenceSummary") < kinds.index("Answer")
    [summary] = chat.summaries()
    assert [(e.label, e.status) for e in summary.entries] == [("fake:ref-a", "ok"), ("fake:ref-b", "ok")]
    assert summary.entries[0].advice == "Advice A"
    [answer] = chat.final_answers()
    assert answer.text == "The final **answer**." and answer.footer and "$" in answer.footer
    # Streaming: the answer message was edited while the text grew.
    assert any(op == "edit" and isinstance(item, Answer) and not item.final for op, _, item, _ in chat.log) or \
        any(op == "send" and isinstance(item, Answer) and not item.final for op, _, item, _ in chat.log)
    # Progress line posted and edited in place.
    assert any(isinstance(item, Progress) for _, _, item, _ in chat.log)

    rows = await model_calls(gw.store)
    assert [(r["role"], r["model"], r["status"]) for r in rows] == [
        ("reference", "ref-a", "ok"), ("reference", "ref-b", "ok"), ("aggregator", "agg", "ok")]
    # Priced by config: $1/M in, $2/M out.
    assert rows[0]["cost_usd"] == pytest.approx((100 * 1 + 50 * 2) / 1e6)
    assert all(r["cost_source"] == "config" and r["platform"] == "fakechat" for r in rows)
    turn = await gw.store.run(lambda db: list(db.query("select * from turns"))[0])
    assert turn["status"] == "done" and turn["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))

    # The session continues: the next message carries the history.
    await chat.push(chat.message("/moa and in one word?"))
    await gw.idle()
    second_input = fake.for_model("agg")[1].body["messages"]
    assert [m["role"] for m in second_input] == ["user", "assistant", "user"]
    assert second_input[1]["content"] == "The final **answer**."
    assert [a.text for a in chat.final_answers()] == ["The final **answer**.", "Second answer."]
    deliveries = await gw.store.pending_deliveries()
    assert deliveries == []


async def test_messages_during_a_turn_are_queued_and_answered_in_order(fake, http, tmp_path):
    release = asyncio.Event()
    answers = iter(["first", "second", "third", "fourth"])

    async def slow_first(rec):
        text = next(answers)
        if text == "first":
            await release.wait()
        return Reply(text=f"answer {text}")

    fake.handler("agg", slow_first)
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa one"))
    await fake.wait_for_requests(3)  # both references and the (held) aggregator
    for word in ("two", "three", "four"):
        await chat.push(chat.message(f"/moa {word}"))
    release.set()
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["answer first", "answer second", "answer third", "answer fourth"]
    prompts = [r.body["messages"][-1]["content"].split("\n")[0] for r in fake.for_model("agg")]
    assert prompts == ["one", "two", "three", "four"]


async def test_per_channel_presets_and_their_precedence(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    # Config gives this chat "solo" (aggregator alone), the global default is "default".
    await chat.push(chat.message("/moa default", chat="configured"))
    await chat.push(chat.message("/moa default", chat="c1"))
    assert chat.notices() == ["Default preset here: solo.", "Default preset here: default."]

    # An admin's stored default beats the config; +preset beats both.
    await chat.push(chat.message("/moa default deep", chat="configured", user="admin"))
    assert await gw.channel_default("fakechat", "configured") == "deep"
    await chat.push(chat.message("/moa hello", chat="configured"))
    await gw.idle()
    assert len(fake.for_model("deep-agg")) == 1
    await chat.push(chat.message("/moa +default hello again", chat="configured"))
    await gw.idle()
    assert len(fake.for_model("agg")) == 1
    await chat.push(chat.message("/moa default reset", chat="configured", user="admin"))
    assert await gw.channel_default("fakechat", "configured") == "solo"


async def test_a_non_admin_cannot_change_the_default(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa default deep", user="someone"))
    await chat.push(chat.message("/moa default reset", user="someone"))
    assert chat.notices() == ["Only admins can change this chat's default preset."] * 2
    assert await gw.store.channel_preset("fakechat", "c1") is None


async def test_the_same_event_twice_gives_one_answer(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    message = chat.message("/moa once please", event_id="evt-1")
    await chat.push(message)
    await chat.push(message)
    await gw.idle()
    assert len(chat.final_answers()) == 1
    assert len(fake.for_model("agg")) == 1


async def test_a_refused_chat_gets_one_notice_and_nothing_runs(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    for _ in range(3):
        await chat.push(chat.message("/moa hello", chat="stranger"))
    await gw.idle()
    assert not fake.requests
    assert len(chat.notices("stranger")) == 1 and "not allowed" in chat.notices("stranger")[0]


async def test_triggers_in_groups_and_dms(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("just chatting"))  # group, no trigger: ignored
    await gw.idle()
    assert not fake.requests
    await chat.push(chat.message("hey bot, what's up", mention=True))
    await chat.push(chat.message("a DM question", chat="dm-admin", user="admin", dm=True))
    await gw.idle()
    assert len(chat.final_answers()) == 2


async def test_a_backlog_after_downtime_is_not_answered_blindly(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    old = datetime.now(UTC) - timedelta(hours=2)
    await chat.push(chat.message("/moa stale one", sent_at=old))
    await chat.push(chat.message("/moa stale two", sent_at=old))
    await gw.idle()
    assert not fake.requests
    assert len(chat.notices()) == 1 and "offline" in chat.notices()[0]


async def test_commands_help_presets_new_and_unknown_preset(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa help"))
    await chat.push(chat.message("/moa presets"))
    await chat.push(chat.message("/moa +nope hi"))
    notices = chat.notices()
    assert "/moa" in notices[0]
    assert "default" in notices[1] and "← default here" in notices[1] and "deep" in notices[1]
    assert "Unknown preset 'nope'" in notices[2]
    await chat.push(chat.message("/moa first question"))
    await gw.idle()
    await chat.push(chat.message("/moa new"))
    await chat.push(chat.message("/moa fresh question"))
    await gw.idle()
    assert [m["role"] for m in fake.for_model("agg")[1].body["messages"]] == ["user"]


async def test_a_turn_failure_is_reported_and_recorded(fake, http, tmp_path):
    fake.reply("agg", Reply(status=400))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa this will fail"))
    await gw.idle()
    assert any("failed" in n for n in chat.notices())
    turn = await gw.store.run(lambda db: list(db.query("select status, error from turns"))[0])
    assert turn["status"] == "failed"
    rows = await model_calls(gw.store)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]


async def test_an_answer_recorded_but_not_sent_is_delivered_once_after_restart(fake, http, tmp_path):
    class CrashOnAnswer:
        def __init__(self, inner):
            self.inner, self.platform, self.limits = inner, inner.platform, inner.limits

        async def start(self, on_inbound):
            await self.inner.start(on_inbound)

        async def stop(self):
            await self.inner.stop()

        async def send(self, chat, item):
            if isinstance(item, Answer) and item.final:
                raise ConnectionError("platform down")
            return await self.inner.send(chat, item)

        async def edit(self, sent, item):
            if isinstance(item, Answer) and item.final:
                raise ConnectionError("platform down")
            return await self.inner.edit(sent, item)

    from tests.fakes.recording_adapter import RecordingAdapter

    inner = RecordingAdapter()
    gw, _ = await make_gateway(fake, http, tmp_path, adapter=CrashOnAnswer(inner))  # type: ignore[arg-type]
    await inner.push(inner.message("/moa survive this"))
    await gw.idle()
    assert inner.final_answers() == []
    assert len(await gw.store.pending_deliveries()) == 1
    await gw.store.close()

    # "Restart": a new gateway on the same database delivers the answer exactly once.
    chat2 = RecordingAdapter()
    chat2.shown, chat2.log = inner.shown, inner.log  # same chat history
    gw2, _ = await make_gateway(fake, http, tmp_path, adapter=chat2)
    assert [a.text for a in chat2.final_answers()] == ["answer from agg"]
    await gw2.deliver_pending()
    assert len(chat2.final_answers()) == 1
    assert await gw2.store.pending_deliveries() == []


async def test_a_turn_cut_by_a_crash_is_reported_after_restart(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    store = gw.store
    session = await store.active_session("fakechat", "c1", None)
    await store.start_turn(session_id=session, platform="fakechat", chat_id="c1", thread_id=None, user_id="u1",
                           user_name="u", event_id="e", message_id="m", preset="default", prompt="lost question")
    await store.close()
    gw2, chat2 = await make_gateway(fake, http, tmp_path)
    assert any("lost question" in n and "interrupted" in n for n in chat2.notices())
    turn = await gw2.store.run(lambda db: list(db.query("select status from turns"))[0])
    assert turn["status"] == "interrupted"


async def test_two_questions_arriving_together_run_in_order_with_their_own_history(fake, http, tmp_path):
    fake.reply("agg", Reply(text="first answer"), Reply(text="second answer"))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await asyncio.gather(chat.push(chat.message("/moa alpha")), chat.push(chat.message("/moa beta")))
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["first answer", "second answer"]
    first, second = (r.body["messages"] for r in fake.for_model("agg"))
    assert "beta" not in str(first)  # the later question is not part of the earlier turn
    assert [m["role"] for m in second][:3] == ["user", "assistant", "user"]
    assert gw._lanes == {}  # noqa: SLF001 - finished sessions leave no queue behind


async def test_a_question_queued_when_the_process_died_runs_after_restart(fake, http, tmp_path):
    fake.reply("agg", Reply(text="the late answer"))
    gw, chat = await make_gateway(fake, http, tmp_path)
    store = gw.store
    session = await store.active_session("fakechat", "c1", None)
    common = dict(session_id=session, platform="fakechat", chat_id="c1", thread_id=None, user_id="u1",
                  user_name="u", message_id="m", preset="default")
    await store.start_turn(**common, event_id="e1", prompt="was running")
    await store.start_turn(**common, event_id="e2", prompt="was waiting", queued=True)
    await store.start_turn(**common, event_id="e3", prompt="waited too long", queued=True)
    old = (datetime.now(UTC) - timedelta(seconds=601)).isoformat(timespec="microseconds")
    await store.run(lambda db: db.execute("update turns set started_at = ? where event_id = 'e3'", [old]))
    await store.close()
    gw2, chat2 = await make_gateway(fake, http, tmp_path)
    await gw2.idle()
    notices = [n for n in chat2.notices() if "interrupted by a restart" in n]
    assert sum("was running" in n for n in notices) == 1 and sum("waited too long" in n for n in notices) == 1
    assert not any("was waiting" in n for n in notices)
    assert [a.text for a in chat2.final_answers()] == ["the late answer"]
    rows = await gw2.store.run(lambda db: list(db.query("select prompt, status from turns order by id")))
    assert [(r["prompt"], r["status"]) for r in rows] == [
        ("was running", "interrupted"), ("was waiting", "done"), ("waited too long", "interrupted")]
    # It ran in its session, after the question that was running (whose prompt is in the history).
    sent = fake.for_model("agg")[-1].body["messages"]
    users = [m["content"] for m in sent if m["role"] == "user"]
    assert users[-2] == "was running" and users[-1].startswith("was waiting")


async def test_questions_waiting_behind_a_turn_are_stored_and_told_at_shutdown(fake, http, tmp_path):
    fake.reply("agg", Reply(hang=True))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa never finishes"))
    await fake.wait_for_requests(3)
    for word in ("second", "third"):
        await chat.push(chat.message(f"/moa {word} question"))
    rows = await gw.store.run(lambda db: [(r["prompt"], r["status"]) for r in db.query("select * from turns")])
    assert rows == [("never finishes", "running"), ("second question", "queued"), ("third question", "queued")]
    await gw.shutdown(grace_s=0.2)
    notices = chat.notices()
    for prompt in ("never finishes", "second question", "third question"):
        assert sum(prompt in n and "interrupted by a shutdown" in n for n in notices) == 1
    statuses = await gw.store.run(lambda db: [r["status"] for r in db.query("select status from turns")])
    assert statuses == ["interrupted"] * 3
    assert len(fake.for_model("agg")) == 1  # the waiting ones never ran


async def test_shutdown_lets_a_running_turn_finish_within_the_grace(fake, http, tmp_path):
    fake.reply("agg", Reply(text="finished in time", delay=0.3))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa finish me"))
    await fake.wait_for_requests(3)
    await gw.shutdown(grace_s=5)
    assert [a.text for a in chat.final_answers()] == ["finished in time"]
    await chat.push(chat.message("/moa too late"))  # intake stopped
    await asyncio.sleep(0.05)
    assert len(fake.for_model("agg")) == 1


async def test_shutdown_past_the_grace_checkpoints_and_tells_the_chat(fake, http, tmp_path):
    fake.reply("agg", Reply(hang=True))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa never finishes"))
    await fake.wait_for_requests(3)
    await gw.shutdown(grace_s=0.2)
    assert any("interrupted by a shutdown" in n for n in chat.notices())
    turn = await gw.store.run(lambda db: list(db.query("select status from turns"))[0])
    assert turn["status"] == "interrupted"


def test_summary_and_notice_values_are_platform_neutral():
    # The gateway hands adapters contract values only.
    assert ReferenceSummary.__module__ == Notice.__module__ == "adapters.contract"
    assert SystemClock().now().tzinfo is not None


async def test_a_delivery_in_flight_is_not_sent_again_by_the_retry_loop(fake, http, tmp_path):
    from tests.fakes.recording_adapter import RecordingAdapter

    class SlowFinal(RecordingAdapter):
        async def send(self, chat, item):
            if isinstance(item, Answer) and item.final:
                await asyncio.sleep(0.3)  # e.g. waiting out a rate limit
            return await super().send(chat, item)

        async def edit(self, sent, item):
            if isinstance(item, Answer) and item.final:
                await asyncio.sleep(0.3)
                self.final_edits = getattr(self, "final_edits", 0) + 1
            return await super().edit(sent, item)

    chat = SlowFinal()
    gw, _ = await make_gateway(fake, http, tmp_path, adapter=chat)
    fake.reply("agg", Reply(text="only once"))
    await chat.push(chat.message("/moa once"))
    await fake.wait_for_requests(3)
    await asyncio.sleep(0.1)
    for _ in range(3):  # the retry loop ticking while the answer is being delivered
        await gw.deliver_pending()
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["only once"]
    assert getattr(chat, "final_edits", 0) <= 1
