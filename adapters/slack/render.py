"""Outbound values -> Slack message payloads (mrkdwn text and Block Kit blocks). Pure functions.

Limits used (PLATFORMS.md section 2; Slack counts characters, measured here in UTF-16 units
to be safe):
- an answer or notice message's `text`: MESSAGE_CHARS = 4000 (Slack's advice for `text`;
  it truncates past 40,000); longer answers are split over several messages;
- a section block's text: SECTION_CHARS = 3000; at most MAX_BLOCKS = 50 blocks per message;
- all advice of one summary together: SUMMARY_CHARS = 12000 (bolt-js #2509 saw
  `msg_blocks_too_long` at ~13k characters), shared fairly between the references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapters.contract import Answer, Notice, Outbound, Progress, ReferenceSummary, SummaryEntry
from adapters.figures import format_latency, format_total, format_usd
from adapters.files import heard_line, sight_note
from adapters.text import shorten, split_message, utf16_len

MESSAGE_CHARS = 4000
SECTION_CHARS = 3000
HEADER_CHARS = 150
MAX_BLOCKS = 50
SUMMARY_CHARS = 12000
COMPACT_ADVICE_CHARS = 280


@dataclass(frozen=True, slots=True)
class Payload:
    """One Slack message's content: mrkdwn `text` (the fallback when blocks are present)."""

    text: str
    blocks: tuple[dict[str, Any], ...] | None = None

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": self.text}
        if self.blocks is not None:
            kwargs["blocks"] = list(self.blocks)
        return kwargs


# --- Markdown -> mrkdwn -------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^\s*>\s?(.*)$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:\s*\1){2,}\s*$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_body>.+?)(?P=ticks))"
    # Only absolute web and mail links become Slack links (a Slack link to anything else is
    # broken or misleading); others stay literal text. `<...>` around a target is Markdown's too.
    r"|!\[(?P<alt>[^\]]*)\]\(<?(?P<img>(?:https?://|mailto:)[^)\s<>]+)>?(?:\s+\"[^\"]*\")?\)"
    r"|\[(?P<label>[^\]]+)\]\(<?(?P<url>(?:https?://|mailto:)[^)\s<>]+)>?(?:\s+\"[^\"]*\")?\)"
    r"|<(?P<auto>(?:https?|mailto):[^>\s]+)>"
)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HOLE = re.compile("\x01(\\d+)\x02")
_BOLD_MARK = "\x03"


