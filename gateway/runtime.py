"""Builds the engine from a Config: one pooled HTTP client, the provider client, tools, traces.

It also owns the MCP tool servers' lifecycle: `EngineRuntime.start` starts them (before the
first turn), `aclose` stops them (in-flight calls end with a tool error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from gateway.config import Config
from moa_core.clock import Clock, SystemClock
from moa_core.engine import MoaEngine
from moa_core.providers.client import ProviderClient
from moa_core.providers.http import make_http_client
from moa_core.settings import Preset
from moa_core.tools import builtin_tools, make_fetch_client
from moa_core.tools.mcp_toolbox import McpToolbox
from moa_core.trace import TraceWriter
from moa_core.transcription import Transcriber


class MissingSecret(ValueError):
    """An environment variable named in the config is not set."""


@dataclass(slots=True)
class EngineRuntime:
    engine: MoaEngine
    http: httpx.AsyncClient
    fetch_http: httpx.AsyncClient | None = None  # fetch_url's own client (vetted addresses only)
    mcp: McpToolbox | None = None

    async def start(self) -> None:
        """Start the MCP servers; each gets its start timeout, a failed one keeps retrying."""
        if self.mcp is not None:
            await self.mcp.start()

    async def aclose(self) -> None:
        try:
            if self.mcp is not None:
                await self.mcp.stop()
        finally:
            await self.http.aclose()
            if self.fetch_http is not None:
                await self.fetch_http.aclose()


def build_engine(config: Config, *, env: Mapping[str, str] | None = None, clock: Clock | None = None,
                 http: httpx.AsyncClient | None = None) -> EngineRuntime:
    env = os.environ if env is None else env
    clock = clock or SystemClock()
    http = http or make_http_client()
    settings = config.engine
    tracer = TraceWriter(settings.trace_dir, clock) if settings.save_traces else None
    fetch_http = make_fetch_client(settings.tool_limits)
    # Only servers some preset uses are started.
    used = {name for name in config.mcp if any(_uses(preset, name) for preset in settings.presets.values())}
    mcp = McpToolbox({name: config.mcp[name] for name in used}, env, settings.tool_limits) if used else None
    engine = MoaEngine(
        settings,
        ProviderClient(http, env=env, clock=clock),
        tools=builtin_tools(settings.tool_limits, fetch_http, clock),
        clock=clock,
        tracer=tracer,
        tool_source=mcp.tools_for if mcp is not None else None,
    )
    return EngineRuntime(engine, http, fetch_http, mcp)


def _uses(preset: Preset, server: str) -> bool:
    return any(entry == f"mcp:{server}" or entry.startswith(f"mcp:{server}/") for entry in preset.tools)


def build_transcriber(config: Config, http: httpx.AsyncClient, *, env: Mapping[str, str],
                      clock: Clock) -> Transcriber | None:
    """The `[transcription]` provider's transcriber over the engine's HTTP client, if configured."""
    if config.transcription is None:
        return None
    settings = config.transcription
    return Transcriber(http, config.engine.providers[settings.provider], settings.model, env=env, clock=clock,
                       price_per_minute=settings.price_per_minute)


def missing_transcription_key(config: Config, env: Mapping[str, str]) -> list[str]:
    """A line naming the unset API key variable of the [transcription] provider, if any."""
    if config.transcription is None:
        return []
    provider = config.engine.providers[config.transcription.provider]
    if provider.api_key_env and not env.get(provider.api_key_env, "").strip():
        return [f"environment variable {provider.api_key_env} is not set "
                f"(API key of provider '{provider.name}', used by [transcription])"]
    return []


def missing_keys(config: Config, preset: Preset, env: Mapping[str, str]) -> list[str]:
    """Lines naming each unset API key variable the preset's providers need."""
    problems = []
    seen = set()
    for slot in (preset.aggregator, *preset.references):
        provider = config.engine.providers.get(slot.provider)
        if provider is None or provider.name in seen:
            continue
        seen.add(provider.name)
        if provider.api_key_env and not env.get(provider.api_key_env, "").strip():
            problems.append(
                f"environment variable {provider.api_key_env} is not set "
                f"(API key of provider '{provider.name}', used by preset '{preset.name}')"
            )
    return problems
