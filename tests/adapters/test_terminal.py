"""The terminal adapter: stdin lines in, plain text out, through the adapter contract."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.contract import (
    Answer,
    ChatRef,
    FileOut,
    InboundMessage,
    Notice,
    Progress,
    ReferenceSummary,
    Sent,
    SummaryEntry,
)
from adapters.terminal import (
    TerminalAdapter,
    _pump,
    render_progress,
    render_summary,
)

CHAT = ChatRef("terminal", "local")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def make(
    tmp_path: Path | None = None, *, stdin: asyncio.StreamReader | None = None, err: io.StringIO | None = None
):
    out = io.StringIO()
    err = err if err is not None else io.StringIO()
    adapter = TerminalAdapter(
        stdin=stdin or asyncio.StreamReader(),
        out=out,
        err=err,
        user_name="ada",
        files_dir=tmp_path or Path("."),
        clock=FixedClock(),
    )
    return adapter, out, err


SUMMARY = ReferenceSummary(
    preset="deep",
    mode="compact",
    entries=(
        SummaryEntry(
            0, "openrouter:openai/gpt-5.1", "ok", 812, 0.0031, "Use a binary search.\nIt is O(log n)."
        ),
        SummaryEntry(1, "local:llama", "ok", 1500, None, "Consider   caching " + "word " * 100),
        SummaryEntry(2, "groq:mixtral", "timeout", 120_000, 0.0, "timed out after 120 s"),
        SummaryEntry(3, "openai:gpt-4o", "failed", 95, None, "HTTP 500 from provider"),
        SummaryEntry(4, "moa:other", "skipped", None, None, "moa: presets cannot be references"),
    ),
    total_cost_usd=None,
)


# --- inbound -------------------------------------------------------------------------------


async def test_each_stdin_line_becomes_a_local_dm_until_eof() -> None:
    reader = asyncio.StreamReader()
    adapter, _, _ = make(stdin=reader)
    received: list[InboundMessage] = []

    async def on_inbound(message: InboundMessage) -> None:
        received.append(message)

    await adapter.start(on_inbound)  # returns at once: nothing fed yet
    reader.feed_data("hello there\n\n   \nsecond line, ünïcödé 😀\r\n/moa presets".encode())
    reader.feed_eof()
    await asyncio.wait_for(adapter.wait_closed(), 2)

    assert [m.text for m in received] == ["hello there", "second line, ünïcödé 😀", "/moa presets"]
    first = received[0]
    assert (first.platform, first.chat_id, first.thread_id, first.user_id) == (
        "terminal",
        "local",
        None,
        "local",
    )
    assert first.user_name == "ada"
    assert first.is_dm and not first.mentions_bot and not first.replies_to_bot
    assert first.sent_at == NOW
    assert len({m.event_id for m in received}) == 3
    assert len({m.message_id for m in received}) == 3
    assert [m.event_id.rsplit("-", 1)[1] for m in received] == ["1", "2", "3"]


async def test_event_ids_differ_between_runs() -> None:
    ids = []
    for _ in range(2):
        reader = asyncio.StreamReader()
        adapter, _, _ = make(stdin=reader)
        seen: list[InboundMessage] = []

        async def on_inbound(message: InboundMessage, seen=seen) -> None:
            seen.append(message)

        await adapter.start(on_inbound)
        reader.feed_data(b"hi\n")
        reader.feed_eof()
        await adapter.wait_closed()
        ids.append(seen[0].event_id)
    assert ids[0] != ids[1]


async def test_a_line_longer_than_the_reader_limit_arrives_whole() -> None:
    reader = asyncio.StreamReader(limit=1024)
    adapter, _, _ = make(stdin=reader)
    received: list[str] = []

    async def on_inbound(message: InboundMessage) -> None:
        received.append(message.text)

    await adapter.start(on_inbound)
    reader.feed_data(b"x" * 5000 + b"\nshort\n" + b"y" * 3000)
    reader.feed_eof()
    await adapter.wait_closed()
    assert received == ["x" * 5000, "short", "y" * 3000]


async def test_a_failing_handler_does_not_end_the_session() -> None:
    reader = asyncio.StreamReader()
    adapter, _, err = make(stdin=reader)
    received: list[str] = []

    async def on_inbound(message: InboundMessage) -> None:
        if message.text == "boom":
            raise RuntimeError("bad message")
        received.append(message.text)

    await adapter.start(on_inbound)
    reader.feed_data(b"boom\nafter\n")
    reader.feed_eof()
    await adapter.wait_closed()
    assert received == ["after"]
    assert "bad message" in err.getvalue()


async def test_stop_ends_reading_and_releases_wait_closed() -> None:
    adapter, _, _ = make()

    async def on_inbound(message: InboundMessage) -> None:
        raise AssertionError("no input was fed")

    await adapter.start(on_inbound)
    waiter = asyncio.create_task(adapter.wait_closed())
    await asyncio.sleep(0)
    assert not waiter.done()
    await adapter.stop()
    await asyncio.wait_for(waiter, 1)
    with pytest.raises(RuntimeError):
        await adapter.start(on_inbound)  # started once already


async def test_stdin_pump_feeds_lines_then_eof() -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(_pump, io.BytesIO(b"one\ntwo"), reader, loop)
    await asyncio.sleep(0)
    assert await reader.read() == b"one\ntwo"


# --- outbound: answers ---------------------------------------------------------------------


async def test_streaming_edits_print_the_answer_exactly_once() -> None:
    adapter, out, _ = make()
    full = "The answer is **42**.\n\n```python\nprint(42)\n```\nDone."
    steps = [full[:n] for n in (3, 10, 11, 25, 40, len(full))]
    sent = await adapter.send(CHAT, Answer(steps[0], final=False))
    for text in steps[1:]:
        sent = await adapter.edit(sent, Answer(text, final=False))
    sent = await adapter.edit(sent, Answer(full, final=False))  # identical: no-op
    sent = await adapter.edit(sent, Answer(full, final=True, footer="deep · 2 references · $0.0131 · 2.4 s"))
    await adapter.edit(sent, Answer(full, final=True, footer="deep · 2 references · $0.0131 · 2.4 s"))
    assert out.getvalue() == full + "\n-- deep · 2 references · $0.0131 · 2.4 s\n"


async def test_a_final_answer_sent_at_once_ends_with_a_newline() -> None:
    adapter, out, _ = make()
    await adapter.send(CHAT, Answer("Plain answer."))
    assert out.getvalue() == "Plain answer.\n"


async def test_an_edit_that_rewrites_the_answer_prints_it_again_after_a_separator() -> None:
    adapter, out, _ = make()
    sent = await adapter.send(CHAT, Answer("Draft one", final=False))
    sent = await adapter.edit(sent, Answer("Second draft", final=False))
    sent = await adapter.edit(sent, Answer("Second draft, longer", final=True))
    printed = out.getvalue()
    assert printed.startswith("Draft one\n")
    assert printed.count("Second draft") == 1
    assert printed.endswith("\n--- revised ---\nSecond draft, longer\n")


async def test_edits_track_each_message_separately() -> None:
    adapter, out, _ = make()
    a = await adapter.send(CHAT, Answer("A", final=False))
    b = await adapter.send(CHAT, Answer("B", final=False))
    assert a.message_ids != b.message_ids
    await adapter.edit(a, Answer("A1", final=False))
    await adapter.edit(b, Answer("B2", final=False))
    assert out.getvalue() == "AB12"


async def test_edit_of_an_empty_sent_is_a_send() -> None:
    adapter, out, _ = make()
    sent = await adapter.edit(Sent(CHAT, ()), Notice("hello"))
    assert sent.message_ids and out.getvalue() == "hello\n"


# --- outbound: summary, notices, progress, files ---------------------------------------------


def test_summary_shows_every_reference_its_status_latency_and_cost() -> None:
    text = render_summary(SUMMARY)
    lines = text.splitlines()
    assert "deep" in lines[0] and "unknown" in lines[0]
    for entry in SUMMARY.entries:
        assert entry.label in text
    assert "[1/5] openrouter:openai/gpt-5.1 — ok · 812 ms · $0.0031" in lines
    assert "[2/5] local:llama — ok · 1.5 s · unknown" in lines
    assert "[3/5] groq:mixtral — timeout · 120.0 s · $0.00" in lines
    assert "[4/5] openai:gpt-4o — failed · 95 ms · unknown" in lines
    assert "[5/5] moa:other — skipped · unknown" in lines
    assert "    HTTP 500 from provider" in lines
    assert "    timed out after 120 s" in lines


def test_compact_summary_gives_each_advice_one_short_line() -> None:
    lines = render_summary(SUMMARY, width=60).splitlines()
    assert "    Use a binary search. It is O(log n)." in lines
    caching = next(line for line in lines if "caching" in line)
    assert caching.startswith("    Consider caching word")
    assert caching.endswith("…") and len(caching) <= 60
    assert len(lines) == 1 + 2 * len(SUMMARY.entries)  # failures and skips say why, on one line


def test_full_summary_keeps_line_breaks_and_cuts_long_advice() -> None:
    long = "para " * 600
    summary = ReferenceSummary(
        "default",
        "full",
        (
            SummaryEntry(0, "a:b", "ok", 10, 0.25, "Line one.\n\nLine two."),
            SummaryEntry(1, "c:d", "ok", 10, 1234.5, long),
            SummaryEntry(2, "e:f", "ok", 10, 0.001, "   "),
        ),
        total_cost_usd=1234.751,
    )
    text = render_summary(summary)
    assert "    Line one.\n\n    Line two." in text
    assert "$1,234.50" in text and "$1,234.75" in text and "$0.2500" in text
    long_line = next(line for line in text.splitlines() if line.startswith("    para"))
    assert 1_000 < len(long_line) <= 1_500 + 4 and long_line.endswith("…")
    assert "    (no advice)" in text


def test_progress_renders_one_line() -> None:
    assert render_progress(Progress("references", 2, 3)) == "references 2/3"
    assert (
        render_progress(Progress("references", 3, 3, "gpt-5.1\ntimed out"))
        == "references 3/3 · gpt-5.1 timed out"
    )
    assert render_progress(Progress("aggregating", 0, 0)) == "aggregating"
    assert render_progress(Progress("tool", 1, 0, "fetch_url")) == "tool · fetch_url"


async def test_summary_and_notices_go_to_out() -> None:
    adapter, out, err = make()
    await adapter.send(CHAT, SUMMARY)
    await adapter.send(CHAT, Notice("3 presets"))
    await adapter.send(CHAT, Notice("over budget", "warning"))
    await adapter.send(CHAT, Notice("provider down", "error"))
    printed = out.getvalue()
    assert printed.startswith(render_summary(SUMMARY) + "\n\n")
    assert printed.endswith("3 presets\nwarning: over budget\nerror: provider down\n")
    assert err.getvalue() == ""


async def test_progress_on_a_pipe_is_plain_lines() -> None:
    adapter, out, err = make()
    sent = await adapter.send(CHAT, Progress("references", 0, 2))
    sent = await adapter.edit(sent, Progress("references", 1, 2))
    sent = await adapter.edit(sent, Progress("references", 1, 2))  # unchanged: no-op
    await adapter.edit(sent, Progress("aggregating", 0, 0))
    assert err.getvalue() == "references 0/2\nreferences 1/2\naggregating\n"
    assert out.getvalue() == ""


async def test_progress_on_a_tty_is_rewritten_in_place_and_cleared_before_output() -> None:
    tty = TTY()
    adapter, out, err = make(err=tty)
    sent = await adapter.send(CHAT, Progress("references", 0, 2))
    await adapter.edit(sent, Progress("references", 2, 2))
    await adapter.send(CHAT, Answer("ok"))
    assert tty.getvalue() == "\rreferences 0/2\x1b[K\rreferences 2/2\x1b[K\r\x1b[K"
    assert "\n" not in tty.getvalue()
    assert out.getvalue() == "ok\n"


async def test_file_is_saved_under_files_dir(tmp_path: Path) -> None:
    target = tmp_path / "charts"
    adapter, out, _ = make(target)
    png = b"\x89PNG\r\n\x1a\nfake"
    await adapter.send(CHAT, FileOut("digest.png", png, caption="Spend this week"))
    await adapter.send(CHAT, FileOut("../../etc/digest.png", b"second"))
    await adapter.send(CHAT, FileOut("report.csv", b"a,b\n", mime="text/csv"))
    assert (target / "digest.png").read_bytes() == png
    assert (target / "digest-1.png").read_bytes() == b"second"
    assert (target / "report.csv").read_bytes() == b"a,b\n"
    assert out.getvalue().splitlines() == [
        f"saved chart: {target / 'digest.png'} (Spend this week)",
        f"saved chart: {target / 'digest-1.png'}",
        f"saved file: {target / 'report.csv'}",
    ]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "digest-1.png",
        "digest.png",
        "report.csv",
    ]


def test_limits_and_platform() -> None:
    assert TerminalAdapter.platform == "terminal"
    assert TerminalAdapter.limits.max_message_chars == 1_000_000
    assert TerminalAdapter.limits.edit_interval_s == 0.05
