"""Attachments as every adapter sees them: what kind a file is (from its media type and name),
and the words a summary uses for what the models made of them (who saw an image, what was heard).

Adapters describe files with `attachment_kind`; the gateway decides what to do with each kind.
"""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath

from adapters.contract import AttachmentKind

# Code and data files that platforms often label application/octet-stream or not at all.
TEXT_EXTENSIONS = frozenset(
    ".txt .md .markdown .rst .csv .tsv .json .jsonl .ndjson .yaml .yml .toml .ini .cfg .conf .env .log "
    ".xml .html .htm .css .scss .sql .py .pyi .ipynb .js .mjs .cjs .ts .tsx .jsx .go .rs .java .kt .kts "
    ".scala .c .h .cc .cpp .hpp .cs .m .swift .rb .php .pl .lua .r .jl .sh .bash .zsh .fish .ps1 .bat "
    ".dockerfile .makefile .mk .cmake .gradle .diff .patch .tex .proto .graphql .vue .svelte .dart "
    ".ex .exs .erl .hs .ml .clj .nix .tf".split()
)
TEXT_NAMES = frozenset({"dockerfile", "makefile", "readme", "license", "procfile", "gemfile"})
TEXT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/javascript",
        "application/x-javascript",
        "application/x-sh",
        "application/x-python",
        "application/sql",
        "application/x-ndjson",
        "application/csv",
    }
)


def media_type_of(name: str, declared: str | None) -> str:
    """The declared media type (parameters dropped), else one guessed from the file name."""
    if declared and declared.strip():
        return declared.split(";", 1)[0].strip().lower()
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def attachment_kind(name: str, media_type: str) -> AttachmentKind:
    """image, text (plain text, data and code by media type or extension), audio or other."""
    media_type = media_type.lower()
    path = PurePosixPath(name.lower())
    if media_type.startswith("image/") and media_type != "image/svg+xml":
        return "image"
    if media_type.startswith("audio/") or media_type == "video/ogg" and path.suffix in (".ogg", ".oga"):
        return "audio"
    if media_type.startswith("text/") or media_type in TEXT_MEDIA_TYPES or media_type.endswith(("+json", "+xml")):
        return "text"
    if path.suffix in TEXT_EXTENSIONS or path.name in TEXT_NAMES or media_type == "image/svg+xml":
        return "text"
    return "other"


HEARD_CHARS = 300


def sight_note(saw_images: bool | None) -> str:
    """How a summary entry says whether that reference saw the image(s): '' when none came."""
    if saw_images is None:
        return ""
    return "saw the image" if saw_images else "image as text only"


def heard_line(heard: str | None, max_chars: int = HEARD_CHARS) -> str:
    """'heard: “…”' for a question that was a voice message; '' otherwise."""
    if not heard:
        return ""
    text = " ".join(heard.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return f"heard: “{text}”"
