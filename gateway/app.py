"""App wiring: adapters from config, the gateway, the digest scheduler, and signal handling.

The only module that knows every part; `moa-gateway run` and `moa-gateway chat` go through here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.contract import Adapter
from gateway.attachments import AttachmentIntake
from gateway.config import Config, ConfigError, PlatformSection
from gateway.costs.commands import CostCommands
from gateway.costs.delivery import start_digest
from gateway.replicas import claim_telegram_polling
from gateway.runtime import EngineRuntime, build_engine, build_transcriber
from gateway.service import Gateway
from gateway.storage import Storage, open_store
from moa_core.clock import Clock, SystemClock

log = logging.getLogger(__name__)


class NothingToRun(ConfigError):
    """No platform is configured, or its secrets are missing."""


def _secret(section: PlatformSection, key: str, env: Mapping[str, str], config: Config, *, required: bool) -> str | None:
    name = section.options.get(key)
    if name is None:
        if required:
            raise ConfigError(f"{config.path}: {section.platform}.{key}: is required (the NAME of the variable "
                              "holding the secret)")
        return None
    value = env.get(name, "").strip()
    if not value and required:
        raise NothingToRun(f"environment variable {name} is not set ({section.platform}.{key} in {config.path})")
    return value or None


def _options(section: PlatformSection) -> dict[str, Any]:
    """The section's adapter options, named as the adapter's settings fields (the config names
    them, type-checked, in gateway.config); `*_env` keys are read as secrets, not passed on."""
    return {key: value for key, value in section.options.items() if key != "enabled" and not key.endswith("_env")}


def build_adapters(config: Config, env: Mapping[str, str]) -> dict[str, Adapter]:
    """One adapter per configured (and not disabled) platform section."""
    presets = tuple(config.engine.presets)
    adapters: dict[str, Adapter] = {}
    for name, section in config.platforms.items():
        if section.options.get("enabled") is False:
            continue
        try:
            adapters[name] = _build_adapter(name, section, config, env, presets)
        except ValueError as error:  # the adapter's settings refused a value; the message names it
            raise ConfigError(f"{config.path}: [{name}]: {error}") from None
    return adapters


def _build_adapter(name: str, section: PlatformSection, config: Config, env: Mapping[str, str],
                   presets: tuple[str, ...]) -> Adapter:
    if name == "telegram":
        from adapters.telegram.adapter import TelegramAdapter
        from adapters.telegram.settings import TelegramSettings

        settings = TelegramSettings(
            token=_secret(section, "token_env", env, config, required=True),
            webhook_secret=_secret(section, "webhook_secret_env", env, config, required=False),
            **_options(section),
        )
        return TelegramAdapter(settings, presets=presets)
    if name == "discord":
        from adapters.discord.adapter import DiscordAdapter
        from adapters.discord.settings import DiscordSettings

        settings = DiscordSettings(
            token=_secret(section, "token_env", env, config, required=True),
            **_options(section),
        )
        return DiscordAdapter(settings, presets=presets)
    if name == "slack":
        from adapters.slack.adapter import SlackAdapter
        from adapters.slack.settings import SlackSettings

        app_token = _secret(section, "app_token_env", env, config, required=False)
        signing = _secret(section, "signing_secret_env", env, config, required=False)
        if not app_token and not signing:
            raise NothingToRun(
                f"slack needs Socket Mode or HTTP mode: set app_token_env (and that variable) or "
                f"signing_secret_env (and that variable) in [slack] of {config.path}"
            )
        settings = SlackSettings(
            bot_token=_secret(section, "bot_token_env", env, config, required=True),
            app_token=app_token,
            signing_secret=signing,
            **_options(section),
        )
        return SlackAdapter(settings, presets=presets)
    raise ConfigError(f"{config.path}: [{name}]: no adapter for this platform")


NOTHING_CONFIGURED = (
    "no platform is configured. Add at least one of these sections to {path} and set its variables:\n"
    "  [telegram] token_env = \"TELEGRAM_BOT_TOKEN\"   (then export TELEGRAM_BOT_TOKEN=...)\n"
    "  [discord]  token_env = \"DISCORD_BOT_TOKEN\"    (then export DISCORD_BOT_TOKEN=...)\n"
    "  [slack]    bot_token_env = \"SLACK_BOT_TOKEN\" and app_token_env = \"SLACK_APP_TOKEN\"\n"
    "             (then export SLACK_BOT_TOKEN=... SLACK_APP_TOKEN=...)\n"
    "Or try the bot in this terminal: moa-gateway chat --config {path}"
)


@dataclass(slots=True)
class App:
    gateway: Gateway
    store: Storage
    runtime: EngineRuntime
    extras: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        for extra in self.extras:
            try:
                stop = getattr(extra, "stop", None)
                if stop:
                    result = stop()
                    if asyncio.iscoroutine(result):
                        await result
            except Exception:
                log.warning("stopping %r failed", extra, exc_info=True)
        await self.runtime.aclose()
        await self.store.close()


async def build_app(config: Config, adapters: Mapping[str, Adapter], *, env: Mapping[str, str],
                    clock: Clock | None = None) -> App:
    clock = clock or SystemClock()
    store = await open_store(config.gateway.database, clock, password_env=config.gateway.database_password_env,
                             env=env, lease_s=config.gateway.lease_s)
    runtime = build_engine(config, env=env, clock=clock)
    await runtime.start()  # MCP tool servers: up (or retrying) before the first turn
    hooks = cost_hooks(config)
    intake = AttachmentIntake(config.attachments, build_transcriber(config, runtime.http, env=env, clock=clock))
    gateway = Gateway(config, store, runtime.engine, adapters, clock, attachments=intake, **hooks)
    return App(gateway, store, runtime)


def cost_hooks(config: Config) -> dict[str, Any]:
    """`/moa cost|budget|digest` and the budget check before every turn."""
    commands = CostCommands(config)
    return {"cost_commands": commands, "budget_check": commands.budget_check}


async def serve(config: Config, adapters: Mapping[str, Adapter], *, env: Mapping[str, str],
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    app = await build_app(config, adapters, env=env)
    try:
        await claim_telegram_polling(app)  # several replicas: only one may poll Telegram
        try:
            await app.gateway.start()
        except BaseException:
            # One platform cannot start (PlatformUnavailable: unreachable, token refused): the
            # ones already started are stopped before the error reaches the command line.
            await app.gateway.shutdown(grace_s=0)
            raise
        if config.digest is not None:
            app.extras.append(await start_digest(config, app.gateway))
        log.info("moa-gateway running: %s", ", ".join(adapters))
        await stop.wait()
        log.info("shutting down: no new turns; waiting up to %.0f s for running ones",
                 config.gateway.shutdown_grace_s)
        await app.gateway.shutdown()
    finally:
        await app.close()
