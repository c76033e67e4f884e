"""The /moa subcommands other than a question, each answered in its chat: help, presets, the
chat's default preset (admins change it), a new conversation, and the cost, budget and digest
commands (answered by the hooks gateway.costs provides, see app.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from adapters.contract import InboundMessage
from gateway.commands import (
    Command,
    Help,
    ListPresets,
    NewSession,
    ResetDefault,
    SendDigest,
    SetDefault,
    ShowBudget,
    ShowCost,
    ShowDefault,
    help_text,
)
from gateway.lanes import chat_ref, session_key

if TYPE_CHECKING:
    from gateway.service import CommandHook, Gateway


def unknown_preset(name: str, presets: Iterable[str]) -> str:
    return f"Unknown preset '{name}'. Presets: {', '.join(presets)}."


async def answer_command(gateway: Gateway, message: InboundMessage, command: Command, admin: bool,
                         cost_commands: CommandHook | None) -> None:
    """Answer `command` (not an `Ask`) from `message`'s chat; `admin`: its sender is one here."""
    chat = chat_ref(message)
    presets = gateway.config.engine.presets
    if isinstance(command, Help):
        text = help_text(list(presets))
        await gateway.notify(chat, f"{command.reason}\n\n{text}" if command.reason else text)
    elif isinstance(command, ListPresets):
        current = await gateway.channel_default(message.platform, message.chat_id)
        lines = []
        for name, preset in presets.items():
            refs = ", ".join(s.label for s in preset.references) or "none"
            mark = " ← default here" if name == current else ""
            lines.append(f"• {name}: {refs} → {preset.aggregator.label}{mark}")
        await gateway.notify(chat, "Presets:\n" + "\n".join(lines))
    elif isinstance(command, ShowDefault):
        current = await gateway.channel_default(message.platform, message.chat_id)
        await gateway.notify(chat, f"Default preset here: {current}.")
    elif isinstance(command, (SetDefault, ResetDefault)):
        if not admin:
            await gateway.notify(chat, "Only admins can change this chat's default preset.", "warning")
            return
        if isinstance(command, SetDefault):
            if command.preset not in presets:
                await gateway.notify(chat, unknown_preset(command.preset, presets), "error")
                return
            await gateway.store.set_channel_preset(message.platform, message.chat_id, command.preset, message.user_id)
            await gateway.notify(chat, f"Default preset here is now {command.preset}.")
        else:
            await gateway.store.set_channel_preset(message.platform, message.chat_id, None, message.user_id)
            current = await gateway.channel_default(message.platform, message.chat_id)
            await gateway.notify(chat, f"Default preset reset; it is now {current}.")
    elif isinstance(command, NewSession):
        await gateway.store.new_session(message.platform, message.chat_id, message.thread_id)
        gateway.engine.forget_session(session_key(message))
        await gateway.notify(chat, "Started a new conversation here.")
    elif isinstance(command, (ShowCost, ShowBudget, SendDigest)):
        needs_admin = isinstance(command, SendDigest) or (isinstance(command, ShowCost) and command.all_chats)
        if needs_admin and not admin:
            await gateway.notify(chat, "Only admins can do that.", "warning")
            return
        if cost_commands is None:
            await gateway.notify(chat, "Cost reports are not available in this build.", "warning")
            return
        text = await cost_commands(gateway, message, command)
        if text:
            await gateway.notify(chat, text)
