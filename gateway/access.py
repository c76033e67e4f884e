"""Who may use the bot where, and who is an admin: pure rules over config and a message."""

from __future__ import annotations

from adapters.contract import InboundMessage
from gateway.config import AccessRules


def is_admin(rules: AccessRules, message: InboundMessage) -> bool:
    if message.platform == "terminal":
        return True  # the person at the terminal runs the process
    return message.user_id in rules.admins or bool(rules.admin_roles.intersection(message.user_roles))


def is_allowed(rules: AccessRules, message: InboundMessage) -> bool:
    """Allowed chats or users, or allow_all; admins are always allowed."""
    if message.platform == "terminal" or rules.allow_all or is_admin(rules, message):
        return True
    return message.chat_id in rules.allowed_chats or message.user_id in rules.allowed_users


def is_trigger(message: InboundMessage, is_command: bool) -> bool:
    """In DMs every message is a turn; in groups only /moa, a mention or a reply to the bot."""
    return message.is_dm or is_command or message.mentions_bot or message.replies_to_bot
