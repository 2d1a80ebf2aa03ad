"""Restatement: adjustments equal an independent re-rating minus what was billed, over time."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_invoicing_fixtures import (
    PER,
    PERIOD,
    TIERS,
    account,
    half_up,
    rate_output_tokens,
    rated,
    tier_split,
)
from usagebox_pipelines.invoicing import lines as lines_module
from usagebox_pipelines.invoicing.adjustments import billed_for_period, compute_adjustments
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.schemas import INVOICE_LINES

D = Decimal
NEXT = "2026-11"


def month(total: Decimal, discount_pct: Decimal | None = None, acct: str = "acct-001") -> list:
    """Rated rows of PERIOD: output tokens by tier, plus a discount on the rounded usage."""
    rows = rate_output_tokens(total, acct)
    if discount_pct:
        usage = sum(half_up(r["amount"]) for r in rows)
        rows.append({"account_id": acct, "line_kind": "discount",
                     "amount": -usage * discount_pct / 100})  # fmt: skip
    return rows


def expected_billing(total: Decimal, discount_pct: Decimal = D(0)) -> dict[str, Decimal]:
    """Independent: rounded amount per tier and discount for a month of `total` tokens."""
    out = {}
    for tier, qty in tier_split(total):
        out[f"tier {tier}"] = half_up(qty * TIERS[tier - 1][1] / PER)
    usage = sum(out.values(), D(0))
    if discount_pct:
        out["discount"] = half_up(-usage * discount_pct / 100)
    return out


def issue(total: Decimal, discount_pct: Decimal | None = None) -> pl.DataFrame:
    """The issued lines of PERIOD (numbered as the close would)."""
    _, lines = build_draft_invoices(rated(month(total, discount_pct)), [account()], PERIOD)
    return lines.with_columns(invoice_number=pl.lit("UBX-2026-000001"))


def by_label(adj: pl.DataFrame) -> dict[str, Decimal]:
    labels = pl.when(pl.col("tier").is_not_null()).then(
        pl.lit("tier ") + pl.col("tier").cast(pl.String)
    ).otherwise(pl.col("unit"))  # fmt: skip
    return dict(adj.select(labels, "amount").iter_rows())


def test_late_usage_crossing_a_tier_equals_independent_recomputation():
    issued = issue(D(95_000_000), D(10))
    adj = compute_adjustments(rated(month(D(107_345_678), D(10))), issued, PERIOD)
    before = expected_billing(D(95_000_000), D(10))
    after = expected_billing(D(107_345_678), D(10))
    expected = {k: after.get(k, D(0)) - before.get(k, D(0)) for k in after | before}
    assert (
        by_label(adj)
        == expected
        == {
            "tier 1": D("40.00"),
            "tier 2": D("44.07"),
            "discount": D("-8.41"),
        }
    )
    assert adj.schema == INVOICE_LINES
    assert set(adj["kind"]) == {"adjustment"} and set(adj["adjusts_period"]) == {PERIOD}
    assert adj["period"].null_count() == adj.height
    assert adj["exact_amount"].to_list() == adj["amount"].to_list()
    tier2 = adj.filter(pl.col("tier") == 2)
    assert tier2["quantity"].item() == D(7_345_678)
    assert tier2["description"].item() == "gpt-4.1 · Output tokens — tier 2"


def test_corrections_below_a_tier_give_negative_adjustments():
    issued = issue(D(120_000_000))
    adj = compute_adjustments(rated(month(D(70_000_000))), issued, PERIOD)
    assert by_label(adj) == {"tier 1": D("-240.00"), "tier 2": D("-120.00")}
    assert adj.filter(pl.col("tier") == 1)["description"].item().endswith("— tier 1")


def test_nothing_changed_means_no_adjustment():
    issued = issue(D(123_456_789), D(7))
    assert compute_adjustments(rated(month(D(123_456_789), D(7))), issued, PERIOD).is_empty()


def test_a_model_that_appears_or_vanishes_is_adjusted_in_full():
    issued = issue(D(1_000_000))
    rerated = rate_output_tokens(D(0)) + rate_output_tokens(D(2_000_000), model="gpt-5")
    adj = compute_adjustments(rated(rerated), issued, PERIOD)
    assert dict(adj.select("model_id", "amount").iter_rows()) == {
        "gpt-4.1": D("-8.00"),
        "gpt-5": D("16.00"),
    }


def test_prepaid_credit_is_not_redrawn_for_a_closed_month():
    rows = month(D(1_000_000)) + [{"line_kind": "credit", "amount": "-8"}]
    _, issued = build_draft_invoices(rated(rows), [account()], PERIOD)
    rerated = month(D(2_000_000)) + [{"line_kind": "credit", "amount": "-16"}]
    adj = compute_adjustments(rated(rerated), issued, PERIOD)
    assert by_label(adj) == {"tier 1": D("8.00")}


def test_only_lines_billing_the_period_count():
    issued = issue(D(1_000_000))
    foreign = issued.with_columns(
        period=pl.lit(NEXT), kind=pl.lit("adjustment"), adjusts_period=pl.lit("2026-09")
    )
    other_usage = issued.with_columns(period=pl.lit(NEXT))
    everything = pl.concat([issued, foreign, other_usage])
    assert billed_for_period(everything, PERIOD).equals(issued)
    assert compute_adjustments(rated(month(D(1_000_000))), everything, PERIOD).is_empty()


quantities = st.integers(min_value=0, max_value=250_000_000).map(D)


@settings(max_examples=25, deadline=None)
@given(st.lists(quantities, min_size=2, max_size=4), st.sampled_from([None, D(10), D("12.5")]))
def test_sum_over_time_is_always_the_latest_rerating(totals, pct):
    """Issue a month, then restate it again and again (late events, corrections): the month's
    issued lines plus every adjustment carried since equal an independent rating of it now."""
    issued = issue(totals[0], pct)
    for step, total in enumerate(totals[1:], start=1):
        adj = compute_adjustments(rated(month(total, pct)), issued, PERIOD)
        carried = adj.with_columns(
            period=pl.lit(f"2027-{step:02d}"),
            invoice_number=pl.lit(f"UBX-2027-{step:06d}"),
            line_no=pl.int_range(1, pl.len() + 1, dtype=pl.Int32),
        )
        issued = pl.concat([issued, carried])
        billed = billing_total(billed_for_period(issued, PERIOD))
        assert billed == sum(expected_billing(total, pct or D(0)).values(), D(0))


def billing_total(lines: pl.DataFrame) -> Decimal:
    return sum(lines["amount"].to_list(), D(0))


def test_negative_adjustment_beyond_next_invoice_becomes_a_credit_note():
    issued = issue(D(120_000_000))
    adj = compute_adjustments(rated(month(D(70_000_000))), issued, PERIOD)
    next_month = [{**r, "period": NEXT} for r in rate_output_tokens(D(10_000_000))]
    invoices, lines = build_draft_invoices(rated(next_month), [account()], NEXT, adj)
    docs = dict(invoices.select("document_type", "total").iter_rows())
    assert docs == {"invoice": D("80.00"), "credit_note": D("-360.00")}
    note = invoices.filter(pl.col("document_type") == "credit_note").row(0, named=True)
    assert note["subtotal"] == note["total"] and note["notes"] == f"Corrects period(s) {PERIOD}"
    assert billing_total(lines) == sum(docs.values())
    assert lines.filter(pl.col("kind") == "adjustment")["line_no"].to_list() == [1, 2]


def test_negative_adjustment_within_next_invoice_stays_on_it():
    issued = issue(D(50_000_000))
    adj = compute_adjustments(rated(month(D(45_000_000))), issued, PERIOD)
    next_month = [{**r, "period": NEXT} for r in rate_output_tokens(D(10_000_000))]
    invoices, lines = build_draft_invoices(rated(next_month), [account()], NEXT, adj)
    assert invoices.select("document_type", "subtotal", "total").rows() == [
        ("invoice", D("80.00"), D("40.00"))
    ]
    assert lines["kind"].to_list() == ["usage", "adjustment"]
    assert lines["adjusts_period"].to_list() == [None, PERIOD]


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(quantities, quantities), min_size=1, max_size=4),
    st.sampled_from([None, D(10)]),
)
def test_all_accounts_at_once_equal_each_account_alone(months, pct):
    """Drafts are built for every account in one pass: each account's documents (credit notes
    included) and lines are exactly what a draft of that account alone gives."""
    ids = [f"acct-{i:03d}" for i in range(1, len(months) + 1)]
    rows, adjustments = [], []
    for acct, (before, now) in zip(ids, months, strict=True):
        issued = build_draft_invoices(rated(month(before, pct, acct)), [account(acct)], PERIOD)
        adj = compute_adjustments(rated(month(now, pct, acct)), issued[1], PERIOD)
        adjustments.append(adj)
        rows += [{**r, "period": NEXT} for r in rate_output_tokens(D(10_000_000), acct)]
    adj = pl.concat(adjustments)
    accounts = [account(a, discount_pct=pct) for a in ids]
    invoices, lines = build_draft_invoices(rated(rows), accounts, NEXT, adj)
    alone = [
        build_draft_invoices(
            rated([r for r in rows if r["account_id"] == a]),
            [acct],
            NEXT,
            adj.filter(pl.col("account_id") == a),
        )
        for a, acct in zip(ids, accounts, strict=True)
    ]
    assert invoices.equals(pl.concat([i for i, _ in alone]))
    assert lines.equals(pl.concat([ln for _, ln in alone]))


def test_shards_of_accounts_give_the_same_drafts(monkeypatch):
    """Drafting in shards of whole accounts (memory bound) changes no document or line."""
    totals = {"acct-001": (D(9e7), D(1e6)), "acct-002": (D(1e6), D(2e8)), "acct-003": (D(5e7),) * 2}
    ids, rows, adjustments = sorted(totals), [], []
    for acct, (before, now) in sorted(totals.items()):
        issued = build_draft_invoices(rated(month(before, D(10), acct)), [account(acct)], PERIOD)
        adjustments.append(compute_adjustments(rated(month(now, D(10), acct)), issued[1], PERIOD))
        rows += [{**r, "period": NEXT} for r in rate_output_tokens(D(10_000_000), acct)]
    accounts = [account(a, discount_pct=D(10)) for a in ids]
    args = (rated(rows), accounts, NEXT, pl.concat(adjustments))
    whole = build_draft_invoices(*args)
    monkeypatch.setattr(lines_module, "SHARD_ROWS", 1)
    sharded = build_draft_invoices(*args)
    assert "credit_note" in whole[0]["document_type"].to_list()
    assert sharded[0].equals(whole[0]) and sharded[1].equals(whole[1])
