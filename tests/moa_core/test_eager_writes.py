"""Request bodies written at once on Python 3.11 (moa_core.providers.eager_writes): a small body
goes out without a task of its own, a body too big for the socket buffer finishes in a task,
both arrive whole, and a loop with someone else's task factory is left alone."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from moa_core.providers import eager_writes
from moa_core.providers.http import make_http_client


class _Sink:
    """An HTTP/1.1 server that reads each request body whole (after `pause` s) and answers
    with its length and SHA-256."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                              if line.startswith(b"content-length:"))
                await asyncio.sleep(self.pause)  # the client's socket buffer fills meanwhile
                body = await reader.readexactly(length)
                answer = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def resumed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts body writes that could not finish at once and went on in a task."""
    calls: list[int] = []
    original = eager_writes._rest

    def counting(coro, waiting_on):
        calls.append(1)
        return original(coro, waiting_on)

    monkeypatch.setattr(eager_writes, "_rest", counting)
    return calls


def _expected(body: bytes) -> str:
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}"


async def test_small_and_large_bodies_arrive_whole(resumed: list[int]) -> None:
    small, large = b'{"model": "m"}' * 20, bytes(range(256)) * 40_000  # 10 MB: many socket buffers
    http = make_http_client()
    try:
        async with _Sink(pause=0.2) as url:
            answers = [await http.post(url, content=body) for body in (small, small, large, small)]
    finally:
        await http.aclose()
    assert [a.text for a in answers] == [_expected(b) for b in (small, small, large, small)]
    if eager_writes.NEEDED:
        assert asyncio.get_running_loop().get_task_factory() is eager_writes._task_factory
        assert resumed == [1]  # only the large body waited for the socket, in a task
    else:
        assert asyncio.get_running_loop().get_task_factory() is None  # 3.12+: aiohttp does it
        assert resumed == []


async def test_a_write_cancelled_while_waiting_for_the_socket_ends_the_call() -> None:
    http = make_http_client()
    try:
        async with _Sink(pause=30) as url:
            call = asyncio.create_task(http.post(url, content=b"x" * 20_000_000))
            await asyncio.sleep(0.3)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, 5)
    finally:
        await http.aclose()


@pytest.mark.skipif(not eager_writes.NEEDED, reason="Python 3.12+ starts aiohttp's writes eagerly itself")
async def test_someone_elses_task_factory_is_left_alone() -> None:
    loop = asyncio.get_running_loop()

    def theirs(loop, coro, **kwargs):
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(theirs)
    try:
        assert eager_writes.install(loop) is False
        assert loop.get_task_factory() is theirs
    finally:
        loop.set_task_factory(None)
    assert eager_writes.install(loop) is True and eager_writes.install(loop) is True
    assert loop.get_task_factory() is eager_writes._task_factory
    other = asyncio.create_task(asyncio.sleep(0, "plain"))  # any other coroutine: a plain Task
    assert type(other) is asyncio.Task and await other == "plain"
