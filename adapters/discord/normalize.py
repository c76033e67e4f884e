"""Turn raw Discord gateway payloads into the contract's `InboundMessage` (pure functions).

Owns the Discord-specific reading of an event, on the payload shapes Discord sends
(`MESSAGE_CREATE` and `INTERACTION_CREATE` dispatch data):
- which messages are ignored (bots incl. ourselves, webhooks, system messages, edits, empty text);
- a leading mention of the bot (user or its managed role) is stripped and sets `mentions_bot`;
- a `/moa` application command's option tree becomes the shared `/moa ...` text grammar;
- the opaque `reply_handle` that lets the adapter answer an interaction through its followup
  webhook later.

Threads: a message in a thread has `chat_id` = the thread's PARENT channel and `thread_id` = the
thread's own channel id; elsewhere `chat_id` is the channel and `thread_id` is None. So a thread
shares its parent's access rules and default preset (both keyed by chat) while being a session
of its own (sessions are platform + chat + thread), and replies go to `thread_id or chat_id`.
Whether a channel is a thread, and its parent, are not in `MESSAGE_CREATE`; the caller says so
(`parent_id`). An interaction carries its channel, with `parent_id` for a thread.

Whether to answer is the gateway's decision, not this module's.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.contract import Attachment, InboundMessage
from adapters.files import attachment_kind, media_type_of

PLATFORM = "discord"
COMMAND = "moa"

DISCORD_EPOCH_MS = 1_420_070_400_000
THREAD_CHANNEL_TYPES = frozenset({10, 11, 12})  # announcement, public and private threads
DM_CHANNEL_TYPE = 1
# Message types that carry what a member typed: DEFAULT and REPLY. Joins, pins, boosts ... are not.
_USER_MESSAGE_TYPES = frozenset({0, 19})
_FORWARD_REFERENCE_TYPE = 1
_APPLICATION_COMMAND = 2
_SUB_COMMAND = 1
_ATTACHMENT_OPTION = 11

# A bare "/moa" (any case) at the start of a typed message.
_TEXT_COMMAND = re.compile(r"^/moa(?=\s|$)", re.IGNORECASE)
# People write "@bot: question" or "@bot, question" after a leading mention.
_AFTER_MENTION = re.compile(r"^[\s,:;.!-]*")


def snowflake_time(snowflake: str | int) -> datetime:
    """The UTC creation time encoded in a Discord id."""
    ms = (int(snowflake) >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _parse_time(value: Any, fallback_id: str) -> datetime:
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return snowflake_time(fallback_id)


def _user_name(user: Mapping[str, Any], member: Mapping[str, Any] | None) -> str:
    nick = member.get("nick") if member else None
    return str(nick or user.get("global_name") or user.get("username") or user.get("id") or "")


def message_to_inbound(
    payload: Mapping[str, Any],
    *,
    bot_user_id: str,
    bot_name: str = "",
    bot_role_ids: Collection[str] = (),
    parent_id: str | None = None,
) -> InboundMessage | None:
    """The inbound value for a `MESSAGE_CREATE` payload, or None when the bot must not see it.

    `parent_id` is the parent channel when the message's channel is a thread, else None.
    """
    author = payload.get("author") or {}
    author_id = str(author.get("id", ""))
    if not author_id or author.get("bot") or author_id == bot_user_id or payload.get("webhook_id"):
        return None
    if payload.get("type", 0) not in _USER_MESSAGE_TYPES or payload.get("edited_timestamp"):
        return None
    content = payload.get("content") or ""
    attachments = attachments_of(payload.get("attachments") or ())
    if not content.strip() and not attachments:
        return None

    role_ids = {str(r) for r in bot_role_ids}
    mentioned_users = {str(u.get("id")) for u in payload.get("mentions") or ()}
    mentioned_roles = {str(r) for r in payload.get("mention_roles") or ()}
    own_mention = re.compile(
        r"<@!?"
        + re.escape(bot_user_id)
        + r">"
        + "".join(r"|<@&" + re.escape(r) + r">" for r in sorted(role_ids))
    )
    mentions_bot = (
        bot_user_id in mentioned_users
        or bool(mentioned_roles & role_ids)
        or own_mention.search(content) is not None
    )
    text = content.strip()
    leading = own_mention.match(text)
    if leading is not None:
        text = text[leading.end() :]
        text = text[_AFTER_MENTION.match(text).end() :]  # type: ignore[union-attr]
    if bot_name:
        # A mention further in is part of the sentence: let the models read a name, not an id.
        text = own_mention.sub("@" + bot_name, text)
    is_command = False
    command = _TEXT_COMMAND.match(text)
    if command is not None:
        text = "/" + COMMAND + text[command.end() :]
        is_command = True

    reference = payload.get("message_reference") or {}
    reply_to_id: str | None = None
    replies_to_bot = False
    if reference.get("message_id") and reference.get("type", 0) != _FORWARD_REFERENCE_TYPE:
        reply_to_id = str(reference["message_id"])
        referenced = payload.get("referenced_message") or {}
        replies_to_bot = str((referenced.get("author") or {}).get("id", "")) == bot_user_id

    member = payload.get("member") or None
    message_id = str(payload["id"])
    channel_id = str(payload["channel_id"])
    chat_id, thread_id = _chat_and_thread(channel_id, parent_id)
    return InboundMessage(
        platform=PLATFORM,
        chat_id=chat_id,
        thread_id=thread_id,
        user_id=author_id,
        user_name=_user_name(author, member),
        message_id=message_id,
        reply_to_id=reply_to_id,
        text=text,
        sent_at=_parse_time(payload.get("timestamp"), message_id),
        is_dm=payload.get("guild_id") is None,
        mentions_bot=mentions_bot,
        replies_to_bot=replies_to_bot,
        event_id=message_id,
        is_command=is_command,
        user_roles=tuple(str(r) for r in (member or {}).get("roles") or ()),
        attachments=attachments,
    )


def attachments_of(items: Any) -> tuple[Attachment, ...]:
    """Discord attachment objects (of a message, or resolved for a command option) described;
    `ref` is the CDN URL, which the adapter checks before it downloads anything."""
    out: list[Attachment] = []
    for item in items:
        if not isinstance(item, Mapping) or not item.get("url"):
            continue
        name = str(item.get("filename") or "file")
        media_type = media_type_of(name, item.get("content_type"))
        size = item.get("size")
        width, height = item.get("width"), item.get("height")
        out.append(Attachment(
            attachment_kind(name, media_type), name, media_type, size if isinstance(size, int) else None,
            str(item["url"]), width if isinstance(width, int) else None, height if isinstance(height, int) else None,
        ))
    return tuple(out)


def _option_attachments(data: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The files given to `/moa ask` through its `attachment` option (resolved by Discord)."""
    options = data.get("options") or ()
    sub = options[0] if options else {}
    resolved = (data.get("resolved") or {}).get("attachments") or {}
    ids = [str(o.get("value")) for o in sub.get("options") or () if o.get("type") == _ATTACHMENT_OPTION]
    return attachments_of([resolved[i] for i in ids if i in resolved])


