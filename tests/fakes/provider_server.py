"""A fake model provider on 127.0.0.1 speaking both wire formats for real.

POST /v1/chat/completions (OpenAI) and POST /v1/messages (Anthropic), streamed when the body
asks for it, with each wire's real chunk, usage and error shapes; POST /v1/audio/transcriptions
(OpenAI's multipart form) answered with `{"text", "usage"}` as queued by `transcript`. Tests queue `Reply` values per
model and read back what the server `Recorded`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[tuple[str, str, dict | str]] = field(default_factory=list)  # (id, name, arguments)
    usage: dict | None = None  # neutral keys input/cache_read/cache_write/output/reasoning
    send_usage: bool = True  # False: stream without usage chunk / non-stream without usage field
    cost: float | None = None  # sent as usage.cost (openai wire)
    delay: float = 0.0  # seconds before the response starts
    status: int = 200  # non-200: error response in that wire's error shape
    retry_after: float | None = None  # Retry-After header on errors
    malformed: bool = False  # 200 with a body that is not valid JSON
    malformed_body: str | None = None  # 200 with this body (not valid JSON) instead
    cut_after: int | None = None  # streaming: drop the connection after this many chunks
    hang: bool = False  # never respond (until the client gives up)
    stall_after: int | None = None  # streaming: after this many chunks, send nothing more (keep it open)
    chunk_chars: int = 8  # streamed text chunk size; tool arguments are also split
    chunk_delay: float = 0.0  # streaming: seconds between chunks (a model that writes slowly)
    error_event: str | None = None  # streaming: an error of this type before any content
    error_message: str | None = None  # non-200: this message in the error body instead of the default


@dataclass
class Recorded:
    wire: str  # "openai" | "anthropic"
    path: str
    headers: dict[str, str]  # lower-case names; lookups ignore case
    body: dict
    model: str


@dataclass
class Transcription:
    """One /audio/transcriptions request: the form's fields and the uploaded file."""

    model: str
    filename: str
    content_type: str
    data: bytes
    authorization: str


