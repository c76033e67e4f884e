"""Builders shared by the engine tests: settings pointing at a FakeProvider, an event log."""

from __future__ import annotations

import httpx

from moa_core.clock import SystemClock
from moa_core.engine import MoaEngine
from moa_core.events import Event
from moa_core.providers.client import ProviderClient
from moa_core.settings import Cadence, EngineSettings, Preset, ProviderSettings, Slot, ToolLimits
from moa_core.tools import builtin_tools, make_fetch_client
from moa_core.trace import TraceWriter
from tests.fakes.provider_server import FakeProvider

ENV = {"FAKE_OPENAI_KEY": "sk-test-openai-secret", "FAKE_ANTHROPIC_KEY": "ant-test-secret"}


def providers(fake: FakeProvider, **overrides) -> dict[str, ProviderSettings]:
    return {
        "oa": ProviderSettings("oa", "openai", fake.openai_base, "FAKE_OPENAI_KEY", max_retries=1, **overrides),
        "an": ProviderSettings("an", "anthropic", fake.anthropic_base, "FAKE_ANTHROPIC_KEY", max_retries=1,
                               **overrides),
        # A local server: no key, priced at zero by configuration.
        "local": ProviderSettings("local", "openai", fake.openai_base, None, price_in_per_mtok=0.0,
                                  price_out_per_mtok=0.0, max_retries=0),
    }


def preset(name: str = "p", refs: tuple[str, ...] = ("oa:ref-a", "oa:ref-b"), agg: str = "oa:agg", **kw) -> Preset:
    if isinstance(kw.get("fanout"), str):
        kw["fanout"] = Cadence.parse(kw["fanout"])
    return Preset(name, tuple(Slot.parse(r) for r in refs), Slot.parse(agg), **kw)


def engine(fake: FakeProvider, http: httpx.AsyncClient, *presets_: Preset, trace_dir=None,
           tool_limits: ToolLimits | None = None, **settings_kw) -> MoaEngine:
    clock = SystemClock()
    limits = tool_limits or ToolLimits()
    settings = EngineSettings(
        providers=providers(fake), presets={p.name: p for p in presets_}, tool_limits=limits,
        save_traces=trace_dir is not None, trace_dir=str(trace_dir or "traces"), **settings_kw,
    )
    return MoaEngine(
        settings,
        ProviderClient(http, env=ENV, clock=clock),
        tools=builtin_tools(limits, make_fetch_client(limits), clock),  # never fetches here
        clock=clock,
        tracer=TraceWriter(trace_dir, clock) if trace_dir is not None else None,
    )


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]
