"""The /moa grammar: subcommands only on an exact match, everything else is a prompt."""

from hypothesis import given
from hypothesis import strategies as st

from gateway.commands import (
    Ask,
    Help,
    ListPresets,
    NewSession,
    ResetDefault,
    SendDigest,
    SetDefault,
    ShowBudget,
    ShowCost,
    ShowDefault,
    parse_moa,
)

SUBCOMMANDS = {
    "presets": ListPresets(), "default": ShowDefault(), "default deep": SetDefault("deep"),
    "default reset": ResetDefault(), "cost": ShowCost(), "cost week": ShowCost("week"),
    "cost month all": ShowCost("month", True), "cost all": ShowCost("day", True), "budget": ShowBudget(),
    "digest": SendDigest(), "new": NewSession(), "help": Help(),
}


def test_spec_examples():
    for rest, command in SUBCOMMANDS.items():
        assert parse_moa(f"/moa {rest}") == command
        assert parse_moa(f"  /MOA   {rest.upper() if rest != 'default deep' else rest}  ") == command
    assert parse_moa("/moa help me write a poem") == Ask("help me write a poem")
    assert parse_moa("/moa default to French please") == Ask("default to French please")
    assert parse_moa("/moa +deep what is x") == Ask("what is x", "deep")
    assert isinstance(parse_moa("/moa +deep"), Help) and parse_moa("/moa +deep").reason
    assert parse_moa("/moa") == Help()
    assert parse_moa("/moa@MyBot new", bot_username="mybot") == NewSession()
    assert parse_moa("/moa@OtherBot new", bot_username="mybot") is None
    assert parse_moa("/moan about it") is None
    assert parse_moa("hello /moa") is None
    assert parse_moa("/moa line one\n\n  line two  ") == Ask("line one\n\n  line two")


@given(st.text())
def test_never_raises_and_non_commands_are_none(text):
    result = parse_moa(text)
    if not text.lstrip().lower().startswith("/moa"):
        assert result is None


@given(st.text(min_size=1).filter(lambda t: t.strip() and not t.strip().startswith("+")))
def test_anything_that_is_not_exactly_a_subcommand_is_a_prompt(rest):
    normalized = " ".join(rest.split()).lower()
    result = parse_moa(f"/moa {rest}")
    if normalized in SUBCOMMANDS or normalized.startswith(("default ", "cost")) and not isinstance(result, Ask):
        return
    assert result == Ask(rest.strip())
