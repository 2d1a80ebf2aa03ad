"""Draft invoices: grouping for humans, rounding once per line, totals = sum of visible lines."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_invoicing_fixtures import (
    NEXT,
    PERIOD,
    account,
    half_up,
    rate_output_tokens,
    rated,
    sample_rated,
)
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.lines import build_draft_invoices, build_invoice_lines
from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.schemas import INVOICE_LINES, INVOICES

D = Decimal


def _lines() -> pl.DataFrame:
    return build_invoice_lines(rated(sample_rated()), account(discount_pct=D(5)), PERIOD)


def test_lines_conform_to_schema_and_are_numbered_in_reading_order():
    lines = _lines()
    assert lines.schema == INVOICE_LINES
    assert lines["line_no"].to_list() == list(range(1, lines.height + 1))
    assert lines["invoice_number"].null_count() == lines.height
    kinds = lines["kind"].to_list()
    assert kinds == sorted(kinds, key=["usage", "discount"].index)


def test_dimensions_that_do_not_change_the_price_are_summed_into_one_line():
    lines = _lines().filter(
        (pl.col("model_id") == "gpt-4.1") & (pl.col("meter_id") == "input_tokens")
    )
    assert lines.height == 1
    assert lines["quantity"].item() == D(42_234_567)
    assert lines["description"].item() == "gpt-4.1 · Input tokens"


def test_gpu_types_priced_differently_get_their_own_named_lines():
    gpu = _lines().filter(pl.col("meter_id") == "gpu_seconds")
    assert gpu["description"].to_list() == ["GPU time · a100", "GPU time · h100"]


def test_tiers_and_price_versions_are_named_only_where_they_differ():
    desc = _lines()["description"].to_list()
    assert "gpt-4.1 · Output tokens — tier 1" in desc
    assert "gpt-4.1 · Output tokens — tier 2" in desc
    assert "claude-sonnet-4-5 · Input tokens — prices from 2026-10-16" in desc
    assert "gpt-4.1 · Input tokens" in desc  # one tier, one version: no detail


def test_each_line_is_its_exact_amount_rounded_half_up_once():
    lines = _lines()
    for exact, amount in lines.select("exact_amount", "amount").iter_rows():
        assert amount == half_up(exact)
    h100 = lines.filter(pl.col("description") == "GPU time · h100")
    assert h100["exact_amount"].item() == D("24.986458333333")
    assert h100["amount"].item() == D("24.99")


def test_package_lines_say_how_many_packages_were_billed():
    tools = _lines().filter(pl.col("meter_id") == "tool_calls")
    assert tools["description"].item() == "Tool calls — 2 × package of 1,000 calls"
    assert tools["amount"].item() == D("2.00")


def test_contract_lines_use_the_account_terms_in_their_wording():
    discount = _lines().filter(pl.col("kind") == "discount")
    assert discount["description"].item() == "Discount (5% of usage)"
    assert discount["amount"].item() == D("-50.01")  # -50.005 half-up away from zero
    assert discount["meter_id"].item() is None


def test_invoice_total_is_the_sum_of_its_visible_lines():
    rows = sample_rated() + [{"line_kind": "credit", "amount": "-100"}]
    invoices, lines = build_draft_invoices(rated(rows), [account()], PERIOD)
    assert invoices.schema == INVOICES
    inv = invoices.row(0, named=True)
    assert inv["status"] == "draft" and inv["document_type"] == "invoice"
    assert inv["total"] == sum(lines["amount"].to_list())
    period_kinds = lines.filter(pl.col("kind").is_in(["usage", "discount", "minimum"]))
    assert inv["subtotal"] == sum(period_kinds["amount"].to_list())
    assert inv["total"] == inv["subtotal"] - D(100)
    assert inv["pricebook_versions"] == "standard@2025-01-01,standard@2026-10-16"
    assert inv["template_version"] == TEMPLATE_VERSION


def test_unlisted_accounts_get_the_accounts_defaults_and_other_periods_are_ignored():
    rows = rate_output_tokens(D(1_000_000), "acct-999")
    rows += [{**r, "period": NEXT} for r in rate_output_tokens(D(5), "acct-998")]
    invoices, lines = build_draft_invoices(rated(rows), Accounts(), PERIOD)
    assert invoices["account_id"].to_list() == ["acct-999"]
    assert invoices["currency"].to_list() == ["USD"]
    assert set(lines["account_id"]) == {"acct-999"}


def test_an_account_with_only_adjustments_still_gets_an_invoice():
    adj = pl.DataFrame(
        {
            "account_id": ["acct-002"],
            "kind": ["adjustment"],
            "description": ["gpt-4.1 · Output tokens"],
            "meter_id": ["output_tokens"],
            "amount": [D("12.34")],
            "exact_amount": [D("12.34")],
            "adjusts_period": ["2026-09"],
        }
    )
    invoices, lines = build_draft_invoices(rated([]), [account("acct-002")], PERIOD, adj)
    assert invoices["total"].to_list() == [D("12.34")]
    assert invoices["subtotal"].to_list() == [D("0")]
    assert lines["period"].to_list() == [PERIOD]
    assert invoices["notes"].to_list() == ["Corrects period(s) 2026-09"]


def test_corrections_that_net_to_zero_leave_no_line():
    rows = [
        {"meter_id": "input_tokens", "model_id": "gpt-4o", "quantity": 0, "amount": 0},
        {"meter_id": "output_tokens", "model_id": "gpt-4o", "quantity": 10, "amount": "0.0001"},
    ]
    lines = build_invoice_lines(rated(rows), account(), PERIOD)
    assert lines["meter_id"].to_list() == ["output_tokens"]


def test_same_input_gives_identical_lines():
    assert _lines().equals(_lines())


amounts = st.decimals(min_value=D("-50"), max_value=D("5000"), places=12, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), amounts), min_size=1, max_size=12))
def test_total_always_equals_sum_of_rounded_lines(items):
    rows = [
        {"meter_id": "input_tokens", "model_id": m, "rate_id": f"r{i}", "quantity": 1,
         "unit_price": a, "amount": a}
        for i, (m, a) in enumerate(items)
    ]  # fmt: skip
    invoices, lines = build_draft_invoices(rated(rows), [account()], PERIOD)
    for inv in invoices.iter_rows(named=True):
        own = lines.filter((pl.col("account_id") == inv["account_id"]) & (pl.col("line_no") > 0))[
            "amount"
        ]
        assert inv["total"] == sum(own.to_list())
    assert all(half_up(e) == a for e, a in lines.select("exact_amount", "amount").iter_rows())