def _chat_and_thread(channel_id: str, parent_id: str | None) -> tuple[str, str | None]:
    """(chat_id, thread_id) of a channel: a thread is a thread of its parent's chat."""
    if parent_id:
        return str(parent_id), channel_id
    return channel_id, None


def command_text(data: Mapping[str, Any]) -> str | None:
    """The `/moa ...` text grammar for the data of a `/moa <subcommand>` application command."""
    if data.get("name") != COMMAND:
        return None
    options = data.get("options") or ()
    if not options or options[0].get("type") != _SUB_COMMAND:
        return None
    sub = options[0]
    args = {o.get("name"): o.get("value") for o in sub.get("options") or ()}

    def arg(name: str) -> str:
        value = args.get(name)
        return "" if value is None else str(value).strip()

    name = sub.get("name")
    if name == "ask":
        # A preset is one word in the grammar ("+name"); inner spaces would eat the prompt.
        preset = "".join(arg("preset").split()).lstrip("+")
        prompt = arg("prompt")
        words = ["/" + COMMAND] + (["+" + preset] if preset else []) + ([prompt] if prompt else [])
        return " ".join(words)
    if name in ("default", "cost"):
        value = arg("preset" if name == "default" else "period")
        return f"/{COMMAND} {name}" + (" " + value if value else "")
    if name in ("presets", "budget", "digest", "new", "help"):
        return f"/{COMMAND} {name}"
    return None


