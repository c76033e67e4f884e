"""Garbage-collector settings for the long-running bot process.

At a few hundred concurrent turns the cyclic collector was a third of the process's CPU: each
full collection walked every object loaded at start-up (SDKs, the price table, config), and
young collections ran every 700 allocations. After start-up those objects live as long as the
process, so they are frozen out of the collector's view and young collections run less often.
Reference counting still frees almost everything at once; only cycles wait a little longer.
"""

from __future__ import annotations

import gc

from moa_core.pricing import load_price_table

YOUNG_COLLECTION_THRESHOLD = 20_000  # allocations between young collections (Python's default: 700)


def settle_heap() -> None:
    """Call once, after start-up and before serving: everything alive now is kept for good."""
    load_price_table()  # loaded lazily otherwise, and large: load it now so it is frozen too
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
