"""The spend chart: a PNG of dollars per day, stacked by model.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no display, no global figure
state), so it is safe to call from a worker thread. matplotlib is imported on first use: it is
slow to import and most processes never draw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import date

MAX_SERIES = 8  # more models than this are folded into "other" to keep the legend readable
MAX_TICKS = 16
HALF_BAR = 0.4  # half a bar's width, in days
LABEL_CHARS = 30  # a longer model name is shortened in the legend, which has a fixed width


def _fold_series(series: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    ranked = sorted(series.items(), key=lambda item: -sum(item[1]))
    if len(ranked) <= MAX_SERIES:
        return {name: list(values) for name, values in ranked}
    kept = dict((name, list(values)) for name, values in ranked[: MAX_SERIES - 1])
    rest = [sum(column) for column in zip(*(values for _, values in ranked[MAX_SERIES - 1 :]), strict=True)]
    kept[f"other ({len(ranked) - MAX_SERIES + 1} models)"] = rest
    return kept


def spend_chart_png(days: Sequence[date], series: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Stacked bars of dollars per day, one colour per series (model); returns PNG bytes.

    Every series has one value per day. With no days or no spend the chart says so.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    for name, values in series.items():
        if len(values) != len(days):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(days)} days")

    # Fixed margins, room on the right for the legend: a layout engine measures every text twice
    # (it cost more than the drawing itself).
    figure = Figure(figsize=(10, 4.8), dpi=100)
    figure.subplots_adjust(left=0.08, right=0.74, top=0.92, bottom=0.16)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_ylabel("US dollars")
    positions = list(range(len(days)))
    folded = _fold_series(series)
    if not days or not any(any(v for v in values) for values in folded.values()):
        axes.text(0.5, 0.5, "No spend in this period", ha="center", va="center", transform=axes.transAxes)
    else:
        # One PolyCollection of rectangles per model, not `axes.bar`: bar makes an artist per day
        # and model (728 over 90 days), each added, bounded and drawn on its own (most of the time).
        bottom = [0.0] * len(days)
        for n, (name, values) in enumerate(folded.items()):
            label = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"
            boxes = [[(x - HALF_BAR, b), (x + HALF_BAR, b), (x + HALF_BAR, b + v), (x - HALF_BAR, b + v)]
                     for x, b, v in zip(positions, bottom, values, strict=True)]
            axes.add_collection(PolyCollection(boxes, facecolors=f"C{n % 10}", edgecolors="none", label=label),
                                autolim=False)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
        axes.set_xlim(-0.5 - HALF_BAR / 4, len(days) - 0.5 + HALF_BAR / 4)
        axes.set_ylim(0, max(bottom) * 1.1)
    crowded = len(days) > 6
    # At most MAX_TICKS labelled days (every k-th): 90 labels overlap, and each costs layout time.
    every = max(1, -(-len(days) // MAX_TICKS))
    axes.set_xticks(positions[::every], [d.strftime("%a %d %b") for d in days[::every]],
                    rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize="small")
    axes.yaxis.set_major_formatter("${x:,.2f}")
    axes.grid(axis="y", alpha=0.3)
    out = io.BytesIO()
    # A light zlib level: bars and text compress well anyway, and level 6 took a third of the time.
    figure.savefig(out, format="png", pil_kwargs={"compress_level": 1})
    return out.getvalue()
