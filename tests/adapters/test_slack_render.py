"""Outbound values -> Slack mrkdwn and blocks, within Slack's limits."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.contract import Notice, Progress, ReferenceSummary, SummaryEntry
from adapters.slack.render import (
    MAX_BLOCKS,
    SECTION_CHARS,
    answer_chunks,
    markdown_to_mrkdwn,
    notice_chunks,
    progress_text,
    summary_payload,
)
from adapters.text import utf16_len


def test_markdown_becomes_mrkdwn() -> None:
    md = (
        "## Plan **now**\n"
        "Use **bold**, *italic*, ~~old~~ and `a<b` with [the docs](https://x.io/?a=1&b=2).\n"
        "- one\n"
        "* two\n"
        "> quoted & fine\n"
        "Tom & Jerry <script>\n"
    )
    assert markdown_to_mrkdwn(md).split("\n") == [
        "*Plan now*",
        "Use *bold*, _italic_, ~old~ and `a&lt;b` with <https://x.io/?a=1&amp;b=2|the docs>.",
        "• one",
        "• two",
        "> quoted &amp; fine",
        "Tom &amp; Jerry &lt;script&gt;",
        "",
    ]


def test_code_fences_are_kept_and_closed() -> None:
    md = "Intro **x**\n```python\nif a < b and **c**:\n    pass\n```\nafter"
    assert markdown_to_mrkdwn(md) == "Intro *x*\n```\nif a &lt; b and **c**:\n    pass\n```\nafter"
    assert markdown_to_mrkdwn("```\nopen").endswith("\n```")


def test_tables_become_code_blocks() -> None:
    out = markdown_to_mrkdwn("| a | b |\n|---|---|\n| 1 | 2 |")
    assert out == "```\n| a | b |\n| 1 | 2 |\n```"


def test_long_answer_is_split_within_the_limit_with_footer_last() -> None:
    md = ("Paragraph with **bold** & text. " * 40 + "\n\n") * 12 + "```\n" + "code line\n" * 300 + "```"
    chunks = answer_chunks(md, limit=4000, footer="3 references · $0.01 · 12 s")
    assert len(chunks) > 3
    assert all(utf16_len(c) <= 4000 for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert chunks[-1].endswith("_3 references · $0.01 · 12 s_")


@settings(max_examples=120, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab &<>*_~`[]()#-\n|é😀")), max_size=3000), st.integers(20, 600))
def test_chunks_always_fit(md: str, limit: int) -> None:
    for chunk in answer_chunks(md, limit=limit):
        assert utf16_len(chunk) <= limit


def entry(i: int, status: str = "ok", advice: str = "advice " * 1000) -> SummaryEntry:
    return SummaryEntry(i, f"openrouter:model-{i}", status, 1500 + i, 0.0042 if i % 2 else None, advice)  # type: ignore[arg-type]


def test_summary_is_a_header_and_one_section_per_reference() -> None:
    summary = ReferenceSummary(
        "deep", "full", (entry(0), entry(1, "timeout", ""), entry(2, "failed", "boom")), 0.0084
    )
    payload = summary_payload(summary)
    blocks = payload.blocks or ()
    assert blocks[0]["type"] == "header"
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) == 3
    assert sections[0]["text"]["text"].startswith("*openrouter:model-0* · :white_check_mark: ok · 1.5 s · unknown")
    assert "$0.0042" in sections[1]["text"]["text"] and "timeout" in sections[1]["text"]["text"]
    assert "boom" in sections[2]["text"]["text"]
    assert all(len(s["text"]["text"]) <= SECTION_CHARS for s in sections)
    assert blocks[-1]["type"] == "context" and "$0.0084" in blocks[-1]["elements"][0]["text"]
    assert "openrouter:model-1: timeout" in payload.text


def test_summary_never_exceeds_fifty_blocks() -> None:
    summary = ReferenceSummary("wide", "compact", tuple(entry(i) for i in range(80)), None)
    blocks = summary_payload(summary).blocks or ()
    assert len(blocks) <= MAX_BLOCKS
    assert "openrouter:model-79" in blocks[-2]["text"]["text"]
    assert all(len(b["text"]["text"]) <= SECTION_CHARS for b in blocks if b["type"] == "section")


def test_short_lines() -> None:
    assert progress_text(Progress("references", 2, 3)) == ":hourglass_flowing_sand: _References 2/3_"
    assert notice_chunks(Notice("Only admins <here>", "error")) == [":x: Only admins &lt;here&gt;"]


@settings(max_examples=120, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab &<>*_~`[]()#-\n|>")), max_size=400))
@example("[<](<)")  # once turned into a Slack link to "<"
def test_mrkdwn_fences_pair_up_and_nothing_is_left_unescaped(md: str) -> None:
    out = markdown_to_mrkdwn(md)
    assert sum(1 for line in out.split("\n") if line == "```") % 2 == 0
    # Every '<' left is one of ours: a link we built.
    assert "<" not in out.replace("<http", "").replace("<mailto", "")


def test_only_absolute_web_and_mail_links_become_slack_links() -> None:
    assert markdown_to_mrkdwn("[docs](https://x.y/a_b) and [mail](mailto:a@b.c)") == (
        "<https://x.y/a_b|docs> and <mailto:a@b.c|mail>")
    assert markdown_to_mrkdwn("[a](<https://x.y>)") == "<https://x.y|a>"
    assert markdown_to_mrkdwn("[a](relative/page) [b](javascript:x)") == "[a](relative/page) [b](javascript:x)"
