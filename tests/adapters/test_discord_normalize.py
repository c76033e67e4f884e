"""Discord inbound normalisation on recorded-shape gateway payloads (no network)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.discord.commands import preset_choices
from adapters.discord.normalize import (
    InteractionHandle,
    command_text,
    interaction_to_inbound,
    message_to_inbound,
    snowflake_time,
)

BOT = "900000000000000001"
BOT_ROLE = "910000000000000001"

# A MESSAGE_CREATE dispatch `d` as Discord sends it for a member's message in a guild channel.
GUILD_MESSAGE: dict[str, Any] = {
    "type": 0,
    "tts": False,
    "timestamp": "2025-03-04T10:20:30.123000+00:00",
    "pinned": False,
    "nonce": "1346471098811924480",
    "mentions": [
        {
            "username": "MoA",
            "public_flags": 0,
            "id": BOT,
            "global_name": None,
            "discriminator": "0",
            "bot": True,
            "avatar": None,
        }
    ],
    "mention_roles": [],
    "mention_everyone": False,
    "member": {
        "roles": ["1200000000000000001", "1200000000000000002"],
        "premium_since": None,
        "pending": False,
        "nick": "Ally",
        "mute": False,
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "flags": 0,
        "deaf": False,
        "avatar": None,
    },
    "id": "1346471099944386560",
    "flags": 0,
    "embeds": [],
    "edited_timestamp": None,
    "content": f"<@{BOT}> what is a monad?",
    "components": [],
    "channel_type": 0,
    "channel_id": "1300000000000000001",
    "author": {
        "username": "alice",
        "public_flags": 0,
        "id": "1100000000000000001",
        "global_name": "Alice",
        "discriminator": "0",
        "avatar": None,
    },
    "attachments": [],
    "guild_id": "1000000000000000001",
}

# An INTERACTION_CREATE `d` for `/moa ask prompt:... preset:deep` in a guild text channel.
ASK_INTERACTION: dict[str, Any] = {
    "version": 1,
    "type": 2,
    "token": "aW50ZXJhY3Rpb246MTM0NjQ3MTA5OTk0NDM4NjU2MDpzZWNyZXQ",
    "member": {
        "user": {
            "username": "alice",
            "id": "1100000000000000001",
            "global_name": "Alice",
            "discriminator": "0",
            "avatar": None,
        },
        "roles": ["1200000000000000001"],
        "permissions": "2248473465835073",
        "nick": None,
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "flags": 0,
        "deaf": False,
        "mute": False,
    },
    "locale": "en-US",
    "id": "1346471200000000000",
    "guild_locale": "en-US",
    "guild_id": "1000000000000000001",
    "entitlements": [],
    "context": 0,
    "data": {
        "type": 1,
        "options": [
            {
                "type": 1,
                "options": [
                    {"value": "Explain monads\nwith an example", "type": 3, "name": "prompt"},
                    {"value": "deep", "type": 3, "name": "preset"},
                ],
                "name": "ask",
            }
        ],
        "name": "moa",
        "id": "1340000000000000001",
    },
    "channel_id": "1300000000000000001",
    "channel": {"type": 0, "id": "1300000000000000001", "guild_id": "1000000000000000001", "name": "general"},
    "authorizing_integration_owners": {"0": "1000000000000000001"},
    "attachment_size_limit": 10485760,
    "app_permissions": "2248473465835073",
    "application_id": BOT,
}


def message(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GUILD_MESSAGE)
    data.update(changes)
    return data


def interaction(subcommand: str, options: dict[str, str] | None = None, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(ASK_INTERACTION)
    data["data"]["options"] = [
        {
            "type": 1,
            "name": subcommand,
            "options": [{"type": 3, "name": k, "value": v} for k, v in (options or {}).items()],
        }
    ]
    data.update(changes)
    return data


# -- messages ------------------------------------------------------------------------------------


def test_leading_mention_is_stripped_and_the_message_normalised() -> None:
    inbound = message_to_inbound(GUILD_MESSAGE, bot_user_id=BOT, bot_name="MoA")
    assert inbound is not None
    assert inbound.platform == "discord"
    assert inbound.text == "what is a monad?"
    assert inbound.mentions_bot and not inbound.is_dm and not inbound.replies_to_bot
    assert (inbound.chat_id, inbound.thread_id) == ("1300000000000000001", None)
    assert (inbound.user_id, inbound.user_name) == ("1100000000000000001", "Ally")
    assert inbound.message_id == inbound.event_id == "1346471099944386560"
    assert inbound.user_roles == ("1200000000000000001", "1200000000000000002")
    assert inbound.sent_at == datetime(2025, 3, 4, 10, 20, 30, 123000, tzinfo=UTC)
    assert inbound.sent_at.tzinfo is UTC
    assert not inbound.is_command


def test_nickname_mention_and_punctuation_after_it() -> None:
    inbound = message_to_inbound(message(content=f"  <@!{BOT}>, hi"), bot_user_id=BOT)
    assert inbound is not None and inbound.text == "hi" and inbound.mentions_bot


def test_mention_of_the_bots_role_counts_as_a_mention() -> None:
    data = message(content=f"<@&{BOT_ROLE}> hello", mentions=[], mention_roles=[BOT_ROLE])
    inbound = message_to_inbound(data, bot_user_id=BOT, bot_role_ids=(BOT_ROLE,))
    assert inbound is not None and inbound.mentions_bot and inbound.text == "hello"


def test_mention_inside_the_sentence_reads_as_a_name() -> None:
    inbound = message_to_inbound(message(content=f"ask <@{BOT}> about it"), bot_user_id=BOT, bot_name="MoA")
    assert inbound is not None and inbound.mentions_bot and inbound.text == "ask @MoA about it"


def test_plain_group_message_is_forwarded_without_a_trigger() -> None:
    inbound = message_to_inbound(message(content="just chatting", mentions=[]), bot_user_id=BOT)
    assert inbound is not None
    assert not inbound.mentions_bot and not inbound.replies_to_bot and not inbound.is_dm


def test_typed_moa_command_uses_the_shared_grammar() -> None:
    inbound = message_to_inbound(message(content=f"<@{BOT}> /MOA presets"), bot_user_id=BOT)
    assert inbound is not None and inbound.is_command and inbound.text == "/moa presets"
    inbound = message_to_inbound(message(content="/moa +deep why?", mentions=[]), bot_user_id=BOT)
    assert inbound is not None and inbound.is_command and inbound.text == "/moa +deep why?"
    inbound = message_to_inbound(message(content="/moan about it", mentions=[]), bot_user_id=BOT)
    assert inbound is not None and not inbound.is_command


def test_direct_message() -> None:
    data = message(content="hello", mentions=[])
    del data["guild_id"], data["member"]
    inbound = message_to_inbound(data, bot_user_id=BOT)
    assert inbound is not None and inbound.is_dm and inbound.user_roles == ()
    assert inbound.user_name == "Alice"


def test_reply_to_the_bot() -> None:
    bot_message = {
        "id": "1346471000000000000",
        "channel_id": "1300000000000000001",
        "author": {"id": BOT, "bot": True},
    }
    data = message(
        type=19,
        content="and in Haskell?",
        mentions=[],
        message_reference={
            "type": 0,
            "message_id": bot_message["id"],
            "channel_id": bot_message["channel_id"],
        },
        referenced_message=bot_message,
    )
    inbound = message_to_inbound(data, bot_user_id=BOT)
    assert inbound is not None and inbound.replies_to_bot and inbound.reply_to_id == "1346471000000000000"


def test_reply_to_someone_else_and_a_forward_are_not_replies_to_the_bot() -> None:
    other = {"id": "1346471000000000000", "author": {"id": "1100000000000000009"}}
    data = message(
        type=19,
        mentions=[],
        content="yes",
        message_reference={"message_id": other["id"]},
        referenced_message=other,
    )
    inbound = message_to_inbound(data, bot_user_id=BOT)
    assert inbound is not None and not inbound.replies_to_bot and inbound.reply_to_id == other["id"]
    forward = message(
        mentions=[], content="fwd", message_reference={"type": 1, "message_id": "1346471000000000000"}
    )
    inbound = message_to_inbound(forward, bot_user_id=BOT)
    assert inbound is not None and inbound.reply_to_id is None


def test_message_in_a_thread_is_a_thread_of_its_parent_channel() -> None:
    in_thread = message(channel_id="1600000000000000001", channel_type=11)
    inbound = message_to_inbound(in_thread, bot_user_id=BOT, parent_id="1300000000000000001")
    assert inbound is not None
    # The parent is the chat (its access rules and default preset), the thread the session.
    assert (inbound.chat_id, inbound.thread_id) == ("1300000000000000001", "1600000000000000001")


@pytest.mark.parametrize(
    "changes",
    [
        {"author": {"id": BOT, "username": "MoA", "bot": True}},  # ourselves
        {"author": {"id": "1100000000000000002", "username": "other", "bot": True}},  # another bot
        {"webhook_id": "1400000000000000001"},  # a webhook post
        {"type": 7},  # member joined (a system message)
        {"edited_timestamp": "2025-03-04T10:21:00+00:00"},
        {"content": "   "},  # an image alone
    ],
)
def test_ignored_messages(changes: dict[str, Any]) -> None:
    assert message_to_inbound(message(**changes), bot_user_id=BOT) is None


# -- application commands -------------------------------------------------------------------------


def test_ask_interaction_becomes_the_moa_grammar_with_a_reply_handle() -> None:
    inbound = interaction_to_inbound(ASK_INTERACTION)
    assert inbound is not None
    assert inbound.text == "/moa +deep Explain monads\nwith an example"
    assert inbound.is_command and not inbound.is_dm
    assert inbound.event_id == inbound.message_id == "1346471200000000000"
    assert (inbound.user_id, inbound.user_name) == ("1100000000000000001", "Alice")
    assert inbound.user_roles == ("1200000000000000001",)
    assert inbound.sent_at == snowflake_time("1346471200000000000")
    handle = InteractionHandle.decode(inbound.reply_handle)
    assert handle == InteractionHandle(BOT, "1346471200000000000", ASK_INTERACTION["token"])


@pytest.mark.parametrize(
    ("subcommand", "options", "text"),
    [
        ("ask", {"prompt": "  why?  "}, "/moa why?"),
        ("ask", {"prompt": "why?", "preset": " deep research "}, "/moa +deepresearch why?"),
        ("presets", {}, "/moa presets"),
        ("default", {}, "/moa default"),
        ("default", {"preset": "deep"}, "/moa default deep"),
        ("default", {"preset": "reset"}, "/moa default reset"),
        ("cost", {}, "/moa cost"),
        ("cost", {"period": "week"}, "/moa cost week"),
        ("budget", {}, "/moa budget"),
        ("digest", {}, "/moa digest"),
        ("new", {}, "/moa new"),
        ("help", {}, "/moa help"),
    ],
)
def test_every_subcommand_maps_to_the_text_grammar(
    subcommand: str, options: dict[str, str], text: str
) -> None:
    inbound = interaction_to_inbound(interaction(subcommand, options))
    assert inbound is not None and inbound.text == text


def test_unknown_commands_and_other_interaction_types_are_not_forwarded() -> None:
    assert interaction_to_inbound(interaction("frobnicate")) is None
    other = copy.deepcopy(ASK_INTERACTION)
    other["data"]["name"] = "ping"
    assert interaction_to_inbound(other) is None
    autocomplete = copy.deepcopy(ASK_INTERACTION)
    autocomplete["type"] = 4
    assert interaction_to_inbound(autocomplete) is None


def test_interaction_in_a_dm_and_in_a_thread() -> None:
    dm = copy.deepcopy(ASK_INTERACTION)
    user = dm.pop("member")["user"]
    dm.pop("guild_id")
    dm.update(
        user=user,
        context=1,
        channel={"type": 1, "id": "1500000000000000001"},
        channel_id="1500000000000000001",
    )
    inbound = interaction_to_inbound(dm)
    assert inbound is not None and inbound.is_dm and inbound.user_roles == () and inbound.thread_id is None

    thread = copy.deepcopy(ASK_INTERACTION)
    thread["channel"] = {"type": 11, "id": "1600000000000000001", "parent_id": "1300000000000000001"}
    thread["channel_id"] = "1600000000000000001"
    inbound = interaction_to_inbound(thread)
    assert inbound is not None and not inbound.is_dm
    assert (inbound.chat_id, inbound.thread_id) == ("1300000000000000001", "1600000000000000001")

    # A thread whose payload lacks its parent: the caller's answer is used.
    del thread["channel"]["parent_id"]
    inbound = interaction_to_inbound(thread, parent_id="1300000000000000009")
    assert inbound is not None
    assert (inbound.chat_id, inbound.thread_id) == ("1300000000000000009", "1600000000000000001")
    # ...and a parent given for a channel that is no thread is ignored.
    inbound = interaction_to_inbound(ASK_INTERACTION, parent_id="1300000000000000009")
    assert inbound is not None and (inbound.chat_id, inbound.thread_id) == ("1300000000000000001", None)


@given(st.text(min_size=1).filter(lambda s: s.strip() and not s.strip().startswith("+")))
def test_ask_without_preset_is_the_prompt_after_moa(prompt: str) -> None:
    assert (
        command_text(
            {
                "name": "moa",
                "options": [
                    {"type": 1, "name": "ask", "options": [{"type": 3, "name": "prompt", "value": prompt}]}
                ],
            }
        )
        == "/moa " + prompt.strip()
    )


def test_interaction_handle_round_trip_and_window() -> None:
    handle = InteractionHandle("42", "1346471200000000000", "tok:en-with_colon")
    assert InteractionHandle.decode(handle.encode()) == handle
    assert InteractionHandle.decode(None) is None
    assert InteractionHandle.decode("slack:xyz") is None
    assert InteractionHandle.decode("ix:42:notanumber:tok") is None
    created = handle.created_at
    assert handle.usable(created + timedelta(minutes=13), 14 * 60)
    assert not handle.usable(created + timedelta(minutes=14, seconds=1), 14 * 60)


def test_preset_autocomplete_choices() -> None:
    presets = ["default", "deep", "fast", "deep-research"]
    assert preset_choices(presets, "de") == ["default", "deep", "deep-research"]
    assert preset_choices(presets, "research") == ["deep-research"]
    assert preset_choices(presets, "", extra=("reset",)) == [*presets, "reset"]
    assert len(preset_choices([f"p{i}" for i in range(40)], "")) == 25
