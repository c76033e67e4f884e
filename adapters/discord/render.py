"""Render the contract's outbound values as Discord message parts (pure functions).

A value becomes one or more `Part`s, one per Discord message: the answer and notices as
Markdown content split at 2000 characters without breaking code blocks; the batched reference
summary as embeds (one field per reference) within Discord's embed limits; a file as an
attachment. Lengths are counted in code points, as Discord counts them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.contract import Answer, FileOut, Notice, Outbound, Progress, ReferenceSummary, SummaryEntry
from adapters.figures import format_latency, format_total, format_usd
from adapters.files import heard_line, sight_note
from adapters.text import shorten, split_message

MAX_CONTENT = 2000
EMBED_TITLE = 256
EMBED_FOOTER = 2048
EMBED_DESCRIPTION = 4096
FIELD_NAME = 256
FIELD_VALUE = 1024
FIELDS_PER_EMBED = 25
EMBEDS_PER_MESSAGE = 10
EMBEDS_TOTAL = 6000  # title + description + field names and values + footer, over all embeds
# Below the hard limit, so a rounding of ours never costs a 400 from Discord.
_EMBEDS_BUDGET = EMBEDS_TOTAL - 40
_COMPACT_ADVICE = 120
_MIN_ADVICE = 12  # less room than this and the advice is left out, not cut to a stub

_STATUS = {"ok": "✅ ok", "failed": "❌ failed", "timeout": "⏱️ timeout", "skipped": "⏭️ skipped"}
_LEVEL = {"info": "", "warning": "⚠️ ", "error": "❌ "}
_GREEN, _ORANGE, _RED = 0x2ECC71, 0xE67E22, 0xE74C3C
_EMPTY_FIELD = "\u200b"  # Discord rejects empty field names and values


@dataclass(frozen=True, slots=True)
class Part:
    """What goes into one Discord message."""

    content: str | None = None
    embeds: tuple[dict[str, Any], ...] = ()
    file: FileOut | None = None

    def fingerprint(self) -> str:
        """Equal for parts that would render the same message (identical edits are skipped)."""
        file = None if self.file is None else (self.file.filename, hash(self.file.data))
        return json.dumps([self.content, list(self.embeds), file], sort_keys=True, default=str)


def render(item: Outbound) -> list[Part]:
    """The Discord messages for one outbound value, in order (never empty)."""
    if isinstance(item, Answer):
        return [Part(content=c) for c in answer_chunks(item)]
    if isinstance(item, ReferenceSummary):
        return [Part(embeds=tuple(summary_embeds(item)))]
    if isinstance(item, Notice):
        return [Part(content=c) for c in notice_chunks(item)]
    if isinstance(item, Progress):
        return [Part(content=progress_text(item))]
    if isinstance(item, FileOut):
        caption = shorten(item.caption.strip(), MAX_CONTENT) if item.caption.strip() else None
        return [Part(content=caption, file=item)]
    raise TypeError(f"cannot render {type(item).__name__} for Discord")


def close_fences(text: str) -> str:
    """Close a code fence left open (a streamed answer stops anywhere), so the rest renders."""
    open_fence: str | None = None
    for line in text.split("\n"):
        stripped = line.strip()
        if open_fence is None:
            if stripped.startswith(("```", "~~~")):
                open_fence = stripped[:3]
        elif stripped.startswith(open_fence) and not stripped[3:].strip(open_fence[0]).strip():
            open_fence = None
    return text if open_fence is None else text.rstrip("\n") + "\n" + open_fence


def answer_chunks(answer: Answer, limit: int = MAX_CONTENT) -> list[str]:
    text = close_fences(answer.text.strip())
    if answer.footer:
        # Discord's "-#" subtext: small grey lines under the answer.
        footer = "\n".join("-# " + line for line in answer.footer.strip().splitlines() if line.strip())
        text = f"{text}\n\n{footer}" if text else footer
    chunks = split_message(text, limit)
    if not chunks:
        return ["…" if not answer.final else "*(no answer)*"]
    return chunks


def notice_chunks(notice: Notice, limit: int = MAX_CONTENT) -> list[str]:
    chunks = split_message(_LEVEL.get(notice.level, "") + notice.text.strip(), limit)
    return chunks or [_LEVEL.get(notice.level, "") + "…"]


def progress_text(progress: Progress) -> str:
    if progress.stage == "references":
        text = f"⏳ Asking the reference models… {progress.done}/{progress.total}"
    elif progress.stage == "aggregating":
        text = "✍️ Writing the answer…"
    else:
        text = "🔧 Using a tool…"
    if progress.detail:
        text += f" · {progress.detail}"
    return shorten(text, MAX_CONTENT)


def _status_line(entry: SummaryEntry) -> str:
    status = _STATUS.get(entry.status, entry.status)
    line = f"{status} · {format_latency(entry.latency_ms)} · {format_usd(entry.cost_usd)}"
    sight = sight_note(entry.saw_images)
    return f"{line} · {sight}" if sight else line


def _fit_markdown(text: str, limit: int) -> str:
    """`text` shortened to `limit`, with a code fence the cut left open closed again."""
    cut = shorten(text, limit)
    if close_fences(cut) == cut:
        return cut
    closed = close_fences(shorten(text, max(limit - 4, 0)))
    return closed if len(closed) <= limit else shorten(cut.replace("`", "'"), limit)


def _advice_source(entry: SummaryEntry, compact: bool) -> str:
    advice = entry.advice.strip()
    if compact:
        first = next((line.strip() for line in advice.splitlines() if line.strip()), "")
        return shorten(first, _COMPACT_ADVICE) if first else ""
    return advice


def _allocate(wants: Sequence[int], budget: int) -> list[int]:
    """Share `budget` among the wants, the smallest first (water-filling)."""
    give = [0] * len(wants)
    order = sorted(range(len(wants)), key=lambda i: wants[i])
    left, remaining = max(budget, 0), len(wants)
    for i in order:
        share = left // remaining
        give[i] = min(wants[i], share)
        left -= give[i]
        remaining -= 1
    return give


def summary_embeds(summary: ReferenceSummary) -> list[dict[str, Any]]:
    """The batched summary as embed dicts: one field per reference, within Discord's limits.

    Every reference keeps its label, status, latency and cost; the advice shares what is left of
    the 6000 characters a message may hold in embeds (compact mode: one line at most).
    """
    compact = summary.mode == "compact"
    title = shorten(f"MoA references · {summary.preset}", EMBED_TITLE)
    entries = list(summary.entries)
    total = format_total(summary.total_cost_usd, summary.unpriced)

    def footer_for(shown: int) -> str:
        text = f"{len(entries)} reference{'s' if len(entries) != 1 else ''} · total {total}"
        if shown < len(entries):
            text += f" · {len(entries) - shown} not shown (Discord's limits)"
        return shorten(text, EMBED_FOOTER)

    heard = shorten(heard_line(summary.heard), EMBED_DESCRIPTION)
    names: list[str] = []
    heads: list[str] = []
    used = len(title) + len(footer_for(0)) + len(heard)  # the longest footer: every entry may be dropped
    for position, entry in enumerate(entries[: FIELDS_PER_EMBED * EMBEDS_PER_MESSAGE]):
        name = shorten(f"{position + 1}. {entry.label}", FIELD_NAME) or _EMPTY_FIELD
        head = _status_line(entry)
        if used + len(name) + len(head) > _EMBEDS_BUDGET:
            break
        used += len(name) + len(head)
        names.append(name)
        heads.append(head)
    shown = len(names)

    sources = [_advice_source(e, compact) for e in entries[:shown]]
    # An advice costs its text plus the newline after the status line.
    wants = [
        min(len(s), FIELD_VALUE - len(h) - 1) + 1 if s else 0 for s, h in zip(sources, heads, strict=True)
    ]
    give = _allocate(wants, _EMBEDS_BUDGET - used)

    fields: list[dict[str, Any]] = []
    for name, head, source, room in zip(names, heads, sources, give, strict=True):
        value = head
        if source and room - 1 >= min(len(source), _MIN_ADVICE):
            value = head + "\n" + _fit_markdown(source, room - 1)
        fields.append({"name": name, "value": value, "inline": False})

    statuses = {e.status for e in entries}
    colour = _GREEN if statuses <= {"ok"} else (_RED if "ok" not in statuses else _ORANGE)
    embeds: list[dict[str, Any]] = []
    for start in range(0, max(len(fields), 1), FIELDS_PER_EMBED):
        embeds.append({"type": "rich", "color": colour, "fields": fields[start : start + FIELDS_PER_EMBED]})
    embeds[0]["title"] = title
    if heard:
        embeds[0]["description"] = heard
    if not fields:
        embeds[0]["description"] = (heard + "\n" if heard else "") + (
            "No reference answered." if entries else "No references.")
    embeds[-1]["footer"] = {"text": footer_for(shown)}
    return embeds


def embeds_length(embeds: Sequence[dict[str, Any]]) -> int:
    """What Discord counts toward the 6000 characters of a message's embeds."""
    total = 0
    for embed in embeds:
        total += len(embed.get("title", "")) + len(embed.get("description", ""))
        total += len((embed.get("footer") or {}).get("text", ""))
        total += len((embed.get("author") or {}).get("name", ""))
        for field in embed.get("fields", ()):
            total += len(field["name"]) + len(field["value"])
    return total
