"""Telegram adapter (python-telegram-bot 22): see adapter.py for the delivery rules.

`settings` holds the `[telegram]` section, `normalize` reads updates into `InboundMessage`s,
`render` and `markup` turn outbound values into HTML parts, `messages` sends, edits and drafts
them, `flood` runs each Bot API call under per-chat flood control, and `adapter` runs the
connection and reads what comes in.
"""

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.settings import TelegramSettings

__all__ = ["TelegramAdapter", "TelegramSettings"]
