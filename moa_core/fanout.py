"""The reference fan-out: every reference of a preset asked concurrently for advice.

Results keep preset order; a failing, slow or recursive reference becomes a labelled result and
never aborts the turn. With a quorum, references still running after the grace period are left
to finish in the background so their usage and cost are still recorded (`late`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from moa_core.advisory import REFERENCE_SYSTEM_PROMPT
from moa_core.clock import Clock
from moa_core.events import ReferenceResult
from moa_core.images import can_see, for_model, has_visible_images
from moa_core.pricing import price_call
from moa_core.providers.base import CompletionRequest, ModelClient, ProviderError, ProviderTimeout
from moa_core.settings import Preset, ProviderSettings, Slot
from moa_core.values import UNKNOWN_COST, UNKNOWN_USAGE, CallRecord, Cost, Message, Usage

log = logging.getLogger(__name__)

OnResult = Callable[[ReferenceResult], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReferenceCall:
    """The exact input and output of one reference call, kept for traces."""

    result: ReferenceResult
    provider: str
    model: str
    temperature: float
    input_messages: tuple[Message, ...]


@dataclass(slots=True)
class FanOut:
    """What a fan-out produced: results in preset order, call records, and late stragglers."""

    results: list[ReferenceResult]
    calls: list[ReferenceCall]
    late: list[asyncio.Task[ReferenceCall]] = field(default_factory=list)


def partial_spend(provider: ProviderSettings, model: str, error: BaseException) -> tuple[Usage, Cost]:
    """Usage and cost of a call that failed after producing output (estimated), else unknown."""
    usage = getattr(error, "usage", None)
    if not isinstance(usage, Usage):
        return UNKNOWN_USAGE, UNKNOWN_COST
    return usage, price_call(provider, model, usage, None)


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
    limit: asyncio.Semaphore,
) -> ReferenceCall:
    if has_visible_images(messages):
        messages = for_model(messages, can_see(provider, slot.model))
        seen = can_see(provider, slot.model)
    else:
        seen = None
    async with limit:
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
            # The outer timeout is a backstop in case a provider ignores the deadline.
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
) -> FanOut:
    """Ask every reference of `preset` for advice on `view`, concurrently."""
    count = len(preset.references)
    messages = (Message("system", REFERENCE_SYSTEM_PROMPT), *view)
    limit = asyncio.Semaphore(max(1, max_concurrent))
    results: list[ReferenceResult | None] = [None] * count
    calls: list[ReferenceCall] = []
    pending: dict[asyncio.Task[ReferenceCall], int] = {}

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
            task = asyncio.create_task(
                _ask_reference(
                    client, providers[slot.provider], slot, preset, messages, index, count, step, clock, limit
                )
            )
            pending[task] = index
    for result in results:
        if result is not None:
            await on_result(result)

    answered = 0
    grace_ends: float | None = None
    try:
        while pending:
            timeout = None if grace_ends is None else max(0.0, grace_ends - clock.monotonic())
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break  # grace period over: the rest answer late
            for task in done:
                index = pending.pop(task)
                call = task.result()
                calls.append(call)
                results[index] = call.result
                answered += call.result.status == "ok"
                await on_result(call.result)
            if preset.quorum and grace_ends is None and answered >= preset.quorum and pending:
                grace_ends = clock.monotonic() + preset.quorum_grace
    except BaseException:
        for task in pending:
            task.cancel()
        raise

    late: list[asyncio.Task[ReferenceCall]] = []
    for task, index in pending.items():
        slot = preset.references[index]
        result = ReferenceResult(
            index, count, slot.label, "timeout", "", UNKNOWN_USAGE, UNKNOWN_COST,
            int(preset.quorum_grace * 1000), step,
            f"still running after the quorum of {preset.quorum} and a {preset.quorum_grace:g} s grace",
        )
        results[index] = result
        late.append(task)
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
