"""The provider client's own POST (moa_core.providers.http.post_json): the same bytes on the
wire as the httpx request it stands for, a plain 200 answer read straight from aiohttp without
httpx's Request and Response, and everything else (error statuses, encoded bodies, cookies,
other transports) the httpx.Response it was before, with the same errors."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import pytest

from moa_core.providers import http as lean
from moa_core.providers.http import DirectResponse, Endpoint, make_http_client, post_json, send_prepared

TIMEOUTS = {"timeout": {"connect": None, "read": None, "write": None, "pool": None}}
HEADERS = {"content-type": "application/json", "accept": "application/json", "authorization": "Bearer k-1"}
BODY = b'{"model": "m", "messages": []}'


class _Recorder:
    """An HTTP/1.1 server that keeps each request's head and body and answers each with the
    raw bytes `answer`."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:  # kept-alive connections: else wait_closed waits for them
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                              if line.startswith(b"content-length:"))
                self.requests.append((head, await reader.readexactly(length)))
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _answer(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the httpx objects built while a test runs."""
    names: list[str] = []
    for cls in (httpx.Request, httpx.Response):
        original = cls.__init__

        def counting(self, *args, _original=original, _name=cls.__name__, **kwargs):
            names.append(_name)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    return names


async def test_wire_bytes_are_identical(built: list[str]) -> None:
    recorder = _Recorder(_answer("200 OK", b"{}", "content-type: application/json"))
    http = make_http_client()
    try:
        async with recorder as url:
            endpoint = Endpoint.of(url)  # once per URL (it asks httpx for the Host header)
            built.clear()
            direct = await post_json(http, endpoint, HEADERS, BODY, TIMEOUTS)
            assert type(direct) is DirectResponse
            assert built == []  # neither an httpx.Request nor an httpx.Response
            assert (direct.status_code, direct.headers.get("content-type")) == (200, "application/json")
            assert await direct.aread() == b"{}"
            await direct.aclose()
            request = httpx.Request("POST", endpoint.url, headers=HEADERS, content=BODY, extensions=TIMEOUTS)
            response = await send_prepared(http, request)
            await response.aread()
            await response.aclose()
    finally:
        await http.aclose()
    (head_direct, body_direct), (head_httpx, body_httpx) = recorder.requests
    assert head_direct == head_httpx and body_direct == body_httpx == BODY
    assert head_direct.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer k-1\r\n" in head_direct


async def test_a_streamed_body_comes_in_the_same_chunks() -> None:
    events = b"".join(b'data: {"n": %d}\n\n' % i for i in range(5_000))  # several 16 KiB reads
    http = make_http_client()
    try:
        async with _Recorder(_answer("200 OK", events, "content-type: text/event-stream")) as url:
            endpoint = Endpoint.of(url)
            direct = await post_json(http, endpoint, HEADERS, BODY, TIMEOUTS)
            assert type(direct) is DirectResponse
            chunks = []
            while chunk := await direct.read_chunk():
                chunks.append(chunk)
            await direct.aclose()
    finally:
        await http.aclose()
    assert b"".join(chunks) == events
    assert all(len(chunk) <= 16_384 for chunk in chunks) and len(chunks) >= len(events) // 16_384


@pytest.mark.parametrize(
    "answer",
    [
        _answer("429 Too Many Requests", b'{"error": "slow down"}', "retry-after: 3"),
        _answer("200 OK", gzip.compress(b'{"ok": true}'), "content-encoding: gzip"),
        _answer("200 OK", b'{"ok": true}', "set-cookie: session=abc; Path=/"),
    ],
    ids=["error-status", "gzip", "cookie"],
)
async def test_any_other_answer_is_the_httpx_response_it_was(answer: bytes) -> None:
    http = make_http_client()
    try:
        async with _Recorder(answer) as url:
            response = await post_json(http, Endpoint.of(url), HEADERS, BODY, TIMEOUTS)
            assert isinstance(response, httpx.Response)
            body = await response.aread()
            await response.aclose()
    finally:
        await http.aclose()
    if response.status_code == 429:
        assert response.headers["retry-after"] == "3" and b"slow down" in body
        assert str(response.request.url) == url
    elif "content-encoding" in response.headers:
        assert body == b'{"ok": true}'  # decoded by httpx, as before
    else:
        assert http.cookies.get("session") == "abc"


async def test_another_transport_gets_the_full_httpx_path() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        response = await post_json(http, Endpoint.of("http://example.test/v1/x"), HEADERS, BODY, TIMEOUTS)
        assert isinstance(response, httpx.Response) and await response.aread() == b'{"ok":true}'
    assert seen[0].headers["authorization"] == "Bearer k-1" and seen[0].content == BODY


async def test_a_refused_connection_is_the_same_httpx_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    endpoint = Endpoint.of(f"http://127.0.0.1:{port}/v1/chat/completions")
    http = make_http_client()
    errors = []
    try:
        with pytest.raises(httpx.TransportError) as direct:
            await post_json(http, endpoint, HEADERS, BODY, TIMEOUTS)
        errors.append(direct.value)
        request = httpx.Request("POST", endpoint.url, headers=HEADERS, content=BODY, extensions=TIMEOUTS)
        with pytest.raises(httpx.TransportError) as through_httpx:
            await send_prepared(http, request)
        errors.append(through_httpx.value)
    finally:
        await http.aclose()
    assert [type(e) for e in errors] == [type(errors[1])] * 2
    assert str(errors[0]) == str(errors[1])
    assert type(errors[0].__cause__) is type(errors[1].__cause__)


async def test_a_header_httpx_refuses_is_still_refused() -> None:
    http = make_http_client()
    try:
        with pytest.raises(UnicodeEncodeError):
            await post_json(http, Endpoint.of("http://127.0.0.1:9/v1/x"), {"authorization": "Bearer ключ"}, BODY,
                            TIMEOUTS)
    finally:
        await http.aclose()


def test_mapping_unmapped_errors_are_raised_as_they_are() -> None:
    error = KeyError("x")
    with pytest.raises(KeyError) as raised:
        try:
            raise error
        except KeyError as exc:
            lean.reraise_mapped(exc)
    assert raised.value is error
