"""Every platform's reference summary shows a partly priced total as the known sum plus the
count of unpriced calls, and a single unknown cost as `unknown`."""

from __future__ import annotations

import json

import pytest

from adapters.contract import ReferenceSummary, SummaryEntry
from adapters.discord.render import summary_embeds
from adapters.slack.render import summary_payload
from adapters.telegram.render import render_summary as telegram_summary
from adapters.terminal import render_summary as terminal_summary

SUMMARY = ReferenceSummary(
    "default",
    "full",
    (
        SummaryEntry(0, "openrouter:priced", "ok", 900, 0.0003, "Priced advice."),
        SummaryEntry(1, "llama:local-a", "ok", 1200, None, "Unpriced advice."),
        SummaryEntry(2, "llama:local-b", "ok", 1300, None, "More unpriced advice."),
    ),
    total_cost_usd=0.0003,
    unpriced=2,
)


def telegram(summary: ReferenceSummary) -> str:
    return "\n".join(f"{part.html}\n{part.plain}" for part in telegram_summary(summary))


def discord(summary: ReferenceSummary) -> str:
    return json.dumps(summary_embeds(summary), ensure_ascii=False)


def slack(summary: ReferenceSummary) -> str:
    return json.dumps(summary_payload(summary).blocks, ensure_ascii=False)


@pytest.mark.parametrize("render", [telegram, discord, slack, terminal_summary])
def test_the_summary_total_says_how_many_calls_are_unpriced(render):
    shown = render(SUMMARY)
    assert "$0.0003 + 2 unpriced" in shown
    assert "unknown" in shown and "$?" not in shown  # the two unpriced entries themselves
    assert "$0.00 " not in shown and "$0.0003 ·" not in shown
