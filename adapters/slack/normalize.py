"""Slack payloads -> `InboundMessage`: pure functions, tested on recorded-shape payloads.

Which events reach the gateway:
- `app_mention` in a channel: the leading bot mention is stripped, `mentions_bot=True`; a
  top-level mention gets `thread_id` = its own ts (when replying in threads) so the answer
  threads under it and that thread is the session.
- `message` in a DM (`channel_type == "im"`): every message; `thread_id` = its thread_ts or
  None (the DM itself is the session).
- `message` in a channel only when it is a reply in a thread the bot owns: the parent was
  posted by the bot (`parent_user_id`), or the caller knows the bot answered in that thread.
  A reply that also mentions the bot is left to its `app_mention` event (one turn, not two).
- Messages from bots (incl. this one), edits, deletions and other subtypes: None.
- The `/moa` slash command: its text becomes `/moa <text>`; `event_id` = "cmd:" + trigger_id.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from datetime import UTC, datetime
from typing import Any

from adapters.contract import Attachment, InboundMessage
from adapters.files import attachment_kind, media_type_of

PLATFORM = "slack"

# Message subtypes that are still a person writing something new.
_USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_MOA = re.compile(r"^/moa(?:@\S+)?(?=\s|$)", re.IGNORECASE)
# Slack's own markup in incoming text: <url|label>, <url>, <#C123|name>, <!here>.
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!([a-z]+)(?:\^[^|>]*)?(?:\|([^>]*))?>")


def ts_to_datetime(ts: str | float | None, *, default: datetime | None = None) -> datetime:
    """A Slack ts ("1712345678.000200") as an aware UTC datetime."""
    try:
        return datetime.fromtimestamp(float(ts), UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default if default is not None else datetime.now(UTC)


def slack_text_to_plain(text: str) -> str:
    """Turn Slack's escaped mrkdwn into the plain text a person typed.

    Links become `label (url)` or the url, channel references `#name`, `<!here>` `@here`;
    user mentions stay `<@U…>` (ids are what a model can refer back to); entities unescaped.
    """

    def link(m: re.Match[str]) -> str:
        url, label = m.group(1), m.group(2)
        if not label or label == url or url.endswith("://" + label) or url == "mailto:" + label:
            return label if label and url.startswith("mailto:") else url
        return f"{label} ({url})"

    text = _LINK.sub(link, text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SPECIAL.sub(lambda m: m.group(2) or "@" + m.group(1), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def strip_leading_mention(text: str, bot_user_id: str | None) -> tuple[str, bool]:
    """Remove a leading `<@BOT>` (and a following ':' or ','); report whether the bot is mentioned."""
    if not bot_user_id:
        return text.strip(), False
    mentioned = any(m.group(1) == bot_user_id for m in _MENTION.finditer(text))
    stripped = text.lstrip()
    m = _MENTION.match(stripped)
    if m and m.group(1) == bot_user_id:
        stripped = stripped[m.end() :].lstrip().lstrip(":,").lstrip()
    return stripped.strip(), mentioned


def _command_text(text: str) -> tuple[str, bool]:
    """`/moa@x rest` -> `/moa rest`; says whether the text is a `/moa` command."""
    m = _MOA.match(text)
    if not m:
        return text, False
    rest = text[m.end() :].strip()
    return ("/moa " + rest) if rest else "/moa", True


def _user_name(event: Mapping[str, Any]) -> str:
    profile = event.get("user_profile") or {}
    return (
        profile.get("display_name")
        or profile.get("real_name")
        or profile.get("name")
        or event.get("username")
        or str(event.get("user", ""))
    )


def is_from_bot(event: Mapping[str, Any], bot_user_id: str | None = None) -> bool:
    return bool(
        event.get("bot_id")
        or event.get("bot_profile")
        or event.get("subtype") == "bot_message"
        or (bot_user_id is not None and event.get("user") == bot_user_id)
    )


def inbound_from_event(
    body: Mapping[str, Any],
    *,
    bot_user_id: str | None,
    reply_in_thread: bool = True,
    bot_threads: Container[tuple[str, str]] = (),
) -> InboundMessage | None:
    """An Events API envelope body (`{"event_id", "event": {...}}`) -> InboundMessage or None.

    `bot_threads` holds (channel, thread_ts) pairs where the bot has answered; replies there
    count as replies to the bot even when the thread's parent is a person's message.
    """
    event = body.get("event") or {}
    kind = event.get("type")
    if kind not in ("app_mention", "message"):
        return None
    if event.get("subtype") not in _USER_SUBTYPES or is_from_bot(event, bot_user_id):
        return None
    if event.get("edited"):
        return None  # an edit that adds a mention re-sends app_mention: not a new turn
    if not event.get("user") or "ts" not in event:
        return None
    channel = str(event.get("channel", ""))
    ts = str(event["ts"])
    thread_ts = event.get("thread_ts")
    in_thread = bool(thread_ts) and thread_ts != ts
    channel_type = event.get("channel_type")
    is_dm = channel_type == "im" or (channel_type is None and channel.startswith("D"))

    raw_text = str(event.get("text") or "")
    text, mentioned = strip_leading_mention(raw_text, bot_user_id)
    replies_to_bot = in_thread and (
        (bot_user_id is not None and event.get("parent_user_id") == bot_user_id)
        or (channel, str(thread_ts)) in bot_threads
    )

    if kind == "app_mention":
        if is_dm:
            return None  # a DM arrives as a message event too; answer that one
        mentioned = True
    elif not is_dm:
        if not replies_to_bot:
            return None
        if mentioned:
            return None  # its app_mention event carries the same message: one turn, not two

    if in_thread:
        thread_id: str | None = str(thread_ts)
    elif is_dm or not reply_in_thread:
        thread_id = None
    else:
        thread_id = ts  # answer under the mention; that new thread is the session

    text, is_command = _command_text(slack_text_to_plain(text))
    attachments = files_of(event.get("files") or ())
    event_id = str(body.get("event_id") or f"{channel}:{ts}")
    return InboundMessage(
        platform=PLATFORM,
        chat_id=channel,
        thread_id=thread_id,
        user_id=str(event["user"]),
        user_name=_user_name(event),
        message_id=ts,
        reply_to_id=str(thread_ts) if in_thread else None,
        text=text,
        sent_at=ts_to_datetime(ts),
        is_dm=is_dm,
        mentions_bot=mentioned,
        replies_to_bot=replies_to_bot,
        event_id=event_id,
        is_command=is_command,
        attachments=attachments,
    )


def files_of(files: Any) -> tuple[Attachment, ...]:
    """Slack file objects shared in a message, described; `ref` is the url_private (fetched
    with the bot token, only from Slack's file host)."""
    out: list[Attachment] = []
    for item in files:
        if not isinstance(item, Mapping) or item.get("mode") == "tombstone":
            continue
        url = item.get("url_private_download") or item.get("url_private")
        if not url:
            continue
        name = str(item.get("name") or item.get("title") or "file")
        media_type = media_type_of(name, item.get("mimetype"))
        size, width, height = item.get("size"), item.get("original_w"), item.get("original_h")
        out.append(Attachment(
            attachment_kind(name, media_type), name, media_type, size if isinstance(size, int) else None, str(url),
            width if isinstance(width, int) else None, height if isinstance(height, int) else None,
        ))
    return tuple(out)


def inbound_from_command(
    body: Mapping[str, Any],
    *,
    received_at: datetime,
    thread_id: str | None = None,
    message_id: str | None = None,
) -> InboundMessage | None:
    """A slash-command payload -> InboundMessage with text `/moa <text>`.

    A slash command has no message of its own: `thread_id`/`message_id` are the root message
    the adapter posted for it (when replying in threads), else None / "cmd:<trigger_id>".
    """
    user_id = body.get("user_id")
    channel = body.get("channel_id")
    if not user_id or not channel:
        return None
    rest = str(body.get("text") or "").strip()
    trigger = str(body.get("trigger_id") or "")
    event_id = "cmd:" + (trigger or f"{channel}:{user_id}:{received_at.timestamp():.6f}")
    channel = str(channel)
    is_dm = channel.startswith("D") or body.get("channel_name") == "directmessage"
    return InboundMessage(
        platform=PLATFORM,
        chat_id=channel,
        thread_id=thread_id,
        user_id=str(user_id),
        user_name=str(body.get("user_name") or user_id),
        message_id=message_id or event_id,
        reply_to_id=None,
        text=("/moa " + slack_text_to_plain(rest)) if rest else "/moa",
        sent_at=received_at.astimezone(UTC),
        is_dm=is_dm,
        mentions_bot=False,
        replies_to_bot=False,
        event_id=event_id,
        is_command=True,
        reply_handle=body.get("response_url") or None,
    )
