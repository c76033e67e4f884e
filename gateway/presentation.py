"""Turns engine results into the adapter contract's platform-neutral values."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.contract import ReferenceSummary, SummaryEntry
from adapters.figures import format_total
from moa_core.events import ReferenceResult, TurnResult
from moa_core.values import count_unpriced, sum_dollars


def summary_entry(result: ReferenceResult) -> SummaryEntry:
    advice = result.text if result.status == "ok" else (result.error or result.status)
    return SummaryEntry(
        index=result.index,
        label=result.label,
        status=result.status,
        latency_ms=result.latency_ms if result.status != "skipped" else None,
        cost_usd=result.cost.usd,
        advice=advice,
        saw_images=result.saw_images,
    )


def reference_summary(preset: str, mode: str, results: Sequence[ReferenceResult], *,
                      heard: str | None = None) -> ReferenceSummary:
    called = [r.cost for r in results if r.status != "skipped"]  # a skipped slot made no call
    return ReferenceSummary(
        preset=preset,
        mode="compact" if mode == "compact" else "full",
        entries=tuple(summary_entry(r) for r in results),
        total_cost_usd=sum_dollars(called),
        unpriced=count_unpriced(called),
        heard=heard,
    )


def answer_footer(result: TurnResult) -> str:
    refs = {r.label for r in result.references if r.status == "ok"}
    tokens = sum(c.usage.input + c.usage.cache_read + c.usage.cache_write + c.usage.output for c in result.calls)
    estimated = any(c.usage.source != "reported" for c in result.calls if c.status == "ok")
    return (
        f"{result.preset} · {len(refs)} reference{'s' if len(refs) != 1 else ''} · "
        f"{'~' if estimated else ''}{tokens:,} tokens · {format_total(result.total_cost_usd, result.unpriced_calls)} · "
        f"{result.elapsed_ms / 1000:.1f} s"
    )
