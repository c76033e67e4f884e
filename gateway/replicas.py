"""What one gateway replica must do alone when several share a PostgreSQL database.

Most of it lives in storage (unique keys, leases, digest claims). What is left is intake that a
platform allows only once per bot: Telegram hands each update to one `getUpdates` caller, so only
the replica holding the advisory lock `moa-gateway:telegram-polling` polls; the others start
Telegram send-only (they still deliver answers, notices and digests) and say so in the log.
Webhook mode needs no lock: every replica serves the webhook behind the proxy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import App

log = logging.getLogger(__name__)

TELEGRAM_POLLING_LOCK = "moa-gateway:telegram-polling"


async def claim_telegram_polling(app: App) -> bool:
    """Before the adapters start: True when this replica polls Telegram (or needs no lock)."""
    adapter = app.gateway.adapters.get("telegram")
    if adapter is None or getattr(adapter, "intake_mode", None) != "polling":
        return True
    lock = await app.store.try_lock(TELEGRAM_POLLING_LOCK)
    if lock is None:
        log.warning(
            "telegram: another replica polls this bot (it holds the database lock %r); this replica "
            "does not poll and only sends. To receive Telegram on every replica, set [telegram] "
            "mode = \"webhook\".", TELEGRAM_POLLING_LOCK)
        adapter.without_intake()  # type: ignore[attr-defined]
        return False
    app.extras.append(lock)  # released when the app closes
    return True