@dataclass(frozen=True, slots=True)
class InteractionHandle:
    """What `send` needs to answer an interaction through its followup webhook.

    Carried by the gateway as the opaque `reply_handle` string. The token is a short-lived
    credential (15 minutes) for this one interaction.
    """

    application_id: str
    interaction_id: str
    token: str

    @property
    def created_at(self) -> datetime:
        return snowflake_time(self.interaction_id)

    def usable(self, now: datetime, window_s: float) -> bool:
        """True while followups may still be used (`window_s` after the interaction)."""
        return now < self.created_at + timedelta(seconds=window_s)

    def encode(self) -> str:
        return f"ix:{self.application_id}:{self.interaction_id}:{self.token}"

    @classmethod
    def decode(cls, handle: str | None) -> InteractionHandle | None:
        if not handle or not handle.startswith("ix:"):
            return None
        parts = handle.split(":", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit() or not parts[3]:
            return None
        return cls(application_id=parts[1], interaction_id=parts[2], token=parts[3])


def interaction_to_inbound(
    payload: Mapping[str, Any], *, parent_id: str | None = None
) -> InboundMessage | None:
    """The inbound value for an `INTERACTION_CREATE` payload of a `/moa` command, or None.

    A thread's parent comes from the payload's `channel`; `parent_id` is the caller's answer
    when the payload says the channel is a thread but not its parent.
    """
    if payload.get("type") != _APPLICATION_COMMAND:
        return None
    text = command_text(payload.get("data") or {})
    if text is None:
        return None
    member = payload.get("member") or None
    user = (member or {}).get("user") or payload.get("user") or {}
    user_id = str(user.get("id", ""))
    if not user_id or user.get("bot"):
        return None
    channel = payload.get("channel") or {}
    channel_id = str(payload.get("channel_id") or channel.get("id") or "")
    if not channel_id:
        return None
    channel_type = channel.get("type")
    if channel_type in THREAD_CHANNEL_TYPES:
        parent_id = str(channel.get("parent_id") or parent_id or "") or None
    else:
        parent_id = None
    if channel_type is not None:
        is_dm = channel_type == DM_CHANNEL_TYPE
    else:
        is_dm = payload.get("guild_id") is None
    interaction_id = str(payload["id"])
    handle = InteractionHandle(
        application_id=str(payload["application_id"]),
        interaction_id=interaction_id,
        token=str(payload["token"]),
    )
    chat_id, thread_id = _chat_and_thread(channel_id, parent_id)
    return InboundMessage(
        platform=PLATFORM,
        chat_id=chat_id,
        thread_id=thread_id,
        user_id=user_id,
        user_name=_user_name(user, member),
        message_id=interaction_id,
        reply_to_id=None,
        text=text,
        sent_at=snowflake_time(interaction_id),
        is_dm=is_dm,
        mentions_bot=False,
        replies_to_bot=False,
        event_id=interaction_id,
        is_command=True,
        user_roles=tuple(str(r) for r in (member or {}).get("roles") or ()),
        reply_handle=handle.encode(),
        attachments=_option_attachments(payload.get("data") or {}),
    )
