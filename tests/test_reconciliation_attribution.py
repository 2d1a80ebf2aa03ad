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
