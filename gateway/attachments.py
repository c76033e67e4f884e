"""Attachments of a question: the limits, the fetch through the adapter, what each file becomes.

An image becomes an `ImagePart` of the user message (the engine shows it to models that can
see); a text file is inlined as fenced text, cut head and tail past `text_max_chars`; a voice
message or audio file is transcribed and the transcript becomes (part of) the question.
Whatever is over a limit, of a type not accepted, or cannot be fetched or read is named in a
note for the chat, and the question goes on with the rest.

Bytes are fetched only through the adapter that described the file (never `fetch_url`, never
from another host) and never stored: history keeps an image's description and digest, and with
`keep_images_in_history` this process keeps the bytes of recent images in memory for later
turns of their session (after a restart those turns get the text stand-in).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from adapters.contract import Attachment, AttachmentError
from moa_core.transcription import Transcriber, TranscriptionFailed
from moa_core.values import CallRecord, ImagePart, Message

log = logging.getLogger(__name__)

# What both wire formats accept as image input.
MODEL_IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
# Bytes of kept images (keep_images_in_history) this process holds at most.
_KEPT_BYTES = 64 * 1024 * 1024
# Larger images are scaled down before they go to the models: Anthropic refuses images over
# 5 MB (base64) or 8000 px a side and scales anything past ~1.15 megapixels down itself;
# OpenAI's high detail works on at most 2048 px. Sending more only costs upload time.
_MAX_SIDE = 2048
_MAX_IMAGE_BYTES = 3_500_000


@dataclass(frozen=True, slots=True)
class AttachmentSettings:
    """`[attachments]`. `allowed_types` entries are kinds (image, text, audio) or media-type
    patterns such as "image/png" or "text/*"."""

    max_bytes: int = 20 * 1024 * 1024
    max_count: int = 5
    text_max_chars: int = 20_000
    keep_images_in_history: bool = False
    allowed_types: tuple[str, ...] = ("image", "text", "audio")


@dataclass(frozen=True, slots=True)
class TranscriptionSettings:
    """`[transcription]`: an OpenAI-compatible provider of `/audio/transcriptions` and its model."""

    provider: str
    model: str = "whisper-1"
    price_per_minute: float | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A question with its attachments resolved.

    `prompt` is the text to ask (caption, transcripts, inlined files), `notes` name what was
    not used and why, `heard` is the transcript shown in the summary, `calls` the transcription
    calls to book with the turn.
    """

    prompt: str
    images: tuple[ImagePart, ...] = ()
    notes: tuple[str, ...] = ()
    heard: str | None = None
    calls: tuple[CallRecord, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.prompt.strip() and not self.images


HOW_TO_TRANSCRIBE = (
    'voice messages need a transcription provider: add [transcription] with provider = "NAME" '
    '(an OpenAI-compatible [providers.NAME]) and model = "whisper-1" (or your server\'s) to the config'
)


class AttachmentIntake:
    """Resolves the attachments of inbound messages; keeps recent image bytes when configured."""

    def __init__(self, settings: AttachmentSettings, transcriber: Transcriber | None = None) -> None:
        self.settings = settings
        self._transcriber = transcriber
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._kept_bytes = 0

    async def prepare(self, adapter: object, attachments: Sequence[Attachment], text: str) -> Prepared:
        """Fetch and read what is usable of `attachments`; `text` is the message's own text."""
        s = self.settings
        notes: list[str] = [
            f"{a.name}: over the limit of {s.max_count} file{'s' if s.max_count != 1 else ''} per message"
            for a in attachments[s.max_count:]
        ]
        images: list[ImagePart] = []
        files: list[str] = []
        heard: list[str] = []
        calls: list[CallRecord] = []
        for attachment in attachments[: s.max_count]:
            why = self._refusal(attachment)
            if why is not None:
                notes.append(f"{attachment.name}: {why}")
                continue
            try:
                data = await _fetch(adapter, attachment, s.max_bytes)
                if attachment.kind == "image":
                    images.append(self._image(attachment, data))
                elif attachment.kind == "text":
                    files.append(self._text(attachment, data))
                else:
                    assert self._transcriber is not None  # _refusal checked
                    try:
                        transcript = await self._transcriber.transcribe(data, attachment.name, attachment.media_type)
                    except TranscriptionFailed as failed:
                        calls.append(failed.call)
                        raise _Unusable(str(failed)) from None
                    calls.append(transcript.call)
                    if not transcript.text:
                        raise _Unusable("no speech was recognised")
                    heard.append(transcript.text)
            except (_Unusable, AttachmentError) as error:
                notes.append(f"{attachment.name}: {error}" if isinstance(error, _Unusable) else str(error))
        prompt = "\n\n".join(part for part in (text.strip(), *heard, *files) if part)
        return Prepared(prompt, tuple(images), tuple(notes), "\n".join(heard) or None, tuple(calls))

    def _refusal(self, attachment: Attachment) -> str | None:
        s = self.settings
        if not any(
            pattern == attachment.kind or fnmatch.fnmatch(attachment.media_type, pattern)
            for pattern in s.allowed_types
        ):
            return f"{attachment.media_type} files are not accepted here (allowed: {', '.join(s.allowed_types)})"
        if attachment.kind == "other":
            return f"{attachment.media_type} is not a kind of file I can read (images, text files, voice, audio)"
        if attachment.size is not None and attachment.size > s.max_bytes:
            return f"{_size(attachment.size)}, over the {_size(s.max_bytes)} limit"
        if attachment.kind == "audio" and self._transcriber is None:
            return HOW_TO_TRANSCRIBE
        return None

    def _image(self, attachment: Attachment, data: bytes) -> ImagePart:
        from PIL import Image, UnidentifiedImageError  # only when an image arrives

        try:
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
                media_type = MODEL_IMAGE_TYPES.get(kind or "")
                if media_type is None:
                    raise _Unusable(f"{kind} images are not supported (send JPEG, PNG, GIF or WebP)")
                if len(data) > _MAX_IMAGE_BYTES or max(width, height) > _MAX_SIDE:
                    data, media_type, (width, height) = _shrink(image)
        except (UnidentifiedImageError, OSError, ValueError):
            raise _Unusable("not a readable image") from None
        digest = hashlib.sha256(data).hexdigest()
        if self.settings.keep_images_in_history:
            self._keep(digest, data)
        return ImagePart(attachment.name, media_type, data, width, height, digest)

    def _text(self, attachment: Attachment, data: bytes) -> str:
        if b"\x00" in data[:8192]:
            raise _Unusable("looks like a binary file, not text")
        text = data.decode("utf-8-sig", errors="replace")
        limit = self.settings.text_max_chars
        header = f"File {attachment.name} ({len(text):,} characters)"
        if len(text) > limit:
            head = limit // 2
            tail = limit - head
            left_out = len(text) - limit
            header += f", cut to its first {head:,} and last {tail:,} characters (text_max_chars = {limit:,})"
            text = f"{text[:head]}\n[… {left_out:,} characters left out …]\n{text[len(text) - tail:]}"
        fence = "`" * max(3, _longest_backtick_run(text) + 1)
        language = attachment.name.rsplit(".", 1)[-1].lower() if "." in attachment.name else ""
        return f"{header}:\n{fence}{language}\n{text}\n{fence}"

    def _keep(self, digest: str, data: bytes) -> None:
        if digest in self._kept:
            self._kept.move_to_end(digest)
            return
        self._kept[digest] = data
        self._kept_bytes += len(data)
        while self._kept_bytes > _KEPT_BYTES and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped)

    def with_images(self, history: Sequence[Message], current: Sequence[ImagePart]) -> list[Message]:
        """History as stored (images described) with the bytes put back: the current turn's
        (its last user message) always, earlier turns' only when kept."""
        out = list(history)
        last_user = next((i for i in range(len(out) - 1, -1, -1) if out[i].role == "user"), None)
        fresh = {image.digest: image.data for image in current}
        for i, message in enumerate(out):
            if not message.images:
                continue
            source = fresh if i == last_user else self._kept if self.settings.keep_images_in_history else {}
            filled = tuple(replace(image, data=source.get(image.digest, b"")) for image in message.images)
            out[i] = replace(message, images=filled)
        return out


