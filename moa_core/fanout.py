"""The reference fan-out: every reference of a preset asked concurrently for advice.

Results keep preset order; a failing, slow or recursive reference becomes a labelled result and
never aborts the turn. With a quorum, references still running after the grace period are left
to finish in the background so their usage and cost are still recorded (`late`). Each call is
handed to `on_call` the moment it ends, so its spend can be booked before the turn is over; a
fan-out cancelled mid-way hands over its running calls as `cut`, with estimated usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from moa_core.advisory import REFERENCE_SYSTEM_PROMPT
from moa_core.clock import Clock
from moa_core.events import ReferenceResult
from moa_core.images import can_see, for_model, has_visible_images
from moa_core.pricing import price_call
from moa_core.providers.base import CompletionRequest, ModelClient, ProviderError, ProviderTimeout
from moa_core.providers.client import estimated_usage
from moa_core.settings import Preset, ProviderSettings, Slot
from moa_core.values import UNKNOWN_COST, UNKNOWN_USAGE, CallRecord, Cost, Message, Usage

log = logging.getLogger(__name__)

_NO_LIMIT = contextlib.nullcontext()  # stateless: one for every fan-out

OnResult = Callable[[ReferenceResult], Awaitable[None]]
OnCall = Callable[["ReferenceCall"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReferenceCall:
    """The exact input and output of one reference call, kept for traces."""

    result: ReferenceResult
    provider: str
    model: str
    temperature: float
    input_messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Straggler:
    """A reference still running after the quorum grace: its task, and what it was sent (so a
    cut straggler can still be booked with an estimate)."""

    task: asyncio.Task[ReferenceCall]
    index: int
    step: int
    messages: tuple[Message, ...]
    started: float


@dataclass(slots=True)
class FanOut:
    """What a fan-out produced: results in preset order, call records, and late stragglers."""

    results: list[ReferenceResult]
    calls: list[ReferenceCall]
    late: list[Straggler] = field(default_factory=list)


def partial_spend(provider: ProviderSettings, model: str, error: BaseException) -> tuple[Usage, Cost]:
    """Usage and cost of a call that failed after producing output (estimated), else unknown."""
    usage = getattr(error, "usage", None)
    if not isinstance(usage, Usage):
        return UNKNOWN_USAGE, UNKNOWN_COST
    return usage, price_call(provider, model, usage, None)


def cut_spend(provider: ProviderSettings, request: CompletionRequest, output_text: str = "") -> tuple[Usage, Cost]:
    """Estimated usage and cost of a call cut by cancellation: the server may already bill the
    input it read (and what it wrote), but it reported nothing."""
    usage = estimated_usage(request, output_text)
    return usage, price_call(provider, request.model, usage, None)


def cut_reference(preset: Preset, providers: dict[str, ProviderSettings], index: int, step: int,
                  messages: tuple[Message, ...], elapsed_s: float) -> ReferenceCall:
    """The record of a reference still running when its fan-out was cancelled."""
    slot = preset.references[index]
    provider = providers[slot.provider]
    request = CompletionRequest(provider=provider, model=slot.model, messages=messages,
                                temperature=preset.reference_temperature, max_tokens=slot.max_tokens)
    usage, cost = cut_spend(provider, request)
    result = ReferenceResult(
        index, len(preset.references), slot.label, "cut", "", usage, cost, int(elapsed_s * 1000), step,
        "cut: the turn was cancelled while this call ran",
    )
    return ReferenceCall(result, provider.name, slot.model, preset.reference_temperature, messages)


class _Ended:
    """The fan-out's tasks as they end, in that order: one done-callback per task for the whole
    fan-out, where `asyncio.wait` in a loop would add and remove one per pending task at every
    wake-up and make a set and a future each time."""

    def __init__(self, tasks: Iterable[asyncio.Task[ReferenceCall]]) -> None:
        self.tasks: deque[asyncio.Task[ReferenceCall]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        for task in tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[ReferenceCall]) -> None:
        self.tasks.append(task)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None) -> bool:
        """Until a task ends (True) or `timeout` seconds pass (False: none ended)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return bool(self.tasks)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _skipped(index: int, count: int, slot: Slot, step: int, why: str) -> ReferenceResult:
    return ReferenceResult(
        index, count, slot.label, "skipped", "", UNKNOWN_USAGE, UNKNOWN_COST, 0, step, why
    )


