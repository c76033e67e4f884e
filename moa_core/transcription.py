"""Speech to text through an OpenAI-compatible `POST {base_url}/audio/transcriptions`.

OpenAI (whisper-1, gpt-4o-transcribe), Groq and local servers (whisper.cpp, faster-whisper,
LocalAI, vLLM) speak it: a multipart form with `file` and `model`, answered with `{"text": ...}`
and, from newer servers, a `usage` block of tokens or of seconds. The call is a `CallRecord`
like any model call (role "transcription"), priced from reported tokens like the rest, from
seconds at a configured per-minute price, else unknown — never a made-up zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from moa_core.clock import Clock
from moa_core.pricing import price_call
from moa_core.providers.base import MissingApiKey, ProviderError
from moa_core.settings import ProviderSettings
from moa_core.values import UNKNOWN_COST, UNKNOWN_USAGE, CallRecord, Cost, Usage

_EXCERPT_CHARS = 300


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    call: CallRecord


class TranscriptionFailed(Exception):
    """The transcription call failed; `call` is its record (status failed or timeout)."""

    def __init__(self, message: str, call: CallRecord) -> None:
        super().__init__(message)
        self.call = call


class Transcriber:
    """Transcribes audio with one configured provider and model over the shared HTTP client."""

    def __init__(self, http: httpx.AsyncClient, provider: ProviderSettings, model: str, *,
                 env: Mapping[str, str], clock: Clock, price_per_minute: float | None = None,
                 timeout: float = 120.0) -> None:
        self._http = http
        self.provider = provider
        self.model = model
        self._env = env
        self._clock = clock
        self._price_per_minute = price_per_minute
        self._timeout = min(timeout, provider.timeout)

    def _key(self) -> str | None:
        name = self.provider.api_key_env
        if not name:
            return None
        key = self._env.get(name, "").strip()
        if not key:
            raise MissingApiKey(f"{self.provider.name}:{self.model}: environment variable {name} is not set "
                                "(it should hold the API key)")
        return key

    async def transcribe(self, data: bytes, filename: str, media_type: str) -> Transcript:
        """The text spoken in `data`; TranscriptionFailed (with its call record) when it fails."""
        started = self._clock.monotonic()
        url = self.provider.base_url.rstrip("/") + "/audio/transcriptions"
        try:
            key = self._key()
            headers = {"accept": "application/json"}
            if key is not None:
                headers["authorization"] = f"Bearer {key}"
            response = await self._http.post(
                url, headers=headers, data={"model": self.model, "response_format": "json"},
                files={"file": (filename, data, media_type)}, timeout=self._timeout,
            )
            if response.status_code != 200:
                raise ProviderError(f"HTTP {response.status_code}: {_excerpt(response.text, key)}",
                                    status=response.status_code)
            body = orjson.loads(response.content)
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise ProviderError("the response has no text")
        except httpx.TimeoutException:
            raise self._failed(started, "timeout", f"no transcript within {self._timeout:g} s") from None
        except (ProviderError, httpx.HTTPError, OSError, ValueError) as error:
            raise self._failed(started, "failed", str(error) or type(error).__name__) from None
        usage, cost = self._spend(body.get("usage"))
        return Transcript(body["text"].strip(), self._record(started, "ok", usage, cost))

    def _spend(self, raw: Any) -> tuple[Usage, Cost]:
        if isinstance(raw, dict) and raw.get("type") == "duration" and _number(raw.get("seconds")):
            seconds = float(raw["seconds"])
            if self._price_per_minute is not None:
                return UNKNOWN_USAGE, Cost(self._price_per_minute * seconds / 60.0, "config")
            return UNKNOWN_USAGE, UNKNOWN_COST
        if isinstance(raw, dict) and ("input_tokens" in raw or "output_tokens" in raw):
            usage = Usage(input=_int(raw.get("input_tokens")), output=_int(raw.get("output_tokens")))
            return usage, price_call(self.provider, self.model, usage, None)
        return UNKNOWN_USAGE, UNKNOWN_COST

    def _record(self, started: float, status: str, usage: Usage, cost: Cost, error: str | None = None) -> CallRecord:
        return CallRecord(
            "transcription", 1, 0, self.provider.name, self.model, status,  # type: ignore[arg-type]
            int((self._clock.monotonic() - started) * 1000), usage, cost, error,
        )

    def _failed(self, started: float, status: str, why: str) -> TranscriptionFailed:
        message = f"transcription by {self.provider.name}:{self.model} failed: {why}"
        return TranscriptionFailed(message, self._record(started, status, UNKNOWN_USAGE, UNKNOWN_COST, message))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _excerpt(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "[redacted]")
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."

