"""The terminal as a platform: stdin lines in, plain text out (`moa-gateway chat` and `ask`).

It speaks the same adapter contract as Telegram, Discord and Slack, so the terminal chat runs
through the real gateway. Streaming edits print only what is new; the progress line is
rewritten in place on a TTY and printed as plain lines otherwise. Text from outside (models,
and through them fetched pages) passes `strip_controls` first: an escape sequence in an answer
must not clear the screen, retitle the window or rewrite what the user already read.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

from adapters.contract import (
    Answer,
    ChatRef,
    FileOut,
    InboundHandler,
    InboundMessage,
    Notice,
    Outbound,
    PlatformLimits,
    Progress,
    ReferenceSummary,
    Sent,
)
from adapters.figures import format_latency, format_total, format_usd
from adapters.files import heard_line, sight_note
from adapters.text import shorten

_INDENT = "    "
_FULL_ADVICE_CHARS = 1_500
_CLEAR_TO_EOL = "\x1b[K"
_REVISED = "--- revised ---"
# Terminal control sequences, and the bare controls that are not newline or tab. A sequence
# cut off at the end of the text is matched too, so a streamed answer never shows half of one.
_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*(?:[@-~]|$)"  # CSI: cursor moves, clears (\x1b[2J), colours
    r"|\x9b[0-?]*[ -/]*(?:[@-~]|$)"  # the same, 8-bit
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"  # OSC (titles), DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"  # any other escape (\x1bc resets the terminal)
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]",  # other C0 controls (\r, \b, bell ...), DEL, C1
    re.DOTALL,
)


def strip_controls(text: str) -> str:
    """`text` without terminal control sequences or controls other than newline and tab."""
    return _CONTROLS.sub("", text)
FOOTER_PREFIX = "-- "  # before an answer's footer; `moa-gateway ask` prints the same


class Clock(Protocol):
    """The part of the gateway's clock this adapter needs (wall time, aware UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_summary(summary: ReferenceSummary, *, width: int = 100) -> str:
    """The batched reference summary as plain text: a header, then one block per reference.

    Compact mode gives each reference's advice one short line; full mode up to ~1,500
    characters with its line breaks. Failures, timeouts and skips say why, on one line.
    """
    n = len(summary.entries)
    lines = [
        f"References · preset {summary.preset} · {n} model{'' if n == 1 else 's'}"
        f" · total {format_total(summary.total_cost_usd, summary.unpriced)}"
    ]
    if heard := heard_line(summary.heard):
        lines.append(heard)
    room = max(20, width - len(_INDENT))
    for position, entry in enumerate(summary.entries, start=1):
        facts = [entry.status]
        if entry.latency_ms is not None:
            facts.append(format_latency(entry.latency_ms))
        facts.append(format_usd(entry.cost_usd))
        if sight := sight_note(entry.saw_images):
            facts.append(sight)
        lines.append(f"[{position}/{n}] {entry.label} — {' · '.join(facts)}")
        advice = entry.advice.strip()
        if entry.status != "ok":
            if advice and advice != entry.status:
                lines.append(_INDENT + shorten(_one_line(advice), room))
        elif not advice:
            lines.append(_INDENT + "(no advice)")
        elif summary.mode == "compact":
            lines.append(_INDENT + shorten(_one_line(advice), room))
        else:
            full = shorten(advice, _FULL_ADVICE_CHARS)
            lines.extend(_INDENT + line if line.strip() else "" for line in full.splitlines())
    return "\n".join(lines)


def render_progress(p: Progress) -> str:
    """One line, e.g. "references 2/3 · gpt-5.1 timed out"."""
    if p.stage == "references":
        line = f"references {p.done}/{p.total}"
    elif p.stage == "aggregating":
        line = "aggregating" + (f" {p.done}/{p.total}" if p.total else "")
    else:
        line = "tool" + (f" {p.done}/{p.total}" if p.total else "")
    detail = _one_line(p.detail)
    return f"{line} · {detail}" if detail else line


def render_notice(notice: Notice) -> str:
    return notice.text if notice.level == "info" else f"{notice.level}: {notice.text}"