async def _ask_reference(
    client: ModelClient,
    provider: ProviderSettings,
    slot: Slot,
    preset: Preset,
    messages: tuple[Message, ...],
    index: int,
    count: int,
    step: int,
    clock: Clock,
    limit: asyncio.Semaphore | contextlib.nullcontext,
    sent: set[int],
    images: bool,
) -> ReferenceCall:
    if images:
        messages = for_model(messages, can_see(provider, slot.model))
        seen = can_see(provider, slot.model)
    else:
        seen = None
    async with limit:
        sent.add(index)  # from here on the call may cost money, even if it is cut
        started = clock.monotonic()
        deadline = started + preset.reference_timeout
        request = CompletionRequest(
            provider=provider,
            model=slot.model,
            messages=messages,
            temperature=preset.reference_temperature,
            max_tokens=slot.max_tokens,
            deadline=deadline,
        )
        try:
            if getattr(client, "honours_deadline", False):
                completion = await client.complete(request)  # one timer per call, not two
            else:
                # A backstop in case a client ignores the deadline.
                async with asyncio.timeout(preset.reference_timeout + 1.0):
                    completion = await client.complete(request)
        except (ProviderTimeout, TimeoutError) as error:
            usage, cost = partial_spend(provider, slot.model, error)
            result = ReferenceResult(
                index, count, slot.label, "timeout", "", usage, cost,
                int((clock.monotonic() - started) * 1000), step,
                f"no answer within {preset.reference_timeout:g} s",
            )
        except ProviderError as error:
            usage, cost = partial_spend(provider, slot.model, error)
            result = ReferenceResult(
                index, count, slot.label, "failed", "", usage, cost,
                int((clock.monotonic() - started) * 1000), step, str(error),
            )
        except Exception as error:  # a reference must never abort the turn
            log.exception("reference %s crashed", slot.label)
            result = ReferenceResult(
                index, count, slot.label, "failed", "", UNKNOWN_USAGE, UNKNOWN_COST,
                int((clock.monotonic() - started) * 1000), step, f"{type(error).__name__}: {error}",
            )
        else:
            cost = price_call(provider, slot.model, completion.usage, completion.provider_cost_usd)
            text = completion.text.strip()
            result = ReferenceResult(
                index, count, slot.label, "ok" if text else "failed", text, completion.usage, cost,
                int((clock.monotonic() - started) * 1000), step, None if text else "empty answer",
            )
        if seen is not None:
            result = replace(result, saw_images=seen)
        return ReferenceCall(result, provider.name, slot.model, preset.reference_temperature, messages)


async def fan_out(
    *,
    client: ModelClient,
    providers: dict[str, ProviderSettings],
    preset: Preset,
    view: Sequence[Message],
    step: int,
    clock: Clock,
    max_concurrent: int,
    on_result: OnResult,
    on_call: OnCall | None = None,
) -> FanOut:
    """Ask every reference of `preset` for advice on `view`, concurrently.

    `on_call` gets each call as it ends (skipped ones at once); when the fan-out is cancelled,
    the references still running are cancelled and handed over as `cut` before it re-raises."""
    count = len(preset.references)
    messages = (Message("system", REFERENCE_SYSTEM_PROMPT), *view)
    # A limit that cannot be reached is not taken: a semaphore costs two awaits per call.
    limit = asyncio.Semaphore(max(1, max_concurrent)) if count > max(1, max_concurrent) else _NO_LIMIT
    images = has_visible_images(messages)  # the same view for every reference: looked at once
    loop = asyncio.get_running_loop()
    results: list[ReferenceResult | None] = [None] * count
    calls: list[ReferenceCall] = []
    pending: dict[asyncio.Task[ReferenceCall], int] = {}
    sent: set[int] = set()

    for index, slot in enumerate(preset.references):
        why = (
            "a preset cannot use another preset as a reference"
            if slot.is_recursive
            else f"unknown provider '{slot.provider}'"
            if slot.provider not in providers
            else None
        )
        if why is not None:
            skipped = _skipped(index, count, slot, step, why)
            results[index] = skipped
            calls.append(ReferenceCall(skipped, slot.provider, slot.model, preset.reference_temperature, ()))
        else:
            task = loop.create_task(  # asyncio.create_task's own work, one call less per reference
                _ask_reference(
                    client, providers[slot.provider], slot, preset, messages, index, count, step, clock, limit,
                    sent, images,
                )
            )
            pending[task] = index
    started = clock.monotonic()
    answered = 0
    grace_ends: float | None = None
    try:
        for call in calls:
            if on_call is not None:
                await on_call(call)
        for result in results:
            if result is not None:
                await on_result(result)
        ended = _Ended(pending)
        while pending:
            if not ended.tasks and not await ended.wait(
                None if grace_ends is None else max(0.0, grace_ends - clock.monotonic())
            ):
                break  # grace period over: the rest answer late
            while ended.tasks:
                task = ended.tasks.popleft()
                index = pending.pop(task)
                call = task.result()
                calls.append(call)
                if on_call is not None:
                    await on_call(call)
                results[index] = call.result
                answered += call.result.status == "ok"
                await on_result(call.result)
            if preset.quorum and grace_ends is None and answered >= preset.quorum and pending:
                grace_ends = clock.monotonic() + preset.quorum_grace
    except BaseException:
        for task in pending:
            task.cancel()
        if on_call is not None:
            for task, index in sorted(pending.items(), key=lambda item: item[1]):
                if task.done() and not task.cancelled() and task.exception() is None:
                    await on_call(task.result())  # it ended just before the cancellation
                elif index in sent:  # a call still waiting for a slot was never sent
                    await on_call(cut_reference(preset, providers, index, step, messages,
                                                clock.monotonic() - started))
        raise

    late: list[Straggler] = []
    for task, index in pending.items():
        slot = preset.references[index]
        result = ReferenceResult(
            index, count, slot.label, "timeout", "", UNKNOWN_USAGE, UNKNOWN_COST,
            int(preset.quorum_grace * 1000), step,
            f"still running after the quorum of {preset.quorum} and a {preset.quorum_grace:g} s grace",
        )
        results[index] = result
        late.append(Straggler(task, index, step, messages, started))
        await on_result(result)
    calls.sort(key=lambda call: call.result.index)
    return FanOut([r for r in results if r is not None], calls, late)


def reference_record(call: ReferenceCall, *, late: bool = False) -> CallRecord:
    result = call.result
    return CallRecord(
        role="reference",
        step=result.step,
        index=result.index,
        provider=call.provider,
        model=call.model,
        status=result.status,
        latency_ms=result.latency_ms,
        usage=result.usage,
        cost=result.cost,
        error=result.error,
        late=late,
    )


def mark_late(call: ReferenceCall) -> ReferenceCall:
    return replace(call, result=replace(call.result, late=True))
