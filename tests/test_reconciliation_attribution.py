"""Cost attribution: allocations sum exactly to the bill; margins per account × model."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.vendors.synth import rated_usage, usage_frame, usage_row
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.reconciliation.attribution import (
    allocate_costs,
    cost_allocations,
    cost_attribution,
)
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.schemas import COST_ATTRIBUTION, VENDOR_COSTS
from usagebox_pipelines.schemas import MONEY, QTY, conform

UNIT = Decimal("1e-12")
D1 = date(2026, 10, 1)
H = datetime(2026, 10, 1, 12, tzinfo=UTC)

amounts = st.decimals(
    min_value=Decimal("-1e9"), max_value=Decimal("1e12"), places=12, allow_nan=False
)
weights = st.decimals(min_value=Decimal(0), max_value=Decimal("1e11"), places=6, allow_nan=False)


@pytest.fixture(scope="module")
def mapping():
    return load_vendor_mapping(DEFAULT_PRICEBOOKS)


@settings(max_examples=150, deadline=None)
@given(
    cells=st.lists(
        st.tuples(amounts, st.lists(weights, min_size=0, max_size=7)), min_size=1, max_size=6
    )
)
def test_allocations_sum_exactly_to_each_bill(cells):
    costs = pl.DataFrame(
        {"cell": list(range(len(cells))), "amount": [a for a, _ in cells]},
        schema={"cell": pl.Int64, "amount": MONEY},
    )
    rows = [(i, f"acct-{j}", w) for i, (_, ws) in enumerate(cells) for j, w in enumerate(ws)]
    drivers = pl.DataFrame(
        rows, schema={"cell": pl.Int64, "account_id": pl.String, "weight": QTY}, orient="row"
    )
    out = allocate_costs(costs, drivers, ["cell"])
    sums = out.group_by("cell").agg(pl.col("allocated_cost").sum()).sort("cell")
    assert sums["allocated_cost"].to_list() == costs["amount"].to_list()
    for i, (amount, ws) in enumerate(cells):
        mine = out.filter(pl.col("cell") == i)
        total = sum((w for w in ws if w > 0), Decimal(0))
        if total == 0:  # nobody metered it: one unattributed row with the whole amount
            assert mine["account_id"].to_list() == [None]
            continue
        for row in mine.iter_rows(named=True):
            exact = amount * row["weight"] / total
            assert abs(row["allocated_cost"] - exact) <= UNIT * 2  # largest remainder: < 1 unit


def test_allocation_ties_are_deterministic():
    costs = pl.DataFrame(
        {"k": [1], "amount": [Decimal("0.000000000002")]}, schema_overrides={"amount": MONEY}
    )
    drivers = pl.DataFrame(
        {"k": [1, 1, 1], "account_id": ["c", "a", "b"], "weight": [Decimal(1)] * 3},
        schema_overrides={"weight": QTY},
    )
    out = allocate_costs(costs, drivers, ["k"]).sort("account_id")
    assert out["allocated_cost"].to_list() == [UNIT, UNIT, 0]


def _costs(rows: list[tuple]) -> pl.DataFrame:
    cols = [
        "vendor",
        "source_kind",
        "date",
        "model_id",
        "meter_id",
        "quantity",
        "amount",
        "charge_class",
        "billing_period",
    ]
    frame = pl.DataFrame(rows, schema=cols, orient="row", infer_schema_length=None)
    return conform(frame.with_columns(currency=pl.lit("USD")), VENDOR_COSTS)


def test_attribution_by_account_feature_and_unattributed(mapping):
    usage = usage_frame(
        [
            usage_row("acct-001", "output_tokens", "gpt-4o", H, 300, {"feature": "chat"}),
            usage_row("acct-002", "output_tokens", "gpt-4o", H, 100, {"feature": "search"}),
            usage_row("acct-001", "input_tokens", "claude-sonnet-4-5", H, 10, {"feature": "chat"}),
        ]
    )
    costs = _costs(
        [
            (
                "openai",
                "usage",
                D1,
                "gpt-4o",
                "output_tokens",
                Decimal(500),
                None,
                "usage",
                "2026-10",
            ),
            (
                "openai",
                "costs",
                D1,
                "gpt-4o",
                "output_tokens",
                None,
                Decimal("1.00"),
                "usage",
                "2026-10",
            ),
            (
                "openai",
                "costs",
                D1,
                "gpt-5",
                "input_tokens",
                None,
                Decimal("0.30"),
                "usage",
                "2026-10",
            ),
            (
                "anthropic",
                "costs",
                D1,
                "claude-sonnet-4-5",
                "cache_write_5m_tokens",
                None,
                Decimal("0.07"),
                "usage",
                "2026-10",
            ),
            ("focus", "focus", D1, None, None, None, Decimal("-2"), "credit", "2026-10"),
        ]
    )
    alloc = cost_allocations(usage, costs, mapping, "2026-10")
    # 500 vendor tokens, 400 metered: 100/500 of the bill is nobody's.
    gpt4o = alloc.filter(pl.col("model_id") == "gpt-4o").sort("account_id", nulls_last=True)
    assert gpt4o["allocated_cost"].to_list() == [Decimal("0.6"), Decimal("0.2"), Decimal("0.2")]
    assert gpt4o["account_id"].to_list() == ["acct-001", "acct-002", None]
    # cache writes follow the account's input_tokens
    cw = alloc.filter(pl.col("meter_id") == "cache_write_5m_tokens")
    assert cw["account_id"].to_list() == ["acct-001"]

    att = cost_attribution(usage, costs, rated_usage(usage, "2026-10"), mapping, "2026-10")
    assert att.schema == COST_ATTRIBUTION
    billed = costs["amount"].drop_nulls().sum()
    assert att["allocated_cost"].sum() == billed  # every vendor dollar lands somewhere
    una = att.filter(pl.col("row_kind") == "unattributed").sort("model_id")
    assert una["model_id"].to_list() == ["gpt-4o", "gpt-5"]
    assert una["allocated_cost"].to_list() == [Decimal("0.2"), Decimal("0.3")]
    adj = att.filter(pl.col("row_kind") == "vendor_adjustment").row(0, named=True)
    assert adj["charge_class"] == "credit" and adj["allocated_cost"] == -2
    chat = att.filter((pl.col("account_id") == "acct-001") & (pl.col("model_id") == "gpt-4o"))
    row = chat.row(0, named=True)
    assert row["feature"] == "chat" and row["revenue"] == Decimal("0.0018")  # 300 × 0.000006
    assert row["margin"] == row["revenue"] - row["allocated_cost"]
    assert row["margin_pct"] == (row["margin"] * 100 / row["revenue"]).quantize(UNIT)
    minimum = att.filter(pl.col("account_id") == "acct-004").row(0, named=True)
    assert minimum["model_id"] is None and minimum["revenue"] == 100  # account-level line


def test_features_collapse_when_revenue_has_none(mapping):
    usage = usage_frame(
        [
            usage_row("acct-001", "output_tokens", "gpt-4o", H, 1, {"feature": "chat"}),
            usage_row("acct-001", "output_tokens", "gpt-4o", H, 1, {"feature": "search"}),
        ]
    )
    costs = _costs(
        [("openai", "costs", D1, "gpt-4o", "output_tokens", None, Decimal(1), "usage", "2026-10")]
    )
    rated = rated_usage(usage, "2026-10").with_columns(dimensions=pl.lit("{}"))
    att = cost_attribution(usage, costs, rated, mapping, "2026-10")
    rows = att.filter((pl.col("account_id") == "acct-001") & (pl.col("model_id") == "gpt-4o"))
    assert rows.height == 1 and rows["feature"][0] is None and rows["allocated_cost"][0] == 1


def test_currency_clash_leaves_margin_empty(mapping):
    usage = usage_frame([usage_row("acct-001", "output_tokens", "gpt-4o", H, 1)])
    costs = _costs(
        [("openai", "costs", D1, "gpt-4o", "output_tokens", None, Decimal(1), "usage", "2026-10")]
    )
    rated = rated_usage(usage, "2026-10").with_columns(currency=pl.lit("EUR"))
    att = cost_attribution(usage, costs, rated, mapping, "2026-10")
    row = att.filter(pl.col("account_id") == "acct-001").row(0, named=True)
    assert row["margin"] is None and "no FX" in row["note"]


def test_huge_weights_are_coarsened_but_still_sum_exactly():
    costs = pl.DataFrame(
        {"k": [1, 2], "amount": [Decimal("99999999999999.999999999999"), Decimal("0.5")]},
        schema_overrides={"amount": MONEY},
    )
    drivers = pl.DataFrame(
        {
            "k": [1, 1, 2, 2],
            "account_id": ["a", "b", "a", "b"],
            "weight": [Decimal("9e15"), Decimal("1e15"), Decimal(1), Decimal(3)],
        },
        schema_overrides={"weight": QTY},
    )
    out = allocate_costs(costs, drivers, ["k"]).sort("k", "account_id")
    assert (
        out.group_by("k").agg(pl.col("allocated_cost").sum()).sort("k")["allocated_cost"].to_list()
        == costs["amount"].to_list()
    )
    assert out["allocated_cost"].to_list()[2:] == [Decimal("0.125"), Decimal("0.375")]
    assert out["allocated_cost"][0] == Decimal("89999999999999.999999999999")


# ----------------------------------------------------- day totals (no model): issue 15


def _day_total(amount: str, meter: str | None = None) -> tuple:
    """An OpenAI Costs line without a model: a default export's day total (no meter), or a
    line item naming only a kind (`input`, `output`)."""
    return ("openai", "costs", D1, None, meter, None, Decimal(amount), "usage", "2026-10")


def _day_usage() -> pl.DataFrame:
    # list rates per 1M: gpt-4o input 2.50, output 10.00; gpt-4o-mini output 0.60
    return usage_frame(
        [
            usage_row("acct-001", "input_tokens", "gpt-4o", H, 1_000_000),  # $2.50
            usage_row("acct-001", "output_tokens", "gpt-4o", H, 100_000),  # $1.00
            usage_row("acct-002", "input_tokens", "gpt-4o", H, 400_000),  # $1.00
            usage_row("acct-002", "output_tokens", "gpt-4o-mini", H, 1_000_000),  # $0.60
        ]
    )


def test_a_day_total_is_allocated_by_metered_cost_at_list_rates(mapping):
    # metered list cost 3.50 + 1.00 + 0.60 = 5.10; the bill 10.20 is exactly twice that
    alloc = cost_allocations(_day_usage(), _costs([_day_total("10.20")]), mapping, "2026-10")
    got = {(r["account_id"], r["model_id"]): r["allocated_cost"] for r in alloc.to_dicts()}
    assert got == {
        ("acct-001", "gpt-4o"): Decimal("7.00"),
        ("acct-002", "gpt-4o"): Decimal("2.00"),
        ("acct-002", "gpt-4o-mini"): Decimal("1.20"),
    }
    assert alloc["meter_id"].is_null().all()  # allocated at the level the bill has


def test_a_day_total_remainder_goes_to_the_largest_remainder_and_sums_exactly(mapping):
    # 10 × 3.5/5.1 = 6.862745098039|2…, 10 × 1/5.1 = 1.960784313725|49…, 10 × 0.6/5.1 =
    # 1.176470588235|29…: the floors sum to 9.999999999999, the last 10^-12 goes to the row
    # with the largest remainder (acct-002 gpt-4o).
    alloc = cost_allocations(_day_usage(), _costs([_day_total("10")]), mapping, "2026-10")
    got = {(r["account_id"], r["model_id"]): r["allocated_cost"] for r in alloc.to_dicts()}
    assert got == {
        ("acct-001", "gpt-4o"): Decimal("6.862745098039"),
        ("acct-002", "gpt-4o"): Decimal("1.960784313726"),
        ("acct-002", "gpt-4o-mini"): Decimal("1.176470588235"),
    }
    assert alloc["allocated_cost"].sum() == Decimal(10)


def test_a_day_line_item_of_one_meter_is_allocated_by_that_meter_only(mapping):
    # "output" $2.00: acct-001 gpt-4o output $1.00, acct-002 gpt-4o-mini output $0.60
    alloc = cost_allocations(
        _day_usage(), _costs([_day_total("2.00", "output_tokens")]), mapping, "2026-10"
    )
    got = {(r["account_id"], r["model_id"]): r["allocated_cost"] for r in alloc.to_dicts()}
    assert got == {
        ("acct-001", "gpt-4o"): Decimal("1.25"),
        ("acct-002", "gpt-4o-mini"): Decimal("0.75"),
    }
    assert set(alloc["meter_id"]) == {"output_tokens"}


def test_a_day_total_nobody_metered_is_unattributed(mapping):
    usage = usage_frame([usage_row("acct-001", "input_tokens", "gpt-4o", H, 0)])
    costs = _costs([_day_total("4.00")])
    att = cost_attribution(usage, costs, rated_usage(usage, "2026-10"), mapping, "2026-10")
    una = att.filter(pl.col("row_kind") == "unattributed")
    assert una["allocated_cost"].to_list() == [Decimal(4)] and una["model_id"].to_list() == [None]


def test_a_day_total_lands_in_cost_attribution_per_account(mapping):
    usage = _day_usage()
    costs = _costs([_day_total("10.20"), _day_total("-1", None)[:7] + ("credit", "2026-10")])
    att = cost_attribution(usage, costs, rated_usage(usage, "2026-10"), mapping, "2026-10")
    assert att["allocated_cost"].sum() == Decimal("9.20")  # every vendor dollar lands somewhere
    acct1 = att.filter((pl.col("account_id") == "acct-001") & (pl.col("model_id") == "gpt-4o"))
    assert acct1["allocated_cost"].to_list() == [Decimal("7.00")]


@settings(max_examples=40, deadline=None)
@given(
    bill=st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e9"), places=12),
    qtys=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=6),
)
def test_day_total_allocations_sum_exactly_to_the_days_cost(mapping, bill, qtys):
    models = ["gpt-4o", "gpt-4o-mini", "gpt-5"]
    meters = ["input_tokens", "output_tokens", "cached_input_tokens"]
    usage = usage_frame(
        [
            usage_row(f"acct-{i % 3}", meters[i % 3], models[(i // 3) % 3], H, q)
            for i, q in enumerate(qtys)
        ]
    )
    alloc = cost_allocations(usage, _costs([_day_total(str(bill))]), mapping, "2026-10")
    assert alloc["allocated_cost"].sum() == bill
