"""`Bounded`: the adapters' small in-memory caches (what a message shows now, threads the bot
answered in, raw interactions, names) — a dict that forgets its least recently remembered
entries past a capacity, so a bot that runs for months holds a fixed amount of them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

DEFAULT_CAPACITY = 2048


class Bounded(OrderedDict[Any, Any]):
    """An insertion-ordered cache that keeps at most `capacity` entries; `remember` makes an
    entry the newest, and the oldest go first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__()
        self.capacity = capacity

    def remember(self, key: Any, value: Any = None) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


__all__ = ["DEFAULT_CAPACITY", "Bounded"]
