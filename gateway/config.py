"""Load and validate the TOML config once, into frozen settings values.

Every error names the file and the dotted key at fault (and the preset and slot for presets).
Secrets are never in the file: sections name environment variables (`*_env`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.attachments import AttachmentSettings, TranscriptionSettings
from gateway.config_reader import ConfigError, TableReader
from gateway.mcp_config import mcp_servers, tool_entry_problem
from moa_core.settings import (
    MOA_PROVIDER,
    Cadence,
    EngineSettings,
    Preset,
    ProviderSettings,
    Slot,
    ToolLimits,
)
from moa_core.tools.mcp_settings import McpServerSettings

BUILTIN_TOOLS = ("fetch_url", "calculator", "current_time")
PLATFORMS = ("telegram", "discord", "slack")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    # A SQLite file path, or a libpq URL "postgresql://user@host:port/db" for PostgreSQL.
    database: str = "moa-gateway.db"
    # PostgreSQL only: the environment variable holding the password (else libpq's PGPASSWORD).
    database_password_env: str | None = None
    # Several replicas on PostgreSQL: a replica's running turns and unsent answers are leased for
    # this long and renewed while it lives; a survivor takes them over within about 1.25 x this.
    lease_s: float = 20.0
    default_preset: str = "default"
    save_traces: bool = False
    trace_dir: str = "traces"
    timezone: str = "UTC"
    # History sent to the models is trimmed, oldest first, to this many characters.
    context_chars: int = 60_000
    max_concurrent_turns: int = 32
    # After downtime, messages older than this are not answered blindly.
    backlog_max_age_s: float = 600.0
    shutdown_grace_s: float = 30.0
    progress: bool = True
    stream: bool = True
    footer: bool = True
    refusal_notice_interval_s: float = 3600.0
    files_dir: str = "."


@dataclass(frozen=True, slots=True)
class AccessRules:
    admins: frozenset[str] = frozenset()
    allowed_chats: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()
    allow_all: bool = False
    admin_roles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PlatformSection:
    """A `[telegram]`/`[discord]`/`[slack]` section: access rules plus the adapter's own keys."""

    platform: str
    access: AccessRules
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    preset: str | None = None
    budget_usd_month: float | None = None
    budget_usd_day_per_user: float | None = None
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    per_user_usd_day: float | None = None
    per_chat_usd_month: float | None = None


@dataclass(frozen=True, slots=True)
class DigestSettings:
    cron: str
    timezone: str
    send_to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewaySettings
    engine: EngineSettings
    platforms: Mapping[str, PlatformSection]
    channels: Mapping[str, ChannelSettings]
    budgets: BudgetSettings
    digest: DigestSettings | None
    attachments: AttachmentSettings = AttachmentSettings()
    transcription: TranscriptionSettings | None = None
    mcp: Mapping[str, McpServerSettings] = field(default_factory=dict)  # [mcp.NAME] tool servers


