"""How figures read everywhere a person sees them: dollars and latencies.

One place, so a cost reads the same in a Telegram summary, a Slack footer, a `/moa cost`
report, the digest and `moa-gateway ask`. An unknown figure never reads as zero.
"""

from __future__ import annotations


def format_usd(dollars: float | None, unknown: str = "$?") -> str:
    """`$1,234.50` from a dollar up; `$0.0123` below (model calls cost fractions of a cent);
    `$0.0000031` below a hundredth of a cent, so a tiny call does not read as nothing;
    `$0.00` for exactly nothing; `$?` (or `unknown`) when the figure is missing."""
    if dollars is None:
        return unknown
    sign, amount = ("-" if dollars < 0 else ""), abs(dollars)
    if amount == 0:
        text = "0.00"
    elif amount < 0.0001:
        text = f"{amount:.8f}".rstrip("0")
        if text.endswith("."):  # under half of $0.00000001: still not nothing
            return f"<{sign}$0.00000001"
    elif amount < 1:
        text = f"{amount:.4f}"
    else:
        text = f"{amount:,.2f}"
    return f"{sign}${text}"


def format_latency(ms: int | None) -> str:
    """`850 ms` under a second, `2.4 s` from there; `–` when not measured."""
    if ms is None:
        return "–"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"
