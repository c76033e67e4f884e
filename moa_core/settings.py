"""Validated engine settings: providers, slots and presets.

The gateway parses TOML into these values (gateway/config.py); the engine only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WireFormat = Literal["openai", "anthropic"]
SummaryMode = Literal["full", "compact", "off"]

# The provider name that refers to a preset as if it were a model ("moa:<preset>").
MOA_PROVIDER = "moa"


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """A named model endpoint.

    `api_key_env` is the *name* of the environment variable; the key is read at call time and
    never stored in a value. Prices are dollars per million tokens, used when the provider reports
    no cost and the price table does not know the model (local models may be priced at zero).
    """

    name: str
    api: WireFormat
    base_url: str
    api_key_env: str | None = None
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    price_cache_read_per_mtok: float | None = None
    price_cache_write_per_mtok: float | None = None
    # genai-prices provider id used for price lookups ("openai", "anthropic", "openrouter", ...);
    # None means "guess from the base URL".
    price_provider: str | None = None
    # Ask OpenRouter-style servers to report the call's cost in the usage block.
    request_cost: bool = False
    timeout: float = 600.0
    max_retries: int = 3
    # Anthropic's wire format requires max_tokens; used only there, only when a slot sets none.
    anthropic_default_max_tokens: int = 8192
    # Which models can see images: all of this provider's (`vision`), or those named.
    vision: bool = False
    vision_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Slot:
    """`provider:model` plus per-slot options."""

    provider: str
    model: str
    max_tokens: int | None = None

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def is_recursive(self) -> bool:
        return self.provider == MOA_PROVIDER

    @staticmethod
    def parse(text: str) -> Slot:
        """Split `provider:model` at the first colon (model ids may contain colons)."""
        provider, sep, model = text.partition(":")
        if not sep or not provider.strip() or not model.strip():
            raise ValueError(f"{text!r} is not of the form provider:model")
        return Slot(provider.strip(), model.strip())


@dataclass(frozen=True, slots=True)
class Cadence:
    """When references run inside the aggregator's tool loop."""

    mode: Literal["user_turn", "per_iteration", "every_n"] = "user_turn"
    every: int = 1

    @staticmethod
    def parse(text: str) -> Cadence:
        if text == "user_turn":
            return Cadence("user_turn")
        if text == "per_iteration":
            return Cadence("per_iteration")
        if text.startswith("every_n:"):
            n = text.removeprefix("every_n:")
            if n.isdigit() and int(n) >= 1:
                return Cadence("every_n", int(n))
        raise ValueError(f"{text!r} is not one of user_turn, per_iteration, every_n:N (N >= 1)")


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    references: tuple[Slot, ...]
    aggregator: Slot
    reference_temperature: float = 0.6
    aggregator_temperature: float = 0.4
    reference_timeout: float = 120.0
    aggregator_timeout: float = 600.0
    enabled: bool = True
    fanout: Cadence = Cadence()
    tools: tuple[str, ...] = ()
    summary: SummaryMode = "full"
    # Quorum: once `quorum` references answered, wait at most `quorum_grace` s for the rest.
    quorum: int | None = None
    quorum_grace: float = 5.0
    max_steps: int = 8
    stream: bool = True


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """Limits of the built-in tools."""

    timeout: float = 20.0
    max_output_chars: int = 20_000
    fetch_max_bytes: int = 2_000_000
    fetch_allow_private: bool = False
    fetch_allowed_hosts: tuple[str, ...] = ()
    fetch_content_types: tuple[str, ...] = (
        "text/",
        "application/json",
        "application/xml",
        "application/xhtml+xml",
    )


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything the engine needs apart from the network client and the clock."""

    providers: dict[str, ProviderSettings]
    presets: dict[str, Preset]
    max_concurrent_references: int = 16
    tool_result_budget: int = 4000
    save_traces: bool = False
    trace_dir: str = "traces"
    tool_limits: ToolLimits = ToolLimits()
