"""Render the contract's outbound values as Telegram message parts.

A `Part` is one Telegram message: its HTML and the plain text sent instead when Telegram refuses
the markup. Every part's visible text fits `MAX_CHARS` UTF-16 code units, which is how Telegram
counts the 4096 limit (entities parsed, tags not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.contract import Answer, Notice, Progress, ReferenceSummary, SummaryEntry
from adapters.figures import format_latency, format_total, format_usd
from adapters.files import heard_line, sight_note
from adapters.telegram.markup import escape, markdown_to_html
from adapters.text import shorten, split_message, utf16_len

MAX_CHARS = 4096
MAX_CAPTION = 1024
# Telegram ignores formatting past 100 entities; each summary entry uses two.
_MAX_SUMMARY_ENTRIES = 40
_MAX_LABEL = 80
_COMPACT_ADVICE = 280
_EMPTY = "…"
_STATUS_MARK = {"ok": "✅", "failed": "❌", "timeout": "⏱", "skipped": "⏭"}
_NOTICE_MARK = {"info": "", "warning": "⚠️ ", "error": "❌ "}


@dataclass(frozen=True, slots=True)
class Part:
    """One Telegram message: HTML (None: send as plain text only) and its plain-text fallback."""

    html: str | None
    plain: str


def render_answer(answer: Answer, limit: int = MAX_CHARS) -> list[Part]:
    """The answer's Markdown split at `limit` (before conversion, so no entity is cut)."""
    text = answer.text if answer.text.strip() else _EMPTY
    parts = [Part(markdown_to_html(chunk), chunk) for chunk in split_message(text, limit, measure=utf16_len)]
    parts = [part if part.html and part.plain.strip() else Part(None, part.plain or _EMPTY) for part in parts]
    if answer.final and answer.footer:
        footer = shorten(answer.footer.strip(), limit - 2, measure=utf16_len)
        last = parts[-1]
        if utf16_len(last.plain) + 2 + utf16_len(footer) <= limit:
            html = None if last.html is None else f"{last.html}\n\n<i>{escape(footer)}</i>"
            parts[-1] = Part(html, f"{last.plain}\n\n{footer}")
        else:
            parts.append(Part(f"<i>{escape(footer)}</i>", footer))
    return parts


def render_notice(notice: Notice, limit: int = MAX_CHARS) -> list[Part]:
    mark = _NOTICE_MARK.get(notice.level, "")
    text = notice.text if notice.text.strip() else _EMPTY
    chunks = split_message(text, limit - utf16_len(mark), measure=utf16_len)
    return [Part(mark + escape(chunk), mark + chunk) for chunk in chunks]


def render_progress(progress: Progress, limit: int = MAX_CHARS) -> list[Part]:
    detail = f" · {progress.detail}" if progress.detail else ""
    if progress.stage == "references":
        line = f"⏳ Asking references… {progress.done}/{progress.total}{detail}"
    elif progress.stage == "aggregating":
        line = f"✍️ Writing the answer…{detail}"
    else:
        line = f"🔧 {progress.detail or 'Using a tool'}…"
    line = shorten(line, limit, measure=utf16_len)
    return [Part(escape(line), line)]


def render_summary(summary: ReferenceSummary, limit: int = MAX_CHARS) -> list[Part]:
    """THE batched summary as one message: a header, then one expandable blockquote each."""
    entries = list(summary.entries[:_MAX_SUMMARY_ENTRIES])
    hidden = len(summary.entries) - len(entries)
    header = _summary_header(summary)
    while True:
        metas = [_entry_meta(entry) for entry in entries]
        more = f"\n… and {hidden} more" if hidden else ""
        # Visible text: header, then per entry "\n" + meta + ("\n" + advice when there is any).
        fixed = utf16_len(header) + utf16_len(more) + sum(1 + utf16_len(plain) for _, plain in metas)
        budget = limit - fixed - len(entries)  # one "\n" before each advice
        if budget >= 0 or not entries:
            break
        entries.pop()
        hidden += 1
    cap = _COMPACT_ADVICE if summary.mode == "compact" else limit
    advices = [_advice_text(entry, summary.mode) for entry in entries]
    allowed = _fair_shares([min(utf16_len(a), cap) for a in advices], max(budget, 0))
    html_lines = [f"<b>{escape(header)}</b>"]
    plain_lines = [header]
    for (meta_html, meta_plain), advice, share in zip(metas, advices, allowed, strict=True):
        short = shorten(advice, share, measure=utf16_len) if share > 0 and advice else ""
        body_html = meta_html + ("\n" + escape(short) if short else "")
        html_lines.append(f"<blockquote expandable>{body_html}</blockquote>")
        plain_lines.append(meta_plain + ("\n" + short if short else ""))
    if hidden:
        html_lines.append(escape(more.strip()))
        plain_lines.append(more.strip())
    return [Part("\n".join(html_lines), "\n".join(plain_lines))]


def _summary_header(summary: ReferenceSummary) -> str:
    count = len(summary.entries)
    noun = "reference" if count == 1 else "references"
    header = f"🧩 {count} {noun} · preset {summary.preset} · {format_total(summary.total_cost_usd, summary.unpriced)}"
    heard = heard_line(summary.heard)
    return f"{header}\n🎙 {heard}" if heard else header


def _entry_meta(entry: SummaryEntry) -> tuple[str, str]:
    label = shorten(entry.label, _MAX_LABEL, measure=utf16_len)
    mark = _STATUS_MARK.get(entry.status, "")
    rest = f" · {mark} {entry.status} · {format_latency(entry.latency_ms)} · {format_usd(entry.cost_usd)}"
    if sight := sight_note(entry.saw_images):
        rest += f" · {sight}"
    return f"<b>{escape(label)}</b>{escape(rest)}", label + rest


def _advice_text(entry: SummaryEntry, mode: str) -> str:
    advice = entry.advice.strip()
    if mode == "compact":
        advice = " ".join(advice.split())
    return advice


def _fair_shares(wants: list[int], budget: int) -> list[int]:
    """Max-min fair split of `budget`: short advice is kept whole, long advice shares the rest."""
    shares = [0] * len(wants)
    remaining = budget
    order = sorted(range(len(wants)), key=lambda index: wants[index])
    for position, index in enumerate(order):
        share = min(wants[index], remaining // (len(order) - position))
        shares[index] = share
        remaining -= share
    return shares
