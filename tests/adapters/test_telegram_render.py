"""Rendering for Telegram: Markdown to Telegram HTML, the batched summary, splitting (no network).

Telegram's own acceptance is played by the fake server's HTML checker (`parse_html`): unknown or
unbalanced tags are refused there exactly as "can't parse entities" would be.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.contract import Answer, Notice, Progress, ReferenceSummary, SummaryEntry
from adapters.telegram.markup import markdown_to_html
from adapters.telegram.render import (
    render_answer,
    render_notice,
    render_progress,
    render_summary,
)
from adapters.text import utf16_len
from tests.fakes.telegram_server import parse_html


def visible(html: str) -> str:
    return parse_html(html)[0]


def test_markdown_constructs():
    md = (
        "# Title\n"
        "Some **bold**, *italic*, _also italic_, ~~gone~~ and `a < b` code.\n"
        "- item one\n"
        "* item two with [a link](https://example.com/a?b=1&c=2)\n"
        "> quoted **words**\n"
        "```python\n"
        "if a < b and c > d:\n"
        "    print('&')\n"
        "```\n"
        "snake_case_name and 2 * 3 * 4 stay as they are"
    )
    html = markdown_to_html(md)
    assert "<b>Title</b>" in html
    assert "<b>bold</b>" in html and "<i>italic</i>" in html and "<i>also italic</i>" in html
    assert "<s>gone</s>" in html and "<code>a &lt; b</code>" in html
    assert "• item one" in html and "• item two" in html
    assert '<a href="https://example.com/a?b=1&amp;c=2">a link</a>' in html
    assert "<blockquote>quoted <b>words</b></blockquote>" in html
    assert (
        "<pre><code class=\"language-python\">if a &lt; b and c &gt; d:\n    print('&amp;')\n</code></pre>"
        not in html
    )
    assert (
        "<pre><code class=\"language-python\">if a &lt; b and c &gt; d:\n    print('&amp;')</code></pre>"
        in html
    )
    assert "snake_case_name and 2 * 3 * 4 stay as they are" in html
    parse_html(html)


def test_html_in_the_model_output_is_escaped_not_obeyed():
    html = markdown_to_html("<b>not bold</b> <script>x</script> & done")
    assert visible(html) == "<b>not bold</b> <script>x</script> & done"
    assert "<script>" not in html


def test_unsafe_link_stays_text():
    html = markdown_to_html("[click](javascript:alert(1))")
    assert "<a " not in html


def test_unclosed_fence_of_a_streamed_answer_runs_to_the_end():
    html = markdown_to_html("Here:\n```js\nconst a = 1;\nconst b")
    assert html.endswith('<pre><code class="language-js">const a = 1;\nconst b</code></pre>')
    parse_html(html)


markdownish = st.text(alphabet=list("ab *_`~[]()#>-+\n<&é🎉/:."), max_size=300)


@settings(max_examples=400, deadline=None)
@given(markdownish)
def test_any_markdown_gives_html_telegram_accepts_and_no_longer_than_the_source(md):
    html = markdown_to_html(md)
    shown = visible(html)  # raises on unbalanced or unknown tags
    assert utf16_len(shown) <= utf16_len(md)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "Some prose with **bold** and `code` 🎉.",
                "```python\nfor i in range(10):\n    print(i)  # 🎉\n```",
                "- a list item with *emphasis*",
                "## A heading",
                "x" * 700,
                "",
            ]
        ),
        min_size=1,
        max_size=60,
    )
)
def test_answer_parts_fit_telegram_and_keep_code_blocks_whole(blocks):
    md = "\n\n".join(blocks)
    for part in render_answer(Answer(md)):
        assert part.html is not None
        assert utf16_len(visible(part.html)) <= 4096
        assert utf16_len(part.plain) <= 4096
        assert part.html.count("<pre") == part.html.count("</pre>")


def code_heavy_answer(size: int = 10_000) -> str:
    blocks = []
    n = 0
    while sum(len(b) + 2 for b in blocks) < size:
        n += 1
        blocks.append(f"Step {n}: we compute the **{n}th** value 🎉 with `f({n})` as shown below.")
        blocks.append(
            "```python\n"
            + "\n".join(f"value_{n}_{i} = compute({n}, {i})  # 🎉 ok" for i in range(12))
            + "\n```"
        )
    return "\n\n".join(blocks)


def test_ten_thousand_character_answer_with_code_splits_within_4096_utf16_units():
    md = code_heavy_answer()
    assert len(md) >= 10_000
    parts = render_answer(Answer(md, footer="3 references · 1,234 tokens · $0.0123 · 9.1 s"))
    assert len(parts) >= 3
    code_lines = []
    for part in parts:
        assert part.html is not None
        shown = visible(part.html)
        assert utf16_len(shown) <= 4096
        assert part.html.count("<pre") == part.html.count("</pre>") >= 1
        for block in part.html.split('<pre><code class="language-python">')[1:]:
            code_lines += block.split("</code></pre>")[0].split("\n")
    expected = [line for line in md.split("\n") if line.startswith("value_")]
    assert code_lines == expected  # every code line kept, in order, inside a code block
    assert visible(parts[-1].html).endswith("$0.0123 · 9.1 s")


def test_empty_streaming_answer_is_a_placeholder():
    parts = render_answer(Answer("", final=False))
    assert [part.plain for part in parts] == ["…"]


def entry(index: int, advice: str, **kw) -> SummaryEntry:
    values = {"label": f"openrouter:model-{index}", "status": "ok", "latency_ms": 1234, "cost_usd": 0.0031}
    values.update(kw)
    return SummaryEntry(index=index, advice=advice, **values)


def test_summary_is_one_message_with_an_expandable_blockquote_per_reference():
    summary = ReferenceSummary(
        preset="default",
        mode="full",
        entries=(
            entry(0, "Use a <dict> & cache it."),
            entry(1, "", status="timeout", latency_ms=None, cost_usd=None),
            entry(2, "provider said 500", status="failed", latency_ms=80, cost_usd=0.0),
        ),
        total_cost_usd=None,
    )
    [part] = render_summary(summary)
    assert part.html is not None
    assert part.html.count("<blockquote expandable>") == 3
    shown = visible(part.html)
    assert "openrouter:model-0 · ✅ ok · 1.2 s · $0.0031\nUse a <dict> & cache it." in shown
    assert "openrouter:model-1 · ⏱ timeout · – · unknown" in shown
    assert "openrouter:model-2 · ❌ failed · 80 ms · $0" in shown
    assert shown.startswith("🧩 3 references · preset default · unknown")
    assert "<b>openrouter:model-0</b>" in part.html


def test_long_advice_is_shortened_so_the_whole_summary_fits():
    entries = tuple(entry(i, ("🎉 advice " * 900) + f"END{i}") for i in range(5))
    entries += (entry(5, "short and whole"),)
    [part] = render_summary(ReferenceSummary("deep", "full", entries, 0.5))
    shown = visible(part.html)
    assert 3900 < utf16_len(shown) <= 4096
    assert "short and whole" in shown
    assert shown.count("…") == 5


def test_compact_summary_is_shorter():
    entries = tuple(entry(i, "word " * 400) for i in range(3))
    full = visible(render_summary(ReferenceSummary("p", "full", entries, 0.1))[0].html)
    compact = visible(render_summary(ReferenceSummary("p", "compact", entries, 0.1))[0].html)
    assert utf16_len(compact) < utf16_len(full)
    for block in compact.split("\n")[1:]:
        assert utf16_len(block) <= 280


def test_summary_with_very_many_references_still_fits():
    entries = tuple(entry(i, "x" * 500, label="provider:" + "m" * 200) for i in range(120))
    [part] = render_summary(ReferenceSummary("huge", "full", entries, None))
    shown = visible(part.html)
    assert utf16_len(shown) <= 4096
    assert "more" in shown.splitlines()[-1]


def test_notice_and_progress_are_escaped():
    [notice] = render_notice(Notice("budget <left>: $0 & counting", level="warning"))
    assert visible(notice.html) == "⚠️ budget <left>: $0 & counting"
    [progress] = render_progress(Progress("references", 2, 3, detail="<b>x</b>"))
    assert visible(progress.html) == "⏳ Asking references… 2/3 · <b>x</b>"
