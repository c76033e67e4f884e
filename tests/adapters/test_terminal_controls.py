"""Model text cannot drive the user's terminal: control sequences and controls other than
newline and tab never reach it, in the chat adapter and in `moa-gateway ask`."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from adapters.contract import Answer, ChatRef, Notice, Progress, ReferenceSummary, SummaryEntry
from adapters.terminal import TerminalAdapter, strip_controls
from tests.fakes.provider_server import Reply

CHAT = ChatRef("terminal", "local")
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = (
    "Clear\x1b[2J\x1b[H the screen, retitle\x1b]0;pwned\x07 the window, \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\,"
    " reset\x1bc, bell\x07, over\rwrite, back\x08space, 8-bit\x9b2J csi\x9d0;t\x9c, del\x7f.\n\tkept"
)
CLEAN = "Clear the screen, retitle the window, link, reset, bell, overwrite, backspace, 8-bit csi, del.\n\tkept"


def visible(text: str) -> bool:
    """No control character other than newline and tab."""
    return not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F for c in text)


def test_strip_controls_keeps_text_newlines_and_tabs() -> None:
    assert strip_controls(HOSTILE) == CLEAN
    assert strip_controls("é ü 漢 😀 | `code`\n\tx") == "é ü 漢 😀 | `code`\n\tx"


@given(st.text())
def test_strip_controls_leaves_no_control(text: str) -> None:
    assert visible(strip_controls(text))


async def test_the_terminal_adapter_shows_hostile_output_inert() -> None:
    out, err = io.StringIO(), io.StringIO()
    adapter = TerminalAdapter(stdin=asyncio.StreamReader(), out=out, err=err)
    entry = SummaryEntry(0, "a:b\x1b[31m", "ok", 10, 0.001, "advice \x1b]0;t\x07here")
    await adapter.send(CHAT, ReferenceSummary("p", "full", (entry,), 0.001))
    await adapter.send(CHAT, Progress("tool", 1, 1, "fetch_url \x1b[2J"))
    await adapter.send(CHAT, Notice("notice \x1b[2J"))
    # Streamed: an escape sequence split across two edits shows no half of it either.
    sent = await adapter.send(CHAT, Answer(HOSTILE[:10], final=False))  # ends inside "\x1b[2J"
    sent = await adapter.edit(sent, Answer(HOSTILE[:40], final=False))
    await adapter.edit(sent, Answer(HOSTILE, final=True, footer="p · \x1b[2J$0.01"))
    shown = out.getvalue()
    assert visible(shown) and visible(err.getvalue()), repr(shown)
    assert CLEAN in shown and "--- revised ---" not in shown
    assert "advice here" in shown and "notice " in shown and "-- p · $0.01" in shown


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("moa-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


async def test_ask_prints_hostile_output_inert(fake, tmp_path) -> None:
    fake.reply("ref", Reply(text="advice \x1b]0;owned\x07 from a page"))
    fake.reply("agg", Reply(text=HOSTILE, chunk_chars=3))
    config = tmp_path / "moa-gateway.toml"
    config.write_text(f"""
[gateway]
database = "{tmp_path / 'moa.db'}"

[providers.local]
api = "openai"
base_url = "{fake.openai_base}"

[presets.default]
references = ["local:ref"]
aggregator = "local:agg"
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        *console_script(), "ask", "--config", str(config), "hello",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert visible(out.decode()) and visible(err.decode()), repr(out.decode())
    assert "advice  from a page" in out.decode()
