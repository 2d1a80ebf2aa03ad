"""Every document type, read back from its PDF: totals that add up, nothing off the page.

Text and positions come from pdfplumber (the PDF as a reader sees it), not from the
template context, so a column that runs off the page or a total that is printed wrong fails.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pdfplumber
import polars as pl
import pytest

from tests.fixtures.vendors.synth import rated_usage, usage_hourly
from tests.test_invoicing_fixtures import rated
from usagebox_demo.vendor_exports import write_vendor_exports
from usagebox_pipelines.charts import bar_chart
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.documents import format_pct
from usagebox_pipelines.invoicing.adjustments import compute_adjustments
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.invoicing.numbering import issue_documents
from usagebox_pipelines.invoicing.render import (
    invoice_context,
    load_issuer,
    originals,
    render_credit_note_pdf,
    render_invoice_pdf,
)
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.contract import contract_lines
from usagebox_pipelines.pricing.tax import tax_of
from usagebox_pipelines.reconciliation.attribution import cost_attribution
from usagebox_pipelines.reconciliation.loaders import load_vendor_exports
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.reconcile import metered_daily, reconcile
from usagebox_pipelines.reconciliation.reports import (
    margin_by_customer_model,
    margin_context,
    render_reconciliation_reports,
)

D = Decimal
MM = 72 / 25.4
#: The documents' side margins are 15 mm; text may not come closer to the paper's edge.
EDGE = 14 * MM
ISSUED_AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ACCOUNTS = """
tax:
  seller_country: GB
  countries: {GB: {rate: "20"}, DE: {rate: "19", reverse_charge: true}}
accounts:
  uk:
    name: Kestrel & Daughters Ltd
    address: ["1 Long Lane", "London EC1A 9HP", "United Kingdom"]
    country: GB
    tax_id: "GB 318 4420 57"
    discount_pct: "10"
    prepaid_credit: "100.00"
