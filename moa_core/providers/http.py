"""The one shared HTTP client for model providers, and the lean way provider calls go through it.

httpx's API over aiohttp's transport: httpx's default transport burns about 30x the CPU of
aiohttp's at 1,000 concurrent streams (SPEC 3.1), so every provider call goes through this.

At 200 concurrent turns the layers around the wire were most of a call's client CPU, so:
- `LeanAiohttpTransport` is httpx-aiohttp's transport with the per-request work it repeats
  done once (the aiohttp timeout value per timeout setting) and its exception mapping inline
  instead of a context manager per request and per body read; the mapping is the same.
- On Python 3.11 the transport's loop writes request bodies at once (`eager_writes`).
- `send_prepared` sends a prepared request the way `AsyncClient.send(request, stream=True)`
  does (same transport choice, response binding, cookie jar, default encoding and log line)
  without the auth, redirect and event-hook layers, which have nothing to do for a client
  that has none of them; a client that has any gets the full `send`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
from aiohttp import ClientSession, ClientTimeout
from httpx._client import BoundAsyncStream, ClientState  # the exact wrappers `send` uses
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AIOHTTP_EXC_MAP, AiohttpResponseStream
from yarl import URL

from moa_core.providers import eager_writes

_httpx_log = logging.getLogger("httpx")  # where AsyncClient.send logs each request


def make_http_client(*, max_connections: int = 1000, timeout: float = 600.0) -> httpx.AsyncClient:
    """An AsyncClient on the aiohttp transport; close it with `await client.aclose()`.

    `timeout` is a per-operation ceiling (connect, read, pool); whole-call deadlines are
    enforced by the provider client, not here.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(
        transport=LeanAiohttpTransport(limits=limits),
        limits=limits,
        timeout=httpx.Timeout(timeout),
    )


def _mapped(exc: Exception) -> Exception | None:
    """httpx-aiohttp's mapping of an aiohttp error to an httpx one (None: raise it as is)."""
    mapped = None
    for from_exc, to_exc in AIOHTTP_EXC_MAP.items():
        if isinstance(exc, from_exc) and (mapped is None or issubclass(to_exc, mapped)):
            mapped = to_exc
    return None if mapped is None else mapped(str(exc))


class _LeanResponseStream(AiohttpResponseStream):
    """The body in the same chunks (reads of up to CHUNK_SIZE), one generator instead of two."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._aiohttp_response.content.read
        size = self.CHUNK_SIZE
        try:
            while chunk := await read(size):
                yield chunk
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc


def _header_items(headers: httpx.Headers) -> list[tuple[str, str]] | httpx.Headers:
    """What aiohttp reads from `headers` (its `items()`: lower-case names, values decoded),
    built in one pass when every header is ASCII and none repeats; else `headers` itself."""
    if headers._encoding is None:  # noqa: SLF001 - an explicit encoding: let httpx decode
        try:
            items = [(key.decode("ascii"), value.decode("ascii")) for _, key, value in headers._list]  # noqa: SLF001
        except UnicodeDecodeError:
            return headers
        if len({key for key, _ in items}) == len(items):
            return items
    return headers


class LeanAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport with its per-request constant work done once."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._timeouts: dict[tuple, ClientTimeout] = {}
        self._urls: dict[str, URL] = {}  # aiohttp would parse the same string again each time

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None:
            return await super().handle_async_request(request)
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
            eager_writes.install(asyncio.get_running_loop())  # the session's loop, for good
        extensions = request.extensions
        timeout = extensions.get("timeout", {})
        try:
            try:
                data = request.content
                if data == b"":
                    data = None
            except httpx.RequestNotRead:
                data = request.stream  # type: ignore[assignment]
                request.headers.pop("transfer-encoding", None)  # handled by aiohttp
            key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
            client_timeout = self._timeouts.get(key)
            if client_timeout is None:
                client_timeout = self._timeouts[key] = ClientTimeout(
                    sock_connect=key[0], sock_read=key[1], connect=key[2]
                )
            url = str(request.url)
            parsed = self._urls.get(url)
            if parsed is None:
                if len(self._urls) >= 1024:
                    self._urls.clear()
                parsed = self._urls[url] = URL(url)
            response = await self.client.request(
                method=request.method,
                url=parsed,
                headers=_header_items(request.headers),
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=client_timeout,
                server_hostname=extensions.get("sni_hostname"),
                proxy=None,
                proxy_auth=None,
                proxy_headers=None,
            ).__aenter__()
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_LeanResponseStream(response),
            request=request,
            extensions=extensions,
        )


async def send_prepared(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`await client.send(request, stream=True)` for a request built in full by the caller
    (URL, headers, content and timeout extension), minus the layers with nothing to do."""
    if (
        client._auth is not None  # noqa: SLF001 - the layers are skipped only when they are idle
        or client.follow_redirects
        or client._event_hooks["request"]  # noqa: SLF001
        or client._event_hooks["response"]  # noqa: SLF001
        or "timeout" not in request.extensions
        or request.url.userinfo  # send would turn it into basic auth
    ):
        return await client.send(request, stream=True)
    if client._state == ClientState.CLOSED:  # noqa: SLF001
        raise RuntimeError("Cannot send a request, as the client has been closed.")
    client._state = ClientState.OPENED  # noqa: SLF001
    transport = client._transport_for_url(request.url)  # noqa: SLF001 - mounts and proxies as send
    start = time.perf_counter()
    try:
        response = await transport.handle_async_request(request)
    except httpx.RequestError as exc:
        exc.request = request  # as send's request_context does
        raise
    response.request = request
    response.stream = BoundAsyncStream(response.stream, response=response, start=start)
    if "set-cookie" in response.headers:
        client.cookies.extract_cookies(response)
    response.default_encoding = client._default_encoding  # noqa: SLF001
    if _httpx_log.isEnabledFor(logging.INFO):
        _httpx_log.info(
            'HTTP Request: %s %s "%s %d %s"',
            request.method, request.url, response.http_version, response.status_code, response.reason_phrase,
        )
    return response
