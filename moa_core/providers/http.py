"""The one shared HTTP client for model providers, and the lean way provider calls go through it.

httpx's API over aiohttp's transport: httpx's default transport burns about 30x the CPU of
aiohttp's at 1,000 concurrent streams (SPEC 3.1), so every provider call goes through this.

At 200 concurrent turns the layers around the wire were most of a call's client CPU, so:
- `LeanAiohttpTransport` is httpx-aiohttp's transport with the per-request work it repeats
  done once (the aiohttp timeout value per timeout setting, each URL parsed once); the
  aiohttp -> httpx exception mapping is the same, in one helper (`reraise_mapped`).
- On Python 3.11 the transport's loop writes request bodies at once (`eager_writes`).
- `send_prepared` sends a prepared request the way `AsyncClient.send(request, stream=True)`
  does (same transport choice, response binding, cookie jar, default encoding and log line)
  without the auth, redirect and event-hook layers, which have nothing to do for a client
  that has none of them; a client that has any gets the full `send`.
- `post_json` is the provider client's call: when those layers are idle and the URL's
  transport is ours, a plain 200 answer (no content encoding, no cookies) is read straight
  from aiohttp (`DirectResponse`), without httpx's Request, Response and the four nested
  async generators a body read goes through (about a third of a call's client CPU). Any
  other answer, and any other client or transport, is the same httpx.Response as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

import httpx
from aiohttp import ClientResponse, ClientSession, ClientTimeout
from httpx._client import BoundAsyncStream, ClientState  # the exact wrappers `send` uses
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AIOHTTP_EXC_MAP, AiohttpResponseStream
from multidict import CIMultiDictProxy
from yarl import URL

from moa_core.providers import eager_writes

_httpx_log = logging.getLogger("httpx")  # where AsyncClient.send logs each request
_LOG_LINE = 'HTTP Request: %s %s "%s %d %s"'


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


def reraise_mapped(exc: Exception) -> NoReturn:
    """Raise `exc` (being handled) as httpx-aiohttp would: as the httpx error it maps to, caused
    by it, or as itself when nothing maps (one helper instead of a context manager per read)."""
    mapped = None
    for from_exc, to_exc in AIOHTTP_EXC_MAP.items():
        if isinstance(exc, from_exc) and (mapped is None or issubclass(to_exc, mapped)):
            mapped = to_exc
    if mapped is None:
        raise exc
    raise mapped(str(exc)) from exc


class _LeanResponseStream(AiohttpResponseStream):
    """The body in the same chunks (reads of up to CHUNK_SIZE), one generator instead of two."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._aiohttp_response.content.read
        size = self.CHUNK_SIZE
        try:
            while chunk := await read(size):
                yield chunk
        except Exception as exc:
            reraise_mapped(exc)


class DirectResponse:
    """A 200 answer read straight from aiohttp: the parts of httpx.Response a provider call
    uses (`status_code`, `headers.get`, `aread`, `aclose`) and `read_chunk` for the chunks
    `aiter_bytes` would yield, with the same errors."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: ClientResponse) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers: CIMultiDictProxy[str] = response.headers

    async def aread(self) -> bytes:
        try:
            return await self._response.content.read()
        except Exception as exc:
            reraise_mapped(exc)

    async def read_chunk(self) -> bytes:
        """The next piece of the body (b"" at its end), as `aiter_bytes` would yield it."""
        try:
            return await self._response.content.read(AiohttpResponseStream.CHUNK_SIZE)
        except Exception as exc:
            reraise_mapped(exc)

    async def aclose(self) -> None:
        try:
            await self._response.__aexit__(None, None, None)
        except Exception as exc:
            reraise_mapped(exc)


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
        try:
            try:
                data = request.content
            except httpx.RequestNotRead:
                data = request.stream  # type: ignore[assignment]
                request.headers.pop("transfer-encoding", None)  # handled by aiohttp
            response = await self.open(
                request.method, str(request.url), _header_items(request.headers), data,
                request.extensions,
            )
        except Exception as exc:
            reraise_mapped(exc)
        return _httpx_response(response, request)

    async def open(self, method: str, url: str, headers: Any, data: Any, extensions: dict) -> ClientResponse:
        """aiohttp's response (headers read) to one request, as this transport sends it; raises
        aiohttp's own errors (the caller maps them)."""
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
            eager_writes.install(asyncio.get_running_loop())  # the session's loop, for good
        if data == b"":
            data = None
        timeout = extensions.get("timeout", {})
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        client_timeout = self._timeouts.get(key)
        if client_timeout is None:
            client_timeout = self._timeouts[key] = ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        # `_request` is what `request(...).__aenter__()` awaits, without the context manager
        # made around it for the `async with` form (one object and one await less per call).
        response = await self.client._request(  # noqa: SLF001
            method,
            parsed,
            headers=headers,
            data=data,
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
            timeout=client_timeout,
            server_hostname=extensions.get("sni_hostname"),
            proxy=None,
            proxy_auth=None,
            proxy_headers=None,
        )
        return await response.__aenter__()


def _httpx_response(response: ClientResponse, request: httpx.Request) -> httpx.Response:
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


