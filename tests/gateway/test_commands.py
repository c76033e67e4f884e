"""The /moa grammar (SPEC 4.2): examples, then properties against an independent model of it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commands import (
    Ask,
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
    parse_moa,
)

# --- examples ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "command"),
    [
        ("presets", ListPresets()),
        ("default", ShowDefault()),
        ("default deep", SetDefault("deep")),
        ("default DEEP", SetDefault("DEEP")),
        ("default gpt-4.1:fast_v2", SetDefault("gpt-4.1:fast_v2")),
        ("default reset", ResetDefault()),
        ("Default RESET", ResetDefault()),
        ("cost", ShowCost()),
        ("cost day", ShowCost("day")),
        ("cost week", ShowCost("week")),
        ("COST Month", ShowCost("month")),
        ("cost all", ShowCost("day", all_chats=True)),
        ("cost week all", ShowCost("week", all_chats=True)),
        ("budget", ShowBudget()),
        ("digest", SendDigest()),
        ("new", NewSession()),
        ("help", Help()),
        ("HELP", Help()),
        ("  \n presets \t\n", ListPresets()),
        ("default\nreset", ResetDefault()),
    ],
)
def test_subcommands(rest: str, command: Command) -> None:
    assert parse_moa(f"/moa {rest}") == command


@pytest.mark.parametrize(
    "rest",
    [
        "help me write a poem",
        "default to French please",
        "presets please",
        "new chat",
        "budget?",
        "cost yesterday",
        "cost all week",
        "cost week all please",
        "default a b",
        "default ünïcode",
        "default reset now",
        "digest this article",
        "what is the cost of a budget",
        "+",
        "+ deep what",
        "+bad/name what",
        "++deep what",
    ],
)
def test_everything_else_is_a_prompt(rest: str) -> None:
    assert parse_moa(f"/moa {rest}") == Ask(rest)


def test_prompts_keep_their_inner_text() -> None:
    assert parse_moa("/moa  line one\n\n  line two\t \n") == Ask("line one\n\n  line two")
    assert parse_moa("/moa\n```py\nprint(1)\n```") == Ask("```py\nprint(1)\n```")
    assert parse_moa("/moa <b>x</b> & *y*") == Ask("<b>x</b> & *y*")


def test_a_named_preset() -> None:
    assert parse_moa("/moa +deep what is x") == Ask("what is x", preset="deep")
    assert parse_moa("/moa +deep\nline one\n  line two ") == Ask("line one\n  line two", preset="deep")
    assert parse_moa("/moa +gpt-4.1:fast_v2 hi") == Ask("hi", preset="gpt-4.1:fast_v2")
    assert parse_moa("/moa +deep presets") == Ask("presets", preset="deep")
    for bare in ("/moa +deep", "/moa +deep  \n "):
        result = parse_moa(bare)
        assert isinstance(result, Help) and "+deep" in result.reason


def test_bare_moa_is_help() -> None:
    assert parse_moa("/moa") == Help()
    assert parse_moa("  /moa \n\t ") == Help()
    assert parse_moa("/MOA") == Help()


def test_command_word_and_what_follows_it() -> None:
    assert parse_moa("/MoA presets") == ListPresets()
    assert parse_moa("/moa\npresets") == ListPresets()
    assert parse_moa("/moa\tnew") == NewSession()
    assert parse_moa("/moa\u3000new") == NewSession()  # ideographic space
    for not_ours in (
        "/moan about it",
        "/moab",
        "/moa+deep x",
        "/moa@",
        "hello /moa",
        "moa help",
        "",
        "  ",
        "/help",
    ):
        assert parse_moa(not_ours) is None, not_ours


def test_telegram_bot_suffix() -> None:
    assert parse_moa("/moa@MoaBot new", bot_username="moabot") == NewSession()
    assert parse_moa("/MOA@MOABOT", bot_username="MoaBot") == Help()
    assert parse_moa("/moa@MoaBot what is x", bot_username="MoaBot") == Ask("what is x")
    assert parse_moa("/moa@OtherBot new", bot_username="MoaBot") is None
    assert parse_moa("/moa@MoaBotx new", bot_username="MoaBot") is None
    # Without a known name (Discord, Slack, terminal) a suffix cannot be told apart: accept it.
    assert parse_moa("/moa@AnyBot new") == NewSession()


def test_help_text_covers_every_command_and_preset() -> None:
    text = help_text(["default", "deep", "cheap"])
    for usage in (
        "/moa <",
        "/moa +<preset>",
        "/moa presets",
        "/moa default",
        "reset",
        "/moa cost",
        "day|week|month",
        "/moa budget",
        "/moa digest",
        "/moa new",
        "/moa help",
    ):
        assert usage in text, usage
    assert "default, deep, cheap" in text
    assert "none" in help_text([])
    assert "**" not in text and "`" not in text  # plain text: no platform markup


# --- properties --------------------------------------------------------------------------

PRESET = re.compile(r"[A-Za-z0-9_.:-]+")
PERIODS = ("day", "week", "month")


def model(rest: str) -> Command:
    """What SPEC 4.2 says `/moa <rest>` means, written independently of the parser."""
    text = rest.strip()
    if not text:
        return Help()
    words = text.split()
    low = [w.lower() for w in words]
    single = {"presets": ListPresets(), "budget": ShowBudget(), "digest": SendDigest(), "new": NewSession()}
    if len(low) == 1 and low[0] in single:
        return single[low[0]]
    if low == ["help"]:
        return Help()
    if low == ["default"]:
        return ShowDefault()
    if low == ["default", "reset"]:
        return ResetDefault()
    if len(low) == 2 and low[0] == "default" and PRESET.fullmatch(words[1]):
        return SetDefault(words[1])
    if low == ["cost"]:
        return ShowCost()
    if low == ["cost", "all"]:
        return ShowCost(all_chats=True)
    if low[0] == "cost" and len(low) in (2, 3) and low[1] in PERIODS and low[2:] in ([], ["all"]):
        return ShowCost(low[1], all_chats=len(low) == 3)  # type: ignore[arg-type]
    named = re.fullmatch(r"\+([A-Za-z0-9_.:-]+)(?:\s+(.*))?", text, re.DOTALL)
    if named:
        prompt = (named[2] or "").strip()
        return Ask(prompt, named[1]) if prompt else Help(f"+{named[1]}")
    return Ask(text)


def same(result: Command | None, expected: Command) -> bool:
    if isinstance(expected, Help) and expected.reason:
        return isinstance(result, Help) and expected.reason in result.reason
    return result == expected


WORDS = [
    "presets",
    "default",
    "reset",
    "cost",
    "day",
    "week",
    "month",
    "all",
    "budget",
    "digest",
    "new",
    "help",
    "+deep",
    "+a.b:c-d_e",
    "deep",
    "me",
    "ünï",
    "+",
    "😀",
    "x/y",
]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\u2028", "\x1c"]


def random_case(word: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if flip else c for c, flip in zip(word, flips + [False] * len(word), strict=False)
    )


grammar_like = st.lists(
    st.tuples(st.sampled_from(WORDS), st.lists(st.booleans(), max_size=8), st.sampled_from(SPACES)),
    min_size=0,
    max_size=4,
).map(lambda parts: "".join(random_case(w, flips) + space for w, flips, space in parts))
rests = st.one_of(grammar_like, st.text(), st.tuples(grammar_like, st.text(max_size=10)).map("".join))


@settings(max_examples=500)
@given(space=st.sampled_from(SPACES), rest=rests)
def test_parse_agrees_with_the_model(space: str, rest: str) -> None:
    assert same(parse_moa(f"/moa{space}{rest}"), model(rest))


@given(
    lead=st.sampled_from(["", " ", "\n "]), name=st.sampled_from(["MoaBot", "moabot", "MOABOT"]), rest=rests
)
def test_the_bot_suffix_changes_nothing_but_who_is_addressed(lead: str, name: str, rest: str) -> None:
    assert same(parse_moa(f"{lead}/moa@{name} {rest}", bot_username="MoaBot"), model(rest))
    assert parse_moa(f"{lead}/moa@Other{name} {rest}", bot_username="MoaBot") is None


@given(text=st.text(), bot=st.none() | st.text(max_size=10))
def test_never_raises_on_arbitrary_text(text: str, bot: str | None) -> None:
    result = parse_moa(text, bot_username=bot)
    if not re.match(r"\s*/moa", text, re.IGNORECASE):
        assert result is None
    for prefixed in (f"/moa {text}", f"/moa{text}"):
        parse_moa(prefixed, bot_username=bot)


@given(rest=st.text().filter(lambda t: t.strip() and not t.strip().startswith("+")))
def test_a_rest_that_is_not_exactly_a_subcommand_is_asked_verbatim(rest: str) -> None:
    result = parse_moa(f"/moa {rest}")
    if not isinstance(model(rest), Ask):
        return  # hypothesis rarely hits an exact subcommand by chance
    assert result == Ask(rest.strip())


@given(
    preset=st.from_regex(PRESET, fullmatch=True),
    prompt=st.text().filter(str.strip),
    space=st.sampled_from(SPACES),
)
def test_a_named_preset_keeps_its_prompt(preset: str, prompt: str, space: str) -> None:
    assert parse_moa(f"/moa +{preset}{space}{prompt}") == Ask(prompt.strip(), preset)
