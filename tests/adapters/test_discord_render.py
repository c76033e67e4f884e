"""Discord rendering: answer splitting, embeds within Discord's limits (pure, no network)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.contract import Answer, FileOut, Notice, Progress, ReferenceSummary, SummaryEntry
from adapters.discord.render import (
    EMBEDS_TOTAL,
    FIELD_NAME,
    FIELD_VALUE,
    FIELDS_PER_EMBED,
    answer_chunks,
    close_fences,
    embeds_length,
    render,
    summary_embeds,
)


def entry(i: int, status: str = "ok", advice: str = "Use a monad.", **kw: object) -> SummaryEntry:
    values: dict[str, object] = dict(
        index=i, label=f"openrouter:model-{i}", status=status, latency_ms=812, cost_usd=0.0031, advice=advice
    )
    values.update(kw)
    return SummaryEntry(**values)  # type: ignore[arg-type]


def summary(*entries: SummaryEntry, mode: str = "full", total: float | None = 0.01) -> ReferenceSummary:
    return ReferenceSummary(preset="deep", mode=mode, entries=entries, total_cost_usd=total)  # type: ignore[arg-type]


def fields_of(embeds: list[dict]) -> list[dict]:
    return [f for e in embeds for f in e.get("fields", ())]


def assert_within_discord_limits(embeds: list[dict]) -> None:
    assert 1 <= len(embeds) <= 10
    assert embeds_length(embeds) <= EMBEDS_TOTAL
    for embed in embeds:
        assert len(embed.get("fields", ())) <= FIELDS_PER_EMBED
        assert len(embed.get("title", "")) <= 256
        for field in embed.get("fields", ()):
            assert 0 < len(field["name"]) <= FIELD_NAME
            assert 0 < len(field["value"]) <= FIELD_VALUE


def test_one_field_per_reference_with_status_latency_cost_and_advice() -> None:
    embeds = summary_embeds(
        summary(
            entry(1, advice="Prefer `Maybe`."),
            entry(2, status="timeout", latency_ms=120000, cost_usd=None, advice=""),
            entry(3, status="failed", latency_ms=None, cost_usd=0.0, advice="HTTP 500 from provider"),
        )
    )
    assert embeds[0]["title"] == "MoA references · deep"
    fields = fields_of(embeds)
    assert [f["name"] for f in fields] == [
        "1. openrouter:model-1",
        "2. openrouter:model-2",
        "3. openrouter:model-3",
    ]
    assert fields[0]["value"] == "✅ ok · 812 ms · $0.0031\nPrefer `Maybe`."
    assert fields[1]["value"] == "⏱️ timeout · 120.0 s · unknown"
    assert fields[2]["value"] == "❌ failed · – · $0.00\nHTTP 500 from provider"
    assert embeds[-1]["footer"]["text"] == "3 references · total $0.0100"
    assert_within_discord_limits(embeds)


def test_long_advice_is_shortened_to_the_field_limit() -> None:
    embeds = summary_embeds(summary(entry(1, advice="word " * 1000)))
    value = fields_of(embeds)[0]["value"]
    assert len(value) <= FIELD_VALUE and value.endswith("…")
    assert_within_discord_limits(embeds)


def test_many_long_advices_share_the_6000_characters() -> None:
    embeds = summary_embeds(summary(*(entry(i, advice="x " * 2000) for i in range(1, 9))))
    fields = fields_of(embeds)
    assert len(fields) == 8
    assert all("\n" in f["value"] for f in fields)  # everyone keeps some advice
    assert_within_discord_limits(embeds)


def test_short_advice_leaves_room_for_the_long_one() -> None:
    embeds = summary_embeds(
        summary(entry(1, advice="ok"), *(entry(i, advice="y" * 5000) for i in range(2, 8)))
    )
    fields = fields_of(embeds)
    assert fields[0]["value"].endswith("\nok")
    assert_within_discord_limits(embeds)


def test_more_than_25_references_use_several_embeds() -> None:
    embeds = summary_embeds(summary(*(entry(i, advice="short") for i in range(1, 41))))
    assert [len(e["fields"]) for e in embeds] == [25, 15]
    assert "title" in embeds[0] and "title" not in embeds[1]
    assert "footer" in embeds[-1] and "footer" not in embeds[0]
    assert_within_discord_limits(embeds)


def test_references_past_discords_limits_are_counted_not_lost_silently() -> None:
    embeds = summary_embeds(summary(*(entry(i, label="L" * 200) for i in range(1, 300))))
    assert_within_discord_limits(embeds)
    shown = len(fields_of(embeds))
    assert shown < 299
    assert f"{299 - shown} not shown" in embeds[-1]["footer"]["text"]


def test_compact_mode_keeps_one_line_of_advice() -> None:
    embeds = summary_embeds(
        summary(entry(1, advice="\nFirst line.\nSecond line.\n" + "z" * 500), mode="compact")
    )
    assert fields_of(embeds)[0]["value"] == "✅ ok · 812 ms · $0.0031\nFirst line."


def test_a_code_fence_cut_by_shortening_is_closed() -> None:
    advice = "Try this:\n```python\n" + "print('x')\n" * 300 + "```\nDone."
    value = fields_of(summary_embeds(summary(entry(1, advice=advice))))[0]["value"]
    assert value.count("```") % 2 == 0 and len(value) <= FIELD_VALUE


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=0, max_size=300),
            st.sampled_from(["ok", "failed", "timeout", "skipped"]),
            st.text(max_size=3000),
            st.one_of(st.none(), st.floats(min_value=0, max_value=50)),
        ),
        min_size=0,
        max_size=60,
    ),
    st.sampled_from(["full", "compact"]),
)
def test_summary_always_fits_discord(raw: list[tuple[str, str, str, float | None]], mode: str) -> None:
    entries = tuple(
        SummaryEntry(index=i, label=label, status=status, latency_ms=i * 10, cost_usd=cost, advice=advice)  # type: ignore[arg-type]
        for i, (label, status, advice, cost) in enumerate(raw, start=1)
    )
    embeds = summary_embeds(
        ReferenceSummary(preset="p" * 300, mode=mode, entries=entries, total_cost_usd=None)
    )  # type: ignore[arg-type]
    assert_within_discord_limits(embeds)


FIVE_THOUSAND = (
    "Here is the plan.\n\n"
    + "Some prose that explains the idea in detail. " * 30
    + "\n\n```python\n"
    + "".join(f"value_{i} = compute({i})  # step {i}\n" for i in range(80))
    + "```\n\n"
    + "And a conclusion that wraps it all up nicely. " * 25
)


def test_five_thousand_character_answer_is_split_without_breaking_code() -> None:
    assert len(FIVE_THOUSAND) >= 5000
    chunks = answer_chunks(Answer(FIVE_THOUSAND, footer="2 refs · 1,234 tokens · $0.0123 · 8.1 s"))
    assert len(chunks) >= 3
    for chunk in chunks:
        assert len(chunk) <= 2000
        assert chunk.count("```") % 2 == 0  # every message closes what it opens
    text = "\n".join(chunks)
    for i in range(80):
        assert f"value_{i} = compute({i})" in text
    assert chunks[-1].endswith("-# 2 refs · 1,234 tokens · $0.0123 · 8.1 s")


def test_a_streamed_answer_with_an_open_fence_renders_closed() -> None:
    assert close_fences("x\n```py\nprint(1)") == "x\n```py\nprint(1)\n```"
    assert close_fences("x\n```py\nprint(1)\n```\nafter") == "x\n```py\nprint(1)\n```\nafter"
    assert answer_chunks(Answer("", final=False)) == ["…"]


def test_notice_progress_and_file_parts() -> None:
    assert render(Notice("Budget reached", level="warning"))[0].content == "⚠️ Budget reached"
    assert render(Progress("references", 2, 3))[0].content == "⏳ Asking the reference models… 2/3"
    part = render(FileOut("chart.png", b"\x89PNG", caption="Weekly digest"))[0]
    assert part.content == "Weekly digest" and part.file is not None
    assert render(Answer("same"))[0].fingerprint() == render(Answer("same"))[0].fingerprint()
    assert render(Answer("same"))[0].fingerprint() != render(Answer("other"))[0].fingerprint()