"""


def usage_rows(period: str, scale: int) -> pl.DataFrame:
    """GPU time on two GPU types (one tiered, over a price change) and output tokens."""
    rows = [
        ("gpu_seconds", None, "gpu-h100", '{"gpu":"h100"}', "2025-01-01", 1, 3600, "3.19"),
        ("gpu_seconds", None, "gpu-h100", '{"gpu":"h100"}', "2026-10-16", 1, 3600, "2.99"),
        ("gpu_seconds", None, "gpu-a100", '{"gpu":"a100"}', "2025-01-01", None, 3600, "1.79"),
        ("gpu_seconds", None, "gpu-a100", '{"gpu":"a100"}', "2026-10-16", None, 3600, "1.79"),
        ("output_tokens", "gpt-4.1", "out", "{}", "2025-01-01", None, 1_000_000, "8.00"),
    ]
    out = []
    for meter, model, rate, dims, version, tier, per, price in rows:
        quantity = D(7200 * scale) if meter == "gpu_seconds" else D(1_500_000 * scale)
        out.append(
            {
                "account_id": "uk",
                "period": period,
                "meter_id": meter,
                "model_id": model,
                "rate_id": rate,
                "dimensions": dims,
                "price_version": version,
                "price_model": "volume" if tier else "per_unit",
                "tier": tier,
                "quantity": quantity,
                "per": per,
                "unit_price": price,
                "amount": quantity * D(price) / per,
            }
        )
    return rated(out)


def with_contract(rows: pl.DataFrame, period: str, accounts, opening=None) -> pl.DataFrame:
    contract, _ = contract_lines(rows, period, accounts, opening)
    return pl.concat([rows, contract])


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """September issued, then October with late September usage (adjustments) and credit;
    a November credit note for usage September turned out not to have."""
    folder = tmp_path_factory.mktemp("accounts")
    (folder / "accounts.yaml").write_text(ACCOUNTS, encoding="utf-8")
    accounts = load_accounts(folder)
    sep = with_contract(usage_rows("2026-09", 1), "2026-09", accounts, {"uk": D(0)})
    sep_docs, sep_lines = build_draft_invoices(sep, accounts, "2026-09")
    sep_docs, sep_lines = issue_documents(
        sep_docs, sep_lines, last_seq=11, prefix="UBX", issued_at=ISSUED_AT
    )
    late = with_contract(usage_rows("2026-09", 2), "2026-09", accounts, {"uk": D(0)})
    adjustments = compute_adjustments(late, sep_lines, "2026-09")
    oct_rows = with_contract(usage_rows("2026-10", 3), "2026-10", accounts)
    docs, lines = build_draft_invoices(oct_rows, accounts, "2026-10", adjustments)
    docs, lines = issue_documents(docs, lines, last_seq=12, prefix="UBX", issued_at=ISSUED_AT)
    invoice = docs.row(0, named=True)
    refs = originals(sep_docs, invoice, lines)
    account = accounts.get("uk")
    pdf = render_invoice_pdf(
        invoice, lines, account, load_issuer(), originals=refs, credit_opening=D("100.00")
    )
    none = with_contract(usage_rows("2026-09", 0), "2026-09", accounts, {"uk": D(0)})
    refund = compute_adjustments(none, sep_lines, "2026-09")
    notes, note_lines = build_draft_invoices(rated([]), accounts, "2026-11", refund)
    notes, note_lines = issue_documents(
        notes, note_lines, last_seq=13, prefix="UBX", issued_at=ISSUED_AT
    )
    note = notes.row(0, named=True)
    assert note["document_type"] == "credit_note"
    note_refs = {
        "corrects": sep_docs["invoice_number"].to_list(),
        "originals": originals(sep_docs, note, note_lines),
    }
    note_pdf = render_credit_note_pdf(note, note_lines, account, load_issuer(), **note_refs)
    return {
        "invoice": invoice,
        "lines": lines,
        "refs": refs,
        "invoice_pdf": pdf,
        "note": note,
        "note_pdf": note_pdf,
        "note_lines": note_lines,
        "note_refs": note_refs,
        "account": account,
        "sep_number": sep_docs["invoice_number"].item(),
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    mapping = load_vendor_mapping(DEFAULT_PRICEBOOKS)
    usage = usage_hourly("2026-10")
    out = tmp_path_factory.mktemp("exports")
    write_vendor_exports(usage, out, "2026-10", mapping, seed=3)
    loads = {
        v: load_vendor_exports(v, [out / v], mapping) for v in ("openai", "anthropic", "focus")
    }
    costs = pl.concat([r.costs for r in loads.values()])
    recon = reconcile(metered_daily(usage, mapping), costs, mapping, "2026-10")
    attribution = cost_attribution(usage, costs, rated_usage(usage, "2026-10"), mapping, "2026-10")
    files = render_reconciliation_reports(recon, attribution, changes=loads["anthropic"].superseded)
    return {name: data for name, (_, data) in files.items()}


def pages(pdf: bytes) -> list[pdfplumber.page.Page]:
    return pdfplumber.open(io.BytesIO(pdf)).pages


def text(pdf: bytes) -> str:
    return re.sub(r"\s+", " ", " ".join(p.extract_text() or "" for p in pages(pdf)))


def right_half(pdf: bytes) -> str:
    """The right half of every page: the totals and the prepaid credit box, read alone
    (the payment details beside them would interleave with their lines)."""
    halves = [p.crop((p.width / 2, 0, p.width, p.height)).extract_text() for p in pages(pdf)]
    return re.sub(r"\s+", " ", " ".join(halves))


def money(label: str, body: str) -> Decimal:
    """The first amount printed after `label` (`-$1,234.50` → Decimal('-1234.50'))."""
    found = re.search(re.escape(label) + r".*?(-?)\$([\d,]+\.\d\d)", body)
    assert found, f"{label!r} not printed"
    return D(found.group(1) + found.group(2).replace(",", ""))


def assert_inside_margins(pdf: bytes, document: str) -> None:
    for number, page in enumerate(pages(pdf), start=1):
        words = page.extract_words()
        assert words, f"page {number} is empty"
        outside = [w["text"] for w in words if w["x1"] > page.width - EDGE or w["x0"] < EDGE]
        assert not outside, f"{document} page {number}: {outside[:5]} past the margin"


@pytest.mark.parametrize("document", ["invoice", "credit_note", "reconciliation_pdf", "margin_pdf"])
def test_no_word_of_any_page_runs_past_the_margins(document, books, reports):
    pdf = {"invoice": books["invoice_pdf"], "credit_note": books["note_pdf"], **reports}[document]
    assert_inside_margins(pdf, document)


def in_version(books: dict, version: str) -> tuple[bytes, bytes]:
    """The books' invoice and credit note rendered with template `version`."""
    invoice = {**books["invoice"], "template_version": version}
    note = {**books["note"], "template_version": version}
    issuer, account = load_issuer(), books["account"]
    pdf = render_invoice_pdf(
        invoice, books["lines"], account, issuer, originals=books["refs"], credit_opening=D(100)
    )
    note_pdf = render_credit_note_pdf(
        note, books["note_lines"], account, issuer, **books["note_refs"]
    )
    return pdf, note_pdf


