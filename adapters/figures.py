"""How figures read everywhere a person sees them: dollars and latencies.

One place, so a cost reads the same in a Telegram summary, a Slack footer, a `/moa cost`
report, the digest and `moa-gateway ask`. An unknown figure never reads as zero: a single
unknown cost reads `unknown`, and a total over calls some of which had no price reads as the
known sum plus their count (`$0.0003 + 2 unpriced`), never as a bare `$0.00`.
"""

from __future__ import annotations


def format_usd(dollars: float | None, unknown: str = "unknown") -> str:
    """`$1,234.50` from a dollar up; `$0.0123` below (model calls cost fractions of a cent);
    `$0.0000031` below a hundredth of a cent, so a tiny call does not read as nothing;
    `$0.00` for exactly nothing; `unknown` when the figure is missing."""
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


def format_total(dollars: float | None, unpriced: int = 0) -> str:
    """A total over calls: `dollars` is the sum of the priced ones (None when none was priced),
    `unpriced` how many had no price. `$0.0003`, `$0.0003 + 2 unpriced`, `unknown (2 unpriced)`."""
    if unpriced <= 0:
        return format_usd(dollars)
    if dollars is None:
        return f"unknown ({unpriced} unpriced)"
    return f"{format_usd(dollars)} + {unpriced} unpriced"


def json_usd(dollars: float | None) -> float | None:
    """Dollars for JSON: 10 significant digits (0.00014, not 0.00014000000000000001); None stays."""
    return None if dollars is None else float(f"{dollars:.10g}")


def format_latency(ms: int | None) -> str:
    """`850 ms` under a second, `2.4 s` from there; `–` when not measured."""
    if ms is None:
        return "–"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"
