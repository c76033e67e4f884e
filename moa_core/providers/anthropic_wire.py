"""The Anthropic Messages wire format: request bodies, responses, named stream events, usage.

Differences from OpenAI's: `system` is a top-level field, `max_tokens` is required, tool calls
are `tool_use` content blocks whose `input` is an object, tool results go back as `tool_result`
blocks of a user message, and `input_tokens` excludes cached tokens. Malformed data raises
ValueError; the client turns it into a ProviderError naming the provider and model.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson

from moa_core.images import for_model
from moa_core.providers.base import CompletionRequest, ProviderError
from moa_core.providers.sse import ServerEvent
from moa_core.values import UNKNOWN_USAGE, Completion, Message, ToolCall, Usage

API_VERSION = "2023-06-01"
_STOP_REASONS = {
    "tool_use": "tool_calls",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
}
# Error types worth another attempt (HTTP 529 / 500 / 429 equivalents inside a stream).
_RETRYABLE_ERRORS = {"overloaded_error", "api_error", "rate_limit_error"}


def build_request(request: CompletionRequest, api_key: str | None) -> tuple[str, dict[str, str], dict]:
    """URL, headers and JSON body of one call; `base_url` is the host (a trailing /v1 is tolerated)."""
    base = request.provider.base_url.rstrip("/").removesuffix("/v1")
    headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
    if api_key is not None:
        headers["x-api-key"] = api_key
    system, messages = _messages(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or request.provider.anthropic_default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
    if request.stream:
        headers["accept"] = "text/event-stream"
        body["stream"] = True
    return base + "/v1/messages", headers, body


def _messages(messages: tuple[Message, ...]) -> tuple[str, list[dict]]:
    """Lift system text to the top level; merge neighbours of one role (tool results join
    the following user turn), since the API wants user and assistant turns to alternate."""
    system: list[str] = []
    turns: list[tuple[str, list[dict]]] = []
    for m in messages:
        if m.role == "system":
            # Leading ones by design; a later one has nowhere else to go on this wire.
            if m.content:
                system.append(m.content)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks: list[dict] = []
        if m.images:
            # The engine decided this model sees them; images without bytes still become text.
            (m,) = for_model((m,), sees=True)
        for image in m.images:  # before the text, as Anthropic advises
            source = {"type": "base64", "media_type": image.media_type,
                      "data": base64.b64encode(image.data).decode("ascii")}
            blocks.append({"type": "image", "source": source})
        if m.role == "tool":
            blocks.append({"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content})
        elif m.content:
            blocks.append({"type": "text", "text": m.content})
        for call in m.tool_calls if m.role == "assistant" else ():
            blocks.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
            )
        if not blocks:
            continue  # the API rejects empty content
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    out = []
    for role, blocks in turns:
        lone_text = len(blocks) == 1 and blocks[0]["type"] == "text"
        out.append({"role": role, "content": blocks[0]["text"] if lone_text else blocks})
    return "\n\n".join(system), out


def _input(arguments: str) -> dict:
    """tool_use input must be an object; keep unparseable arguments rather than drop them."""
    if not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def parse_usage(raw: Any) -> Usage | None:
    """input_tokens EXCLUDES cache reads and cache writes, so nothing is subtracted."""
    if not isinstance(raw, dict):
        return None
    return Usage(
        input=_int(raw.get("input_tokens")),
        cache_read=_int(raw.get("cache_read_input_tokens")),
        cache_write=_int(raw.get("cache_creation_input_tokens")),
        output=_int(raw.get("output_tokens")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def finish_reason(stop_reason: Any) -> str | None:
    if not isinstance(stop_reason, str):
        return None
    return _STOP_REASONS.get(stop_reason, stop_reason)


def error_detail(body: Any) -> str | None:
    """The human part of {"type": "error", "error": {"type", "message"}}."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        kind, msg = err.get("type"), err.get("message")
        return f"{kind}: {msg}" if kind and msg else str(msg or kind or "") or None
    return None


def parse_response(data: Any) -> Completion:
    """A non-streamed response body; usage source "unknown" when the server sent none."""
    if not isinstance(data, dict):
        raise ValueError("response is not a JSON object")
    if data.get("type") == "error":
        raise ProviderError(error_detail(data) or "error in response body")
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(block.get("id") or "", block.get("name") or "", json.dumps(block.get("input") or {}))
            )
    return Completion(
        text="".join(text),
        tool_calls=tuple(calls),
        finish_reason=finish_reason(data.get("stop_reason")),
        usage=parse_usage(data.get("usage")) or UNKNOWN_USAGE,
        model=data.get("model"),
    )


class StreamAccumulator:
    """Folds the named events (message_start ... message_stop) into a Completion."""

    def __init__(self) -> None:
        self.finished = False  # saw message_stop
        self.produced = False  # any text or tool delta reached us
        self._text: list[str] = []
        self._blocks: dict[int, dict[str, Any]] = {}  # index -> {"id", "name", "json": [...]}
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None

    def feed(self, event: ServerEvent) -> str:
        """Take one event; return its text delta ("" if none)."""
        data = orjson.loads(event.data)
        if not isinstance(data, dict):
            raise ValueError("stream event is not a JSON object")
        kind = event.event or data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._model = message.get("model")
            if isinstance(message.get("usage"), dict):
                self._usage = dict(message["usage"])
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._blocks[_int(data.get("index"))] = {
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "json": [],
                }
                self.produced = True
            elif block.get("type") == "text" and block.get("text"):
                self._text.append(block["text"])
                self.produced = True
                return block["text"]
        elif kind == "content_block_delta":
            return self._delta(_int(data.get("index")), data.get("delta") or {})
        elif kind == "message_delta":
            self._finish = finish_reason((data.get("delta") or {}).get("stop_reason")) or self._finish
            if isinstance(data.get("usage"), dict):  # cumulative counts: newer ones replace older
                self._usage = {**(self._usage or {}), **data["usage"]}
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            err = data.get("error") or {}
            retryable = err.get("type") in _RETRYABLE_ERRORS
            raise ProviderError(error_detail(data) or "error event in stream", retryable=retryable)
        return ""  # ping, content_block_stop, and event types added later

    def _delta(self, index: int, delta: dict[str, Any]) -> str:
        if delta.get("type") == "text_delta":
            text = delta.get("text") or ""
            if text:
                self._text.append(text)
                self.produced = True
            return text
        if delta.get("type") == "input_json_delta":
            block = self._blocks.setdefault(index, {"id": None, "name": None, "json": []})
            block["json"].append(delta.get("partial_json") or "")
            self.produced = True
        return ""  # thinking and signature deltas are not part of the answer

    def result(self) -> Completion:
        """What arrived so far; usage source "unknown" when the server sent none."""
        calls = []
        for index, block in sorted(self._blocks.items()):
            raw = "".join(block["json"])
            # Re-serialise complete input so the text matches what a non-streamed call returns.
            try:
                arguments = json.dumps(json.loads(raw)) if raw.strip() else "{}"
            except ValueError:
                arguments = raw
            calls.append(ToolCall(block["id"] or f"toolu_{index}", block["name"] or "", arguments))
        return Completion(
            text="".join(self._text),
            tool_calls=tuple(calls),
            finish_reason=self._finish,
            usage=parse_usage(self._usage) or UNKNOWN_USAGE,
            model=self._model,
        )