def _idle_layers(client: httpx.AsyncClient, request_url: httpx.URL) -> bool:
    """True when `send`'s auth, redirect and event-hook layers have nothing to do."""
    return not request_url.userinfo and _idle_client_layers(client)  # userinfo: send's basic auth


def _idle_client_layers(client: httpx.AsyncClient) -> bool:
    """`_idle_layers` for a URL without userinfo."""
    return not (
        client._auth is not None  # noqa: SLF001 - the layers are skipped only when they are idle
        or client.follow_redirects
        or client._event_hooks["request"]  # noqa: SLF001
        or client._event_hooks["response"]  # noqa: SLF001
    )


def _open_client(client: httpx.AsyncClient) -> None:
    if client._state == ClientState.CLOSED:  # noqa: SLF001
        raise RuntimeError("Cannot send a request, as the client has been closed.")
    client._state = ClientState.OPENED  # noqa: SLF001


async def send_prepared(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`await client.send(request, stream=True)` for a request built in full by the caller
    (URL, headers, content and timeout extension), minus the layers with nothing to do."""
    if "timeout" not in request.extensions or not _idle_layers(client, request.url):
        return await client.send(request, stream=True)
    _open_client(client)
    transport = client._transport_for_url(request.url)  # noqa: SLF001 - mounts and proxies as send
    start = time.perf_counter()
    try:
        response = await transport.handle_async_request(request)
    except httpx.RequestError as exc:
        exc.request = request  # as send's request_context does
        raise
    return _bound(client, request, response, start)


def _bound(client: httpx.AsyncClient, request: httpx.Request, response: httpx.Response, start: float) -> httpx.Response:
    response.request = request
    response.stream = BoundAsyncStream(response.stream, response=response, start=start)
    if "set-cookie" in response.headers:
        client.cookies.extract_cookies(response)
    response.default_encoding = client._default_encoding  # noqa: SLF001
    if _httpx_log.isEnabledFor(logging.INFO):
        _httpx_log.info(
            _LOG_LINE, request.method, request.url, response.http_version, response.status_code,
            response.reason_phrase,
        )
    return response


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One provider URL, parsed once: httpx's URL, its text, the Host header httpx sends, and
    whether it carries userinfo (which `send` would turn into basic auth)."""

    url: httpx.URL
    text: str
    host: str
    userinfo: bool = False

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parsed = httpx.URL(url)
        host = httpx.Request("POST", parsed).headers.get("host", "")
        return cls(parsed, str(parsed), host, bool(parsed.userinfo))


async def post_json(
    client: httpx.AsyncClient, endpoint: Endpoint, headers: dict[str, str], content: bytes,
    extensions: dict[str, Any],
) -> httpx.Response | DirectResponse:
    """`send_prepared(client, httpx.Request("POST", endpoint.url, headers=headers,
    content=content, extensions=extensions))`: the same request on the wire. A plain 200
    answer through our own transport comes back as a DirectResponse."""
    url = endpoint.url
    idle = "timeout" in extensions and not endpoint.userinfo and _idle_client_layers(client)
    transport = client._transport_for_url(url) if idle else None  # noqa: SLF001
    items = _wire_headers(endpoint, headers, content) if type(transport) is LeanAiohttpTransport else None
    if items is None or transport is None or transport.proxy is not None:
        request = httpx.Request("POST", url, headers=headers, content=content, extensions=extensions)
        return await send_prepared(client, request)
    _open_client(client)
    start = time.perf_counter()
    try:
        response = await transport.open("POST", endpoint.text, items, content, extensions)
    except Exception as exc:
        reraise_mapped(exc)
    received = response.headers
    if response.status != 200 or "content-encoding" in received or "set-cookie" in received:
        request = httpx.Request("POST", url, headers=headers, content=content, extensions=extensions)
        return _bound(client, request, _httpx_response(response, request), start)
    if _httpx_log.isEnabledFor(logging.INFO):
        reason = response.reason.encode().decode("ascii", "ignore") if response.reason else "OK"
        _httpx_log.info(_LOG_LINE, "POST", url, "HTTP/1.1", 200, reason)
    return DirectResponse(response)


def _wire_headers(endpoint: Endpoint, headers: dict[str, str], content: bytes) -> list[tuple[str, str]] | None:
    """The headers httpx.Request would hand our transport (Host first, Content-Length last,
    names in lower case); None when httpx must decide (a non-ASCII value is its error to
    raise) or a name repeats."""
    prefix = _header_prefix(endpoint.host, tuple(headers.items()))
    return None if prefix is None else [*prefix, ("content-length", str(len(content)))]


@lru_cache(maxsize=256)
def _header_prefix(host: str, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...] | None:
    """`_wire_headers` up to Content-Length: the same few header sets recur call after call
    (one per provider key and accept type), so each is checked and lower-cased once."""
    items = [("host", host)]
    for name, value in headers:
        if not (name.isascii() and value.isascii()):
            return None
        items.append((name.lower(), value))
    names = {name for name, _ in items}
    return tuple(items) if len(names) == len(items) and "content-length" not in names else None
