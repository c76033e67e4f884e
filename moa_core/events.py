"""Values the engine emits while a turn runs, and the turn's result.

The gateway renders these (progress line, batched summary, streamed answer); the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from moa_core.values import CallRecord, CallStatus, Cost, Message, ToolCall, Usage, count_unpriced


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """One reference's outcome in one fan-out. `index` is its position in the preset (0-based).

    `saw_images` is None when the view held no image to see, else whether this model was sent
    the images (True) or text stand-ins for them (False)."""

    index: int
    count: int
    label: str
    status: CallStatus
    text: str
    usage: Usage
    cost: Cost
    latency_ms: int
    step: int = 1
    error: str | None = None
    late: bool = False
    saw_images: bool | None = None


@dataclass(frozen=True, slots=True)
class ReferenceFinished:
    result: ReferenceResult


@dataclass(frozen=True, slots=True)
class CallFinished:
    """One model call ended (answered, failed, timed out, skipped, or cut by cancellation), as
    its stored record. Emitted once per call, as soon as it ends, so that a caller can book its
    spend at once; a turn cut later still leaves these behind. Advice reused from the session's
    cache makes no call and emits nothing. Handlers should not block: during cancellation the
    engine still emits the records of the calls it cut."""

    record: CallRecord


@dataclass(frozen=True, slots=True)
class ReferencesDone:
    step: int
    results: tuple[ReferenceResult, ...]


@dataclass(frozen=True, slots=True)
class Aggregating:
    label: str
    step: int


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    step: int
    call: ToolCall


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    step: int
    call: ToolCall
    ok: bool
    output: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    step: int
    text: str


@dataclass(frozen=True, slots=True)
class TurnResult:
    """Everything a finished turn produced.

    `new_messages` are the assistant and tool messages to append to the session history.
    `references` holds every reference result of every fan-out of the turn (late ones included).
    `error` is set when the aggregator could not answer; calls made so far are still listed.
    """

    preset: str
    aggregator_label: str
    answer: str
    steps: int
    references: tuple[ReferenceResult, ...]
    calls: tuple[CallRecord, ...]
    new_messages: tuple[Message, ...]
    aggregator_usage: Usage
    aggregator_cost: Cost
    total_cost_usd: float | None
    elapsed_ms: int
    step_limit_hit: bool = False
    error: str | None = None

    @property
    def unpriced_calls(self) -> int:
        """Calls of the turn without a price: `total_cost_usd` is the sum of the others."""
        return count_unpriced([c.cost for c in self.calls if c.status != "skipped"])


@dataclass(frozen=True, slots=True)
class TurnDone:
    result: TurnResult


Event = (
    ReferenceFinished
    | CallFinished
    | ReferencesDone
    | Aggregating
    | ToolCallStarted
    | ToolCallFinished
    | TextDelta
    | TurnDone
)
OnEvent = Callable[[Event], Awaitable[None]]
