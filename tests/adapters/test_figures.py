"""Dollars and latencies read the same in every chat, report and terminal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.figures import format_latency, format_usd


def test_dollars_at_every_size():
    cases = {
        None: "$?",
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
    assert format_usd(None, unknown="unknown") == "unknown"


@given(st.floats(min_value=1e-12, max_value=1e9, allow_nan=False))
def test_a_known_cost_never_reads_as_nothing(dollars):
    text = format_usd(dollars)
    assert "$" in text and any(d in text for d in "123456789")


def test_latency():
    assert [format_latency(ms) for ms in (None, 0, 999, 1000, 12_345)] == ["–", "0 ms", "999 ms", "1.0 s", "12.3 s"]
