"""The writes on a turn's critical path: what the gateway waits for between the answer and its
send, and that each write it acted on was stored first."""

from __future__ import annotations

import sqlite3

from adapters.contract import Answer
from tests.fakes.provider_server import Reply
from tests.fakes.recording_adapter import RecordingAdapter
from tests.gateway.gateway_kit import make_gateway


class LedgerWatcher(RecordingAdapter):
    """Reads the ledger row's stored status (another connection: only what is committed) at the
    moment the final answer is sent."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.status_at_send: list[str] = []

    def _look(self, item) -> None:
        if isinstance(item, Answer) and item.final:
            with sqlite3.connect(self.path) as db:
                self.status_at_send += [r[0] for r in db.execute("SELECT status FROM deliveries WHERE kind = 'answer'")]

    async def send(self, chat, item):
        self._look(item)
        return await super().send(chat, item)

    async def edit(self, sent, item):
        self._look(item)
        return await super().edit(sent, item)


async def test_an_answer_is_completed_and_marked_sending_in_one_write_before_it_is_sent(fake, http, tmp_path):
    fake.reply("ref-a", Reply(text="A"))
    fake.reply("ref-b", Reply(text="B"))
    fake.reply("agg", Reply(text="The answer."))
    adapter = LedgerWatcher(tmp_path / "gw.db")
    gw, chat = await make_gateway(fake, http, tmp_path, adapter=adapter)
    marks: list[str] = []
    mark = gw.store.mark_delivery

    async def spy(delivery_id, status, message_ids=()):
        marks.append(status)
        await mark(delivery_id, status, message_ids)

    gw.store.mark_delivery = spy  # type: ignore[method-assign]
    await chat.push(chat.message("/moa a question"))
    await gw.idle()
    assert [a.text for a in chat.final_answers()] == ["The answer."]
    assert adapter.status_at_send == ["sending"]  # durable before the platform had it
    assert marks == ["sent"]  # no second write between completing the turn and sending
    assert await gw.store.pending_deliveries() == []
