"""The provider seam: one request value, one error family, one client interface.

`ModelClient.complete` is the only way the engine reaches a model; the wire-format modules
(`openai_wire`, `anthropic_wire`) implement it over a shared httpx.AsyncClient.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from moa_core.settings import ProviderSettings
from moa_core.values import Completion, Message, ToolSpec

# Called with each piece of streamed text as it arrives.
OnText = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One model call. Leading system messages become Anthropic's top-level `system`.

    `deadline` is an absolute `Clock.monotonic()` value by which the call, retries included,
    must be over; None means only the provider's own timeout applies.
    """

    provider: ProviderSettings
    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    deadline: float | None = None


class ProviderError(Exception):
    """A model call failed. The message never contains a secret (keys, auth headers)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class ProviderTimeout(ProviderError):
    """The call's deadline passed."""


class MissingApiKey(ProviderError):
    """The environment variable named by `api_key_env` is not set."""


class ModelClient(Protocol):
    async def complete(self, request: CompletionRequest, on_text: OnText | None = None) -> Completion: ...