def _shrink(image: Any) -> tuple[bytes, str, tuple[int, int]]:
    """The image scaled to fit _MAX_SIDE: PNG when it has transparency, JPEG otherwise."""
    from PIL import Image

    image.seek(0)  # an animated GIF: its first frame
    small = image.copy()
    small.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if small.mode in ("RGBA", "LA", "P") and "transparency" in small.info or small.mode in ("RGBA", "LA"):
        small.save(out, "PNG", optimize=True)
        return out.getvalue(), "image/png", small.size
    small.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue(), "image/jpeg", small.size


class _Unusable(Exception):
    """A fetched file that cannot be used; the message says why."""


async def _fetch(adapter: object, attachment: Attachment, max_bytes: int) -> bytes:
    fetch = getattr(adapter, "fetch_attachment", None)
    if fetch is None:
        raise _Unusable("files cannot be fetched on this platform")
    try:
        data = await fetch(attachment, max_bytes)
    except AttachmentError:
        raise
    except Exception:
        log.warning("fetching attachment %s failed", attachment.name, exc_info=True)
        raise _Unusable("could not be downloaded") from None
    if len(data) > max_bytes:
        raise _Unusable(f"{_size(len(data))}, over the {_size(max_bytes)} limit")
    return data


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} bytes"


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest
