"""A turn's chat side (gateway.turn_display): the batched summary is posted beside the
aggregator, not in front of it (posting it, a platform round trip after the references' rows are
booked, must not delay the aggregator's request), nothing of the answer overtakes it, and the
final answer replaces the streamed text in one edit."""

from __future__ import annotations

import asyncio

from adapters.contract import Answer, ChatRef, Outbound, Progress, ReferenceSummary, Sent
from tests.fakes.provider_server import Reply
from tests.fakes.recording_adapter import RecordingAdapter
from tests.gateway.gateway_kit import make_gateway


class HeldSummaryAdapter(RecordingAdapter):
    """Holds the summary's send until `release` is set, noting what was booked by then."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.summary_requested = asyncio.Event()
        self.fail_summary = False
        self.booked_at_summary: list[str] | None = None
        self.store = None

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        if isinstance(item, ReferenceSummary):
            if self.store is not None:
                self.booked_at_summary = await self.store.run(lambda db: [
                    r["model"] for r in db.query("select model from model_calls where role = 'reference' order by model")])
            self.summary_requested.set()
            await self.release.wait()
            if self.fail_summary:
                raise ConnectionError("the platform refused the summary")
        return await super().send(chat, item)


async def test_the_aggregator_is_asked_while_the_summary_is_still_being_posted(fake, http, tmp_path):
    fake.reply("agg", Reply(text="An answer streamed in many small pieces.", chunk_chars=3, chunk_delay=0.01))
    adapter = HeldSummaryAdapter()
    gw, chat = await make_gateway(fake, http, tmp_path, adapter=adapter)
    adapter.store = gw.store
    await chat.push(chat.message("/moa what is MoA?"))
    await asyncio.wait_for(adapter.summary_requested.wait(), 5)
    await fake.wait_for_requests(3)  # both references and the aggregator, the summary still held
    await asyncio.sleep(0.3)  # the whole answer has streamed by now: none of it may be shown yet
    assert not any(isinstance(item, Answer) for _, _, item, _ in chat.log)
    adapter.release.set()
    await gw.idle()
    kinds = chat.kinds_in_order()
    assert kinds.index("ReferenceSummary") < kinds.index("Answer")
    assert [a.text for a in chat.final_answers()] == ["An answer streamed in many small pieces."]
    # The dollars the summary shows were booked before it was posted.
    assert adapter.booked_at_summary == ["ref-a", "ref-b"]


async def test_a_summary_that_cannot_be_posted_does_not_stop_the_answer(fake, http, tmp_path):
    fake.reply("agg", Reply(text="Answered anyway."))
    adapter = HeldSummaryAdapter()
    adapter.fail_summary = True
    adapter.release.set()
    gw, chat = await make_gateway(fake, http, tmp_path, adapter=adapter)
    await chat.push(chat.message("/moa what is MoA?"))
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["Answered anyway."]
    assert chat.summaries() == []
    turn = await gw.store.run(lambda db: list(db.query("select status from turns"))[0])
    assert turn["status"] == "done"


async def test_the_progress_line_ends_before_the_summary_and_the_answer(fake, http, tmp_path):
    fake.reply("agg", Reply(text="Done.", chunk_chars=2, chunk_delay=0.005))
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa what is MoA?"))
    await gw.idle()
    progress_ids = [mid for op, _, item, mid in chat.log if op == "send" and isinstance(item, Progress)]
    assert len(progress_ids) == 1  # posted once, then edited in place
    kinds = chat.kinds_in_order()
    assert kinds.index("Progress") < kinds.index("ReferenceSummary") < kinds.index("Answer")
    shown = chat.shown[progress_ids[0]]
    assert isinstance(shown, Progress) and shown.stage == "aggregating"


async def test_a_shutdown_while_the_summary_is_held_interrupts_the_turn_cleanly(fake, http, tmp_path):
    fake.reply("agg", Reply(hang=True))
    adapter = HeldSummaryAdapter()
    gw, chat = await make_gateway(fake, http, tmp_path, adapter=adapter)
    await chat.push(chat.message("/moa never finishes"))
    await asyncio.wait_for(adapter.summary_requested.wait(), 5)
    await fake.wait_for_requests(3)
    await asyncio.wait_for(gw.shutdown(grace_s=0.2), 5)
    assert any("interrupted by a shutdown" in n for n in chat.notices())
    turn = await gw.store.run(lambda db: list(db.query("select status from turns"))[0])
    assert turn["status"] == "interrupted"


async def test_a_streamed_answer_is_finished_with_one_edit(fake, http, tmp_path):
    # The final answer (with its footer) replaces the streamed text in one edit: the stream is
    # not first edited to show the same complete text without it (a platform call per turn).
    text = "A streamed answer that arrives in pieces."
    fake.reply("agg", Reply(text=text, chunk_chars=4, chunk_delay=0.01))
    # One edit per 5 s at most: the stream's first post shows the first pieces, and nothing
    # more is shown before the turn ends.
    gw, chat = await make_gateway(fake, http, tmp_path, adapter=RecordingAdapter(edit_interval_s=5))
    await chat.push(chat.message("/moa what is MoA?"))
    await gw.idle()
    [answer_id] = {mid for op, _, item, mid in chat.log if isinstance(item, Answer)}
    ops = [(op, item) for op, _, item, mid in chat.log if mid == answer_id]
    assert ops[0][0] == "send" and not ops[0][1].final and ops[0][1].text != text  # it did stream
    assert ops[-1][1].final and ops[-1][1].text == text and ops[-1][1].footer
    assert [op for op, _ in ops] == ["send", "edit"]