def test_invoice_v5_prints_what_v4_prints_on_as_many_pages(books):
    # v5 is v4's content in a cheaper layout: the same words in the same order, page for page
    old, new = in_version(books, "invoice_v4"), in_version(books, "invoice_v5")
    for document, before, after in zip(("invoice", "credit_note"), old, new, strict=True):
        assert_inside_margins(after, document)
        assert len(pages(after)) == len(pages(before)), document
        assert words_of(after) == words_of(before), document


def words_of(pdf: bytes) -> list[str]:
    """Every word printed, sorted, but money (the chart's axis ticks differ: v5 draws its own)."""
    return sorted(w for w in text(pdf).split() if "$" not in w)


def long_rows(period: str, models: int, scale: D) -> pl.DataFrame:
    """Output tokens of `models` models (one line each) and GPU time: a multi-page invoice."""
    out = []
    for n in range(models):
        quantity = D(1_500_000) * (n + 1) * scale
        out.append(
            {
                "account_id": "uk",
                "period": period,
                "meter_id": "output_tokens",
                "model_id": f"model-{n:02d}",
                "rate_id": "out",
                "price_model": "per_unit",
                "quantity": quantity,
                "per": D(1_000_000),
                "unit_price": D("8.00"),
                "amount": quantity * D("8.00") / D(1_000_000),
            }
        )
    return rated(out)


def issued_long(tmp_path: Path, models: int, scale: D, version: str = "invoice_v5") -> bytes:
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS, encoding="utf-8")
    accounts = load_accounts(tmp_path)
    rows = with_contract(long_rows("2026-10", models, scale), "2026-10", accounts, {"uk": D(0)})
    docs, lines = build_draft_invoices(rows, accounts, "2026-10")
    docs, lines = issue_documents(docs, lines, last_seq=1, prefix="UBX", issued_at=ISSUED_AT)
    invoice = {**docs.row(0, named=True), "template_version": version}
    return render_invoice_pdf(invoice, lines, accounts.get("uk"), load_issuer())


def test_a_long_v5_invoice_breaks_its_table_across_pages_with_every_line(tmp_path):
    pdf = issued_long(tmp_path, models=30, scale=D(1))
    assert_inside_margins(pdf, "long invoice")
    assert len(pages(pdf)) == len(pages(issued_long(tmp_path, 30, D(1), "invoice_v4"))) >= 4
    body = text(pdf)
    assert all(f"model-{n:02d}" in body for n in range(30))
    continued = [p for p in pages(pdf)[1:] if "Output tokens" in (p.extract_text() or "")]
    assert continued and all("DESCRIPTION" in (p.extract_text() or "") for p in continued[:1])


