"""normalize_update on recorded-shape Telegram updates (no network)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from telegram import Update

from adapters.telegram.normalize import normalize_update
from tests.fakes.telegram_server import (
    BOT_ID,
    BOT_USERNAME,
    group_chat,
    message_update,
    private_chat,
    user,
)

GROUP = group_chat(-1001234567890)
FORUM = group_chat(-1009876543210, forum=True)


def normalize(payload: dict):
    payload = {"update_id": 1, **payload}
    return normalize_update(Update.de_json(payload, None), bot_id=BOT_ID, bot_username=BOT_USERNAME)


def bot_message(message_id: int, chat: dict) -> dict:
    return {
        "message_id": message_id,
        "date": 1_767_225_000,
        "chat": chat,
        "from": user(BOT_ID, first_name="MoA", username=BOT_USERNAME, is_bot=True),
        "text": "an earlier answer",
    }


def test_private_message_is_a_dm_with_utc_time_and_update_id_as_event_id():
    message = normalize(message_update("what is MoA?", chat=private_chat(42), update_id=777, message_id=5))
    assert message is not None
    assert message.platform == "telegram"
    assert (message.chat_id, message.user_id, message.user_name, message.message_id) == (
        "42",
        "42",
        "ada",
        "5",
    )
    assert (
        message.is_dm and not message.is_command and not message.mentions_bot and not message.replies_to_bot
    )
    assert message.thread_id is None and message.reply_to_id is None
    assert message.event_id == "777"
    assert message.sent_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert message.sent_at.tzinfo is not None


def test_group_command_addressed_to_this_bot_becomes_the_moa_grammar():
    message = normalize(message_update(f"/moa@{BOT_USERNAME} +deep why is the sky blue?", chat=GROUP))
    assert message is not None
    assert message.text == "/moa +deep why is the sky blue?"
    assert message.is_command and not message.is_dm
    assert message.chat_id == "-1001234567890"


@pytest.mark.parametrize("text", ["/moa", f"/moa@{BOT_USERNAME}", f"/MOA@{BOT_USERNAME.lower()}"])
def test_bare_command(text):
    message = normalize(message_update(text, chat=GROUP))
    assert message is not None and message.text == "/moa" and message.is_command


def test_command_for_another_bot_is_ignored():
    assert normalize(message_update("/moa@OtherBot hello", chat=GROUP)) is None
    assert normalize(message_update("/start@OtherBot", chat=GROUP)) is None


def test_plain_group_message_is_forwarded_untriggered():
    message = normalize(message_update("lunch at noon?", chat=GROUP))
    assert message is not None
    assert not (message.is_command or message.mentions_bot or message.replies_to_bot or message.is_dm)


def test_leading_mention_is_stripped_and_flagged():
    message = normalize(message_update(f"@{BOT_USERNAME}, compare Rust and Go", chat=GROUP))
    assert message is not None
    assert message.mentions_bot and message.text == "compare Rust and Go"


def test_mention_in_the_middle_is_flagged_and_kept():
    message = normalize(message_update(f"what does @{BOT_USERNAME} think?", chat=GROUP))
    assert message is not None and message.mentions_bot
    assert message.text == f"what does @{BOT_USERNAME} think?"


def test_mention_after_astral_characters_uses_utf16_offsets():
    message = normalize(message_update(f"🎉🎉 hey @{BOT_USERNAME} and @someone_else", chat=GROUP))
    assert message is not None and message.mentions_bot


def test_mention_of_someone_else_is_not_a_mention_of_the_bot():
    message = normalize(message_update("ask @someone_else", chat=GROUP))
    assert message is not None and not message.mentions_bot


def test_reply_to_the_bot():
    message = normalize(message_update("and in Python?", chat=GROUP, reply_to=bot_message(300, GROUP)))
    assert message is not None
    assert message.replies_to_bot and message.reply_to_id == "300"


def test_reply_to_a_person_is_not_a_reply_to_the_bot():
    other = {"message_id": 301, "date": 1_767_225_000, "chat": GROUP, "from": user(7), "text": "hi"}
    message = normalize(message_update("agreed", chat=GROUP, reply_to=other))
    assert message is not None and not message.replies_to_bot and message.reply_to_id == "301"


def test_forum_topic_is_the_thread_and_the_topic_root_is_not_a_reply():
    topic_root = {
        "message_id": 77,
        "date": 1_767_220_000,
        "chat": FORUM,
        "from": user(BOT_ID, is_bot=True, username=BOT_USERNAME),
        "message_thread_id": 77,
        "is_topic_message": True,
        "forum_topic_created": {"name": "Research", "icon_color": 7322096},
    }
    message = normalize(message_update("/moa compare", chat=FORUM, thread_id=77, reply_to=topic_root))
    assert message is not None
    assert message.thread_id == "77"
    assert message.reply_to_id is None and not message.replies_to_bot


def test_reply_inside_a_forum_topic():
    answer = {**bot_message(90, FORUM), "message_thread_id": 77, "is_topic_message": True}
    message = normalize(message_update("more detail", chat=FORUM, thread_id=77, reply_to=answer))
    assert message is not None
    assert message.thread_id == "77" and message.replies_to_bot and message.reply_to_id == "90"


def test_caption_of_a_photo_is_the_text():
    message = normalize(
        message_update(None, caption=f"/moa@{BOT_USERNAME} what is in this chart?", chat=GROUP)
    )
    assert message is not None
    assert message.text == "/moa what is in this chart?" and message.is_command


def test_mention_in_a_caption():
    message = normalize(message_update(None, caption=f"@{BOT_USERNAME} explain", chat=GROUP))
    assert message is not None and message.mentions_bot and message.text == "explain"


def test_basic_group_counts_as_a_group():
    message = normalize(message_update("/moa hi", chat=group_chat(-4242, kind="group")))
    assert message is not None and not message.is_dm and message.chat_id == "-4242"


@pytest.mark.parametrize(
    "payload",
    [
        message_update("/moa edited", chat=GROUP, edited=True),
        message_update("/moa hi", chat=GROUP, sender=user(99, username="OtherBot", is_bot=True)),
        message_update("/moa hi", chat=GROUP, sender=user(BOT_ID, username=BOT_USERNAME, is_bot=True)),
        message_update(None, chat=GROUP),  # a sticker or service message: no text, no caption
        message_update("   ", chat=GROUP),
        {
            "update_id": 5,
            "channel_post": {
                "message_id": 1,
                "date": 1_767_225_600,
                "chat": {"id": -100555, "type": "channel"},
                "text": "/moa hi",
            },
        },
    ],
    ids=["edited", "other-bot", "itself", "no-text", "blank", "channel-post"],
)
def test_ignored_updates(payload):
    assert normalize(payload) is None


def test_other_commands_addressed_to_us_keep_their_name():
    message = normalize(message_update(f"/start@{BOT_USERNAME}", chat=private_chat()))
    assert message is not None and message.text == "/start" and not message.is_command
