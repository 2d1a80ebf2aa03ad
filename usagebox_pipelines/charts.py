"""Charts for the PDF documents, drawn by matplotlib and inlined as SVG markup.

One chart shape serves every report: horizontal bars on a real axis with ticks, a zero line,
negative values to the left in red and positive ones to the right, so a −$0.01 variance looks
like a cent and not like a full-width bar. Two rules keep one value from flattening the rest:

* `span` sets the smallest axis half-width (a variance chart passes a share of the day's
  billing, so pennies stay pennies);
* `clip` caps the axis: a bar beyond it is drawn to the edge, hatched, with its real value
  printed inside it (a −72,992 % margin no longer squeezes every other bar to a sliver).

Values come in as Decimals and every printed label is formatted from the Decimal; floats are
used for geometry only. The SVG is deterministic (no date, fixed id salt, text kept as text in
DejaVu Sans, the documents' font), has no scripts and references nothing outside itself, so the
PDF renderer fetches nothing for it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from markupsafe import Markup

if TYPE_CHECKING:  # matplotlib is imported where a chart is drawn: it costs ~1.5 s to load
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

POSITIVE = "#2f5d8a"
NEGATIVE = "#b5534a"
OFF_SCALE = "#7d2b24"
_MM = 1 / 25.4
_LOCK = threading.Lock()  # matplotlib's rcParams are process-global
_STYLE = {
    "svg.hashsalt": "usagebox",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 6.5,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": "#33414f",
    "xtick.color": "#4a5562",
    "ytick.color": "#1d2733",
    "axes.titlesize": 7.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
}


def bar_chart(
    items: Sequence[tuple[str, Decimal]],
    *,
    title: str,
    value_format: Callable[[Decimal], str],
    axis_label: str = "",
    width_mm: float = 170,
    row_mm: float = 4.2,
    span: Decimal | None = None,
    clip: Decimal | None = None,
) -> Markup:
    """Horizontal diverging bars, one per (label, value), top to bottom, as inline SVG.

    The axis runs symmetric around zero when any value is negative (else from zero), at
    least `span` wide on each side and at most `clip`; bars past `clip` are marked and
    labelled with their value. Empty `items` give an empty string.
    """
    if not items:
        return Markup("")
    values = [Decimal(v) for _, v in items]
    limit = _limit(values, span, clip)
    signed = any(v < 0 for v in values)
    height = max(row_mm * len(items) + 16, 30)
    import matplotlib
    from matplotlib.figure import Figure

    with _LOCK, matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width_mm * _MM, height * _MM))
        ax = fig.subplots()
        _draw(ax, items, values, limit, signed, value_format)
        ax.set_title(title)
        if axis_label:
            ax.set_xlabel(axis_label)
        fig.tight_layout(pad=0.4)
        return _svg(fig)


def _limit(values: list[Decimal], span: Decimal | None, clip: Decimal | None) -> Decimal:
    top = max((abs(v) for v in values), default=Decimal(0))
    if span is not None:
        top = max(top, span)
    if clip is not None:
        top = min(top, clip)
    return top or Decimal(1)


def _draw(
    ax: Axes,
    items: Sequence[tuple[str, Decimal]],
    values: list[Decimal],
    limit: Decimal,
    signed: bool,
    value_format: Callable[[Decimal], str],
) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    edge = float(limit)
    rows = range(len(items))
    shown = [max(-edge, min(edge, float(v))) for v in values]
    clipped = [abs(v) > limit for v in values]
    colours = [
        OFF_SCALE if cut else NEGATIVE if v < 0 else POSITIVE
        for v, cut in zip(values, clipped, strict=True)
    ]
    ax.barh(list(rows), shown, height=0.7, color=colours, zorder=2)
    ax.axvline(0, color="#1d2733", linewidth=0.8, zorder=3)
    ax.set_yticks(list(rows), [_clip_text(label, 26) for label, _ in items])
    ax.invert_yaxis()
    # room on each side for the value labels (a fifth of the axis)
    ax.set_xlim(-edge * 1.45 if signed else 0, edge * 1.45)
    # ticks only over the data's range, not over the room left for the value labels
    ticks = MaxNLocator(nbins=6, symmetric=signed).tick_values(-edge if signed else 0, edge)
    ax.set_xticks([t for t in ticks if abs(t) <= edge * 1.0001])
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _: value_format(Decimal(str(round(float(x), 6)))))
    )
    ax.grid(axis="x", color="#e3e8ee", linewidth=0.5, zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="y", length=0)
    pad = edge * 0.02
    for row, value, x, cut in zip(rows, values, shown, clipped, strict=True):
        # a value past the axis is printed inside its bar, white and bold, "off scale"
        inside = -1 if cut else 1
        right = (value >= 0) == (inside > 0)
        ax.text(
            x + inside * (pad if value >= 0 else -pad),
            row,
            value_format(value) + (" off scale" if cut else ""),
            va="center",
            ha="left" if right else "right",
            fontsize=5.8,
            color="#ffffff" if cut else "#1d2733",
            fontweight="bold" if cut else "normal",
            zorder=4,
        )


def _svg(fig: Figure) -> Markup:
    buffer = io.StringIO()
    no_metadata = dict.fromkeys(("Date", "Creator", "Format", "Type"))  # no RDF block, no date
    fig.savefig(buffer, format="svg", metadata=no_metadata)
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
