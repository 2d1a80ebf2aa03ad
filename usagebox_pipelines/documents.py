"""Shared document output: Jinja2 templates, PDFs, formula-safe CSV, inline SVG bar charts.

Every human-facing document (invoices, credit notes, reconciliation reports) goes through here so
the security and determinism rules live in one place:

* templates come only from the packaged `templates/` folder, with autoescape ON and
  `StrictUndefined` (a typo in a template is an error, not an empty cell);
* the PDF renderer (WeasyPrint, in `pdf_writer`, imported only to make a PDF) may read
  files under `templates/` and `assets/` only; every other URL (`http:`,
  `file:///etc/passwd`, `data:`, paths escaping via `..` or symlinks) is refused;
* PDF metadata dates are fixed (or taken from the caller, e.g. `issued_at`) and the PDF file
  identifier is derived from the rendered HTML, so the same input gives the same bytes
  (with the same WeasyPrint version and installed fonts).

Usage::

    from usagebox_pipelines.documents import render_pdf, safe_csv_bytes, svg_bar_chart

    chart = svg_bar_chart([("gpt-4o", Decimal("812.40")), ("claude-opus-4-1", Decimal("95"))],
                          value_format=lambda v: f"${v:,.2f}")
    pdf: bytes = render_pdf("recon_v1.html.j2", {"rows": rows, "chart": chart},
                            created=datetime(2026, 11, 1, tzinfo=UTC))
    csv: bytes = safe_csv_bytes(df)   # '=HYPERLINK(..)' is written as "'=HYPERLINK(..)"

In a template: `<link rel="stylesheet" href="base.css">` (resolved against `templates/`),
`<img src="{{ asset_url('logo.svg') }}">` for files in `assets/`, `{{ chart }}` for a chart
(it is `Markup`, already escaped), and the filters `money(currency)`, `unit_price(currency)`,
`qty`, `pct`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING

import polars as pl
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from usagebox_pipelines.config import ASSETS_DIR, TEMPLATES_DIR
from usagebox_pipelines.decimals import grouped_text, price_text, to_decimal
from usagebox_pipelines.pricing.money import MINOR_UNITS

if TYPE_CHECKING:
    from usagebox_pipelines.pdf_writer import SafeURLFetcher

#: Metadata date used when the caller gives none: constant, so output never depends on the clock.
FIXED_PDF_DATE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PdfStyle:
    """How a template version becomes PDF bytes (pdf_writer.html_to_pdf): `stylesheets` and
    `user_agent` (names in `templates/`) parsed once per process, and `stable_subsets`. The
    default is WeasyPrint's own way; a version's style never changes once it is issued (its
    bytes would)."""

    stylesheets: tuple[str, ...] = ()
    user_agent: str | None = None
    stable_subsets: bool = False


CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CHF": "CHF ", "CAD": "CA$"}


# --------------------------------------------------------------------------- url fetching


class RefusedURL(ValueError):
    """A document tried to load something outside the project's template assets."""


# --------------------------------------------------------------------------- formatting


def format_money(value: Decimal | int | str | None, currency: str = "") -> str:
    """`$1,234.50`, `-€12.00`, `1,234.50 SEK`, `¥185`: the currency's minor units, no float."""
    if value is None:
        return ""
    places = MINOR_UNITS.get(currency, 2)
    amount = Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    body = f"{abs(amount):,.{places}f}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    if symbol is not None:
        return f"{sign}{symbol}{body}"
    return f"{sign}{body} {currency}".rstrip()


def format_quantity(value: Decimal | int | str | None) -> str:
    """Exact quantity with separators and without trailing zeros: `1,250,000`, `0.5`."""
    return "" if value is None else grouped_text(to_decimal(value))


def format_unit_price(value: Decimal | int | str | None, currency: str = "") -> str:
    """Unit prices keep sub-cent precision (`$0.0000025`), at least two decimals."""
    if value is None:
        return ""
    p = to_decimal(value)
    body = price_text(abs(p))
    sign = "-" if p < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{sign}{symbol}{body}" if symbol is not None else f"{sign}{body} {currency}".rstrip()


def format_pct(value: Decimal | int | str | None, places: int = 1) -> str:
    """`12.5%` from `12.5` (a percentage, not a fraction), half-up to `places` decimals."""
    if value is None:
        return ""
    step = Decimal(1).scaleb(-places)
    return f"{Decimal(str(value)).quantize(step, rounding=ROUND_HALF_UP):,}%"


def asset_url(name: str) -> str:
    """`file:` URL of a file in `assets/` (for `<img src>`), refusing names that escape it."""
    path = (ASSETS_DIR / name).resolve()
    if not path.is_relative_to(ASSETS_DIR.resolve()):
        raise RefusedURL(f"asset outside assets/: {name!r}")
    return path.as_uri()


# --------------------------------------------------------------------------- templates


