"""The delivery ledger: a completed turn's answer (or notice) reaches its chat exactly once.

A turn is completed together with its ledger row in one transaction (`record_and_deliver`),
and only then is the row sent: pending → sending → sent. A crash between those steps leaves the
row pending or sending, and `deliver_pending` (at start, and every `takeover_every_s` from the
retry loop) sends it again: edits of already-posted stream messages are idempotent, and an
adapter with `send_once` gets the same key on every attempt of one row. The ledger also owns
plain notices (`notify`), which are not stored: they answer the message being handled now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from adapters.contract import Adapter, Answer, ChatRef, Notice, Sent
from gateway.presentation import answer_footer
from gateway.storage import Delivery, LeaseLost, Storage
from moa_core.events import TurnResult

log = logging.getLogger(__name__)


def storable(chat: ChatRef) -> ChatRef:
    """The ledger never stores reply handles: they can be credentials (Discord interaction tokens)."""
    return replace(chat, reply_handle=None)


class Ledger:
    """Sends ledger rows and notices through the adapters; remembers what it is sending now."""

    def __init__(self, store: Storage, adapters: Mapping[str, Adapter]):
        self.store = store
        self.adapters = adapters  # the gateway's own mapping: adapters added later are seen
        # Ledger rows being delivered right now: the retry loop must not send them a second time.
        self._delivering: set[int] = set()

    async def notify(self, chat: ChatRef, text: str, level: str = "info") -> None:
        adapter = self.adapters.get(chat.platform)
        if adapter is None:
            log.warning("no adapter for %s; notice dropped: %s", chat.platform, text)
            return
        await adapter.send(chat, Notice(text, level))  # type: ignore[arg-type]

    async def record_result(self, turn_id: int, chat: ChatRef, result: TurnResult, streamed: Sent | None, *,
                            footer: bool) -> None:
        """Record a turn's answer (or its aggregator's failure) in the ledger first, then deliver it;
        `streamed` holds the messages already posted while it streamed, which the answer edits."""
        ids = list(streamed.message_ids) if streamed else []
        if result.error:
            text = f"The aggregator {result.aggregator_label} failed: {result.error}"
            payload = {"text": text, "level": "error", "message_ids": ids}
            await self.record_and_deliver(turn_id, chat, "notice", payload, status="failed", answer=None,
                                          cost_usd=result.total_cost_usd, messages=(), error=result.error)
        else:
            payload = {
                "text": result.answer or "(the model returned an empty answer)",
                "footer": answer_footer(result) if footer else None,
                "message_ids": ids,
            }
            await self.record_and_deliver(turn_id, chat, "answer", payload, status="done", answer=result.answer,
                                          cost_usd=result.total_cost_usd, messages=result.new_messages)

    async def record_failure(self, turn_id: int, chat: ChatRef, error: Exception) -> None:
        await self.record_and_deliver(
            turn_id, chat, "notice", {"text": f"Sorry, this turn failed: {error}", "level": "error"},
            status="failed", answer=None, cost_usd=None, messages=(), error=str(error),
        )

    async def record_interrupted(self, turn_id: int, chat: ChatRef, prompt: str, why: str, *,
                                 deliver: bool = True) -> None:
        """A turn cut by `why` (shutdown, restart) is marked interrupted and its chat told so;
        `deliver=False` leaves the notice to the next `deliver_pending`."""
        await self.record_and_deliver(
            turn_id, chat, "notice", {"text": interrupted_text(prompt, why), "level": "warning"},
            status="interrupted", answer=None, cost_usd=None, messages=(), error=_INTERRUPTED_BY[why],
            deliver=deliver,
        )

    async def record_and_deliver(self, turn_id: int, chat: ChatRef, kind: str, payload: dict, *,
                                 deliver: bool = True, **turn) -> None:
        """Complete the turn with its ledger row in one transaction, then deliver that row.

        Delivered now, the row is stored as 'sending' already: one write between the answer and
        its send instead of two (a crash before the send leaves it 'sending', as a crash during
        the send would). The stored row never holds the reply handle; this delivery still uses it."""
        delivery_id = await self.store.complete_turn(turn_id, delivery=(storable(chat), kind, payload),
                                                     sending=deliver, **turn)
        if delivery_id is not None and deliver:
            await self.deliver(Delivery(delivery_id, turn_id, chat, kind, payload, "pending"), marked=True)

    async def deliver_pending(self) -> None:
        for delivery in await self.store.pending_deliveries():
            await self.deliver(delivery)

    async def deliver(self, delivery: Delivery, *, marked: bool = False) -> bool:
        """Send one ledger entry. Edits of already-posted stream messages are idempotent, so an
        entry left 'sending' by a crash is completed by editing them again. `marked`: the row
        was stored as 'sending' for this first attempt (`record_and_deliver`)."""
        adapter = self.adapters.get(delivery.chat.platform)
        if adapter is None or delivery.id in self._delivering:
            return False
        self._delivering.add(delivery.id)
        try:
            return await self._deliver(adapter, delivery, marked)
        finally:
            self._delivering.discard(delivery.id)

    async def _deliver(self, adapter: Adapter, delivery: Delivery, marked: bool) -> bool:
        payload = delivery.payload
        ids = tuple(payload.get("message_ids") or ())
        if delivery.kind == "answer":
            item = Answer(payload["text"], final=True, footer=payload.get("footer"))
        else:
            item = Notice(payload["text"], payload.get("level", "info"))
        try:
            if not marked:
                await self.store.mark_delivery(delivery.id, "sending")
            send_once = getattr(adapter, "send_once", None)
            if ids and delivery.kind == "answer":
                sent = await adapter.edit(Sent(delivery.chat, ids), item)
            elif send_once is not None:
                # The same key on every attempt of this ledger row; `retry` when a crash may have
                # come after the platform applied an earlier attempt (the row was left sending).
                sent = await send_once(delivery.chat, item, key=f"moa-delivery-{delivery.id}",
                                       retry=delivery.status == "sending")
            else:
                sent = await adapter.send(delivery.chat, item)
        except asyncio.CancelledError:
            raise
        except LeaseLost as lost:  # sent meanwhile, or taken over by a replica while this one stalled
            log.info("delivery %s not sent here: %s", delivery.id, lost)
            return False
        except Exception:
            log.warning("delivery %s to %s failed; will retry", delivery.id, delivery.chat.platform, exc_info=True)
            await self.store.mark_delivery(delivery.id, "pending")
            return False
        await self.store.mark_delivery(delivery.id, "sent", sent.message_ids)
        return True

    async def retry_forever(self, recover: Callable[[], Awaitable[None]], every_s: float | None = None) -> None:
        """Retry what the ledger still owes; and take over what a dead replica left: `recover`
        tells its cut turns to their chats (and lines up its queued ones), then its recorded
        answers are delivered (the store hands over only rows whose owner is gone, so live
        replicas never send the same row)."""
        every_s = self.store.takeover_every_s if every_s is None else every_s
        while True:
            await asyncio.sleep(every_s)
            try:
                await recover()
                await self.deliver_pending()
            except Exception:
                log.warning("retrying deliveries failed", exc_info=True)


# The turn's stored error per cause (the text earlier releases stored; reports may match it).
_INTERRUPTED_BY = {"restart": "interrupted by a restart", "shutdown": "interrupted by shutdown"}


def interrupted_text(prompt: str, why: str = "restart") -> str:
    short = prompt if len(prompt) <= 80 else prompt[:77] + "…"
    return f"Your question “{short}” was interrupted by a {why} before it was answered. Please ask again."
