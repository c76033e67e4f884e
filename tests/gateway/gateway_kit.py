"""Builds a real Gateway (real config parsing, real SQLite file, real engine over a fake provider)
around a RecordingAdapter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.app import cost_hooks
from gateway.config import AccessRules, ChannelSettings, PlatformSection, parse_config
from gateway.service import Gateway
from gateway.storage import open_store
from moa_core.clock import SystemClock
from moa_core.engine import MoaEngine
from moa_core.providers.client import ProviderClient
from moa_core.tools import builtin_tools, make_fetch_client
from tests.fakes.provider_server import FakeProvider
from tests.fakes.recording_adapter import RecordingAdapter

ENV = {"FAKE_KEY": "sk-fake-secret"}


def raw_config(fake: FakeProvider, db: Path, **gateway_overrides) -> dict:
    return {
        "gateway": {"database": str(db), "default_preset": "default", "backlog_max_age_s": 600,
                    **gateway_overrides},
        "providers": {"fake": {"api": "openai", "base_url": fake.openai_base, "api_key_env": "FAKE_KEY",
                               "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0, "max_retries": 0}},
        "presets": {
            "default": {"references": ["fake:ref-a", "fake:ref-b"], "aggregator": "fake:agg",
                        "reference_timeout": 5, "tools": ["calculator"]},
            "deep": {"references": ["fake:deep-ref"], "aggregator": "fake:deep-agg"},
            "solo": {"references": ["fake:ref-a"], "aggregator": "fake:agg", "enabled": False},
        },
    }


async def make_gateway(fake: FakeProvider, http, tmp_path: Path, *, admins=("admin",), allowed=("c1", "c2", "configured"),
                       raw: dict | None = None, adapter: RecordingAdapter | None = None,
                       **config_changes) -> tuple[Gateway, RecordingAdapter]:
    raw = raw or raw_config(fake, tmp_path / "gw.db")
    config = parse_config(raw, tmp_path / "test.toml")
    if config_changes:
        config = dataclasses.replace(config, **config_changes)
    access = AccessRules(admins=frozenset(admins), allowed_chats=frozenset(allowed))
    # "fakechat" is the RecordingAdapter's platform, unknown to the config parser.
    config = dataclasses.replace(config, platforms={"fakechat": PlatformSection("fakechat", access)},
                                 channels={"fakechat:configured": ChannelSettings(preset="solo")})
    clock = SystemClock()
    store = await open_store(config.gateway.database, clock, lease_s=config.gateway.lease_s)
    engine = MoaEngine(config.engine, ProviderClient(http, env=ENV, clock=clock),
                       tools=builtin_tools(config.engine.tool_limits, make_fetch_client(config.engine.tool_limits), clock),
                       clock=clock)
    adapter = adapter or RecordingAdapter()
    gateway = Gateway(config, store, engine, {adapter.platform: adapter}, clock, **cost_hooks(config))
    await gateway.start()
    return gateway, adapter
