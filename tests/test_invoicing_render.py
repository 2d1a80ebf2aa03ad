"""Invoice PDFs: deterministic bytes, hostile text printed literally, nothing fetched."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from pypdf import PdfReader

import usagebox_pipelines.documents as documents
import usagebox_pipelines.pdf_writer as pdf_writer
from tests.test_invoicing_fixtures import PERIOD, account, rate_output_tokens, rated, sample_rated
from usagebox_pipelines.config import ASSETS_DIR
from usagebox_pipelines.errors import InvariantError
from usagebox_pipelines.invoicing.adjustments import compute_adjustments
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.invoicing.numbering import issue_documents
from usagebox_pipelines.invoicing.render import (
    invoice_context,
    load_issuer,
    pdf_sha256,
    render_credit_note_pdf,
    render_invoice_pdf,
)

D = Decimal
ISSUED_AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
HOSTILE = '<img src="file:///etc/passwd">'
#: What a document of the current template (invoice_v5) fetches: the logo. Its stylesheets
#: are not linked: the renderer reads them once per process (pdf_writer._stylesheet).
ALLOWED = {(ASSETS_DIR / "logo.svg").as_uri()}


def text_of(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def issued():
    """October for a hostile account, with an adjustment of September and prepaid credit."""
    acct = account(
        name=HOSTILE,
        address=("<script>alert(1)</script>", '=HYPERLINK("http://evil.example")'),
        email="ap@acme.example",
        discount_pct=D(5),
    )
    sep = [{**r, "period": "2026-09"} for r in rate_output_tokens(D(90_000_000))]
    _, sep_lines = build_draft_invoices(rated(sep), [acct], "2026-09")
    sep_late = [{**r, "period": "2026-09"} for r in rate_output_tokens(D(104_500_000))]
    adj = compute_adjustments(rated(sep_late), sep_lines, "2026-09")
    rows = sample_rated() + [{"line_kind": "credit", "amount": "-250"}]
    rows.append({"meter_id": "input_tokens", "model_id": HOSTILE, "rate_id": "x",
                 "quantity": 1000, "per": 1000, "unit_price": "1", "amount": "1"})  # fmt: skip
    invoices, lines = build_draft_invoices(rated(rows), [acct], PERIOD, adj)
    invoices, lines = issue_documents(
        invoices, lines, last_seq=41, prefix="UBX", issued_at=ISSUED_AT
    )
    return invoices.row(0, named=True), lines, acct


@pytest.fixture(scope="module")
def rendered(issued):
    invoice, lines, acct = issued
    return render_invoice_pdf(invoice, lines, acct, load_issuer())


def test_reissued_invoice_renders_to_the_same_bytes(issued, rendered, tmp_path: Path):
    """Re-render from the stored rows (through Parquet, as from Delta): same hash."""
    invoice, lines, acct = issued
    pl.DataFrame([invoice]).write_parquet(tmp_path / "inv.parquet")
    lines.write_parquet(tmp_path / "lines.parquet")
    stored_invoice = pl.read_parquet(tmp_path / "inv.parquet").row(0, named=True)
    stored_lines = pl.read_parquet(tmp_path / "lines.parquet")
    again = render_invoice_pdf(stored_invoice, stored_lines, acct, load_issuer())
    assert pdf_sha256(again) == pdf_sha256(rendered)


def test_dates_come_from_issued_at_not_the_clock(rendered):
    meta = PdfReader(io.BytesIO(rendered)).metadata
    assert meta["/CreationDate"] == meta["/ModDate"] == "D:20261102093000Z"
    text = squash(text_of(rendered))
    assert "Issue date 2 Nov 2026" in text.replace("ISSUE DATE", "Issue date")
    assert "Net 30 days, due 2 Dec 2026" in text
    assert "1–31 Oct 2026" in text


def test_hostile_text_prints_literally_and_nothing_is_fetched(issued, monkeypatch):
    fetchers: list[pdf_writer.SafeURLFetcher] = []

    class Recording(pdf_writer.SafeURLFetcher):
        def __init__(self) -> None:
            super().__init__()
            fetchers.append(self)

    monkeypatch.setattr(pdf_writer, "SafeURLFetcher", Recording)
    invoice, lines, acct = issued
    pdf = render_invoice_pdf(invoice, lines, acct, load_issuer())
    (fetcher,) = fetchers
    assert set(fetcher.fetched) == ALLOWED and fetcher.refused == []
    text = squash(text_of(pdf))
    assert text.count(HOSTILE) >= 3  # bill-to block, usage section, breakdown page
    assert "<script>alert(1)</script>" in text
    assert '=HYPERLINK("http://evil.example")' in text
    assert "root:x:0:0" not in text


def test_every_visible_line_adds_up_to_the_printed_total(issued, rendered):
    invoice, lines, acct = issued
    ctx = invoice_context(invoice, lines, acct, load_issuer())
    usage = [row for s in ctx["items"] for item in s["items"] for row in item["rows"]]
    others = ctx["contract_rows"] + ctx["credit_rows"]
    others += [row for group in ctx["adjustment_sections"] for row in group["rows"]]
    numbers = [n for r in usage for n in r["line_nos"]] + [r["line_no"] for r in others]
    assert sorted(numbers) == list(range(1, lines.height + 1))
    shown = usage + others
    assert sum(r["amount"] for r in shown) == ctx["totals"]["total"] == invoice["total"]
    assert ctx["summary"][-1]["amount"] == invoice["total"]
    text = squash(text_of(rendered))
    assert f"Amount due (USD) ${invoice['total']:,}" in text
    assert "Adjustments to September 2026" in text and "2026-09 · gpt-4.1" in text
    for row in shown:
        assert documents.format_money(row["amount"], "USD") in text


def test_usage_breakdown_page_has_a_chart_per_model(rendered):
    reader = PdfReader(io.BytesIO(rendered))
    last = squash(reader.pages[-1].extract_text())
    assert "Usage breakdown by model" in last
    assert "gpt-4.1" in last and "claude-sonnet-4-5" in last and "Other usage" in last
    assert len(reader.pages) >= 2


def test_a_stored_total_that_disagrees_with_the_lines_is_refused(issued):
    invoice, lines, acct = issued
    with pytest.raises(InvariantError):
        invoice_context({**invoice, "total": invoice["total"] + 1}, lines, acct, load_issuer())


def test_credit_note_and_draft_documents():
    acct = account()
    sep = rate_output_tokens(D(120_000_000))
    _, issued_lines = build_draft_invoices(rated(sep), [acct], PERIOD)
    adj = compute_adjustments(rated(rate_output_tokens(D(70_000_000))), issued_lines, PERIOD)
    invoices, lines = build_draft_invoices(rated([]), [acct], "2026-11", adj)
    draft = render_invoice_pdf(invoices.row(0, named=True), lines, acct, load_issuer())
    assert "DRAFT · NOT VALID FOR PAYMENT" in squash(text_of(draft)).upper()
    invoices, lines = issue_documents(
        invoices, lines, last_seq=7, prefix="UBX", issued_at=ISSUED_AT
    )
    note = invoices.row(0, named=True)
    assert note["document_type"] == "credit_note"
    pdf = render_credit_note_pdf(note, lines, acct, load_issuer(), corrects=["UBX-2026-000007"])
    text = squash(text_of(pdf))
    assert "Credit note" in text and "UBX-2026-000008" in text
    assert "Credit note for invoice UBX-2026-000007" in text and "$360.00" in text
    assert "Usage breakdown" not in text
