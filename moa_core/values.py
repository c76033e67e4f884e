"""Plain values the engine consumes and produces: messages, tool calls, usage, costs, results.

Frozen, slotted, and free of clients or storage, so they cross every boundary safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
# "cut": the call was still running when its turn was cancelled (shutdown past the grace);
# its usage is an estimate from what was sent and received so far.
CallStatus = Literal["ok", "failed", "timeout", "skipped", "cut"]
CostSource = Literal["provider", "price_table", "config", "unknown"]
# How trustworthy a token count is: "reported" by the server, "estimated" by us
# from text length (the server sent none), or "unknown".
UsageSource = Literal["reported", "estimated", "unknown"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool invocation requested by a model; `arguments` is the raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image that came with a user message.

    `data` holds the bytes only while they are at hand (the turn the image came in, or a later
    one when the gateway keeps images); stored history keeps the description alone, and then
    every model gets `stand_in` text instead. `digest` (sha256 hex of the bytes) survives the
    bytes, so a kept copy can be found again.
    """

    name: str
    media_type: str
    data: bytes = field(default=b"", repr=False)
    width: int | None = None
    height: int | None = None
    digest: str = ""

    def stand_in(self, why: str = "not visible to you") -> str:
        size = f", {self.width}×{self.height}" if self.width and self.height else ""
        return f"[image: {self.name}{size}, {why}]"


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation entry in a wire-neutral shape.

    `tool_call_id` and `name` are set on tool results (role "tool"); `images` only on user
    messages, sent after `content` to models that can see and as text stand-ins to the others.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    images: tuple[ImagePart, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered to a model: name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict = field(hash=False, compare=True)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, normalised across wire formats.

    `input` excludes cached tokens (OpenAI counts them inside prompt_tokens; we subtract).
    `reasoning` is a part of `output`, reported for information.
    """

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    source: UsageSource = "reported"

    def __add__(self, other: Usage) -> Usage:
        sources = {self.source, other.source}
        source: UsageSource = (
            "unknown" if "unknown" in sources else "estimated" if "estimated" in sources else "reported"
        )
        return Usage(
            self.input + other.input,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.output + other.output,
            self.reasoning + other.reasoning,
            source,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "input": self.input,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "output": self.output,
            "reasoning": self.reasoning,
        }


UNKNOWN_USAGE = Usage(source="unknown")


@dataclass(frozen=True, slots=True)
class Cost:
    """Dollars of one call and where the figure came from; `usd` is None when unknown."""

    usd: float | None
    source: CostSource


UNKNOWN_COST = Cost(None, "unknown")


@dataclass(frozen=True, slots=True)
class Completion:
    """What one model call returned."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: Usage
    provider_cost_usd: float | None = None
    model: str | None = None


def sum_dollars(costs: list[Cost] | tuple[Cost, ...]) -> float | None:
    """Sum known dollars; None only when nothing at all is known. Never show this alone beside
    unknown parts: a total is this sum *plus* `count_unpriced` of the same costs."""
    known = [c.usd for c in costs if c.usd is not None]
    return sum(known) if known else None


def count_unpriced(costs: list[Cost] | tuple[Cost, ...]) -> int:
    """How many of `costs` have no dollar figure: the part of a total `sum_dollars` leaves out."""
    return sum(1 for c in costs if c.usd is None)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One model call of a turn, as stored: one row per reference and aggregator call.

    `index` is the reference's position in its preset (0-based; 0 for the aggregator), `step`
    the aggregator loop step the call belongs to. `late` marks a reference that answered after
    the quorum grace: its advice was not used, its usage and cost still count.
    """

    role: Literal["reference", "aggregator", "transcription"]
    step: int
    index: int
    provider: str
    model: str
    status: CallStatus
    latency_ms: int
    usage: Usage
    cost: Cost
    error: str | None = None
    late: bool = False