class TerminalAdapter:
    """Reads one message per stdin line (chat "local", a DM) and prints what the gateway sends."""

    platform = "terminal"
    limits = PlatformLimits(max_message_chars=1_000_000, edit_interval_s=0.05)

    def __init__(
        self,
        *,
        stdin: asyncio.StreamReader | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
        user_name: str = "you",
        files_dir: Path = Path("."),
        clock: Clock | None = None,
    ) -> None:
        self._stdin = stdin
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        self._user_name = user_name
        self._files_dir = Path(files_dir)
        self._clock: Clock = clock if clock is not None else SystemClock()
        # Event ids must not repeat across runs that share one database (de-duplication).
        self._run = uuid.uuid4().hex[:8]
        self._received = 0
        self._posted = 0
        self._shown: dict[str, Outbound] = {}
        self._progress_open = False
        self._reader_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = asyncio.Event()

    async def start(self, on_inbound: InboundHandler) -> None:
        if self._started:
            raise RuntimeError("the terminal adapter can be started once")
        self._started = True
        reader = self._stdin if self._stdin is not None else _stdin_reader(sys.stdin.buffer)
        self._reader_task = asyncio.create_task(self._read(reader, on_inbound), name="terminal-stdin")

    async def stop(self) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._clear_progress()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once stdin hit end of file (or `stop` was called)."""
        await self._closed.wait()

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        self._posted += 1
        message_id = f"t{self._posted}"
        self._show(message_id, None, item)
        return Sent(chat, (message_id,))

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        if not sent.message_ids:
            return await self.send(sent.chat, item)
        message_id = sent.message_ids[-1]
        previous = self._shown.get(message_id)
        if previous != item:
            self._show(message_id, previous, item)
        return Sent(sent.chat, (message_id,))

    # ----- inbound ---------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader, on_inbound: InboundHandler) -> None:
        try:
            while (raw := await _read_line(reader)) is not None:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not text.strip():
                    continue
                try:
                    await on_inbound(self._inbound(text))
                except Exception as error:  # one bad message never ends the session
                    self._write(self._err, f"error: {type(error).__name__}: {error}\n")
        finally:
            self._closed.set()

    def _inbound(self, text: str) -> InboundMessage:
        self._received += 1
        event_id = f"{self._run}-{self._received}"
        return InboundMessage(
            platform="terminal",
            chat_id="local",
            thread_id=None,
            user_id="local",
            user_name=self._user_name,
            message_id=event_id,
            reply_to_id=None,
            text=text,
            sent_at=self._clock.now(),
            is_dm=True,
            mentions_bot=False,
            replies_to_bot=False,
            event_id=event_id,
        )

    # ----- outbound --------------------------------------------------------------------

    def _show(self, message_id: str, previous: Outbound | None, item: Outbound) -> None:
        self._shown[message_id] = item
        if isinstance(item, Progress):
            self._show_progress(item)
            return
        self._clear_progress()
        if isinstance(item, Answer):
            self._show_answer(previous if isinstance(previous, Answer) else None, item)
        elif isinstance(item, ReferenceSummary):
            self._write(self._out, strip_controls(render_summary(item)) + "\n\n")
        elif isinstance(item, Notice):
            self._write(self._out, strip_controls(render_notice(item)) + "\n")
        elif isinstance(item, FileOut):
            path = self._save(item)
            what = "chart" if item.mime.startswith("image/") else "file"
            caption = f" ({_one_line(item.caption)})" if item.caption.strip() else ""
            self._write(self._out, strip_controls(f"saved {what}: {path}{caption}") + "\n")

    def _show_answer(self, old: Answer | None, new: Answer) -> None:
        # Compare what is shown, not what was sent: both sides without control sequences.
        new_text = strip_controls(new.text)
        old_text = strip_controls(old.text) if old is not None else ""
        footer = strip_controls(new.footer) if new.footer else ""
        if old is None:
            text = new_text
        elif new_text == old_text:
            text = ""
        elif not old.final and new_text.startswith(old_text):
            text = new_text[len(old_text) :]  # the usual streaming edit: print what is new
        else:
            text = f"\n{_REVISED}\n{new_text}"
        if new.final:
            if old is None or not old.final or new_text != old_text:
                text += "\n" + (f"{FOOTER_PREFIX}{footer}\n" if footer else "")
            elif footer and new.footer != old.footer:
                text += f"{FOOTER_PREFIX}{footer}\n"
        self._write(self._out, text)

    def _show_progress(self, p: Progress) -> None:
        line = strip_controls(render_progress(p))
        if self._err.isatty():
            self._write(self._err, f"\r{line}{_CLEAR_TO_EOL}")
            self._progress_open = True
        else:
            self._write(self._err, line + "\n")

    def _clear_progress(self) -> None:
        if self._progress_open:
            self._progress_open = False
            self._write(self._err, f"\r{_CLEAR_TO_EOL}")

    def _save(self, item: FileOut) -> Path:
        name = re.sub(r"[^\w.-]+", "_", Path(item.filename).name).strip("._") or "file"
        self._files_dir.mkdir(parents=True, exist_ok=True)
        path = self._files_dir / name
        stem, suffix = path.stem, path.suffix
        copy = 1
        while path.exists():
            path = self._files_dir / f"{stem}-{copy}{suffix}"
            copy += 1
        path.write_bytes(item.data)
        return path

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        if text:
            stream.write(text)
            stream.flush()


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line, however long (StreamReader.readline drops lines past its limit)."""
    parts: list[bytes] = []
    while True:
        try:
            parts.append(await reader.readuntil(b"\n"))
            break
        except asyncio.IncompleteReadError as error:  # end of file
            parts.append(error.partial)
            break
        except asyncio.LimitOverrunError as error:
            parts.append(await reader.readexactly(error.consumed))
    line = b"".join(parts)
    return line or None


def _stdin_reader(source: BinaryIO) -> asyncio.StreamReader:
    """A StreamReader fed from `source` by a daemon thread: works for TTYs, pipes and regular
    files alike, and never keeps the process alive waiting for a line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    threading.Thread(target=_pump, args=(source, reader, loop), name="terminal-stdin", daemon=True).start()
    return reader


def _pump(source: BinaryIO, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    try:
        while line := source.readline():
            loop.call_soon_threadsafe(reader.feed_data, line)
    except (OSError, ValueError, RuntimeError):
        pass  # stdin closed, or the loop is gone
    finally:
        try:
            loop.call_soon_threadsafe(reader.feed_eof)
        except RuntimeError:
            pass
