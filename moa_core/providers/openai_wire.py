"""The OpenAI Chat Completions wire format: request bodies, responses, streamed chunks, usage.

Spoken by OpenAI, OpenRouter, Together, Groq, DeepSeek, Mistral, Fireworks, Gemini's compatible
endpoint, vLLM, Ollama, llama.cpp and LM Studio. Malformed data raises ValueError; the client
turns it into a ProviderError naming the provider and model.
"""

from __future__ import annotations

from typing import Any

import orjson

from moa_core.images import data_url, for_model
from moa_core.providers.base import CompletionRequest, ProviderError
from moa_core.providers.sse import ServerEvent
from moa_core.values import UNKNOWN_USAGE, Completion, Message, ToolCall, Usage


def build_request(request: CompletionRequest, api_key: str | None) -> tuple[str, dict[str, str], dict]:
    """URL, headers and JSON body of one call; `base_url` ends in /v1 as the SDKs take it."""
    url = request.provider.base_url.rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json", "accept": "application/json"}
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    if request.stream:
        headers["accept"] = "text/event-stream"
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.provider.request_cost:
        body["usage"] = {"include": True}  # OpenRouter then reports usage.cost
    return url, headers, body


def _message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
    if m.images:
        # The engine decided this model sees them; images without bytes still become text.
        (m,) = for_model((m,), sees=True)
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        parts += [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in m.images]
        out["content"] = parts
    if m.role == "assistant" and m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return out


def parse_usage(raw: Any) -> Usage | None:
    """Normalise a usage block; prompt_tokens INCLUDES cached (and cache-write) tokens."""
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens"))
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cache_read = _int(prompt_details.get("cached_tokens"))
    cache_write = _int(prompt_details.get("cache_write_tokens"))
    return Usage(
        input=max(0, prompt - cache_read - cache_write),
        cache_read=cache_read,
        cache_write=cache_write,
        output=_int(raw.get("completion_tokens")),
        reasoning=_int(completion_details.get("reasoning_tokens")),
    )


def parse_cost(raw: Any) -> float | None:
    cost = raw.get("cost") if isinstance(raw, dict) else None
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(content: Any) -> str:
    """Message content: a string, null, or (some servers) a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def error_detail(body: Any) -> str | None:
    """The human part of an error body: {"error": {"message": ...}} or {"error": "..."}."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message")
            return str(msg) if msg else None
        if isinstance(err, str):
            return err
    return None


def parse_response(data: Any) -> Completion:
    """A non-streamed response body; usage source "unknown" when the server sent none."""
    if not isinstance(data, dict):
        raise ValueError("response is not a JSON object")
    if "error" in data and not data.get("choices"):
        # OpenRouter reports upstream failures this way, with an HTTP-like code inside.
        err = data["error"] if isinstance(data["error"], dict) else {}
        code = err.get("code") if isinstance(err.get("code"), int) else None
        transient = code is not None and (code == 429 or code >= 500)
        raise ProviderError(error_detail(data) or "error in response body", status=code, retryable=transient)
    choices = data.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    calls = tuple(
        ToolCall(
            id=c.get("id") or f"call_{i}",
            name=(c.get("function") or {}).get("name") or "",
            arguments=(c.get("function") or {}).get("arguments") or "",
        )
        for i, c in enumerate(message.get("tool_calls") or [])
    )
    usage = parse_usage(data.get("usage"))
    return Completion(
        text=_text(message.get("content")),
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        usage=usage or UNKNOWN_USAGE,
        provider_cost_usd=parse_cost(data.get("usage")),
        model=data.get("model"),
    )


class StreamAccumulator:
    """Folds `data:` chunks into a Completion; tool-call deltas are joined by their index."""

    def __init__(self) -> None:
        self.finished = False  # saw [DONE]
        self.produced = False  # any text or tool delta reached us
        self._text: list[str] = []
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        self._last_index: int | None = None
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._cost: float | None = None
        self._model: str | None = None

    def feed(self, event: ServerEvent) -> str:
        """Take one event; return its text delta ("" if none)."""
        data = event.data
        if "[DONE]" in data and data.strip() == "[DONE]":  # no stripped copy of every chunk
            self.finished = True
            return ""
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            raise ValueError("stream chunk is not a JSON object")
        if chunk.get("error"):  # OpenRouter and others report mid-stream failures this way
            raise ProviderError(error_detail(chunk) or "error event in stream", retryable=True)
        self._model = chunk.get("model") or self._model
        if chunk.get("usage"):
            self._usage = parse_usage(chunk["usage"])
            self._cost = parse_cost(chunk["usage"])
        text = ""
        for choice in chunk.get("choices") or ():  # null (vLLM) and [] (usage chunk) alike
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            piece = _text(delta.get("content"))
            if piece:
                text += piece
            for call in delta.get("tool_calls") or ():
                self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        if text:
            self._text.append(text)
            self.produced = True
        return text

    def _tool_delta(self, call: dict) -> None:
        index = call.get("index")
        if not isinstance(index, int):  # a few servers omit it: a new id starts a new call
            new = call.get("id") and all(c[0] != call["id"] for c in self._calls.values())
            index = len(self._calls) if new or self._last_index is None else self._last_index
        self._last_index = index
        parts = self._calls.setdefault(index, ["", ""])
        fn = call.get("function") or {}
        if call.get("id"):
            parts[0] = call["id"]
        if fn.get("name"):
            parts[1] = fn["name"]
        if fn.get("arguments"):
            parts.append(fn["arguments"])
        self.produced = True

    def result(self) -> Completion:
        """What arrived so far; usage source "unknown" when the server sent none."""
        calls = tuple(
            ToolCall(id=p[0] or f"call_{i}", name=p[1], arguments="".join(p[2:]))
            for i, p in sorted(self._calls.items())
        )
        return Completion(
            text="".join(self._text),
            tool_calls=calls,
            finish_reason=self._finish,
            usage=self._usage or UNKNOWN_USAGE,
            provider_cost_usd=self._cost,
            model=self._model,
        )
