"""Booking model-call spend as it happens: each call's row is written when the call ends.

The engine hands over every call the moment it ends (`CallFinished`: a reference as it answers,
the aggregator after each step, a call cut by cancellation with estimated usage). `CallBook`
queues those records and one writer task stores them: the records that end while a write is
under way go together into the next transaction (group commit), so a busy gateway does not
queue one write per call, and nothing waits for a write on the turn's own path.

A turn cut by SIGTERM (grace ran out), by a bug, or by SIGKILL therefore leaves the rows of the
calls that had already ended (for SIGKILL: the ones whose write had landed), and the digest,
`/moa cost` and budgets count them after a restart. `run_booked_turn` is the one way the gateway
runs a turn with booking; any caller that stores turns (the chat adapters, `ask`) goes through it.

`Reservations` holds, for each admitted turn still running, what it is expected to cost beyond
what it has booked, so the budget check of a concurrent turn counts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from gateway.storage import Storage
from moa_core.engine import MoaEngine
from moa_core.events import CallFinished, Event, OnEvent, TurnResult
from moa_core.values import CallRecord, Message

log = logging.getLogger(__name__)

# Told of every booked call (after its row is written): the budget reservations use it.
OnBooked = Callable[[int, CallRecord], None]


class CallBook:
    """Writes model-call rows in the background, a batch per transaction."""

    def __init__(self, store: Storage, on_booked: OnBooked | None = None):
        self._store = store
        self._on_booked = on_booked
        self._queue: list[tuple[int, CallRecord]] = []
        self._unbooked: Counter[int] = Counter()  # per turn: records queued or being written
        self._queued: Counter[int] = Counter()  # per turn: records not yet handed to the store
        self._handed = asyncio.Event()  # set (and replaced) whenever queued records are handed over
        self._writer: asyncio.Task[None] | None = None
        # Records are written in the order they were queued: numbered as queued, "settled up to
        # n" says every record up to the n-th has had its write end (written, or failed).
        self._numbered = 0
        self._settled = 0
        self._latest_of: dict[int, int] = {}  # per turn with records unbooked: its latest one's number
        self._progressed = asyncio.Event()  # set (and replaced) whenever a batch's write ends

    @property
    def writes_in_order(self) -> bool:
        return bool(getattr(self._store, "writes_in_order", False))

    def book(self, turn_id: int, record: CallRecord) -> None:
        """Queue one call's row; returns at once (never blocks the turn)."""
        self._queue.append((turn_id, record))
        self._numbered += 1
        self._latest_of[turn_id] = self._numbered
        self._unbooked[turn_id] += 1
        self._queued[turn_id] += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="moa-call-book")

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            for turn_id, _ in batch:
                self._queued[turn_id] -= 1
                if self._queued[turn_id] <= 0:
                    del self._queued[turn_id]
            handed, self._handed = self._handed, asyncio.Event()
            handed.set()  # the store takes the batch below, before this task next yields
            try:
                await self._store.book_calls(batch)
            except Exception:
                log.exception("could not book %d model call(s)", len(batch))
            else:
                if self._on_booked is not None:
                    for turn_id, record in batch:
                        self._on_booked(turn_id, record)
            finally:
                for turn_id, _ in batch:
                    self._unbooked[turn_id] -= 1
                    if self._unbooked[turn_id] <= 0:
                        del self._unbooked[turn_id]
                        del self._latest_of[turn_id]
                self._settled += len(batch)
                progressed, self._progressed = self._progressed, asyncio.Event()
                progressed.set()

    async def settle(self, turn_id: int | None = None) -> None:
        """Wait until the rows queued so far (of `turn_id`, or of every turn) are written —
        not rows queued after this call: the summary waits for the references' rows, never for
        the aggregator's that end while it waits.

        Safe in a task being cancelled: the write runs in the writer task, which a cancelled
        waiter leaves alone."""
        await self.settled_so_far(turn_id)

    def settled_so_far(self, turn_id: int | None = None) -> Awaitable[None]:
        """`settle`, for the rows queued when this is called (not when it is awaited)."""
        return self._settled_through(self._latest_of.get(turn_id, 0) if turn_id is not None else self._numbered)

    async def _settled_through(self, number: int) -> None:
        while self._settled < number and self._writer is not None and not self._writer.done():
            await self._progressed.wait()

    async def handed_over(self, turn_id: int) -> None:
        """Wait until the rows queued so far of `turn_id` are handed to the store, not written:
        enough before a write that must come after them on a store whose writes commit in the
        order they were made (`writes_in_order`: SQLite's one writer)."""
        while self._queued.get(turn_id, 0) and self._writer is not None and not self._writer.done():
            handed = self._handed
            await handed.wait()

    def unbooked(self, turn_id: int) -> int:
        """Records of this turn not yet written (tests, diagnostics)."""
        return self._unbooked.get(turn_id, 0)


