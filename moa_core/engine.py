"""One MoA turn: reference fan-out(s) and the aggregator's tool loop.

The aggregator is the acting model: it gets the full conversation with the references' advice
added to the last user turn, may call the preset's tools, and writes the answer. References run
according to the preset's cadence; an advisory view identical to the previous one (per session)
reuses the earlier advice: no new calls, no new events, no new spend.

Every call's record is emitted (`CallFinished`) the moment the call ends, so a caller can book
spend as it happens; a turn cancelled mid-way emits the calls it cut (status `cut`, estimated
usage) before the cancellation propagates, and a call that raised something other than a
provider error is emitted as failed before the error propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from moa_core.advisory import advisory_view, guidance_block, view_key, with_guidance
from moa_core.clock import Clock
from moa_core.events import (
    Aggregating,
    CallFinished,
    Event,
    OnEvent,
    ReferenceFinished,
    ReferenceResult,
    ReferencesDone,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnDone,
    TurnResult,
)
from moa_core.fanout import (
    ReferenceCall,
    Straggler,
    cut_reference,
    cut_spend,
    fan_out,
    mark_late,
    partial_spend,
    reference_record,
)
from moa_core.images import can_see, for_model, has_visible_images
from moa_core.pricing import price_call
from moa_core.providers.base import CompletionRequest, ModelClient, ProviderError, ProviderTimeout
from moa_core.settings import EngineSettings, Preset
from moa_core.tools import Tool, run_tool
from moa_core.trace import TraceWriter
from moa_core.values import (
    UNKNOWN_COST,
    UNKNOWN_USAGE,
    CallRecord,
    Completion,
    Cost,
    Message,
    Usage,
    sum_dollars,
)

log = logging.getLogger(__name__)

# Sessions whose last advisory view and advice we remember (least recently used dropped first).
_ADVICE_CACHE_SESSIONS = 1024
_COST_SOURCE_RANK = {"provider": 0, "price_table": 1, "config": 2, "unknown": 3}


class ConfigurationError(ValueError):
    """A preset or slot cannot be run as configured."""


@dataclass(frozen=True, slots=True)
class _Advice:
    key: str
    results: tuple[ReferenceResult, ...]


def combine_costs(costs: Sequence[Cost]) -> Cost:
    """Dollars summed; the source is the least reliable one among the parts."""
    if not costs:
        return UNKNOWN_COST
    source = max((c.source for c in costs), key=_COST_SOURCE_RANK.__getitem__)
    return Cost(sum_dollars(costs), source)


def _sum_usage(usages: Sequence[Usage]) -> Usage:
    total = Usage()
    for usage in usages:
        total = total + usage
    return total if usages else UNKNOWN_USAGE


def _should_fan_out(preset: Preset, step: int) -> bool:
    if not preset.enabled or not preset.references:
        return False
    if preset.fanout.mode == "user_turn":
        return step == 1
    if preset.fanout.mode == "per_iteration":
        return True
    return (step - 1) % preset.fanout.every == 0


class MoaEngine:
    """Runs turns. Holds the per-session advice cache; everything else is injected."""

    def __init__(
        self,
        settings: EngineSettings,
        client: ModelClient,
        *,
        tools: Mapping[str, Tool],
        clock: Clock,
        tracer: TraceWriter | None = None,
        tool_source: Callable[[Sequence[str]], Mapping[str, Tool]] | None = None,
    ):
        self._settings = settings
        self._client = client
        self._tools = dict(tools)
        # Tools that change while running (MCP servers): resolved from a preset's entries per turn.
        self._tool_source = tool_source
        self._clock = clock
        self._tracer = tracer
        self._advice: OrderedDict[str, _Advice] = OrderedDict()

    @property
    def settings(self) -> EngineSettings:
        return self._settings

    def preset(self, name: str) -> Preset:
        try:
            return self._settings.presets[name]
        except KeyError:
            known = ", ".join(sorted(self._settings.presets)) or "none"
            raise ConfigurationError(f"unknown preset '{name}' (configured: {known})") from None

    async def run_turn(
        self,
        preset_name: str,
        conversation: Sequence[Message],
        *,
        session: str = "default",
        on_event: OnEvent | None = None,
    ) -> TurnResult:
        """Run one turn on `conversation` (which ends with the new user message)."""
        preset = self.preset(preset_name)
        aggregator = preset.aggregator
        if aggregator.is_recursive:
            raise ConfigurationError(f"preset '{preset.name}': the aggregator cannot be another preset")
        if aggregator.provider not in self._settings.providers:
            raise ConfigurationError(f"preset '{preset.name}': unknown aggregator provider '{aggregator.provider}'")
        provider = self._settings.providers[aggregator.provider]
        tools = {name: self._tools[name] for name in preset.tools if name in self._tools}
        if self._tool_source is not None:
            tools.update(self._tool_source(preset.tools))

        async def emit(event: Event) -> None:
            if on_event is None:
                return
            try:
                await on_event(event)
            except Exception:  # a display problem never breaks the turn
                log.exception("event handler failed on %s", type(event).__name__)

        started = self._clock.monotonic()
        history = tuple(conversation)
        new_messages: list[Message] = []
        calls: list[CallRecord] = []
        references: list[ReferenceResult] = []
        late_tasks: list[Straggler] = []
        aggregator_usages: list[Usage] = []
        aggregator_costs: list[Cost] = []
        advice: tuple[ReferenceResult, ...] = ()
        answer = ""
        error: str | None = None
        step_limit_hit = False
        steps = 0

        try:
            for step in range(1, preset.max_steps + 1):
                steps = step
                state = history + tuple(new_messages)
                fanout_calls: list[ReferenceCall] | None = None
                if _should_fan_out(preset, step):
                    view = advisory_view(state, self._settings.tool_result_budget)
                    key = view_key(view, preset.name, [s.label for s in preset.references])
                    cached = self._advice.get(session)
                    if cached is not None and cached.key == key:
                        advice = cached.results
                        self._advice.move_to_end(session)
                    else:
                        async def on_result(result: ReferenceResult) -> None:
                            await emit(ReferenceFinished(result))

                        async def on_call(call: ReferenceCall) -> None:
                            await emit(CallFinished(reference_record(call)))

                        outcome = await fan_out(
                            client=self._client,
                            providers=self._settings.providers,
                            preset=preset,
                            view=view,
                            step=step,
                            clock=self._clock,
                            max_concurrent=self._settings.max_concurrent_references,
                            on_result=on_result,
                            on_call=on_call,
                        )
                        advice = tuple(outcome.results)
                        fanout_calls = outcome.calls
                        references.extend(advice)
                        calls.extend(reference_record(call) for call in outcome.calls)
                        late_tasks.extend(outcome.late)
                        self._remember(session, _Advice(key, advice))
                        await emit(ReferencesDone(step, advice))

                # Stand-ins go right after the user's words, before any advice is added.
                seen = for_model(state, can_see(provider, aggregator.model)) if has_visible_images(state) else state
                agg_input = (
                    with_guidance(seen, guidance_block(preset.name, aggregator.label, advice))
                    if advice
                    else seen
                )
                await emit(Aggregating(aggregator.label, step))
                completion, record = await self._call_aggregator(
                    preset, provider, agg_input, tools, step, emit, listening=on_event is not None
                )
                calls.append(record)
                aggregator_usages.append(record.usage)
                aggregator_costs.append(record.cost)
                if fanout_calls is not None:
                    self._trace(session, preset, step, fanout_calls, agg_input, completion, record)
                if completion is None:
                    error = record.error
                    break

                if completion.tool_calls and tools:
                    new_messages.append(Message("assistant", completion.text, completion.tool_calls))
                    for call in completion.tool_calls:
                        await emit(ToolCallStarted(step, call))
                        tool = tools.get(call.name)
                        if tool is None:
                            ok, output = False, f"unknown tool '{call.name}'; available: {', '.join(tools)}"
                        else:
                            outcome_ = await run_tool(tool, call.arguments, self._settings.tool_limits)
                            ok, output = outcome_.ok, outcome_.output
                        await emit(ToolCallFinished(step, call, ok, output))
                        new_messages.append(Message("tool", output, tool_call_id=call.id, name=call.name))
                    continue

                answer = completion.text
                new_messages.append(Message("assistant", answer))
                break
            else:
                step_limit_hit = True
                answer = (
                    f"I stopped after {preset.max_steps} tool steps without reaching a final answer "
                    "(the preset's step limit). Ask again, narrower, or raise max_steps."
                )
                new_messages.append(Message("assistant", answer))
        except BaseException:
            # Cut (cancelled) or broken: stragglers are not waited for; they are cut and booked.
            for straggler in late_tasks:
                if not straggler.task.done():
                    straggler.task.cancel()
                    cut = cut_reference(preset, self._settings.providers, straggler.index, straggler.step,
                                        straggler.messages, self._clock.monotonic() - straggler.started)
                    await emit(CallFinished(reference_record(cut, late=True)))
                elif not straggler.task.cancelled() and straggler.task.exception() is None:
                    await emit(CallFinished(reference_record(mark_late(straggler.task.result()), late=True)))
            raise
        # Late references still count: wait for them within their own deadlines.
        for straggler in late_tasks:
            task = straggler.task
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), preset.reference_timeout + 1.0)
                except asyncio.CancelledError:
                    task.cancel()
                    cut = cut_reference(preset, self._settings.providers, straggler.index, straggler.step,
                                        straggler.messages, self._clock.monotonic() - straggler.started)
                    await emit(CallFinished(reference_record(cut, late=True)))
                    raise
                except BaseException:
                    task.cancel()
            if task.done() and not task.cancelled() and task.exception() is None:
                late_call = mark_late(task.result())
                references.append(late_call.result)
                record = reference_record(late_call, late=True)
                calls.append(record)
                await emit(CallFinished(record))

        total = sum_dollars([c.cost for c in calls])
        result = TurnResult(
            preset=preset.name,
            aggregator_label=aggregator.label,
            answer=answer,
            steps=steps,
            references=tuple(references),
            calls=tuple(calls),
            new_messages=tuple(new_messages),
            aggregator_usage=_sum_usage(aggregator_usages),
            aggregator_cost=combine_costs(aggregator_costs),
            total_cost_usd=total,
            elapsed_ms=int((self._clock.monotonic() - started) * 1000),
            step_limit_hit=step_limit_hit,
            error=error,
        )
        await emit(TurnDone(result))
        return result

    async def _call_aggregator(
        self,
        preset: Preset,
        provider,
        messages: tuple[Message, ...],
        tools: Mapping[str, Tool],
        step: int,
        emit,
        *,
        listening: bool = True,
    ) -> tuple[Completion | None, CallRecord]:
        slot = preset.aggregator
        streamed: list[str] = []

        async def on_text(text: str) -> None:
            streamed.append(text)
            if listening:  # a delta per chunk of every stream: made only when someone reads it
                await emit(TextDelta(step, text))

        request = CompletionRequest(
            provider=provider,
            model=slot.model,
            messages=messages,
            tools=tuple(tool.spec for tool in tools.values()),
            temperature=preset.aggregator_temperature,
            max_tokens=slot.max_tokens,
            stream=preset.stream,
            deadline=self._clock.monotonic() + preset.aggregator_timeout,
        )
        started = self._clock.monotonic()
        def elapsed_ms() -> int:
            return int((self._clock.monotonic() - started) * 1000)

        try:
            completion = await self._client.complete(request, on_text if preset.stream else None)
        except ProviderError as failure:
            status = "timeout" if isinstance(failure, ProviderTimeout) else "failed"
            usage, cost = partial_spend(provider, slot.model, failure)
            record = CallRecord("aggregator", step, 0, provider.name, slot.model, status, elapsed_ms(), usage, cost,
                                str(failure))
            await emit(CallFinished(record))
            return None, record
        except BaseException as failure:
            # Cancelled (shutdown) or a bug below us: the call may have cost money all the same.
            cancelled = isinstance(failure, asyncio.CancelledError)
            usage, cost = cut_spend(provider, request, "".join(streamed))
            why = "cut: the turn was cancelled while this call ran" if cancelled else (
                f"{type(failure).__name__}: {failure}")
            await emit(CallFinished(CallRecord("aggregator", step, 0, provider.name, slot.model,
                                               "cut" if cancelled else "failed", elapsed_ms(), usage, cost, why)))
            raise
        cost = price_call(provider, slot.model, completion.usage, completion.provider_cost_usd)
        record = CallRecord("aggregator", step, 0, provider.name, slot.model, "ok", elapsed_ms(), completion.usage,
                            cost)
        await emit(CallFinished(record))
        if not preset.stream and completion.text:
            await emit(TextDelta(step, completion.text))
        return completion, record

    def _remember(self, session: str, advice: _Advice) -> None:
        self._advice[session] = advice
        self._advice.move_to_end(session)
        while len(self._advice) > _ADVICE_CACHE_SESSIONS:
            self._advice.popitem(last=False)

    def forget_session(self, session: str) -> None:
        self._advice.pop(session, None)

    def _trace(
        self,
        session: str,
        preset: Preset,
        step: int,
        fanout_calls: Sequence[ReferenceCall],
        agg_input: Sequence[Message],
        completion: Completion | None,
        record: CallRecord,
    ) -> None:
        if self._tracer is None:
            return
        self._tracer.write(
            session,
            {
                "session": session,
                "preset": preset.name,
                "step": step,
                "references": [
                    {
                        "label": call.result.label,
                        "provider": call.provider,
                        "model": call.model,
                        "temperature": call.temperature,
                        "input": [_message_json(m) for m in call.input_messages],
                        "output": call.result.text,
                        "status": call.result.status,
                        "error": call.result.error,
                        "latency_ms": call.result.latency_ms,
                        "usage": call.result.usage.as_dict() | {"source": call.result.usage.source},
                        "cost_usd": call.result.cost.usd,
                        "cost_source": call.result.cost.source,
                    }
                    for call in fanout_calls
                ],
                "aggregator": {
                    "label": preset.aggregator.label,
                    "temperature": preset.aggregator_temperature,
                    "input": [_message_json(m) for m in agg_input],
                    "output": completion.text if completion else None,
                    "tool_calls": [
                        {"id": c.id, "name": c.name, "arguments": c.arguments}
                        for c in (completion.tool_calls if completion else ())
                    ],
                    "status": record.status,
                    "usage": record.usage.as_dict() | {"source": record.usage.source},
                    "cost_usd": record.cost.usd,
                    "cost_source": record.cost.source,
                },
            },
        )


def _message_json(message: Message) -> dict:
    out: dict = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    if message.images:  # described, never the bytes: traces are for reading
        out["images"] = [
            {"name": i.name, "media_type": i.media_type, "bytes": len(i.data), "sha256": i.digest}
            for i in message.images
        ]
    return out
