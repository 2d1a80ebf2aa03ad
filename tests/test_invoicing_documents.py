"""documents.py and pdf_writer.py: safe URL fetching, strict autoescaped templates, safe CSV, SVG"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import jinja2
import polars as pl
import pytest

from usagebox_pipelines.config import ASSETS_DIR, TEMPLATES_DIR
from usagebox_pipelines.documents import (
    format_money,
    format_pct,
    format_quantity,
    format_unit_price,
    html_to_pdf,
    jinja_env,
    safe_csv_bytes,
    svg_bar_chart,
)
from usagebox_pipelines.pdf_writer import SafeURLFetcher

D = Decimal


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://example.com/x.css",
        "https://example.com/logo.png",
        "data:image/png;base64,AAAA",
        f"{TEMPLATES_DIR.as_uri()}/../pyproject.toml",
        f"{TEMPLATES_DIR.as_uri()}/missing.css",
        f"{ASSETS_DIR.as_uri()}/logo.svg?x=1",
        "file://evil.example/share/x.css",
    ],
)
def test_fetcher_refuses_everything_outside_templates_and_assets(url):
    fetcher = SafeURLFetcher()
    with pytest.raises(ValueError):
        fetcher.fetch(url)
    assert fetcher.refused == [url] and fetcher.fetched == []


def test_fetcher_serves_project_template_assets():
    fetcher = SafeURLFetcher()
    response = fetcher.fetch((ASSETS_DIR / "logo.svg").as_uri())
    try:
        assert b"<svg" in response.read()
    finally:
        response.close()
    assert fetcher.fetched == [(ASSETS_DIR / "logo.svg").as_uri()]


def test_raw_html_cannot_read_local_files_and_output_is_deterministic():
    html = (
        '<link rel="stylesheet" href="http://example.com/a.css">'
        '<img src="file:///etc/passwd"><img src="../../__init__.py"><p>hello</p>'
    )
    fetcher = SafeURLFetcher()
    first = html_to_pdf(html, fetcher=fetcher)
    assert html_to_pdf(html) == first
    assert fetcher.fetched == []
    assert "file:///etc/passwd" in fetcher.refused
    assert (TEMPLATES_DIR.parent.parent / "__init__.py").as_uri() in fetcher.refused
    assert b"root:" not in first


def test_font_subsets_are_memoised_and_give_the_bytes_of_an_unmemoised_render(monkeypatch):
    """A close renders thousands of PDFs with the same few glyph sets: the subset of a font
    is replayed from the cache, and subset from a font without the tables the subsetter
    drops (GSUB, GPOS, kern); either way the document is byte for byte WeasyPrint's own."""
    from weasyprint.pdf import fonts

    from usagebox_pipelines import pdf_writer

    html = "<p>Invoice UBX-2026-000042</p><p><b>Total due $1,234.56</b></p>"
    other = "<p>Credit note — €98.70 in your favour</p>"
    pdf_writer._SUBSETS.clear()
    first = html_to_pdf(html)
    cached = len(pdf_writer._SUBSETS)
    assert cached >= 2  # regular and bold
    second = html_to_pdf(other)
    assert html_to_pdf(html) == first  # replayed from the cache
    assert len(pdf_writer._SUBSETS) > cached
    monkeypatch.setattr(fonts.Font, "subset", fonts.Font.subset.__wrapped__)
    assert html_to_pdf(html) == first
    assert html_to_pdf(other) == second


def test_templates_autoescape_and_refuse_undefined_names():
    env = jinja_env()
    assert env.autoescape is True
    template = env.from_string("<p>{{ name }}</p>")
    assert template.render(name="<b>x</b>") == "<p>&lt;b&gt;x&lt;/b&gt;</p>"
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing }}").render()


def test_csv_neutralises_formulas_but_keeps_numbers_numeric():
    df = pl.DataFrame(
        {
            "name": ['=HYPERLINK("http://x")', "+1", "@SUM(A1)", "\tx", "-12.50", "-2+3", "ok"],
            "total": pl.Series([D("-360.00"), D(1), D(2), D(3), D(4), D(5), D(6)]),
            "count": [-1, 2, 3, 4, 5, 6, 7],
        }
    )
    text = safe_csv_bytes(df).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["name"] for r in rows] == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'@SUM(A1)",
        "'\tx",
        "-12.50",
        "'-2+3",
        "ok",
    ]
    assert rows[0]["total"].startswith("-360.00") and rows[0]["count"] == "-1"


def test_svg_chart_escapes_labels_and_has_no_external_references():
    chart = svg_bar_chart(
        [('<img src="file:///etc/passwd">', D("10")), ("b", D("-5")), ("c", 0)], title="<t>"
    )
    text = str(chart)
    assert "<img" not in text and "&lt;img" in text and "&lt;t&gt;" in text
    assert "href" not in text and "http" not in text.replace("http://www.w3.org/2000/svg", "")
    assert svg_bar_chart([("a", D(1))]) == svg_bar_chart([("a", D(1))])
    assert "<svg" in str(svg_bar_chart([]))


def test_number_formats():
    assert format_money(D("1234.5"), "USD") == "$1,234.50"
    assert format_money(D("-0.005"), "EUR") == "-€0.01"
    assert format_money(D("12"), "SEK") == "12.00 SEK"
    assert format_money(D("185.00"), "JPY") == "¥185"
    assert format_quantity(D("1250000.000000000000")) == "1,250,000"
    assert format_quantity(D("0.500")) == "0.5"
    assert format_unit_price(D("0.000002500000"), "USD") == "$0.0000025"
    assert format_pct(D("4")) == "4.0%"