async def run_booked_turn(
    engine: MoaEngine,
    book: CallBook,
    turn_id: int,
    preset: str,
    conversation: Sequence[Message],
    *,
    session: str,
    on_event: OnEvent | None = None,
) -> TurnResult:
    """`engine.run_turn` with every call booked under `turn_id` as it ends.

    However the turn ends (answer, provider error, a bug, cancellation), the calls made so far
    are written before this returns or raises — or, on a store whose writes commit in order
    (SQLite), handed to it: the turn's completion, which the caller writes next and waits for,
    then commits with them or after them, and the wait for their own write is saved."""

    async def booked(event: Event) -> None:
        if isinstance(event, CallFinished):
            book.book(turn_id, event.record)
        if on_event is not None:
            await on_event(event)

    try:
        return await engine.run_turn(preset, conversation, session=session, on_event=booked)
    finally:
        if book.writes_in_order:
            await book.handed_over(turn_id)
        else:
            await book.settle(turn_id)



async def run_stored_turn(
    engine: MoaEngine,
    store: Storage,
    *,
    platform: str,
    chat_id: str,
    thread_id: str | None,
    user_id: str,
    user_name: str,
    event_id: str,
    preset: str,
    prompt: str,
    session: str,
    on_event: OnEvent | None = None,
) -> TurnResult:
    """One turn outside the chat gateway (`moa-gateway ask`), stored like a chat turn: a new
    session, the turn started before the first call, every call booked as it ends, the turn
    completed at the end — `failed` on a provider or other error, `interrupted` when cancelled
    (Ctrl-C) — so `/moa cost`, `moa-gateway costs`, budgets and the digest count it, cut or not."""
    session_id = await store.new_session(platform, chat_id, thread_id)
    turn_id = await store.start_turn(
        session_id=session_id, platform=platform, chat_id=chat_id, thread_id=thread_id, user_id=user_id,
        user_name=user_name, event_id=event_id, message_id=event_id, preset=preset, prompt=prompt,
    )
    book = CallBook(store)
    try:
        result = await run_booked_turn(engine, book, turn_id, preset, [Message("user", prompt)], session=session,
                                       on_event=on_event)
    except BaseException as error:
        interrupted = isinstance(error, asyncio.CancelledError | KeyboardInterrupt)
        await asyncio.shield(store.complete_turn(
            turn_id, status="interrupted" if interrupted else "failed", answer=None, cost_usd=None, messages=(),
            delivery=None, error="interrupted" if interrupted else str(error) or type(error).__name__,
        ))
        raise
    await store.complete_turn(
        turn_id, status="failed" if result.error else "done", answer=result.answer or None,
        cost_usd=result.total_cost_usd, messages=result.new_messages, delivery=None, error=result.error,
    )
    return result


class Reservations:
    """Spend held for admitted turns that are still running, so that the budget check of the
    next turn sees them (one user firing many turns at once in several chats).

    Each admitted turn holds its estimate under the budget scopes it counts against; as its
    calls are booked the hold shrinks by their known dollars (the booked rows are counted by the
    budget query itself), and it is released when the turn ends. In one process only: several
    replicas each hold their own turns."""

    def __init__(self) -> None:
        self._holds: dict[int, _Hold] = {}

    def reserve(self, turn_id: int, scopes: Sequence[str], estimate_usd: float) -> None:
        self._holds[turn_id] = _Hold(tuple(scopes), max(0.0, estimate_usd))

    def booked(self, turn_id: int, record: CallRecord) -> None:
        hold = self._holds.get(turn_id)
        if hold is not None and record.cost.usd is not None:
            hold.booked += record.cost.usd

    def release(self, turn_id: int) -> None:
        self._holds.pop(turn_id, None)

    def held(self, scope: str) -> tuple[float, int]:
        """Dollars still expected from the running turns of `scope`, and how many they are."""
        holds = [h for h in self._holds.values() if scope in h.scopes]
        return sum(max(0.0, h.estimate - h.booked) for h in holds), len(holds)


class _Hold:
    __slots__ = ("booked", "estimate", "scopes")

    def __init__(self, scopes: tuple[str, ...], estimate: float):
        self.scopes = scopes
        self.estimate = estimate
        self.booked = 0.0
