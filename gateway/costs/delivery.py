"""Getting the admin cost digest to people: scheduled sends to `[digest] send_to`, `/moa digest`
in a chat, and the `moa-gateway costs` terminal table."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from adapters.contract import ChatRef, FileOut, InboundMessage, Notice
from adapters.figures import format_total
from gateway.config import Config
from gateway.costs.digest import Digest, digest_chart_png, render_digest_text
from gateway.costs.reports import cost_table
from gateway.costs.schedule import DigestScheduler, digest_destinations
from gateway.service import chat_ref
from gateway.storage import open_store
from moa_core.clock import SystemClock

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)


def _scheduler(config: Config, gateway: Gateway, send) -> DigestScheduler:
    digest = config.digest
    cron, zone = (digest.cron, digest.timezone) if digest else ("0 9 * * 1", config.gateway.timezone)
    return DigestScheduler(gateway.store, gateway.clock, cron, zone, send, budgets=config.budgets,
                           channels=config.channels)


async def _post(gateway: Gateway, chat: ChatRef, digest: Digest, png: bytes) -> None:
    adapter = gateway.adapters[chat.platform]
    await adapter.send(chat, Notice(render_digest_text(digest)))
    await adapter.send(chat, FileOut(f"moa-spend-{digest.end:%Y-%m-%d}.png", png,
                                     caption="Spend per day by model"))


async def start_digest(config: Config, gateway: Gateway) -> DigestScheduler:
    """Schedule the digest for every `send_to` destination whose platform is running."""
    assert config.digest is not None
    destinations = [ChatRef(platform, chat) for platform, chat in digest_destinations(config.digest.send_to)]

    async def send(digest: Digest, png: bytes) -> None:
        failures = []
        for chat in destinations:
            if chat.platform not in gateway.adapters:
                log.warning("digest destination %s:%s skipped: platform not running", chat.platform, chat.chat_id)
                continue
            try:
                await _post(gateway, chat, digest, png)
            except Exception as error:  # one bad destination must not stop the others
                log.exception("digest to %s:%s failed", chat.platform, chat.chat_id)
                failures.append(error)
        if failures and len(failures) == len(destinations):
            raise failures[0]  # nothing went out: the period stays owed

    scheduler = _scheduler(config, gateway, send)
    await scheduler.start()
    return scheduler


async def send_digest_now(gateway: Gateway, config: Config, message: InboundMessage) -> None:
    """`/moa digest`: the current period so far, in the asking chat; nothing is recorded."""
    scheduler = _scheduler(config, gateway, send=None)
    digest, png = await scheduler.digest_now()
    await _post(gateway, chat_ref(message), digest, png)


async def print_costs(config: Config, *, since: str | None, by: str, out=sys.stdout) -> int:
    tz = ZoneInfo(config.gateway.timezone)
    clock = SystemClock()
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            print(f"error: --since {since!r} is not a date like 2026-11-01", file=sys.stderr)
            return 2
        start = start.replace(tzinfo=tz) if start.tzinfo is None else start
    else:
        start = clock.now().astimezone(tz) - timedelta(days=30)
    store = await open_store(config.gateway.database, clock, password_env=config.gateway.database_password_env,
                             env=os.environ)
    try:
        rows = await cost_table(store, start, by)  # type: ignore[arg-type]
    finally:
        await store.close()
    names = [f"{row.label or row.key}{f' ({row.role})' if row.role else ''}" for row in rows]
    width = max([len(by), len("total"), *map(len, names)])
    # A row's dollars are its priced calls' sum plus how many were unpriced, never a bare $0.00.
    dollars = [format_total(row.priced_usd, row.unknown_calls) for row in rows]
    priced = [row.dollars for row in rows if row.priced_usd is not None]
    total = format_total(sum(priced) if priced else None, sum(row.unknown_calls for row in rows))
    money = max([len("dollars"), len(total), *map(len, dollars)])
    print(f"spend since {start:%Y-%m-%d %H:%M %Z}, by {by}", file=out)
    header = f"{by:<{width}} {'dollars':>{money}} {'turns':>7} {'calls':>7} {'unpriced':>9} {'tokens':>12}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for name, text, row in zip(names, dollars, rows, strict=True):
        print(f"{name:<{width}} {text:>{money}} {row.turns:>7} {row.calls:>7} "
              f"{row.unknown_calls:>9} {row.tokens.total:>12,}", file=out)
    print(f"{'total':<{width}} {total:>{money}}", file=out)
    return 0


__all__ = ["digest_chart_png", "print_costs", "send_digest_now", "start_digest"]
