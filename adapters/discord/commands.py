"""The `/moa` application command group (native slash commands with preset autocomplete).

Every subcommand does the same thing: hand the interaction to `on_command`, which defers it and
turns it into the `/moa ...` text grammar (see `normalize.command_text`). The parameters below
only declare the options Discord shows; their values are read from the raw interaction data.
"""

# No `from __future__ import annotations`: discord.py reads these annotations to build options.
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import discord
from discord import app_commands

CommandHandler = Callable[[discord.Interaction], Awaitable[None]]

_MAX_CHOICES = 25


def preset_choices(presets: Sequence[str], current: str, *, extra: Sequence[str] = ()) -> list[str]:
    """Preset names matching what the member typed so far, best matches first (at most 25)."""
    needle = current.strip().lower()
    names = list(dict.fromkeys([*presets, *extra]))
    starts = [n for n in names if n.lower().startswith(needle)]
    contains = [n for n in names if needle in n.lower() and n not in starts]
    return (starts + contains)[:_MAX_CHOICES]


def build_moa_group(presets: Sequence[str], on_command: CommandHandler) -> app_commands.Group:
    moa = app_commands.Group(name="moa", description="Ask several AI models at once and get one answer")

    @moa.command(name="ask", description="Ask a question (reference models advise, one model answers)")
    @app_commands.describe(
        prompt="Your question (may be left out when an attachment is the question)",
        preset="Preset to use instead of this channel's default",
        attachment="An image, text file or audio the question is about",
    )
    async def ask(
        interaction: discord.Interaction,
        prompt: str | None = None,
        preset: str | None = None,
        attachment: discord.Attachment | None = None,
    ) -> None:
        await on_command(interaction)

    @ask.autocomplete("preset")
    async def ask_preset(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=n, value=n) for n in preset_choices(presets, current)]

    @moa.command(name="presets", description="List the presets, marking this channel's default")
    async def list_presets(interaction: discord.Interaction) -> None:
        await on_command(interaction)

    @moa.command(name="default", description="Show this channel's default preset, or set it (admins)")
    @app_commands.describe(preset="Preset to make the default here, or 'reset'")
    async def default(interaction: discord.Interaction, preset: str | None = None) -> None:
        await on_command(interaction)

    @default.autocomplete("preset")
    async def default_preset(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = preset_choices(presets, current, extra=("reset",))
        return [app_commands.Choice(name=n, value=n) for n in names]

    @moa.command(name="cost", description="Spend of this channel and of you")
    @app_commands.describe(period="Period to report (default: day)")
    async def cost(
        interaction: discord.Interaction, period: Literal["day", "week", "month"] | None = None
    ) -> None:
        await on_command(interaction)

    @moa.command(name="budget", description="Budgets and what is left of them")
    async def budget(interaction: discord.Interaction) -> None:
        await on_command(interaction)

    @moa.command(name="digest", description="The cost digest, now, in this channel (admins)")
    async def digest(interaction: discord.Interaction) -> None:
        await on_command(interaction)

    @moa.command(name="new", description="Start a new conversation here")
    async def new(interaction: discord.Interaction) -> None:
        await on_command(interaction)

    @moa.command(name="help", description="How to use the bot")
    async def help_(interaction: discord.Interaction) -> None:
        await on_command(interaction)

    return moa