class _Headers(dict):
    """A dict of lower-cased header names whose lookups ignore case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default=None):  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(reply: Reply) -> dict:
    u = {"input": 10, "output": len(reply.text) // 4 + 1, **(reply.usage or {})}
    return {k: u.get(k, 0) for k in ("input", "cache_read", "cache_write", "output", "reasoning")}


class FakeProvider:
    def __init__(self) -> None:
        self.url = ""
        self.openai_base = ""
        self.anthropic_base = ""
        self.requests: list[Recorded] = []
        self.transcriptions: list[Transcription] = []
        self._transcripts: dict[str, tuple[int, dict]] = {}
        self._queues: dict[str, list[Reply]] = {}
        self._handlers: dict[str, Callable[[Recorded], Reply | Awaitable[Reply]]] = {}
        self._barrier = 0
        self._arrived = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        # GET /v1/models lists these (OpenAI's, vLLM's and Ollama's model list shape).
        self.models: list[str] = []

    async def __aenter__(self) -> FakeProvider:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.openai_base = self.url + "/v1"
        self.anthropic_base = self.url
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "owned_by": "fake"} for name in self.models]
        return web.json_response({"object": "list", "data": data})

    def reply(self, model: str, *replies: Reply) -> None:
        self._queues.setdefault(model, []).extend(replies)

    def transcript(self, model: str, text: str, *, usage: dict | None = None, status: int = 200) -> None:
        """What /audio/transcriptions answers for `model` (usage as the server sends it)."""
        body: dict = {"text": text} if status == 200 else {"error": {"message": f"fake error {status}"}}
        if usage is not None:
            body["usage"] = usage
        self._transcripts[model] = (status, body)

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        model = str(form.get("model", ""))
        assert isinstance(upload, web.FileField), "the audio must be a multipart file field"
        self.transcriptions.append(Transcription(model, upload.filename, upload.content_type,
                                                 upload.file.read(), request.headers.get("authorization", "")))
        status, body = self._transcripts.get(model, (200, {"text": f"transcript by {model}"}))
        return web.json_response(body, status=status)

    def handler(self, model: str, fn: Callable[[Recorded], Reply | Awaitable[Reply]]) -> None:
        self._handlers[model] = fn

    def barrier(self, count: int) -> None:
        self._barrier = count

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= n)

    def for_model(self, model: str) -> list[Recorded]:
        return [r for r in self.requests if r.model == model]

    async def _receive(self, request: web.Request, wire: str) -> tuple[Recorded, Reply]:
        body = await request.json()
        rec = Recorded(
            wire,
            request.path,
            _Headers((k.lower(), v) for k, v in request.headers.items()),
            body,
            str(body.get("model", "")),
        )
        async with self._arrived:
            self.requests.append(rec)
            self._arrived.notify_all()
        if rec.model in self._handlers:
            reply = self._handlers[rec.model](rec)
            if inspect.isawaitable(reply):
                reply = await reply
        else:
            queue = self._queues.get(rec.model) or [Reply(text=f"answer from {rec.model}")]
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= self._barrier)
        if reply.hang:
            await self._closing.wait()
            raise web.HTTPServiceUnavailable()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return rec, reply

    def _error(self, rec: Recorded, reply: Reply) -> web.Response:
        kind = _ERROR_TYPES.get(reply.status, "api_error" if reply.status >= 500 else "invalid_request_error")
        message = reply.error_message or f"fake {kind} for {rec.model}"
        if reply.status == 401 and reply.error_message is None:  # real servers echo (part of) a bad key: clients must not repeat it
            message += f": bad key {rec.headers.get('x-api-key') or rec.headers.get('authorization', '')}"
        error = {"message": message, "type": kind}
        body = (
            {"type": "error", "error": {"type": kind, "message": message}}
            if rec.wire == "anthropic"
            else {"error": error}
        )
        headers = {} if reply.retry_after is None else {"Retry-After": f"{reply.retry_after:g}"}
        return web.json_response(body, status=reply.status, headers=headers)

    async def _stream(self, request: web.Request, reply: Reply, events: list[str]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for n, event in enumerate(events):
            if reply.cut_after is not None and n >= reply.cut_after:
                assert request.transport is not None
                request.transport.close()  # no end marker, no final chunk: a dropped connection
                return response
            if reply.stall_after is not None and n >= reply.stall_after:
                await asyncio.Event().wait()  # a server that stops mid-answer (until the client goes)
            await response.write(event.encode())
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        await response.write_eof()
        return response

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        rec, reply = await self._receive(request, "openai")
        if reply.status != 200:
            return self._error(rec, reply)
        u = _usage(reply)
        usage = {
            "prompt_tokens": u["input"] + u["cache_read"] + u["cache_write"],  # cached ones INCLUDED
            "completion_tokens": u["output"],
            "total_tokens": u["input"] + u["cache_read"] + u["cache_write"] + u["output"],
            "prompt_tokens_details": {"cached_tokens": u["cache_read"]},
            "completion_tokens_details": {"reasoning_tokens": u["reasoning"]},
        }
        if u["cache_write"]:
            usage["prompt_tokens_details"]["cache_write_tokens"] = u["cache_write"]
        if reply.cost is not None:
            usage["cost"] = reply.cost
        finish = "tool_calls" if reply.tool_calls else "stop"
        calls = [
            (i, cid, name, args if isinstance(args, str) else json.dumps(args))
            for i, (cid, name, args) in enumerate(reply.tool_calls)
        ]
        head = {"id": "chatcmpl-fake", "created": 1700000000, "model": rec.model}
        if not rec.body.get("stream"):
            if reply.malformed or reply.malformed_body is not None:
                text = reply.malformed_body if reply.malformed_body is not None else '{"choices": [{"message": '
                return web.Response(text=text, content_type="application/json")
            message: dict = {"role": "assistant", "content": reply.text or None}
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": a}}
                    for _, cid, name, a in calls
                ]
            body = {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            }
            if reply.send_usage:
                body["usage"] = usage
            return web.json_response(body)
        with_usage = bool((rec.body.get("stream_options") or {}).get("include_usage")) and reply.send_usage

        def chunk(delta: dict | None, finish_reason: str | None = None, **extra: object) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            data = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            if with_usage:
                data.setdefault("usage", None)
            return f"data: {json.dumps(data)}\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        if reply.error_event:
            events.append(
                f"data: {json.dumps({'error': {'message': 'fake', 'type': reply.error_event}})}\n\n"
            )
        events += [chunk({"content": p}) for p in _pieces(reply.text, reply.chunk_chars)]
        if reply.malformed:
            events.append('data: {"choices": [\n\n')
        events += [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": cid,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
            for i, cid, name, _ in calls
        ]
        fragments = [[(i, p) for p in _pieces(a, reply.chunk_chars)] for i, _, _, a in calls]
        for round_ in range(max((len(f) for f in fragments), default=0)):  # interleaved by index
            events += [
                chunk({"tool_calls": [{"index": f[round_][0], "function": {"arguments": f[round_][1]}}]})
                for f in fragments
                if round_ < len(f)
            ]
        events.append(chunk({}, finish))
        if with_usage:
            events.append(chunk(None, usage=usage))
        events.append("data: [DONE]\n\n")
        return await self._stream(request, reply, events)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        rec, reply = await self._receive(request, "anthropic")
        if reply.status != 200:
            return self._error(rec, reply)
        u = _usage(reply)
        usage = {
            "input_tokens": u["input"],
            "cache_creation_input_tokens": u["cache_write"],
            "cache_read_input_tokens": u["cache_read"],
            "output_tokens": u["output"],
        }
        stop = "tool_use" if reply.tool_calls else "end_turn"
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": rec.model}
        calls = [
            (cid, name, args if isinstance(args, str) else json.dumps(args))
            for cid, name, args in reply.tool_calls
        ]
        if not rec.body.get("stream"):
            if reply.malformed:
                return web.Response(text='{"content": [{"type": ', content_type="application/json")
            content = ([{"type": "text", "text": reply.text}] if reply.text else []) + [
                {"type": "tool_use", "id": cid, "name": name, "input": json.loads(args)}
                for cid, name, args in calls
            ]
            body = {**message, "content": content, "stop_reason": stop, "stop_sequence": None}
            if reply.send_usage:
                body["usage"] = usage
            return web.json_response(body)

        def event(name: str, **data: object) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        if reply.send_usage:
            start["usage"] = {**usage, "output_tokens": 1}
        events = [event("message_start", message=start), event("ping")]
        if reply.error_event:
            events.append(event("error", error={"type": reply.error_event, "message": "fake"}))
        index = 0
        if reply.text:
            events.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
            events += [
                event("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
                for p in _pieces(reply.text, reply.chunk_chars)
            ]
            if reply.malformed:
                events.append('event: content_block_delta\ndata: {"type": \n\n')
            events.append(event("content_block_stop", index=0))
            index = 1
        for i, (cid, name, args) in enumerate(calls, start=index):
            events.append(
                event(
                    "content_block_start",
                    index=i,
                    content_block={"type": "tool_use", "id": cid, "name": name, "input": {}},
                )
            )
            events += [
                event("content_block_delta", index=i, delta={"type": "input_json_delta", "partial_json": p})
                for p in _pieces(args, reply.chunk_chars)
            ]
            events.append(event("content_block_stop", index=i))
        delta = {"delta": {"stop_reason": stop, "stop_sequence": None}}
        if reply.send_usage:
            delta["usage"] = {"output_tokens": u["output"]}
        events += [event("message_delta", **delta), event("message_stop")]
        return await self._stream(request, reply, events)