def test_v5_widens_its_number_columns_for_large_amounts_and_quantities(tmp_path):
    # fixed column widths: $96,000,000 and 12,000,000,000,000 tokens must still fit the page
    pdf = issued_long(tmp_path, models=4, scale=D(2_000_000))
    assert_inside_margins(pdf, "large invoice")
    assert "12,000,000,000,000" in text(pdf) and "$96,000,000.00" in text(pdf)
    assert "12,000,000,000,000" in text(pdf) and "$96,000,000.00" in text(pdf)


def test_invoice_prints_tax_credit_balance_and_an_amount_due_that_add_up(books):
    body, totals = text(books["invoice_pdf"]), right_half(books["invoice_pdf"])
    net = money("Net amount October 2026", totals)
    vat = money("VAT 20%", totals)
    assert vat == tax_of(net, D(20), 2) and vat > 0
    assert f"VAT 20% ${vat:,} on ${net:,}" in totals
    adjusted = money("Adjustments to September 2026", totals)
    assert f"({books['sep_number']})" in totals
    total = money("Total", totals.split(f"({books['sep_number']})", 1)[1])
    assert total == net + vat + adjusted
    applied = money("Prepaid credit applied", totals)
    opening, closing = money("Opening balance", totals), money("Closing balance", totals)
    assert money("Applied to this invoice", totals) == applied < 0
    assert opening == D("100.00") and closing == opening + applied
    due = money("Amount due (USD)", totals)
    assert due == total + applied == books["invoice"]["total"]
    assert money("AMOUNT DUE", body) == due  # the box at the top
    assert "Supplier VAT no. GB 284 1937 62" in body
    assert "customer VAT / tax no. GB 318 4420 57" in body
    assert f"Adjustments to September 2026 · invoice {books['sep_number']}" in body


def test_invoice_lines_merge_equal_prices_and_keep_gpu_labels_in_gpu_hours(books):
    body = text(books["invoice_pdf"])
    assert "GPU time · h100" in body and "GPU time · a100" in body
    assert "per GPU-hour" in body and "per 3,600 seconds" not in body
    a100 = books["lines"].filter(
        (pl.col("kind") == "usage") & pl.col("description").str.contains("a100")
    )
    assert a100.height == 2  # two stored lines (two price versions) at the same price...
    usage_table = body.split("Adjustments to September 2026", 1)[0]
    assert usage_table.count("GPU time · a100") == 1  # ...printed as one
    assert "6 GPU-hours" in body  # 2 × 10,800 s merged


def test_credit_note_cites_the_invoice_and_reverses_its_tax(books):
    body = text(books["note_pdf"])
    number = books["sep_number"]
    assert f"Credit note for invoice {number}" in body
    assert f"Adjustments to September 2026 · invoice {number}" in body
    tax_back = books["note"]["total"]
    assert tax_back < 0 and money("Total credited", body) == tax_back
    assert "VAT 20%" in body  # the tax of the corrected invoice is reversed with it


def test_adjustments_merge_lines_whose_price_version_did_not_change_the_price(books):
    # a100 is $1.79 per GPU-hour in both versions: one line; h100's tier 1 went $3.19 -> $2.99
    body = text(books["note_pdf"])
    adjustments = body.split("Adjustments to September 2026", 1)[1]
    assert adjustments.count("GPU time · a100") == 1
    assert "-4 GPU-hours" in adjustments
    assert adjustments.count("GPU time · h100 — prices from") == 2
    assert "a100 — prices from" not in adjustments


def test_an_issued_v3_note_keeps_printing_every_stored_adjustment_line(books):
    note = {**books["note"], "template_version": "invoice_v3"}
    context = invoice_context(note, books["note_lines"], books["account"], load_issuer())
    rows = context["adjustment_sections"][0]["rows"]
    assert sum("a100" in r["description"] for r in rows) == 2


