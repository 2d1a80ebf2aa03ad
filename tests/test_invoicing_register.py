"""The finance register CSV: number order, numeric totals, formula-safe names."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

from tests.test_invoicing_fixtures import account, rate_output_tokens, rated
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.invoicing.numbering import issue_documents
from usagebox_pipelines.invoicing.register import REGISTER_COLUMNS, register_csv

D = Decimal


def test_register_lists_documents_in_number_order_and_is_formula_safe():
    accounts = [
        account("acct-001", name='=HYPERLINK("http://evil.example","pay here")'),
        account("acct-002", name="-Minus Corp"),
        account("acct-003", name="Plain Ltd"),
    ]
    rows = rate_output_tokens(D(2_000_000), "acct-002")
    rows += rate_output_tokens(D(1_000_000), "acct-001")
    invoices, lines = build_draft_invoices(rated(rows), accounts, "2026-10")
    invoices, _ = issue_documents(
        invoices, lines, last_seq=0, prefix="UBX", issued_at=datetime(2026, 11, 2, tzinfo=UTC)
    )
    late, _ = build_draft_invoices(rated(rate_output_tokens(D(5), "acct-003")), accounts, "2026-10")
    text = register_csv(invoices.vstack(late), accounts).decode("utf-8")
    out = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(out[0]) == REGISTER_COLUMNS
    assert [r["invoice_number"] for r in out] == ["UBX-2026-000001", "UBX-2026-000002", ""]
    assert out[0]["account_name"] == '\'=HYPERLINK("http://evil.example","pay here")'
    assert out[1]["account_name"] == "'-Minus Corp"
    assert [Decimal(r["total"]) for r in out] == [D("8.00"), D("16.00"), D("0.00")]
    assert [r["status"] for r in out] == ["issued", "issued", "draft"]
