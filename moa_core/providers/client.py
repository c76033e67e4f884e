"""ProviderClient: one model call over either wire format, with retries and a deadline.

Owns what both wires share: the API key lookup, the retry policy (429/5xx/connection errors,
backoff with jitter, Retry-After, never after a stream produced output), the whole-call
deadline, usage estimation when a server reports none, and error messages that name the
provider, model and status but never a key.

A ProviderError raised after a stream had already produced output carries an estimated
`usage` attribute, so the caller can still record what the failed call probably cost.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import orjson

from moa_core.clock import Clock
from moa_core.images import estimated_tokens
from moa_core.providers import anthropic_wire, openai_wire
from moa_core.providers.base import (
    CompletionRequest,
    MissingApiKey,
    OnText,
    ProviderError,
    ProviderTimeout,
)
from moa_core.providers.http import DirectResponse, Endpoint, post_json
from moa_core.providers.sse import ServerEvent, SseDecoder
from moa_core.values import UNKNOWN_USAGE, Completion, Usage

_WIRES: dict[str, ModuleType] = {"openai": openai_wire, "anthropic": anthropic_wire}
_BACKOFF_BASE = 0.5  # seconds before the first retry, doubled each time
_BACKOFF_CAP = 30.0
_EXCERPT_CHARS = 300
MIN_SECRET_CHARS = 8  # keys shorter than this are masked only as whole words
_ERROR_BODY_BYTES = 16_384
_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, OSError)
_NO_TIMEOUTS: dict[str, Any] = {"timeout": {"connect": None, "read": None, "write": None, "pool": None}}


class _RetryableStatus(ProviderError):
    """An HTTP status worth another attempt, with the server's Retry-After if it sent one."""

    def __init__(self, message: str, *, status: int, retry_after: float | None):
        super().__init__(message, status=status, retryable=True)
        self.retry_after = retry_after


