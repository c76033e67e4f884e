"""Which event loop the long-running commands (`run`, `chat`, `ask`) run on, chosen at start-up.

uvloop when it is installed (the optional extra: `pip install moa-gateway[fast]`), else the
standard asyncio loop. At 200 concurrent turns the loop's own bookkeeping (selector, handles,
timers) is about a quarter of the engine's CPU, and uvloop does that part in C. Nothing else
depends on the choice: the code is the same asyncio code on either loop.

The choice is logged once ("event loop: ...") so an operator can see which one a process got.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
HINT = "install moa-gateway[fast] for uvloop"


def choose_loop(prefer: str | None = None) -> tuple[LoopFactory | None, str]:
    """The loop factory to run on (None: asyncio's default) and the words naming it.

    `prefer` "asyncio" forces the standard loop; "uvloop" insists on uvloop (ImportError if it
    is missing); None takes uvloop when it can be imported."""
    if prefer not in (None, "asyncio", "uvloop"):
        raise ValueError(f"unknown event loop {prefer!r} (asyncio or uvloop)")
    if prefer != "asyncio":
        try:
            import uvloop
        except ImportError:
            if prefer == "uvloop":
                raise
        else:
            return uvloop.new_event_loop, "uvloop"
    return None, "asyncio" if prefer == "asyncio" else f"asyncio ({HINT})"


def run(main: Coroutine[Any, Any, T], *, prefer: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen loop, after logging which loop that is."""
    factory, name = choose_loop(prefer)
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