def escape(text: str) -> str:
    """Escape Slack's three control characters (everywhere: Slack stores code escaped too)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_url(url: str) -> str:
    return escape(url).replace("|", "%7C").replace(" ", "%20")


def _link_label(label: str) -> str:
    return escape(label).replace("|", "¦")


def _inline(text: str) -> str:
    """Convert one line of Markdown inline markup to mrkdwn."""
    holes: list[str] = []

    def hole(m: re.Match[str]) -> str:
        if m.group("code") is not None:
            body = m.group("code_body").strip() or m.group("code_body")
            out = "`" + escape(body.replace("`", "ˋ")) + "`"
        elif m.group("img") is not None:
            alt = m.group("alt") or "image"
            out = f"<{_link_url(m.group('img'))}|{_link_label(alt)}>"
        elif m.group("url") is not None:
            label = _inline(m.group("label")).strip()
            out = f"<{_link_url(m.group('url'))}|{label.replace('|', '¦')}>"
        else:
            out = f"<{_link_url(m.group('auto'))}>"
        holes.append(out)
        return f"\x01{len(holes) - 1}\x02"

    text = _INLINE.sub(hole, text)
    text = escape(text)
    text = _BOLD.sub(lambda m: _BOLD_MARK + (m.group(1) or m.group(2)) + _BOLD_MARK, text)
    text = _ITALIC.sub(lambda m: "_" + m.group(1) + "_", text)
    text = _STRIKE.sub(lambda m: "~" + m.group(1) + "~", text)
    text = text.replace(_BOLD_MARK, "*")
    return _HOLE.sub(lambda m: holes[int(m.group(1))], text)


def _bold_line(text: str) -> str:
    inner = _inline(text).replace("*", "").strip()
    return f"*{inner}*" if inner else ""


def markdown_to_mrkdwn(md: str) -> str:
    """Markdown (as models write it) -> Slack mrkdwn.

    **bold** -> *bold*, *italic* -> _italic_, ~~x~~ -> ~x~, [t](u) -> <u|t>, headings -> bold
    lines, bullets -> •, tables -> code blocks, fenced code kept (language tag dropped; an
    unclosed fence is closed), & < > escaped.
    """
    md = md.replace("\r\n", "\n").replace("\x01", "").replace("\x02", "").replace(_BOLD_MARK, "")
    out: list[str] = []
    table: list[str] = []
    fence: str | None = None

    def flush_table() -> None:
        if len(table) >= 2 and any(_TABLE_SEP.match(row) for row in table):
            out.append("```")
            out.extend(escape(row.strip()) for row in table if not _TABLE_SEP.match(row))
            out.append("```")
        else:
            out.extend(_inline(row) for row in table)
        table.clear()

    for line in md.split("\n"):
        fm = _FENCE.match(line)
        if fence is not None:
            if (
                fm
                and fm.group(1)[0] == fence[0]
                and len(fm.group(1)) >= len(fence)
                and not fm.group(2).strip()
            ):
                out.append("```")
                fence = None
            else:
                out.append(escape(line.replace("```", "ˋˋˋ")))
            continue
        if fm and not (fm.group(1)[0] == "`" and "`" in fm.group(2)):
            flush_table()
            fence = fm.group(1)
            out.append("```")
            continue
        if _TABLE_ROW.match(line):
            table.append(line)
            continue
        if table:
            flush_table()
        if m := _HEADING.match(line):
            out.append(_bold_line(m.group(1)))
        elif _RULE.match(line):
            out.append("──────────")
        elif m := _BULLET.match(line):
            out.append(m.group(1) + "• " + _inline(m.group(2)))
        elif m := _QUOTE.match(line):
            out.append("> " + _inline(m.group(1)))
        else:
            out.append(_inline(line))
    if table:
        flush_table()
    if fence is not None:
        out.append("```")
    return "\n".join(out)


def fit_mrkdwn(md: str, limit: int) -> str:
    """Markdown shortened (at the Markdown level, so no link or entity is cut) to mrkdwn within `limit`."""
    budget = limit
    for _ in range(6):
        text = markdown_to_mrkdwn(shorten(md, budget, measure=utf16_len))
        size = utf16_len(text)
        if size <= limit:
            return text
        budget = max(1, budget - (size - limit) - 8)
    return shorten(markdown_to_mrkdwn(shorten(md, budget, measure=utf16_len)), limit, measure=utf16_len)


def answer_chunks(md: str, *, limit: int = MESSAGE_CHARS, footer: str | None = None) -> list[str]:
    """The answer as mrkdwn messages, each within `limit`; code blocks are never broken
    (split_message closes and reopens fences). An optional footer ends the last message."""
    chunks: list[str] = []
    pending = split_message(md, limit, measure=utf16_len) if md.strip() else []
    while pending:
        piece = pending.pop(0)
        text = markdown_to_mrkdwn(piece)
        size = utf16_len(text)
        if size <= limit:
            chunks.append(text)
            continue
        # Escaping grew this piece past the limit: split its Markdown finer.
        piece_len = utf16_len(piece)
        smaller = min(piece_len - 1, piece_len * limit // size - 16)
        if smaller < 8:  # only with tiny limits and escape-heavy text
            chunks.append(shorten(text, limit, measure=utf16_len))
            continue
        pending[:0] = split_message(piece, smaller, measure=utf16_len)
    if footer:
        line = "_" + escape(footer.strip()) + "_"
        if chunks and utf16_len(chunks[-1]) + 2 + utf16_len(line) <= limit:
            chunks[-1] = chunks[-1] + "\n\n" + line
        else:
            chunks.append(shorten(line, limit, measure=utf16_len))
    return chunks or ["…"]


# --- the batched summary ------------------------------------------------------------------

_STATUS = {
    "ok": ":white_check_mark: ok",
    "failed": ":x: failed",
    "timeout": ":hourglass: timeout",
    "skipped": ":fast_forward: skipped",
}


def _entry_line(entry: SummaryEntry) -> str:
    status = _STATUS.get(entry.status, escape(entry.status))
    sight = sight_note(entry.saw_images)
    return (
        f"*{_link_label(entry.label)}* · {status} · {format_latency(entry.latency_ms)}"
        f" · {format_usd(entry.cost_usd)}" + (f" · {sight}" if sight else "")
    )


def _plain_line(entry: SummaryEntry) -> str:
    return f"{entry.label}: {entry.status}, {format_latency(entry.latency_ms)}, {format_usd(entry.cost_usd)}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def summary_payload(summary: ReferenceSummary) -> Payload:
    """One message: a header, one section per reference (label · status · latency · cost, then
    the advice shortened so the section stays within 3000), a context line with the total.
    At most 50 blocks: references past the 47th are folded into one last section."""
    entries = list(summary.entries)
    header = shorten(f"MoA · {summary.preset} · {len(entries)} references", HEADER_CHARS)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}
    ]
    heard = heard_line(summary.heard)
    if heard:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(heard)}]})
    room = MAX_BLOCKS - len(blocks) - 1  # the header (and heard line) and the closing context block
    shown = entries if len(entries) <= room else entries[: room - 1]
    folded = entries[len(shown) :]
    share = SUMMARY_CHARS // max(1, len(shown))
    if summary.mode == "compact":
        share = min(share, COMPACT_ADVICE_CHARS)
    for entry in shown:
        line = _entry_line(entry)
        budget = min(share, SECTION_CHARS - utf16_len(line) - 1)
        advice = entry.advice.strip()
        if summary.mode == "compact":
            advice = " ".join(advice.split())
        body = fit_mrkdwn(advice, budget) if advice and budget > 0 else ""
        if not body:
            body = "_no advice_" if entry.status == "ok" else ""
        blocks.append(_section(shorten(f"{line}\n{body}".rstrip(), SECTION_CHARS, measure=utf16_len)))
    if folded:
        lines = "\n".join(_entry_line(e) for e in folded)
        blocks.append(_section(shorten(lines, SECTION_CHARS, measure=utf16_len)))
    total = f"Total {format_total(summary.total_cost_usd, summary.unpriced)} · preset *{_link_label(summary.preset)}*"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": total}]})
    fallback = f"MoA summary ({summary.preset}): " + "; ".join(_plain_line(e) for e in entries)
    return Payload(escape(shorten(fallback, SECTION_CHARS)), tuple(blocks))


# --- short lines ---------------------------------------------------------------------------

_STAGE = {"references": "References", "aggregating": "Writing the answer", "tool": "Using a tool"}
_LEVEL = {"info": "", "warning": ":warning: ", "error": ":x: "}


def progress_text(progress: Progress) -> str:
    label = _STAGE.get(progress.stage, progress.stage)
    counts = f" {progress.done}/{progress.total}" if progress.total else ""
    detail = f" · {escape(progress.detail)}" if progress.detail else ""
    return shorten(f":hourglass_flowing_sand: _{label}{counts}_{detail}", MESSAGE_CHARS, measure=utf16_len)


def notice_chunks(notice: Notice, *, limit: int = MESSAGE_CHARS) -> list[str]:
    prefix = _LEVEL.get(notice.level, "")
    chunks = answer_chunks(notice.text, limit=limit - utf16_len(prefix))
    chunks[0] = prefix + chunks[0]
    return chunks


def render(item: Outbound) -> list[Payload]:
    """The Slack messages an outbound value becomes (a file is uploaded, never rendered)."""
    if isinstance(item, Answer):
        return [Payload(t) for t in answer_chunks(item.text, limit=MESSAGE_CHARS, footer=item.footer)]
    if isinstance(item, ReferenceSummary):
        return [summary_payload(item)]
    if isinstance(item, Progress):
        return [Payload(progress_text(item))]
    if isinstance(item, Notice):
        return [Payload(t) for t in notice_chunks(item)]
    raise TypeError(f"cannot render {type(item).__name__} as Slack messages")