def load_config(path: str | Path) -> Config:
    """Read and validate `path`; raises ConfigError naming the file and key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: file not found (write one with `moa-gateway init --config {path}` and edit it, "
            "or pass --config FILE)"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(raw, path)


def parse_config(raw: dict, path: Path) -> Config:
    root = TableReader(path, "", raw)
    for name in raw:
        if name not in ("gateway", "providers", "presets", "engine", "tools", "channels", "budgets",
                        "digest", "attachments", "transcription", "mcp", *PLATFORMS):
            raise ConfigError(f"{path}: {name}: unknown section")
    gateway = _relative_to(path.parent, _gateway(TableReader(path, "gateway", raw.get("gateway", {}))))
    providers = _providers(path, raw.get("providers"))
    mcp = mcp_servers(TableReader(path, "mcp", raw.get("mcp", {})), lambda key, table: TableReader(path, key, table))
    presets = _presets(path, raw.get("presets"), providers, mcp)
    if gateway.default_preset not in presets:
        raise ConfigError(
            f"{path}: gateway.default_preset: names preset '{gateway.default_preset}', which is not "
            f"defined (defined: {', '.join(sorted(presets))})"
        )
    engine_reader = TableReader(path, "engine", raw.get("engine", {}))
    engine_reader.known("max_concurrent_references", "tool_result_budget")
    tools = _tool_limits(TableReader(path, "tools", raw.get("tools", {})))
    engine = EngineSettings(
        providers=providers,
        presets=presets,
        max_concurrent_references=engine_reader.integer("max_concurrent_references", 16),
        tool_result_budget=engine_reader.integer("tool_result_budget", 4000, minimum=200),
        save_traces=gateway.save_traces,
        trace_dir=gateway.trace_dir,
        tool_limits=tools,
    )
    platforms = {
        name: _platform(TableReader(path, name, raw[name]), name) for name in PLATFORMS if name in raw
    }
    channels = _channels(path, raw.get("channels", {}), presets)
    budgets_reader = TableReader(path, "budgets", raw.get("budgets", {}))
    budgets_reader.known("per_user_usd_day", "per_chat_usd_month")
    budgets = BudgetSettings(
        per_user_usd_day=budgets_reader.number("per_user_usd_day", minimum=0),
        per_chat_usd_month=budgets_reader.number("per_chat_usd_month", minimum=0),
    )
    digest = _digest(TableReader(path, "digest", raw["digest"]), gateway.timezone) if "digest" in raw else None
    del root
    attachments = _attachments(TableReader(path, "attachments", raw.get("attachments", {})))
    transcription = (
        _transcription(TableReader(path, "transcription", raw["transcription"]), providers)
        if "transcription" in raw else None
    )
    return Config(path, gateway, engine, platforms, channels, budgets, digest, attachments, transcription, mcp)


def _timezone(reader: TableReader, name: str, default: str) -> str:
    zone = reader.text(name, default)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise reader.error(name, f"unknown time zone {zone!r} (use an IANA name like 'Europe/Berlin')") from None
    return zone


def _gateway(r: TableReader) -> GatewaySettings:
    d = GatewaySettings()
    r.known(*GatewaySettings.__slots__)
    return GatewaySettings(
        database=r.text("database", d.database, required=True),
        database_password_env=r.text("database_password_env", None) or None,
        lease_s=r.number("lease_s", d.lease_s, minimum=1, maximum=600),
        default_preset=r.text("default_preset", d.default_preset, required=True),
        save_traces=r.flag("save_traces", d.save_traces),
        trace_dir=r.text("trace_dir", d.trace_dir, required=True),
        timezone=_timezone(r, "timezone", d.timezone),
        context_chars=r.integer("context_chars", d.context_chars, minimum=1000),
        max_concurrent_turns=r.integer("max_concurrent_turns", d.max_concurrent_turns),
        backlog_max_age_s=r.number("backlog_max_age_s", d.backlog_max_age_s, positive=True),
        shutdown_grace_s=r.number("shutdown_grace_s", d.shutdown_grace_s, minimum=0),
        progress=r.flag("progress", d.progress),
        stream=r.flag("stream", d.stream),
        footer=r.flag("footer", d.footer),
        refusal_notice_interval_s=r.number("refusal_notice_interval_s", d.refusal_notice_interval_s, minimum=0),
        files_dir=r.text("files_dir", d.files_dir, required=True),
    )


def _relative_to(folder: Path, gateway: GatewaySettings) -> GatewaySettings:
    """A relative `database` or `trace_dir` names a place beside the config file, wherever the
    command runs from (else running from another folder silently starts an empty database)."""

    def beside(value: str) -> str:
        if "://" in value or value == ":memory:":  # a database URL, not a file
            return value
        place = Path(value).expanduser()
        return str(place if place.is_absolute() else folder.absolute() / place)

    return replace(gateway, database=beside(gateway.database), trace_dir=beside(gateway.trace_dir))


_PROVIDER_KEYS = (
    "api", "base_url", "api_key_env", "price_in_per_mtok", "price_out_per_mtok",
    "price_cache_read_per_mtok", "price_cache_write_per_mtok", "price_provider", "request_cost",
    "timeout", "max_retries", "anthropic_default_max_tokens", "vision", "vision_models",
)


def _providers(path: Path, table: Any) -> dict[str, ProviderSettings]:
    if not table:
        raise ConfigError(f"{path}: providers: at least one [providers.NAME] section is required")
    top = TableReader(path, "providers", table)
    out: dict[str, ProviderSettings] = {}
    for name, section in top.table.items():
        if name == MOA_PROVIDER:
            raise top.error(name, f"'{MOA_PROVIDER}' is reserved (moa:<preset> names a preset)")
        r = TableReader(path, f"providers.{name}", section)
        r.known(*_PROVIDER_KEYS)
        api = r.text("api", required=True)
        if api not in ("openai", "anthropic"):
            raise r.error("api", f"must be \"openai\" or \"anthropic\", got {api!r}")
        base_url = r.text("base_url", required=True).strip()
        if not base_url.startswith(("http://", "https://")):
            raise r.error("base_url", f"must start with http:// or https://, got {base_url!r}")
        api_key_env = r.text("api_key_env")
        if api_key_env is not None and (not api_key_env.strip() or api_key_env.startswith(("sk-", "xox"))):
            raise r.error("api_key_env", "must be the NAME of an environment variable, not a key")
        out[name] = ProviderSettings(
            name=name,
            api=api,
            base_url=base_url,
            api_key_env=api_key_env,
            price_in_per_mtok=r.number("price_in_per_mtok", minimum=0),
            price_out_per_mtok=r.number("price_out_per_mtok", minimum=0),
            price_cache_read_per_mtok=r.number("price_cache_read_per_mtok", minimum=0),
            price_cache_write_per_mtok=r.number("price_cache_write_per_mtok", minimum=0),
            price_provider=r.text("price_provider"),
            request_cost=r.flag("request_cost", "openrouter.ai" in base_url),
            timeout=r.number("timeout", 600.0, positive=True),
            max_retries=r.integer("max_retries", 3, minimum=0),
            anthropic_default_max_tokens=r.integer("anthropic_default_max_tokens", 8192),
            vision=r.flag("vision", False),
            vision_models=r.strings("vision_models"),
        )
    return out


_PRESET_KEYS = (
    "references", "aggregator", "reference_temperature", "aggregator_temperature",
    "reference_timeout", "aggregator_timeout", "enabled", "fanout", "tools", "summary", "quorum",
    "quorum_grace", "max_steps", "stream", "max_tokens",
)


def _slot(r: TableReader, key: str, text: str, providers: Mapping[str, ProviderSettings], *,
          preset: str, role: str, max_tokens: int | None) -> Slot:
    try:
        slot = Slot.parse(text)
    except ValueError as error:
        raise r.error(key, f"preset '{preset}', {role} slot {text!r}: {error}") from None
    if slot.provider != MOA_PROVIDER and slot.provider not in providers:
        raise r.error(
            key,
            f"preset '{preset}', {role} slot '{text}': unknown provider '{slot.provider}' "
            f"(defined providers: {', '.join(sorted(providers))})",
        )
    return Slot(slot.provider, slot.model, max_tokens)


def _presets(path: Path, table: Any, providers: Mapping[str, ProviderSettings],
             mcp: Mapping[str, McpServerSettings]) -> dict[str, Preset]:
    if not table:
        raise ConfigError(f"{path}: presets: at least one [presets.NAME] section is required")
    top = TableReader(path, "presets", table)
    out: dict[str, Preset] = {}
    for name, section in top.table.items():
        r = TableReader(path, f"presets.{name}", section)
        r.known(*_PRESET_KEYS)
        max_tokens = r.integer("max_tokens")
        ref_texts = r.strings("references")
        enabled = r.flag("enabled", True)
        if "references" not in r.table or (not ref_texts and enabled):
            raise r.error("references", f"preset '{name}': needs at least one reference slot")
        references = tuple(
            _slot(r, "references", text, providers, preset=name, role=f"reference #{i + 1}", max_tokens=max_tokens)
            for i, text in enumerate(ref_texts)
        )
        aggregator = _slot(r, "aggregator", r.text("aggregator", required=True), providers,
                           preset=name, role="aggregator", max_tokens=max_tokens)
        if aggregator.is_recursive:
            raise r.error(
                "aggregator",
                f"preset '{name}', aggregator slot '{aggregator.label}': the aggregator must be a real "
                "model, not another preset (moa:...)",
            )
        try:
            fanout = Cadence.parse(r.text("fanout", "user_turn"))
        except ValueError as error:
            raise r.error("fanout", f"preset '{name}': {error}") from None
        tools = r.strings("tools", ())
        for tool in tools:
            if (problem := tool_entry_problem(tool, BUILTIN_TOOLS, mcp)) is not None:
                raise r.error("tools", f"preset '{name}': {problem}")
        summary = r.text("summary", "full")
        if summary not in ("full", "compact", "off"):
            raise r.error("summary", f"preset '{name}': must be full, compact or off, got {summary!r}")
        quorum = r.integer("quorum")
        if quorum is not None and quorum > len(references):
            raise r.error("quorum", f"preset '{name}': {quorum} is more than its {len(references)} references")
        out[name] = Preset(
            name=name,
            references=references,
            aggregator=aggregator,
            reference_temperature=r.number("reference_temperature", 0.6, minimum=0, maximum=2),
            aggregator_temperature=r.number("aggregator_temperature", 0.4, minimum=0, maximum=2),
            reference_timeout=r.number("reference_timeout", 120.0, positive=True),
            aggregator_timeout=r.number("aggregator_timeout", 600.0, positive=True),
            enabled=enabled,
            fanout=fanout,
            tools=tools,
            summary=summary,
            quorum=quorum,
            quorum_grace=r.number("quorum_grace", 5.0, minimum=0),
            max_steps=r.integer("max_steps", 8),
            stream=r.flag("stream", True),
        )
    return out


def _tool_limits(r: TableReader) -> ToolLimits:
    d = ToolLimits()
    r.known("timeout", "max_output_chars", "fetch_max_bytes", "fetch_allow_private",
            "fetch_allowed_hosts", "fetch_content_types")
    return ToolLimits(
        timeout=r.number("timeout", d.timeout, positive=True),
        max_output_chars=r.integer("max_output_chars", d.max_output_chars, minimum=100),
        fetch_max_bytes=r.integer("fetch_max_bytes", d.fetch_max_bytes, minimum=1000),
        fetch_allow_private=r.flag("fetch_allow_private", d.fetch_allow_private),
        fetch_allowed_hosts=r.strings("fetch_allowed_hosts", d.fetch_allowed_hosts),
        fetch_content_types=r.strings("fetch_content_types", d.fetch_content_types),
    )


_ACCESS_KEYS = ("admins", "allowed_chats", "allowed_users", "allow_all", "admin_roles")
# The adapters' own keys and their TOML types (checked here, so a wrong type names its key
# instead of failing inside an adapter); ranges are checked by each adapter's settings.
_PLATFORM_KEYS: dict[str, dict[str, type]] = {
    "telegram": {"token_env": str, "base_url": str, "base_file_url": str, "mode": str, "webhook_listen": str,
                 "webhook_port": int, "webhook_path": str, "webhook_url": str, "webhook_secret_env": str,
                 "stream": bool, "edit_interval_s": float, "album_wait_s": float},
    "discord": {"token_env": str, "api_base": str, "gateway_url": str, "edit_interval_s": float,
                "sync_commands": bool, "followup_window_s": float, "guild_ready_timeout_s": float,
                "ready_timeout_s": float, "cdn_url": str, "shard_ids": list, "shard_count": int},
    "slack": {"bot_token_env": str, "app_token_env": str, "signing_secret_env": str, "base_url": str,
              "http_host": str, "http_port": int, "http_path": str, "edit_interval_s": float,
              "reply_in_thread": bool, "files_url": str},
}


def _platform(r: TableReader, name: str) -> PlatformSection:
    r.known(*_ACCESS_KEYS, *_PLATFORM_KEYS[name], "enabled")
    access = AccessRules(
        admins=frozenset(r.strings("admins")),
        allowed_chats=frozenset(r.strings("allowed_chats")),
        allowed_users=frozenset(r.strings("allowed_users")),
        allow_all=r.flag("allow_all", False),
        admin_roles=frozenset(r.strings("admin_roles")),
    )
    kinds = {**_PLATFORM_KEYS[name], "enabled": bool}
    options = {k: r.get(k, kinds[k]) for k in r.table if k in kinds}
    for key, value in options.items():
        if key.endswith("_env") and (not isinstance(value, str) or not value.strip()):
            raise r.error(key, "must be the name of an environment variable")
    return PlatformSection(name, access, options)


def _channels(path: Path, table: Any, presets: Mapping[str, Preset]) -> dict[str, ChannelSettings]:
    top = TableReader(path, "channels", table)
    out: dict[str, ChannelSettings] = {}
    for key, section in top.table.items():
        platform, sep, chat = key.partition(":")
        label = f'channels."{key}"'
        if not sep or platform not in (*PLATFORMS, "terminal") or not chat:
            raise ConfigError(f"{path}: {label}: must be named \"platform:chat_id\" with platform one of "
                              f"{', '.join(PLATFORMS)}")
        r = TableReader(path, label, section)
        r.known("preset", "budget_usd_month", "budget_usd_day_per_user", "summary")
        preset = r.text("preset")
        if preset is not None and preset not in presets:
            raise r.error("preset", f"names preset '{preset}', which is not defined")
        summary = r.text("summary")
        if summary is not None and summary not in ("full", "compact", "off"):
            raise r.error("summary", f"must be full, compact or off, got {summary!r}")
        out[key] = ChannelSettings(
            preset=preset,
            budget_usd_month=r.number("budget_usd_month", minimum=0),
            budget_usd_day_per_user=r.number("budget_usd_day_per_user", minimum=0),
            summary=summary,
        )
    return out


def _attachments(r: TableReader) -> AttachmentSettings:
    d = AttachmentSettings()
    r.known(*AttachmentSettings.__slots__)
    allowed = r.strings("allowed_types", d.allowed_types)
    for entry in allowed:
        if entry not in ("image", "text", "audio") and "/" not in entry:
            raise r.error("allowed_types", f"{entry!r} is neither a kind (image, text, audio) nor a media type "
                          "such as \"image/png\" or \"text/*\"")
    return AttachmentSettings(
        max_bytes=r.integer("max_bytes", d.max_bytes),
        max_count=r.integer("max_count", d.max_count, minimum=0),
        text_max_chars=r.integer("text_max_chars", d.text_max_chars, minimum=100),
        keep_images_in_history=r.flag("keep_images_in_history", d.keep_images_in_history),
        allowed_types=allowed,
    )


def _transcription(r: TableReader, providers: Mapping[str, ProviderSettings]) -> TranscriptionSettings:
    r.known("provider", "model", "price_per_minute")
    provider = r.text("provider", required=True)
    if provider not in providers:
        raise r.error("provider", f"names provider '{provider}', which is not defined "
                      f"(defined: {', '.join(sorted(providers))})")
    if providers[provider].api != "openai":
        raise r.error("provider", f"provider '{provider}' must speak the openai wire "
                      "(an OpenAI-compatible /audio/transcriptions endpoint)")
    return TranscriptionSettings(
        provider=provider,
        model=r.text("model", "whisper-1", required=True),
        price_per_minute=r.number("price_per_minute", minimum=0),
    )


def _digest(r: TableReader, default_zone: str) -> DigestSettings:
    from apscheduler.triggers.cron import CronTrigger  # validation only; heavy-ish import

    r.known("cron", "timezone", "send_to")
    cron = r.text("cron", required=True)
    zone = _timezone(r, "timezone", default_zone)
    try:
        CronTrigger.from_crontab(cron, timezone=ZoneInfo(zone))
    except ValueError as error:
        raise r.error("cron", f"not a valid cron expression {cron!r}: {error}") from None
    send_to = r.strings("send_to")
    for target in send_to:
        platform, sep, chat = target.partition(":")
        if not sep or platform not in (*PLATFORMS, "terminal") or not chat:
            raise r.error("send_to", f"{target!r} must be \"platform:chat_id\" (telegram, discord, slack)")
    return DigestSettings(cron, zone, send_to)
