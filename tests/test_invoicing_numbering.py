"""Gapless numbers PREFIX-YYYY-NNNNNN: assigned at issue, never reused, never reset."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from tests.test_invoicing_fixtures import PERIOD, account, rate_output_tokens, rated
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing.adjustments import compute_adjustments
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.invoicing.numbering import (
    assign_numbers,
    format_number,
    issue_documents,
    last_sequence,
    parse_number,
)

D = Decimal
ISSUED_AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def drafts(*account_ids: str, period: str = PERIOD) -> pl.DataFrame:
    rows = []
    for a in account_ids:
        rows += [{**r, "period": period} for r in rate_output_tokens(D(1_000_000), a)]
    invoices, _ = build_draft_invoices(rated(rows), [account(a) for a in account_ids], period)
    return invoices


def test_number_format_round_trips():
    assert format_number("UBX", 2026, 42) == "UBX-2026-000042"
    assert parse_number("UBX-2026-000042") == ("UBX", 2026, 42)
    for bad_prefix in ("ubx", "U", "UBX-1", ""):
        with pytest.raises(UsageboxError):
            format_number(bad_prefix, 2026, 1)
    with pytest.raises(UsageboxError):
        format_number("UBX", 2026, 1_000_000)


def test_numbers_continue_the_global_sequence_in_a_stable_order():
    out = assign_numbers(drafts("acct-003", "acct-001", "acct-002"), 41, "UBX", 2026)
    assert dict(out.select("account_id", "invoice_number").iter_rows()) == {
        "acct-001": "UBX-2026-000042",
        "acct-002": "UBX-2026-000043",
        "acct-003": "UBX-2026-000044",
    }
    assert out["account_id"].to_list() == ["acct-001", "acct-002", "acct-003"]  # row order kept


def test_sequence_never_resets_with_month_or_year():
    october = assign_numbers(drafts("acct-001", "acct-002"), 0, "UBX", 2026)
    seq = last_sequence(october["invoice_number"], "UBX")
    december = assign_numbers(drafts("acct-001", period="2026-12"), seq, "UBX", 2026)
    january = assign_numbers(drafts("acct-001", period="2027-01"), seq + 1, "UBX", 2027)
    numbers = [*october["invoice_number"], *december["invoice_number"], *january["invoice_number"]]
    assert numbers == ["UBX-2026-000001", "UBX-2026-000002", "UBX-2026-000003", "UBX-2027-000004"]
    assert [parse_number(n)[2] for n in numbers] == [1, 2, 3, 4]  # gapless


def test_existing_numbers_are_kept_and_a_stale_counter_is_refused():
    first = assign_numbers(drafts("acct-001"), 9, "UBX", 2026)
    both = pl.concat([first, drafts("acct-002")])
    again = assign_numbers(both, 10, "UBX", 2026)
    assert again["invoice_number"].to_list() == ["UBX-2026-000010", "UBX-2026-000011"]
    with pytest.raises(UsageboxError, match="stale"):
        assign_numbers(both, 5, "UBX", 2026)
    assert last_sequence([None, "UBX-2026-000010", "OTHER-2026-000099"], "UBX") == 10


def test_issue_sets_status_dates_and_copies_numbers_onto_lines_and_credit_notes():
    issued_lines = build_draft_invoices(
        rated(rate_output_tokens(D(120_000_000))), [account()], PERIOD
    )[1].with_columns(invoice_number=pl.lit("UBX-2026-000001"))
    adj = compute_adjustments(rated(rate_output_tokens(D(70_000_000))), issued_lines, PERIOD)
    nxt = [{**r, "period": "2026-11"} for r in rate_output_tokens(D(10_000_000))]
    invoices, lines = build_draft_invoices(rated(nxt), [account()], "2026-11", adj)
    invoices, lines = issue_documents(
        invoices, lines, last_seq=1, prefix="UBX", issued_at=ISSUED_AT,
        payment_terms_days={"acct-001": 14},
    )  # fmt: skip
    rows = {r["document_type"]: r for r in invoices.iter_rows(named=True)}
    assert rows["invoice"]["invoice_number"] == "UBX-2026-000002"
    assert rows["credit_note"]["invoice_number"] == "UBX-2026-000003"
    assert {r["status"] for r in rows.values()} == {"issued"}
    assert rows["invoice"]["issued_at"] == ISSUED_AT
    assert rows["invoice"]["due_date"] == date(2026, 11, 16)
    assert rows["credit_note"]["due_date"] is None
    by_number = dict(
        lines.group_by("invoice_number").agg(pl.col("kind").unique().sort()).iter_rows()
    )
    assert by_number == {"UBX-2026-000002": ["usage"], "UBX-2026-000003": ["adjustment"]}