class ProviderClient:
    """The engine's ModelClient: `complete` dispatches on `request.provider.api`."""

    # `request.deadline` is enforced here, retries and backoff included: a caller need not
    # arm a timer of its own for it.
    honours_deadline = True

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        env: Mapping[str, str],
        clock: Clock,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._http = http
        self._env = env
        self._clock = clock
        self._rng = rng
        self._endpoints: dict[str, Endpoint] = {}  # parsed once per URL
        self._extensions = {"timeout": http.timeout.as_dict()}
        # One deadline per call: when the call's own deadline comes before any of the client's
        # per-operation timeouts could fire, those timers (aiohttp re-arms the read timer at
        # every chunk) are left out; they could never end the call first.
        ceilings = [v for v in http.timeout.as_dict().values() if v is not None]
        self._ceiling = min(ceilings) if ceilings else math.inf

    async def complete(self, request: CompletionRequest, on_text: OnText | None = None) -> Completion:
        provider = request.provider
        wire = _WIRES.get(provider.api)
        if wire is None:
            raise ProviderError(f"{_label(request)}: unknown wire format {provider.api!r}")
        key = self._api_key(request)
        url, headers, body = wire.build_request(request, key)
        # orjson: parsing stream chunks is the per-token cost of a call, about 4x the speed of json.
        content = orjson.dumps(body)
        # The provider's own timeout caps the call even when the caller set a later deadline.
        end = self._clock.monotonic() + provider.timeout
        if request.deadline is not None:
            end = min(end, request.deadline)
        attempts = 1 + max(0, provider.max_retries)
        for attempt in range(attempts):
            remaining = end - self._clock.monotonic()
            if remaining <= 0:
                raise ProviderTimeout(f"{_label(request)}: deadline passed before attempt {attempt + 1}")
            scope = asyncio.timeout(remaining)
            acc = wire.StreamAccumulator() if request.stream else None
            try:
                extensions = _NO_TIMEOUTS if remaining <= self._ceiling else self._extensions
                async with scope:
                    return await self._attempt(wire, request, url, headers, content, acc, on_text, key,
                                               extensions)
            except _CallbackFailed as failed:
                raise failed.error from None  # the caller's own on_text error, untouched
            except TimeoutError:
                if not scope.expired():
                    raise
                message = (
                    f"{_label(request)}: no complete answer within the deadline ({attempt + 1} attempt(s))"
                )
                raise self._failed(request, acc, message, key, False, ProviderTimeout) from None
            except ProviderError as exc:
                if not exc.retryable or attempt + 1 >= attempts:
                    raise
                wait = self._backoff(attempt, getattr(exc, "retry_after", None))
                if self._clock.monotonic() + wait >= end:
                    raise  # waiting would pass the deadline: give up with this error
                await self._clock.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _api_key(self, request: CompletionRequest) -> str | None:
        name = request.provider.api_key_env
        if not name:
            return None
        key = self._env.get(name, "")
        if not key.strip():
            raise MissingApiKey(
                f"{_label(request)}: environment variable {name} is not set (it should hold the API key)"
            )
        return key.strip()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
        return ceiling * (0.5 + 0.5 * self._rng())  # jitter spreads retries of many callers

    async def _attempt(
        self,
        wire: ModuleType,
        request: CompletionRequest,
        url: str,
        headers: dict[str, str],
        content: bytes,
        acc: Any,
        on_text: OnText | None,
        key: str | None,
        extensions: dict[str, Any],
    ) -> Completion:
        endpoint = self._endpoint(url)
        try:
            # A prepared request sent as is: httpx's build_request (URL joining, merging client
            # defaults and cookies) was a quarter of the client CPU of a call at 200 turns.
            response = await post_json(self._http, endpoint, headers, content, extensions)
            try:
                if response.status_code != 200:
                    raise await self._status_error(wire, request, response, key)
                content_type = response.headers.get("content-type", "")
                if acc is None or not content_type.startswith("text/event-stream"):
                    completion = self._parse_body(wire, request, await response.aread(), key)
                    if request.stream and completion.text:
                        await _deliver(on_text, completion.text)  # the server ignored `stream`
                    return completion
                decoder = SseDecoder()
                read = response.read_chunk if type(response) is DirectResponse else _chunk_reader(response)
                while chunk := await read():
                    if await self._take(request, acc, decoder.feed(chunk), on_text, key):
                        return _with_usage(acc.result(), request)
                if await self._take(request, acc, decoder.close(), on_text, key):
                    return _with_usage(acc.result(), request)
            finally:
                await response.aclose()
        except _TRANSPORT_ERRORS as exc:
            what = "stream ended early" if acc is not None and acc.produced else "connection failed"
            detail = f"{_label(request)}: {what}: {transport_failure(exc, endpoint.url)}"
            raise self._failed(request, acc, detail, key, acc is None or not acc.produced) from None
        raise self._failed(
            request, acc, f"{_label(request)}: stream ended early (no end marker)", key, not acc.produced
        )

    async def _take(
        self,
        request: CompletionRequest,
        acc: Any,
        events: list[ServerEvent],
        on_text: OnText | None,
        key: str | None,
    ) -> bool:
        """Fold the events of one chunk into `acc`, passing text on; True once the stream is
        complete. One call per chunk, not per event: per-event awaits cost CPU at scale."""
        for event in events:
            try:
                text = acc.feed(event)
            except ProviderError as exc:
                retryable = exc.retryable and not acc.produced
                message = f"{_label(request)}: error event in stream: {exc}"
                raise self._failed(request, acc, message, key, retryable) from None
            except ValueError as exc:
                message = f"{_label(request)}: malformed stream data: {exc}"
                raise self._failed(request, acc, message, key, False) from None
            if text and on_text is not None:
                try:  # _deliver's work without its await: this runs for every chunk of a stream
                    await on_text(text)
                except Exception as exc:
                    raise _CallbackFailed(exc) from exc
            if acc.finished:
                return True
        return False

    def _endpoint(self, url: str) -> Endpoint:
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            endpoint = self._endpoints[url] = Endpoint.of(url)
        return endpoint

    def _parse_body(
        self, wire: ModuleType, request: CompletionRequest, raw: bytes, key: str | None
    ) -> Completion:
        label = _label(request)
        try:
            data = orjson.loads(raw)
            completion = wire.parse_response(data)
        except ProviderError as exc:
            message = _scrub(f"{label}: error in response body: {exc}", key)
            raise ProviderError(message, status=exc.status or 200, retryable=exc.retryable) from None
        except ValueError as exc:
            excerpt = _excerpt(raw.decode("utf-8", "replace"), key)
            message = f"{label}: HTTP 200 with a body that is not valid JSON ({exc}): {excerpt!r}"
            raise ProviderError(_scrub(message, key), status=200) from None
        return _with_usage(completion, request)

    async def _status_error(
        self, wire: ModuleType, request: CompletionRequest, response: httpx.Response, key: str | None
    ) -> ProviderError:
        raw = b""
        async for chunk in response.aiter_bytes():
            raw += chunk
            if len(raw) >= _ERROR_BODY_BYTES:
                break
        text = raw.decode("utf-8", "replace")
        try:
            detail = wire.error_detail(json.loads(text)) or text
        except ValueError:
            detail = text
        status = response.status_code
        message = f"{_label(request)}: HTTP {status}: {_excerpt(detail, key)}"
        if status == 404:
            message += _not_found_hint(request, response.request.url)
        message = _scrub(message, key)
        if status == 429 or status >= 500:
            header = response.headers.get("retry-after")
            retry_after = retry_after_seconds(header, self._clock) if header else None
            return _RetryableStatus(message, status=status, retry_after=retry_after)
        return ProviderError(message, status=status)

    def _failed(
        self,
        request: CompletionRequest,
        acc: Any,
        message: str,
        key: str | None,
        retryable: bool,
        kind: type[ProviderError] = ProviderError,
    ) -> ProviderError:
        error = kind(_scrub(message, key), retryable=retryable)
        if acc is not None and acc.produced:
            error.usage = _partial_usage(acc.result(), request)  # type: ignore[attr-defined]
        return error