def test_margin_of_negative_or_tiny_revenue_is_not_a_100_percent_margin():
    rows = pl.DataFrame(
        {
            "month": ["2026-10"] * 3,
            "account_id": ["refund", "tiny", "fine"],
            "model_id": ["m"] * 3,
            "row_kind": ["account"] * 3,
            "charge_class": ["usage"] * 3,
            "revenue": [D("-5"), D("0.01"), D("10")],
            "revenue_currency": ["USD"] * 3,
            "allocated_cost": [D("0"), D("7.30"), D("4")],
            "cost_currency": ["USD"] * 3,
            "margin": [D("-5"), D("-7.29"), D("6")],
        }
    )
    pct = dict(margin_by_customer_model(rows).select("account_id", "margin_pct").iter_rows())
    assert pct["refund"] is None  # was 100.0 %
    assert pct["tiny"] == D("-72900") and pct["fine"] == D(60)


def test_no_margin_percent_for_revenue_that_prints_as_zero():
    """Revenue below half a cent prints as $0.00: its margin % (here -106,030 %) is left
    blank, per row, per customer and in the totals; half a cent itself prints as $0.01."""
    rows = pl.DataFrame(
        {
            "month": ["2026-10"] * 2,
            "account_id": ["dust", "cent"],
            "model_id": ["m"] * 2,
            "row_kind": ["account"] * 2,
            "charge_class": ["usage"] * 2,
            "revenue": [D("0.001"), D("0.005")],
            "revenue_currency": ["USD"] * 2,
            "allocated_cost": [D("1.0613"), D("0.01")],
            "cost_currency": ["USD"] * 2,
            "margin": [D("-1.0603"), D("-0.005")],
        }
    )
    margins = margin_by_customer_model(rows)
    pct = dict(margins.select("account_id", "margin_pct").iter_rows())
    assert pct["dust"] is None and pct["cent"] == D(-100)
    attribution = rows.with_columns(
        feature=pl.lit(None, dtype=pl.String), agent_id=pl.lit(None, dtype=pl.String)
    )
    context = margin_context(attribution, margins.filter(pl.col("account_id") == "dust"), "2026-10")
    assert context["customers"][0]["margin_pct"] is None
    assert context["totals"]["margin_pct"] is None


def test_reports_use_real_axes_and_label_what_is_off_scale(reports, tmp_path: Path):
    margin = text(reports["margin_pdf"]).replace(" ", "")  # chart text is drawn glyph by glyph
    assert "margin%ofrevenue" in margin and "0.0%20.0%40.0%60.0%80.0%100.0%margin" in margin
    recon = text(reports["reconciliation_pdf"]).replace(" ", "")
    assert "Billed−expectedbyUTCday" in recon and "$0.00" in recon
    for page in pages(reports["reconciliation_pdf"]):
        if "Every line not matched" in (page.extract_text() or ""):
            assert page.width > page.height  # the ten-column table is on a landscape page
            break
    else:
        pytest.fail("no page with every line not matched")


def test_a_chart_labels_an_off_scale_value_and_references_nothing_outside():
    items = [("acct-035", D("-72992.10")), ("acct-010", D("12.5")), ("acct-004", D("-3.3"))]
    svg = bar_chart(items, title="t", value_format=format_pct, span=D(100), clip=D(100))
    assert "-72,992.1% off scale" in svg and "12.5%" in svg and "-3.3%" in svg
    refs = re.findall(r'href="([^"]*)"', svg) + re.findall(r"url\(([^)]*)\)", svg)
    assert all(ref.startswith("#") for ref in refs)  # only its own defs: nothing to fetch
    assert "<image" not in svg and "<script" not in svg
    assert bar_chart(items, title="t", value_format=format_pct, clip=D(100)) == bar_chart(
        items, title="t", value_format=format_pct, clip=D(100)
    )
    assert bar_chart([], title="t", value_format=format_pct) == ""
