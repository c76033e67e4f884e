"""Slack payloads -> InboundMessage, on recorded-shape Events API and slash-command payloads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.slack.normalize import (
    inbound_from_command,
    inbound_from_event,
    slack_text_to_plain,
    strip_leading_mention,
)
from adapters.slack.settings import SlackSettings

BOT = "UBOT"


def body(event: dict, event_id: str = "Ev01") -> dict:
    return {"type": "event_callback", "team_id": "T1", "event_id": event_id, "event": event}


def mention(**extra) -> dict:
    return {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> what is *MoA*?",
        "ts": "1712345678.000200",
        "channel": "C1",
        **extra,
    }


def test_top_level_mention_threads_under_itself() -> None:
    m = inbound_from_event(body(mention()), bot_user_id=BOT)
    assert m is not None
    assert m.text == "what is *MoA*?"
    assert m.mentions_bot and not m.is_dm and not m.replies_to_bot
    assert m.thread_id == "1712345678.000200" and m.reply_to_id is None
    assert m.event_id == "Ev01" and m.message_id == "1712345678.000200"
    assert m.sent_at == datetime.fromtimestamp(1712345678.0002, UTC) and m.sent_at.tzinfo is not None


def test_top_level_mention_without_threads_is_the_channel_session() -> None:
    m = inbound_from_event(body(mention()), bot_user_id=BOT, reply_in_thread=False)
    assert m is not None and m.thread_id is None


def test_mention_in_a_thread_keeps_that_thread() -> None:
    m = inbound_from_event(body(mention(thread_ts="1712340000.000100")), bot_user_id=BOT)
    assert m is not None
    assert m.thread_id == "1712340000.000100" and m.reply_to_id == "1712340000.000100"


def test_mention_with_command_text_is_the_moa_grammar() -> None:
    m = inbound_from_event(body(mention(text="<@UBOT> /moa@moa +deep why")), bot_user_id=BOT)
    assert m is not None and m.text == "/moa +deep why" and m.is_command


def test_dm_message_is_a_turn_without_thread() -> None:
    event = {
        "type": "message",
        "channel_type": "im",
        "user": "U1",
        "text": "hi &amp; bye",
        "ts": "1.000001",
        "channel": "D1",
    }
    m = inbound_from_event(body(event), bot_user_id=BOT)
    assert m is not None
    assert m.is_dm and m.thread_id is None and m.text == "hi & bye" and not m.mentions_bot


def test_reply_in_the_bots_thread_is_a_reply_to_the_bot() -> None:
    event = {
        "type": "message",
        "channel_type": "channel",
        "user": "U1",
        "text": "and then?",
        "ts": "5.000002",
        "thread_ts": "4.000001",
        "parent_user_id": BOT,
        "channel": "C1",
    }
    m = inbound_from_event(body(event), bot_user_id=BOT)
    assert m is not None and m.replies_to_bot and m.thread_id == "4.000001"
    # The same reply mentioning the bot is left to its app_mention event: one turn, not two.
    assert inbound_from_event(body({**event, "text": "<@UBOT> and then?"}), bot_user_id=BOT) is None


def test_reply_in_a_thread_the_bot_answered_in() -> None:
    event = {
        "type": "message",
        "channel_type": "channel",
        "user": "U2",
        "text": "more",
        "ts": "5.000002",
        "thread_ts": "4.000001",
        "parent_user_id": "U1",
        "channel": "C1",
    }
    assert inbound_from_event(body(event), bot_user_id=BOT) is None
    m = inbound_from_event(body(event), bot_user_id=BOT, bot_threads={("C1", "4.000001")})
    assert m is not None and m.replies_to_bot


def test_plain_channel_messages_are_not_forwarded() -> None:
    event = {
        "type": "message",
        "channel_type": "channel",
        "user": "U1",
        "text": "chat",
        "ts": "1.1",
        "channel": "C1",
    }
    assert inbound_from_event(body(event), bot_user_id=BOT) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"bot_id": "B999"},
        {"subtype": "bot_message", "bot_id": "B1"},
        {"user": BOT},
        {"subtype": "message_changed"},
        {"subtype": "message_deleted"},
        {"subtype": "channel_join"},
        {"edited": {"user": "U1", "ts": "2.0"}},
    ],
)
def test_bots_edits_and_system_messages_are_ignored(extra: dict) -> None:
    event = {
        "type": "message",
        "channel_type": "im",
        "user": "U1",
        "text": "x",
        "ts": "1.1",
        "channel": "D1",
        **extra,
    }
    assert inbound_from_event(body(event), bot_user_id=BOT) is None
    assert inbound_from_event(body(mention(**extra)), bot_user_id=BOT) is None


def test_retried_delivery_has_the_same_event_id() -> None:
    a = inbound_from_event(body(mention(), "Ev77"), bot_user_id=BOT)
    b = inbound_from_event(body(mention(), "Ev77"), bot_user_id=BOT)
    assert a is not None and b is not None and a.event_id == b.event_id == "Ev77"


def test_slash_command_becomes_moa_text() -> None:
    payload = {
        "command": "/moa",
        "text": "  default   reset ",
        "user_id": "U1",
        "user_name": "alice",
        "channel_id": "C1",
        "channel_name": "general",
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "response_url": "https://hooks.slack.com/commands/1/2/3",
    }
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    m = inbound_from_command(payload, received_at=now, thread_id="9.000001", message_id="9.000001")
    assert m is not None
    assert m.text == "/moa default   reset" and m.is_command
    assert m.event_id == "cmd:13345224609.738474920.8088930838d88f008e0"
    assert m.thread_id == "9.000001" and m.user_name == "alice" and m.sent_at == now
    assert m.reply_handle == "https://hooks.slack.com/commands/1/2/3"
    bare = inbound_from_command({**payload, "text": ""}, received_at=now)
    assert bare is not None and bare.text == "/moa" and bare.thread_id is None
    dm = inbound_from_command(
        {**payload, "channel_id": "D1", "channel_name": "directmessage"}, received_at=now
    )
    assert dm is not None and dm.is_dm


def test_slack_markup_becomes_plain_text() -> None:
    text = "see <https://x.io/a?b=1&amp;c=2|the docs> and <https://y.io> in <#C1|general> <!here> 1 &lt; 2"
    assert slack_text_to_plain(text) == (
        "see the docs (https://x.io/a?b=1&c=2) and https://y.io in #general @here 1 < 2"
    )
    assert strip_leading_mention("<@UBOT>: hi <@U2>", BOT) == ("hi <@U2>", True)
    assert strip_leading_mention("hi <@U2>", BOT) == ("hi <@U2>", False)


def test_settings_need_a_mode() -> None:
    with pytest.raises(ValueError, match="app_token.*signing_secret"):
        SlackSettings(bot_token="xoxb-1").validate()
    with pytest.raises(ValueError, match="bot_token"):
        SlackSettings(bot_token="", app_token="xapp-1").validate()
    assert "xoxb" not in repr(SlackSettings(bot_token="xoxb-secret", app_token="xapp-secret"))
