"""Shared document output: Jinja2 + WeasyPrint PDFs, formula-safe CSV, inline SVG bar charts.

Every human-facing document (invoices, credit notes, reconciliation reports) goes through here so
the security and determinism rules live in one place:

* templates come only from the packaged `templates/` folder, with autoescape ON and
  `StrictUndefined` (a typo in a template is an error, not an empty cell);
* the PDF renderer may read files under `templates/` and `assets/` only; every other URL
  (`http:`, `file:///etc/passwd`, `data:`, paths escaping via `..` or symlinks) is refused;
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

import hashlib
import io
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import polars as pl
import weasyprint
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from weasyprint import HTML
from weasyprint.pdf import fonts as pdf_fonts
from weasyprint.urls import URLFetcher

from usagebox_pipelines.config import ASSETS_DIR, TEMPLATES_DIR
from usagebox_pipelines.decimals import grouped_text, price_text, to_decimal
from usagebox_pipelines.pricing.money import MINOR_UNITS

#: Metadata date used when the caller gives none: constant, so output never depends on the clock.
FIXED_PDF_DATE = datetime(2000, 1, 1, tzinfo=UTC)

_ENV_LOCK = threading.Lock()

CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CHF": "CHF ", "CAD": "CA$"}


# --------------------------------------------------------------------------- url fetching


class RefusedURL(ValueError):
    """A document tried to load something outside the project's template assets."""