def _chunk_reader(response: httpx.Response) -> Callable[[], Awaitable[bytes]]:
    """`response.aiter_bytes()` read one chunk per call, b"" at the end."""
    chunks = response.aiter_bytes()

    async def read() -> bytes:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return b""

    return read


class _CallbackFailed(Exception):
    """Carries an exception of the caller's `on_text` past our transport-error handling."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


async def _deliver(on_text: OnText | None, text: str) -> None:
    if on_text is None:
        return
    try:
        await on_text(text)
    except Exception as exc:
        raise _CallbackFailed(exc) from exc


def _label(request: CompletionRequest) -> str:
    return f"{request.provider.name}:{request.model}"


def _scrub(message: str, key: str | None) -> str:
    """`message` with the API key masked. A key of `MIN_SECRET_CHARS` or more is masked
    wherever it occurs; a shorter one (a local server's `k`) only where it stands alone, so
    the scrub does not eat every `k` of the message."""
    if not key:
        return message
    if len(key) >= MIN_SECRET_CHARS:
        return message.replace(key, "***")
    return re.sub(rf"(?<![\w-]){re.escape(key)}(?![\w-])", "***", message)


def _excerpt(text: str, key: str | None) -> str:
    """The first `_EXCERPT_CHARS` of `text` on one line, scrubbed *before* the cut: a key the
    cut went through would otherwise leave its unmasked first half in the message."""
    text = " ".join(_scrub(text, key).split())
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _not_found_hint(request: CompletionRequest, url: httpx.URL) -> str:
    """A 404 most often means a base URL without its /v1 (openai wire) or with one too many
    (anthropic wire, which adds /v1/messages itself); else the model name is wrong."""
    called = f" (called {url.copy_with(query=None)})"
    base = request.provider.base_url.rstrip("/")
    if request.provider.api == "openai" and not base.endswith("/v1"):
        return f"{called}; OpenAI-style base URLs usually end in /v1, e.g. base_url = \"{base}/v1\""
    if request.provider.api == "anthropic" and base.endswith("/v1"):
        return f"{called}; Anthropic-style base URLs are the host without /v1 (we add /v1/messages)"
    return f"{called}; check the model name '{request.model}' and the provider's base_url"


def transport_failure(exc: BaseException, url: httpx.URL) -> str:
    """What went wrong below HTTP, in words, from the whole chain of causes: httpx-aiohttp names
    a refused connection `ConnectTimeout`, and aiohttp names a stream the server cut
    `TransferEncodingError: 400`, which reads like an HTTP status."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    host = f"{url.host}:{url.port}" if url.port else url.host
    for error in chain:
        if isinstance(error, aiohttp.ClientPayloadError):
            return "the server closed the connection before the response was complete"
        if isinstance(error, aiohttp.ServerDisconnectedError):
            return "the server closed the connection without answering"
        if isinstance(error, aiohttp.ClientConnectorError):
            error = error.os_error
        if isinstance(error, OSError) and not isinstance(error, TimeoutError) and error.errno:
            # asyncio's strerror is "Connect call failed (...)"; the errno says "Connection refused".
            cause = os.strerror(error.errno) if error.errno > 0 else (error.strerror or str(error))
            return f"cannot connect to {host}: {cause}"
    for error in chain:
        if isinstance(error, (TimeoutError, httpx.TimeoutException, aiohttp.ServerTimeoutError)):
            return f"no response from {host} in time ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def retry_after_seconds(value: str, clock: Clock) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - clock.now()).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _with_usage(completion: Completion, request: CompletionRequest) -> Completion:
    """Replace missing (or all-zero) usage by an estimate from text length."""
    usage = completion.usage
    if not completion.model:  # a copy only when something changes: replace() is slow at scale
        completion = replace(completion, model=request.model)
    if usage.source == "reported" and (usage.input or usage.cache_read or usage.cache_write or usage.output):
        return completion
    estimate = Usage(
        input=_tokens(_request_chars(request)) + _image_tokens(request),
        output=_tokens(
            len(completion.text) + sum(len(c.name) + len(c.arguments) for c in completion.tool_calls)
        ),
        source="estimated",
    )
    return replace(completion, usage=estimate)


def _partial_usage(partial: Completion, request: CompletionRequest) -> Usage:
    """Usage of an interrupted stream: reported input counts are real, but output counts
    (Anthropic sends them at the start and the end) are not final, so they are estimated."""
    estimate = _with_usage(replace(partial, usage=UNKNOWN_USAGE), request).usage
    got = partial.usage
    if got.source != "reported":
        return estimate
    return replace(
        got, input=got.input or estimate.input, output=max(got.output, estimate.output), source="estimated"
    )


def _request_chars(request: CompletionRequest) -> int:
    chars = sum(
        len(m.content) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls) for m in request.messages
    )
    return chars + sum(
        len(t.name) + len(t.description) + len(json.dumps(t.parameters)) for t in request.tools
    )


def _image_tokens(request: CompletionRequest) -> int:
    return sum(estimated_tokens(image) for m in request.messages for image in m.images if image.data)


def _tokens(chars: int) -> int:
    """About four characters a token; at least one when there was any text at all."""
    return math.ceil(chars / 4)


def estimated_usage(request: CompletionRequest, output_text: str = "") -> Usage:
    """Usage of a call cut before the server reported any (the caller was cancelled): the
    request's length as input and the text received so far as output, marked estimated."""
    return Usage(input=_tokens(_request_chars(request)), output=_tokens(len(output_text)), source="estimated")
