"""Request bodies written at once on Python 3.11, as aiohttp itself does on 3.12 and later.

aiohttp writes a request body from a task of its own (`ClientRequest.write_bytes`). On 3.12+
it starts that task eagerly, so a small body goes out in the same step as the headers; on 3.11
the task is queued behind every other ready task. When 800 reference calls start in the same
instant, no request reaches the wire until all 800 have been prepared, and every answer comes
back that much later (Python 3.11 was 1.6x the critical path at 200 turns, 3.12 1.27x).

`install(loop)` gives a 3.11 loop a task factory that does what 3.12's `eager_start` does for
that one coroutine: its first step runs at once; if it finishes there (the usual case: the
body fits the socket buffer) no task is made at all, else the rest runs in a task as before.
Every other coroutine becomes a plain Task, as without a factory. On 3.12+ it does nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from typing import Any

from aiohttp.client_reqrep import ClientRequest

NEEDED = sys.version_info < (3, 12)
_WRITE_BYTES = ClientRequest.write_bytes.__code__


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Start aiohttp's body writes eagerly on `loop`; False (nothing done) on 3.12+, or when the
    loop already has a task factory of someone else's."""
    if not NEEDED:
        return False
    current = loop.get_task_factory()
    if current is _task_factory:
        return True
    if current is not None:
        return False
    loop.set_task_factory(_task_factory)
    return True


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Coroutine, **kwargs: Any) -> asyncio.Future:
    if getattr(coro, "cr_code", None) is not _WRITE_BYTES:
        return asyncio.Task(coro, loop=loop, **kwargs)
    # aiohttp only asks the result whether it is done (and drops it if so), as with 3.12's
    # eager tasks; a body write that raised keeps its exception on the future, as a task would.
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        done = loop.create_future()
        done.set_result(None)
        return done
    except BaseException as exc:  # noqa: BLE001 - kept on the future, as a task keeps it
        failed = loop.create_future()
        failed.set_exception(exc)
        return failed
    return asyncio.Task(_rest(coro, waiting_on), loop=loop, **kwargs)


async def _rest(coro: Coroutine, waiting_on: Any) -> Any:
    return await _Resume(coro, waiting_on)


class _Resume:
    """Awaiting it drives a started coroutine on from the future it was waiting on."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine, waiting_on: Any) -> None:
        self._coro, self._waiting_on = coro, waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # cancellation (or a throw) goes on into the coroutine
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
