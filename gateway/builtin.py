"""The built-in default configuration: a first turn with no config file at all.

With no `--config` and no moa-gateway.toml in the current folder, `ask` and `chat` (and `costs`,
`presets`) run on a configuration made here from the variables a user already has:
OPENROUTER_API_KEY, OPENAI_API_KEY (+ optional OPENAI_BASE_URL), ANTHROPIC_API_KEY, OLLAMA_HOST.
The first of them that is set (in that order) gives the preset's models; the database and traces
live in the user's data folder. The config is built as a TOML-shaped table and goes through the
same validation as a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import platformdirs

from gateway.config import Config, ConfigError, parse_config

APP_NAME = "moa-gateway"
BUILTIN_PATH = Path("(built-in default)")
VARIABLES = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OLLAMA_HOST")
_DISCOVERY_TIMEOUT_S = 5.0

# Hosted providers: references first, then the aggregator (the acting model).
_OPENROUTER = (("openai/gpt-5.1", "google/gemini-2.5-pro"), "anthropic/claude-sonnet-4.5")
_OPENAI = (("gpt-5.1", "gpt-5-mini"), "gpt-5.1")
_ANTHROPIC = (("claude-sonnet-4-5", "claude-haiku-4-5"), "claude-sonnet-4-5")

NO_VARIABLES = (
    "no moa-gateway.toml here and none of the variables the built-in default uses is set. Set one:\n"
    "  OPENROUTER_API_KEY=...   (OpenRouter: https://openrouter.ai/keys)\n"
    "  OPENAI_API_KEY=...       (OpenAI; with OPENAI_BASE_URL=http://host:port/v1 any OpenAI-compatible\n"
    "                            server: vLLM, llama.cpp, LM Studio)\n"
    "  ANTHROPIC_API_KEY=...    (Anthropic)\n"
    "  OLLAMA_HOST=127.0.0.1:11434   (a local Ollama)\n"
    "or write a config: moa-gateway init (then edit moa-gateway.toml), or pass --config FILE"
)


@dataclass(frozen=True, slots=True)
class Builtin:
    config: Config
    provider: str  # the provider whose models the preset uses
    source: str  # the variable that chose it

    def describe(self) -> str:
        """The one stderr notice: what runs, where it stores, and how to write a config."""
        preset = self.config.engine.presets[self.config.gateway.default_preset]
        refs = ", ".join(slot.model for slot in preset.references)
        return (
            f"moa-gateway: no moa-gateway.toml here; using the built-in preset 'default' on {self.provider} "
            f"(from {self.source}): references {refs} → aggregator {preset.aggregator.model}. "
            f"Database: {self.config.gateway.database}. "
            "To choose models, platforms and budgets: moa-gateway init (writes moa-gateway.toml)."
        )


def data_dir() -> Path:
    """The user's data folder (XDG_DATA_HOME on Linux, as platformdirs reads it)."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def builtin_config(env: Mapping[str, str], *, data: Path | None = None) -> Builtin:
    """The built-in configuration for this environment; ConfigError naming every variable when
    none is set, or when a local server's models cannot be listed."""
    data = data or data_dir()
    present = {name: env.get(name, "").strip() for name in VARIABLES}
    if present["OPENROUTER_API_KEY"]:
        provider = {"api": "openai", "base_url": "https://openrouter.ai/api/v1", "api_key_env": "OPENROUTER_API_KEY"}
        name, source, (refs, aggregator) = "openrouter", "OPENROUTER_API_KEY", _OPENROUTER
    elif present["OPENAI_API_KEY"]:
        base = env.get("OPENAI_BASE_URL", "").strip().rstrip("/") or "https://api.openai.com/v1"
        provider = {"api": "openai", "base_url": base, "api_key_env": "OPENAI_API_KEY"}
        name, source = "openai", "OPENAI_API_KEY"
        if "api.openai.com" in base:
            refs, aggregator = _OPENAI
        else:  # an OpenAI-compatible server of the user's: its own models, whatever they are
            source = "OPENAI_API_KEY and OPENAI_BASE_URL"
            refs, aggregator = _discovered(base, present["OPENAI_API_KEY"], "OPENAI_BASE_URL")
    elif present["ANTHROPIC_API_KEY"]:
        provider = {"api": "anthropic", "base_url": "https://api.anthropic.com", "api_key_env": "ANTHROPIC_API_KEY"}
        name, source, (refs, aggregator) = "anthropic", "ANTHROPIC_API_KEY", _ANTHROPIC
    elif present["OLLAMA_HOST"]:
        base = ollama_base_url(present["OLLAMA_HOST"])
        # Local models cost nothing per token; saying so keeps totals from reading "unknown".
        provider = {"api": "openai", "base_url": base, "price_in_per_mtok": 0, "price_out_per_mtok": 0}
        name, source = "ollama", "OLLAMA_HOST"
        refs, aggregator = _discovered(base, None, "OLLAMA_HOST")
    else:
        raise ConfigError(NO_VARIABLES)
    raw: dict[str, Any] = {
        "gateway": {
            "database": str(data / "moa-gateway.db"),
            "trace_dir": str(data / "traces"),
            "files_dir": ".",
        },
        "providers": {name: provider},
        "presets": {
            "default": {
                "references": [f"{name}:{model}" for model in refs],
                "aggregator": f"{name}:{aggregator}",
                "tools": ["calculator", "current_time"],
            }
        },
    }
    return Builtin(parse_config(raw, BUILTIN_PATH), name, source)


def ollama_base_url(host: str) -> str:
    """OLLAMA_HOST as Ollama itself reads it ("host", "host:port", or a URL) → its /v1 URL."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    url = httpx.URL(host)
    # 0.0.0.0 is where a server listens, not an address to call.
    hostname = "127.0.0.1" if url.host in ("", "0.0.0.0") else url.host
    port = url.port or 11434
    return f"{url.scheme}://{hostname}:{port}/v1"


def _discovered(base: str, key: str | None, variable: str) -> tuple[tuple[str, ...], str]:
    """Up to three of the server's own models as references, the first also as aggregator."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{base}/models"
    try:
        response = httpx.get(url, headers=headers, timeout=_DISCOVERY_TIMEOUT_S)
        response.raise_for_status()
        models = [str(item["id"]) for item in response.json().get("data", []) if item.get("id")]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{variable}: could not list the models at {url} ({type(error).__name__}: {_short(error)}); "
            "is the server running? Or write a config naming the models: moa-gateway init"
        ) from None
    if not models:
        raise ConfigError(f"{variable}: the server at {base} lists no models (for Ollama: ollama pull MODEL)")
    refs = tuple(models[:3]) if len(models) > 1 else (models[0], models[0])
    return refs, models[0]


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 160 else text[:157] + "..."