@lru_cache(maxsize=1)
def jinja_env() -> Environment:
    """The one template environment: `templates/`, autoescape on, undefined names are errors."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        money=format_money, qty=format_quantity, unit_price=format_unit_price, pct=format_pct
    )
    env.globals.update(asset_url=asset_url)
    return env


def render_html(template: str, context: dict) -> str:
    """Render a `templates/` template to an HTML string (autoescaped)."""
    return jinja_env().get_template(template).render(**context)


def render_pdf(
    template: str,
    context: dict,
    *,
    created: datetime | None = None,
    fetcher: SafeURLFetcher | None = None,
    style: PdfStyle = PdfStyle(),
) -> bytes:
    """Render `templates/<template>` with `context` to PDF bytes, byte-identical for equal input.

    `created` sets both PDF metadata dates (pass the document's issue time; default a fixed
    date, never the clock). Pass your own `fetcher` to inspect what was fetched or refused.
    `style`: the template version's `PdfStyle`.
    """
    return html_to_pdf(
        render_html(template, context), created=created, fetcher=fetcher, style=style
    )


def html_to_pdf(
    html: str,
    *,
    created: datetime | None = None,
    fetcher: SafeURLFetcher | None = None,
    style: PdfStyle = PdfStyle(),
) -> bytes:
    """HTML string to deterministic PDF bytes (`pdf_writer.html_to_pdf`). WeasyPrint is
    imported here, not with this module: it costs most of a second, and most commands that
    format money (run, reconcile, sql) never make a PDF."""
    from usagebox_pipelines import pdf_writer

    return pdf_writer.html_to_pdf(html, created=created, fetcher=fetcher, style=style)


# --------------------------------------------------------------------------- CSV

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "|")
_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def neutralise_cell(expr: pl.Expr) -> pl.Expr:
    """Prefix `'` to text a spreadsheet would run as a formula; plain numbers like `-12.50` stay.

    Trigger characters (OWASP CSV injection): = + - @ tab CR LF |, also after leading spaces.
    A cell that is exactly a plain decimal number cannot carry a formula, so it is left alone
    and still opens as a number.
    """
    stripped = expr.str.strip_chars_start(" ")
    risky = pl.any_horizontal(
        [stripped.str.starts_with(c) for c in _FORMULA_START]
    ) & ~expr.str.contains(rf"^{_PLAIN_NUMBER.pattern}$")
    return pl.when(risky).then(pl.lit("'") + expr).otherwise(expr)


def safe_csv_frame(df: pl.DataFrame) -> pl.DataFrame:
    """`df` with every text cell neutralised; numeric, date and bool columns untouched."""
    nested = [c for c, t in df.schema.items() if t.is_nested()]
    if nested:
        raise TypeError(f"flatten nested columns before CSV export: {nested}")
    text = [c for c, t in df.schema.items() if t in (pl.String, pl.Categorical, pl.Enum)]
    return df.with_columns(neutralise_cell(pl.col(c).cast(pl.String)).alias(c) for c in text)


def safe_csv_bytes(df: pl.DataFrame, *, excel_bom: bool = False) -> bytes:
    """`df` as UTF-8 CSV bytes safe to open in Excel/Sheets (store them with a DocumentStore).

    Numeric columns (Decimal, int) are written as numbers, negatives included, so finance can
    sum them; only text cells get the apostrophe guard. Column names are written as given.
    """
    buffer = io.BytesIO()
    safe_csv_frame(df).write_csv(
        buffer, include_bom=excel_bom, datetime_format="%Y-%m-%dT%H:%M:%S%.fZ"
    )
    return buffer.getvalue()


# --------------------------------------------------------------------------- SVG chart


def svg_bar_chart(
    items: Sequence[tuple[str, Decimal | int | float]],
    *,
    width: int = 480,
    bar_height: int = 16,
    gap: int = 6,
    label_width: int = 150,
    value_width: int = 90,
    color: str = "#2f5d8a",
    value_format: Callable[[Decimal], str] | None = None,
    title: str | None = None,
) -> Markup:
    """A horizontal bar chart as inline SVG markup (no scripts, no external refs, no network).

    Kept for invoice_v1 only, so an issued v1 invoice re-renders to the same bytes; every
    other document draws its charts with `usagebox_pipelines.charts` (matplotlib, real axes).

    Labels and title are escaped; bars scale to the largest absolute value; negative values
    draw in a muted red. Geometry is computed in Decimal so the markup is deterministic.
    """
    fmt = value_format or format_quantity
    values = [Decimal(str(v)) for _, v in items]
    top = max((abs(v) for v in values), default=Decimal(0)) or Decimal(1)
    plot = Decimal(width - label_width - value_width - 8)
    head = 20 if title else 0
    height = head + len(items) * (bar_height + gap) + gap
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" class="bar-chart">'
    ]
    if title:
        out.append(f'<text x="0" y="13" font-size="11" font-weight="bold">{escape(title)}</text>')
    for i, ((label, _), value) in enumerate(zip(items, values, strict=True)):
        y = head + gap + i * (bar_height + gap)
        w = (abs(value) / top * plot).quantize(Decimal("0.1"))
        fill = color if value >= 0 else "#b5534a"
        text_y = y + bar_height - 4
        out.append(
            f'<text x="{label_width - 6}" y="{text_y}" font-size="9" text-anchor="end">'
            f"{escape(_clip(str(label), 28))}</text>"
            f'<rect x="{label_width}" y="{y}" width="{w}" height="{bar_height}" rx="2" '
            f'fill="{fill}"/>'
            f'<text x="{label_width + w + 4}" y="{text_y}" font-size="9">'
            f"{escape(fmt(value))}</text>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
