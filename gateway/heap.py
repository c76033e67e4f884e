"""Garbage-collector settings for the long-running bot process.

At a few hundred concurrent turns the cyclic collector was a third of the process's CPU: each
full collection walked every object loaded at start-up (SDKs, the price table, config), and
young collections ran every 700 allocations. After start-up those objects live as long as the
process, so they are frozen out of the collector's view and young collections run less often.
Reference counting still frees almost everything at once; only cycles wait a little longer.

A young collection walks every young object, and in a burst of turns those are the calls in
flight, nearly all still alive: 200 concurrent turns of 4 references hold about 60k young
objects at their peak, so at 20k allocations the collector walked them two or three times per
burst for nothing (about a third of the CPU of sending 800 reference requests). The threshold
sits above that peak; the count falls again as the calls end (it counts allocations minus
frees), so collections come from what outlives the turns, not from each burst. Cyclic garbage
waits for at most that many allocations (a few tens of MB at worst).
"""

from __future__ import annotations

import gc

from moa_core.pricing import load_price_table

YOUNG_COLLECTION_THRESHOLD = 100_000  # net allocations between young collections (Python's default: 700)


def settle_heap() -> None:
    """Call once, after start-up and before serving: everything alive now is kept for good."""
    load_price_table()  # loaded lazily otherwise, and large: load it now so it is frozen too
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