class SafeURLFetcher(URLFetcher):
    """Serves `file:` URLs under the allowed roots only; refuses and records everything else.

    WeasyPrint catches the refusal, logs a warning and renders without the resource, so a
    hostile `<img src="file:///etc/passwd">` that slipped past escaping still reads nothing.
    `fetched` / `refused` list the URLs seen, for tests and audit.
    """

    def __init__(self, roots: Iterable[Path] = (TEMPLATES_DIR, ASSETS_DIR)) -> None:
        super().__init__(allowed_protocols=("file",), allow_redirects=False)
        self.roots = tuple(Path(r).resolve() for r in roots)
        self.fetched: list[str] = []
        self.refused: list[str] = []

    def fetch(self, url: str, headers: dict | None = None):
        path = self._allowed_path(url)
        if path is None:
            self.refused.append(url)
            raise RefusedURL(f"refused to fetch {url[:200]!r}: outside templates/ and assets/")
        self.fetched.append(url)
        return super().fetch(path.as_uri(), headers)

    def _allowed_path(self, url: str) -> Path | None:
        """The resolved local file for `url` if it is a plain file under a root, else None."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return None
        if parts.query or parts.fragment:
            return None
        path = Path(unquote(parts.path)).resolve()
        if not path.is_file():
            return None
        return path if any(path.is_relative_to(root) for root in self.roots) else None


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
) -> bytes:
    """Render `templates/<template>` with `context` to PDF bytes, byte-identical for equal input.

    `created` sets both PDF metadata dates (pass the document's issue time; default a fixed
    date, never the clock). Pass your own `fetcher` to inspect what was fetched or refused.
    """
    html = render_html(template, context)
    return html_to_pdf(html, created=created, fetcher=fetcher)


def html_to_pdf(
    html: str, *, created: datetime | None = None, fetcher: SafeURLFetcher | None = None
) -> bytes:
    """HTML string to deterministic PDF bytes; relative URLs resolve against `templates/`."""
    fetcher = fetcher or SafeURLFetcher()
    stamp = (created or FIXED_PDF_DATE).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = HTML(string=html, base_url=str(TEMPLATES_DIR) + os.sep, url_fetcher=fetcher).render()
    document.metadata.created = stamp
    document.metadata.modified = stamp
    with _reproducible_fonts():
        return document.write_pdf(pdf_identifier=_pdf_identifier(html))


def _pdf_identifier(html: str) -> bytes:
    """The PDF file id: a hash of the HTML with the install location taken out.

    `asset_url` puts absolute `file:` URLs into the HTML; hashing them as they are would make
    the bytes depend on where the package is installed (a checkout, a venv, a wheel), and an
    invoice issued from one install would not reproduce from another.
    """
    portable = html.replace(ASSETS_DIR.as_uri(), "assets:").replace(
        TEMPLATES_DIR.as_uri(), "templates:"
    )
    return hashlib.sha256(portable.encode("utf-8")).hexdigest()[:32].encode("ascii")


@contextmanager
def _reproducible_fonts() -> Iterator[None]:
    """Pin fontTools' subset-font `head.modified` stamp, else every PDF differs by the clock.

    fontTools honours SOURCE_DATE_EPOCH (the reproducible-builds convention); we set it to the
    fixed date for the duration of the write, under a lock as the environment is process-wide.
    """
    with _ENV_LOCK:
        previous = os.environ.get("SOURCE_DATE_EPOCH")
        os.environ["SOURCE_DATE_EPOCH"] = str(int(FIXED_PDF_DATE.timestamp()))
        try:
            yield
        finally:
            if previous is None:
                del os.environ["SOURCE_DATE_EPOCH"]
            else:
                os.environ["SOURCE_DATE_EPOCH"] = previous


# --------------------------------------------------------------------------- font subsets

#: Subset fonts kept per process (each some tens of KB): invoices mostly use the same glyphs.
SUBSET_CACHE_SIZE = 256
_SUBSETS: OrderedDict[tuple, bytes] = OrderedDict()
_SUBSETS_LOCK = threading.Lock()


def _memoise_font_subsets() -> bool:
    """Remember WeasyPrint's font subsets: the same font and glyphs give the same bytes.

    Subsetting a font (fontTools decompiles its layout tables every time) is about a third of
    a document's render time, and most documents use the same few glyph sets (digits, the
    labels). `Font.subset` is a pure function of the font file, its face index, the glyph ids,
    `hinting`, whether glyphs are missing, and `SOURCE_DATE_EPOCH` (fontTools stamps `head`
    with it), so the subset is keyed on exactly those and replayed on a hit: the PDF bytes are
    the same as without the cache (tests/test_invoicing_documents.py). Only for the WeasyPrint
    major version this was checked against; any other renders unmemoised.
    """
    font: Any = getattr(pdf_fonts, "Font", None)
    real = getattr(font, "subset", None)
    if real is None or getattr(real, "memoised", False):
        return False
    if weasyprint.__version__.split(".")[0] != "70":
        return False

    def subset(self: Any, to_unicode: dict, hinting: bool) -> None:
        if not to_unicode:
            return real(self, to_unicode, hinting)
        content: bytes = self.file_content
        key = (
            hashlib.sha256(content).digest(),
            self.index,
            tuple(sorted(to_unicode)),
            bool(hinting),
            bool(self.missing),
            os.environ.get("SOURCE_DATE_EPOCH"),
        )
        with _SUBSETS_LOCK:
            hit = _SUBSETS.get(key)
            if hit is not None:
                _SUBSETS.move_to_end(key)
        if hit is not None:
            self.file_content = hit
            return None
        if self.index == 0:
            self.file_content = _without_dropped_tables(content)
        real(self, to_unicode, hinting)
        with _SUBSETS_LOCK:
            _SUBSETS[key] = self.file_content
            while len(_SUBSETS) > SUBSET_CACHE_SIZE:
                _SUBSETS.popitem(last=False)
        return None

    subset.memoised = True  # type: ignore[attr-defined]
    subset.__wrapped__ = real  # type: ignore[attr-defined]
    font.subset = subset
    return True


@lru_cache(maxsize=8)
def _without_dropped_tables(content: bytes) -> bytes:
    """The font without the tables WeasyPrint's fontTools subset drops (GSUB, GPOS, SVG, and
    `kern` when GPOS is there).

    fontTools' `Subsetter.subset` decompiles GSUB and GPOS to compact them before it drops
    them (`_compact_layout_tables`): for DejaVu Sans that is ~0.2 s of every font of every
    document, for nothing. Removing them up front is what the subsetter does first anyway
    (`_prune_pre_subset`), so the subset font, and the PDF, are the same bytes
    (tests/test_invoicing_documents.py). Raw table data is copied, nothing decompiled.
    """
    from fontTools.ttLib import TTFont

    font = TTFont(io.BytesIO(content), lazy=True)
    if "GPOS" in font and "kern" in font:  # fontTools drops legacy kern next to GPOS
        del font["kern"]
    for tag in ("GSUB", "GPOS", "SVG "):
        if tag in font:
            del font[tag]
    out = io.BytesIO()
    font.save(out, reorderTables=False)
    return out.getvalue()


_memoise_font_subsets()


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
