"""The /moa command grammar (SPEC 4.2), parsed by one pure function.

A subcommand applies only when the whole text after `/moa` matches it exactly; anything else is a
prompt, so `/moa help me write a poem` asks a question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Period = Literal["day", "week", "month"]
# A str holds a surrogate code point only when it is unpaired (half of a cut emoji, or a byte
# that was not UTF-8 in a command line): not valid Unicode, so it can be neither stored nor
# sent to a model. Such a prompt is refused with a clear message, never run.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Ask:
    prompt: str
    preset: str | None = None


@dataclass(frozen=True, slots=True)
class ListPresets:
    pass


@dataclass(frozen=True, slots=True)
class ShowDefault:
    pass


@dataclass(frozen=True, slots=True)
class SetDefault:
    preset: str


@dataclass(frozen=True, slots=True)
class ResetDefault:
    pass


@dataclass(frozen=True, slots=True)
class ShowCost:
    period: Period = "day"
    all_chats: bool = False


@dataclass(frozen=True, slots=True)
class ShowBudget:
    pass


@dataclass(frozen=True, slots=True)
class SendDigest:
    pass


@dataclass(frozen=True, slots=True)
class NewSession:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    reason: str = ""


Command = Ask | ListPresets | ShowDefault | SetDefault | ResetDefault | ShowCost | ShowBudget | SendDigest | NewSession | Help

# "/moa" or "/moa@BotName", then whitespace or the end.
_HEAD = re.compile(r"^\s*/moa(?:@(?P<bot>[A-Za-z0-9_]+))?(?=\s|$)", re.IGNORECASE)
PRESET_NAME = r"[A-Za-z0-9_.:-]+"  # what `+name` may be (also read by the gateway's file captions)
_PRESET = re.compile(PRESET_NAME)
_PERIODS = ("day", "week", "month")


def parse_moa(text: str, bot_username: str | None = None) -> Command | None:
    """The command in `text`, or None when it is not a /moa command (or is for another bot)."""
    head = _HEAD.match(text)
    if head is None:
        return None
    bot = head.group("bot")
    # Adapters strip "@ThisBot"; one still present is only ours when we know our name.
    if bot is not None and bot_username is not None and bot.lower() != bot_username.lower():
        return None
    rest = text[head.end():].strip()
    if not rest:
        return Help()
    words = rest.split()
    keyword = words[0].lower()
    exact = {"presets": ListPresets(), "budget": ShowBudget(), "digest": SendDigest(), "new": NewSession(),
             "help": Help()}
    if len(words) == 1 and keyword in exact:
        return exact[keyword]
    if keyword == "default":
        if len(words) == 1:
            return ShowDefault()
        if len(words) == 2 and words[1].lower() == "reset":
            return ResetDefault()
        if len(words) == 2 and _PRESET.fullmatch(words[1]):
            return SetDefault(words[1])
    if keyword == "cost":
        tail = [w.lower() for w in words[1:]]
        if not tail:
            return ShowCost()
        if tail == ["all"]:
            return ShowCost(all_chats=True)
        if len(tail) in (1, 2) and tail[0] in _PERIODS and tail[1:] in ([], ["all"]):
            return ShowCost(tail[0], all_chats=len(tail) == 2)  # type: ignore[arg-type]
    if rest.startswith("+"):
        name, prompt = _split_preset(rest[1:])
        if name and _PRESET.fullmatch(name):
            if not prompt.strip():
                return Help(f"Add a question after +{name}, e.g. /moa +{name} what is a mixture of agents?")
            return Ask(prompt.strip(), name)
    return Ask(rest)


def _split_preset(text: str) -> tuple[str, str]:
    match = re.match(r"(\S+)(\s+(.*))?\Z", text, re.DOTALL)
    if not match:
        return "", ""
    return match.group(1), match.group(3) or ""


def help_text(presets: Sequence[str]) -> str:
    names = ", ".join(presets) or "none configured"
    return "\n".join([
        "Mixture-of-Agents: several models advise, one answers.",
        "/moa <question> — ask with this chat's default preset",
        "/moa +<preset> <question> — ask with a named preset",
        "/moa presets — list presets",
        "/moa default — show this chat's default; /moa default <preset> | reset (admins)",
        "/moa cost [day|week|month] — spend of this chat and yours (admins: add 'all')",
        "/moa budget — budgets and what is left",
        "/moa digest — the cost digest now (admins)",
        "/moa new — start a new conversation here",
        "/moa help — this help",
        f"Presets: {names}",
    ])
