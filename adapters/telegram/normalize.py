"""Turn a Telegram `Update` into the contract's `InboundMessage` (a pure function).

Owns the Telegram-specific reading of an update: which updates are ignored (edited messages,
bots, service messages, commands addressed to other bots), how `/moa@ThisBot` and a leading
`@ThisBot` mention become the shared `/moa ...` grammar, forum topics as threads, and replies to
the bot. Whether to answer is the gateway's decision, not this module's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC

from telegram import Message, MessageEntity, Update

from adapters.contract import Attachment, InboundMessage
from adapters.files import attachment_kind, media_type_of

PLATFORM = "telegram"
COMMAND = "moa"

# A bot command at the very start of a text: "/name" or "/name@botusername".
_COMMAND = re.compile(r"^/(?P<name>[A-Za-z0-9_]{1,32})(?:@(?P<target>[A-Za-z0-9_]+))?(?=\s|$)")
# After a leading mention, people write "@bot: question" or "@bot, question".
_AFTER_MENTION = re.compile(r"^[\s,:;]*")


def normalize_update(update: Update, *, bot_id: int, bot_username: str) -> InboundMessage | None:
    """The inbound value for `update`, or None when the bot must not see it at all."""
    message = update.message
    if message is None:  # edited messages, channel posts, callbacks, member updates ...
        return None
    user = message.from_user
    if user is None or user.is_bot or message.is_automatic_forward:
        return None
    text = message.text if message.text is not None else message.caption
    attachments = attachments_of(message)
    if (not text or not text.strip()) and not attachments:
        return None
    text = text or ""

    mentions_bot = _mentions(message, text, bot_id=bot_id, bot_username=bot_username)
    text = _strip_leading_mention(text, bot_username)
    is_command = False
    command = _COMMAND.match(text)
    if command is not None:
        target = command.group("target")
        if target is not None and target.lower() != bot_username.lower():
            return None  # "/moa@OtherBot": meant for another bot in the same group
        if command.group("name").lower() == COMMAND:
            text = "/" + COMMAND + text[command.end() :]
            is_command = True
        elif target is not None:
            text = "/" + command.group("name") + text[command.end() :]

    reply_to = message.reply_to_message
    if reply_to is not None and message.is_topic_message and reply_to.message_id == message.message_thread_id:
        # In a forum topic every message "replies" to the topic's creation message.
        reply_to = None
    thread_id = (
        str(message.message_thread_id) if message.is_topic_message and message.message_thread_id else None
    )

    sent_at = message.date
    sent_at = sent_at.replace(tzinfo=UTC) if sent_at.tzinfo is None else sent_at.astimezone(UTC)
    return InboundMessage(
        platform=PLATFORM,
        chat_id=str(message.chat.id),
        thread_id=thread_id,
        user_id=str(user.id),
        user_name=user.username or user.full_name,
        message_id=str(message.message_id),
        reply_to_id=str(reply_to.message_id) if reply_to is not None else None,
        text=text.strip(),
        sent_at=sent_at,
        is_dm=message.chat.type == "private",
        mentions_bot=mentions_bot,
        replies_to_bot=reply_to is not None
        and reply_to.from_user is not None
        and reply_to.from_user.id == bot_id,
        event_id=str(update.update_id),
        is_command=is_command,
        attachments=attachments,
    )


def attachments_of(message: Message) -> tuple[Attachment, ...]:
    """The files of a message: the largest size of a photo, a document, a voice note, audio."""
    out: list[Attachment] = []
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        out.append(Attachment("image", "photo.jpg", "image/jpeg", largest.file_size, largest.file_id,
                              largest.width, largest.height))
    if message.document is not None:
        doc = message.document
        name = doc.file_name or "file"
        media_type = media_type_of(name, doc.mime_type)
        out.append(Attachment(attachment_kind(name, media_type), name, media_type, doc.file_size, doc.file_id))
    if message.voice is not None:
        voice = message.voice
        out.append(Attachment("audio", "voice.ogg", media_type_of("voice.ogg", voice.mime_type or "audio/ogg"),
                              voice.file_size, voice.file_id))
    if message.audio is not None:
        audio = message.audio
        name = audio.file_name or "audio.mp3"
        out.append(Attachment("audio", name, media_type_of(name, audio.mime_type), audio.file_size, audio.file_id))
    return tuple(out)


def _mentions(message: Message, text: str, *, bot_id: int, bot_username: str) -> bool:
    entities = message.entities if message.text is not None else message.caption_entities
    if entities:
        parsed = (
            message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
            if message.text is not None
            else message.parse_caption_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
        )
        for entity, entity_text in parsed.items():
            if (
                entity.type == MessageEntity.TEXT_MENTION
                and entity.user is not None
                and entity.user.id == bot_id
            ):
                return True
            if entity.type == MessageEntity.MENTION and entity_text.lower() == "@" + bot_username.lower():
                return True
        return False
    # Entity-less text (hand-written payloads, some self-hosted servers): look for the word.
    return _mention_pattern(bot_username).search(text) is not None


def _mention_pattern(bot_username: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w@])@" + re.escape(bot_username) + r"(?!\w)", re.IGNORECASE)


def _strip_leading_mention(text: str, bot_username: str) -> str:
    stripped = text.lstrip()
    match = _mention_pattern(bot_username).match(stripped)
    if match is None:
        return text
    rest = stripped[match.end() :]
    return rest[_AFTER_MENTION.match(rest).end() :]  # type: ignore[union-attr]


def merge_album(parts: Sequence[InboundMessage]) -> InboundMessage:
    """The items of one album as one message: the captioned item (else the first) speaks for
    the album, with every item's files in the order they were sent."""
    ordered = sorted(parts, key=lambda m: int(m.message_id))
    lead = next((m for m in ordered if m.text), ordered[0])
    return replace(lead, attachments=tuple(a for m in ordered for a in m.attachments))
