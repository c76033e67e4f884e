"""The adapter contract: the values and the interface shared by the gateway and every adapter.

An adapter turns platform events into `InboundMessage`s and renders the platform-neutral
outbound values below natively (Telegram HTML, Discord embeds, Slack blocks, a terminal).
The gateway never formats for a platform; adapters never see MoA internals or storage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

AttachmentKind = Literal["image", "text", "audio", "other"]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with an inbound message, described; not its bytes.

    The gateway fetches the bytes, when it decides to use the file, through the adapter that
    made this value (`Adapter.fetch_attachment`), which downloads from its platform's own file
    service with the bot's own authorisation. `ref` is opaque adapter data naming the file (a
    Telegram file_id, a Discord or Slack file URL). `size` is what the platform said (None when
    it did not say); `width`/`height` are pixels of an image when the platform gave them.
    """

    kind: AttachmentKind
    name: str
    media_type: str
    size: int | None
    ref: str
    width: int | None = None
    height: int | None = None


class AttachmentError(Exception):
    """An attachment could not be fetched; the message names the file and says why, for the chat."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One normalised inbound chat message.

    `text` of a native command (Discord application command, Slack slash command) is rewritten
    by the adapter into the `/moa ...` text grammar, so the gateway parses one grammar.
    `sent_at` is timezone-aware UTC. `event_id` is the platform's id used for de-duplication
    (Telegram update_id, Discord message/interaction id, Slack event_id or trigger id).
    `reply_handle` is opaque adapter data needed to answer this very message (a Discord
    interaction token, a Slack response_url); the gateway only carries it back in `ChatRef`.
    `attachments` are the files that came with it (a caption, if any, is the `text`).
    """

    platform: str
    chat_id: str
    thread_id: str | None
    user_id: str
    user_name: str
    message_id: str
    reply_to_id: str | None
    text: str
    sent_at: datetime
    is_dm: bool
    mentions_bot: bool
    replies_to_bot: bool
    event_id: str
    is_command: bool = False
    user_roles: tuple[str, ...] = ()
    reply_handle: str | None = None
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRef:
    """Where outbound values go: a chat, optionally a thread and a message to reply to."""

    platform: str
    chat_id: str
    thread_id: str | None = None
    reply_to_id: str | None = None
    reply_handle: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """A short progress line, edited in place as references come in."""

    stage: Literal["references", "aggregating", "tool"]
    done: int
    total: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SummaryEntry:
    """One reference in the batched summary. `advice` is full text; adapters shorten it."""

    index: int
    label: str
    status: Literal["ok", "failed", "timeout", "skipped"]
    latency_ms: int | None
    cost_usd: float | None
    advice: str
    # None: no image to see in this turn; else whether this reference was shown the image(s).
    saw_images: bool | None = None


@dataclass(frozen=True, slots=True)
class ReferenceSummary:
    """THE batched summary of every reference of a fan-out, posted once before the answer."""

    preset: str
    mode: Literal["full", "compact"]
    entries: tuple[SummaryEntry, ...]
    total_cost_usd: float | None  # the priced entries' sum; None when none was priced
    unpriced: int = 0  # entries that made a call without a price: shown beside the total
    # The transcript of a voice message or audio file that was the question.
    heard: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The aggregator's answer as Markdown. `final` is False while it is still streaming."""

    text: str
    final: bool = True
    footer: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """A short line from the bot: command output, refusals, errors."""

    text: str
    level: Literal["info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class FileOut:
    """A file to post (the digest chart)."""

    filename: str
    data: bytes
    caption: str = ""
    mime: str = "image/png"


Outbound = Progress | ReferenceSummary | Answer | Notice | FileOut


@dataclass(frozen=True, slots=True)
class Sent:
    """What an adapter posted for one outbound value: its platform message ids, in order."""

    chat: ChatRef
    message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlatformLimits:
    max_message_chars: int
    # Minimum seconds between two edits of one message (streaming throttle).
    edit_interval_s: float = 1.0
    supports_edit: bool = True


InboundHandler = Callable[[InboundMessage], Awaitable[None]]


class Adapter(Protocol):
    """What the gateway needs from a platform.

    `send` posts a value (split over several messages when it is too long) and returns the
    ids. `edit` replaces what an earlier `send`/`edit` posted with a new value, posting extra
    messages when the new text needs more of them; editing to identical content is a no-op.
    Both honour the platform's rate limits themselves (waiting out retry-after) and never drop
    a final `Answer`. A send that timed out is not blindly repeated.
    """

    platform: str
    limits: PlatformLimits

    async def start(self, on_inbound: InboundHandler) -> None:
        """Connect and begin delivering inbound messages; returns once running."""
        ...

    async def stop(self) -> None: ...

    async def send(self, chat: ChatRef, item: Outbound) -> Sent: ...

    # Optional: `async def send_once(self, chat, item, *, key: str, retry: bool) -> Sent`, used
    # for the delivery ledger's sends: `key` is the same on every attempt of one ledger row, and
    # `retry` says an earlier attempt may have reached the platform before a crash. The adapter
    # makes the send idempotent where the platform allows (Discord: an enforced nonce; Slack: a
    # metadata marker looked up before posting again) and otherwise follows its documented rule
    # (Telegram: the repeat is marked "♻️ recovered").
    #
    # Optional: `async def accepted(self, message: InboundMessage) -> InboundMessage`, called
    # once the gateway has let a message through (allowed, not a duplicate, not stale) and
    # before it acts on it; the adapter may post what belongs to an accepted message only (Slack:
    # a slash command's root message) and return the message threaded under it.

    async def edit(self, sent: Sent, item: Outbound) -> Sent: ...

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of an attachment this adapter described, from the platform's own file
        service only; AttachmentError (naming the file) when it cannot, or when the file is
        larger than `max_bytes`. Adapters whose platform has no files need not have it."""
        ...
