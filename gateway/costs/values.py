"""The sums every cost figure is made of: `Tokens` (the five token counts) and `Totals` (calls,
turns, dollars, unpriced calls and their tokens), as the rollups read them and reports show them.
Below both `gateway.costs.rollups` and `gateway.costs.reports`, which import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Tokens:
    """The five token counts of a set of calls (`reasoning` is a part of `output`)."""

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.output + other.output,
            self.reasoning + other.reasoning,
        )

    @property
    def total(self) -> int:
        """Tokens read and written (reasoning is already inside output)."""
        return self.input + self.cache_read + self.cache_write + self.output


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums of a set of calls. `turns` counts the calls that were their turn's first,
    `model_turns` those first of their turn for their role, provider and model; `dollars` the
    known costs, `unpriced` the calls without a price."""

    calls: int = 0
    turns: int = 0
    model_turns: int = 0
    dollars: float = 0.0
    unpriced: int = 0
    tokens: Tokens = field(default_factory=Tokens)

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.calls + other.calls, self.turns + other.turns, self.model_turns + other.model_turns,
                      self.dollars + other.dollars, self.unpriced + other.unpriced, self.tokens + other.tokens)

    def values(self) -> tuple[Any, ...]:
        """Every sum, flat, in `gateway.storage.rollups.SUMS` order."""
        t = self.tokens
        return (self.calls, self.turns, self.model_turns, self.dollars, self.unpriced, t.input, t.cache_read,
                t.cache_write, t.output, t.reasoning)


__all__ = ["Tokens", "Totals"]
