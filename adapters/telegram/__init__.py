"""Telegram adapter (python-telegram-bot 22): see adapter.py for the delivery rules."""

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.settings import TelegramSettings

__all__ = ["TelegramAdapter", "TelegramSettings"]
