"""Dollars and latencies read the same in every chat, report and terminal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.figures import format_latency, format_total, format_usd


def test_dollars_at_every_size():
    cases = {
        None: "unknown",
        0.0: "$0.00",
        0.000_003_15: "$0.00000315",
        0.000_000_001: "<$0.00000001",  # not nothing, though too small to print
        0.0042: "$0.0042",
        0.25: "$0.2500",
        1.0: "$1.00",
        1234.5: "$1,234.50",
        -0.5: "-$0.5000",
    }
    assert {value: format_usd(value) for value in cases} == cases
    assert format_usd(None, unknown="?") == "?"


@given(st.floats(min_value=1e-12, max_value=1e9, allow_nan=False))
def test_a_known_cost_never_reads_as_nothing(dollars):
    text = format_usd(dollars)
    assert "$" in text and any(d in text for d in "123456789")


def test_latency():
    assert [format_latency(ms) for ms in (None, 0, 999, 1000, 12_345)] == ["–", "0 ms", "999 ms", "1.0 s", "12.3 s"]


def test_totals_count_the_unpriced_calls():
    assert format_total(0.0003, 0) == "$0.0003"
    assert format_total(0.0003, 2) == "$0.0003 + 2 unpriced"
    assert format_total(0.0, 1) == "$0.00 + 1 unpriced"  # local models at zero, one unpriced
    assert format_total(None, 3) == "unknown (3 unpriced)"
    assert format_total(None, 0) == "unknown"


@given(st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)), st.integers(min_value=1, max_value=10_000))
def test_a_partly_priced_total_never_reads_as_a_plain_number(dollars, unpriced):
    text = format_total(dollars, unpriced)
    assert text.endswith(f"{unpriced} unpriced") or text.endswith(f"{unpriced} unpriced)")
