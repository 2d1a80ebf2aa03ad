"""Issue 17 price models (fixture pricebook `models`), hand-computed tables with boundaries.

models@v1 from 2026-10-01T00Z, models@v2 from 2026-10-16T00Z (fixture vendors.yaml: openai
lists m1 input 2.00 / output 8.00 and m2 input 0.40 / output 1.60 per 1 M):
  input_tokens *   markup 25 % on the openai list rate (m1 2.50, m2 0.50 per 1 M); m3 1.00 exact;
  output_tokens m1 markup 20 % (9.60 per 1 M), v2 50 % (12.00), first 1 M of the month free;
  output_tokens m2 2.00 per 1 M, first 500,000 free;
  web_searches     graduated 0.01 up to 1,000 then 0.005, after 100 free;
  tool_calls       packages of 100 for 1.00, after 50 free;
  images           0.04 each, minimum 5.00 and maximum 20.00 a month per account;
  storage_gb       graduated 1.00 up to 100 (+ 10.00 tier fee), then 0.50 (+ 5.00 tier fee);
  seats            volume 4.00 up to 10 (+ 20.00 tier fee), then 3.00 (+ 25.00 tier fee);
  exports          packages of 1,000 for 2.00, rounded down (only complete packages).
Account a-cap: 10 % discount, maximum_spend 30.00, minimum_commit 5.00.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagebox_pipelines import schemas
from usagebox_pipelines.invoicing.lines import build_invoice_lines
from usagebox_pipelines.pricing import (
    AccountsError,
    PricebookError,
    load_accounts,
    load_pricebooks,
    rate_usage,
)
from usagebox_pipelines.pricing.markup import markup_earned
from usagebox_pipelines.pricing.money import round_decimal
from usagebox_pipelines.pricing.rating import RatingResult

FIXTURES = Path(__file__).parent / "fixtures" / "pricebooks" / "models"
BOOKS = load_pricebooks(FIXTURES)
ACCOUNTS = load_accounts(FIXTURES)


def hour(day: int, h: int = 0) -> datetime:
    return datetime(2026, 10, day, h, tzinfo=UTC)


def usage(*rows: tuple, account: str = "a") -> pl.DataFrame:
    """Rows of (meter, model, hour, quantity)."""
    records = [
        {
            "account_id": account,
            "meter_id": meter,
            "model_id": model,
            "billable": True,
            "dimensions": "{}",
            "hour": at,
            "sum": D(quantity),
            "count": 1,
        }
        for meter, model, at, quantity in rows
    ]
    return schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.USAGE_HOURLY)


def rate(frame: pl.DataFrame, **kwargs: Any) -> RatingResult:
    """Rate the month for the accounts in `frame` only (a-cap's terms bill it without usage)."""
    scope = frame["account_id"].unique().to_list()
    return rate_usage(frame, "2026-10", BOOKS, ACCOUNTS, scope=scope, **kwargs)


def lines(result: RatingResult) -> list[tuple]:
    """(version, price_model, tier, quantity, amount) of usage lines, sorted."""
    usage_rows = result.rated.filter(pl.col("line_kind") == "usage")
    return sorted(
        (r["price_version"], r["price_model"], r["tier"], r["quantity"], r["amount"])
        for r in usage_rows.iter_rows(named=True)
    )


def row(version: str, model: str, tier: int | None, quantity: str, amount: str) -> tuple:
    return (version, model, tier, D(quantity), D(amount))


MARKUP_AND_FREE = [
    (
        "markup_on_the_list_rate_of_each_listed_model",
        [("input_tokens", "m1", hour(1), "1000000"), ("input_tokens", "m2", hour(1), "2000000")],
        [
            row("v1", "markup", None, "1000000", "2.50"),
            row("v1", "markup", None, "2000000", "1.00"),
        ],
    ),
    (
        "an_exact_rate_beats_the_star_markup",
        [("input_tokens", "m3", hour(1), "1000000")],
        [row("v1", "per_unit", None, "1000000", "1.00")],
    ),
    (
        "markup_on_a_sub_unit_quantity_stays_exact",
        [("input_tokens", "m1", hour(1), "1")],
        [row("v1", "markup", None, "1", "0.0000025")],
    ),
    (
        "zero_usage_bills_nothing",
        [("input_tokens", "m1", hour(1), "0")],
        [row("v1", "markup", None, "0", "0")],
    ),
    (
        "free_units_carry_across_a_version_change_mid_month",
        [
            ("output_tokens", "m1", hour(5), "600000"),
            ("output_tokens", "m1", hour(10), "600000"),
            ("output_tokens", "m1", hour(20), "1000000"),
        ],
        [
            row("v1", "included", None, "1000000", "0"),
            row("v1", "markup", None, "200000", "1.92"),
            row("v2", "markup", None, "1000000", "12.00"),
        ],
    ),
    (
        "usage_exactly_at_the_free_units_edge_is_all_included",
        [("output_tokens", "m2", hour(3), "500000")],
        [row("v1", "included", None, "500000", "0")],
    ),
    (
        "one_unit_past_the_free_units_edge_is_billed",
        [("output_tokens", "m2", hour(3), "500001")],
        [row("v1", "included", None, "500000", "0"), row("v1", "per_unit", None, "1", "0.000002")],
    ),
    (
        "graduated_tiers_start_after_the_free_units",
        [("web_searches", None, hour(2), "1200")],
        [
            row("v1", "graduated", 1, "1000", "10.00"),
            row("v1", "graduated", 2, "100", "0.50"),
            row("v1", "included", None, "100", "0"),
        ],
    ),
    (
        "exactly_at_the_shifted_tier_edge_stays_in_tier_1",
        [("web_searches", None, hour(2), "600"), ("web_searches", None, hour(3), "500")],
        [row("v1", "graduated", 1, "1000", "10.00"), row("v1", "included", None, "100", "0")],
    ),
    (
        "packages_start_after_the_free_units",
        [("tool_calls", None, hour(2), "50")],
        [row("v1", "package", None, "50", "0")],
    ),
    (
        "one_call_past_the_free_units_starts_a_package",
        [("tool_calls", None, hour(2), "51")],
        [row("v1", "package", None, "51", "1.00")],
    ),
    (
        "round_down_bills_no_partial_package",
        [("exports", None, hour(2), "999")],
        [row("v1", "package", None, "999", "0")],
    ),
    (
        "round_down_exactly_one_package",
        [("exports", None, hour(2), "1000")],
        [row("v1", "package", None, "1000", "2.00")],
    ),
    (
        "round_down_completes_packages_across_hours_and_versions",
        [("exports", None, hour(2), "1500"), ("exports", None, hour(20), "1600")],
        [row("v1", "package", None, "1500", "2.00"), row("v2", "package", None, "1600", "4.00")],
    ),
    (
        "a_full_package_after_the_free_units_then_a_new_one",
        [("tool_calls", None, hour(2), "150"), ("tool_calls", None, hour(4), "1")],
        [row("v1", "package", None, "151", "2.00")],
    ),
]


@pytest.mark.parametrize(
    ("rows", "expected"), [c[1:] for c in MARKUP_AND_FREE], ids=[c[0] for c in MARKUP_AND_FREE]
)
def test_markup_and_free_units(rows: list[tuple], expected: list[tuple]) -> None:
    result = rate(usage(*rows))
    assert lines(result) == sorted(expected)
    assert result.unrated.is_empty()


def test_a_model_the_vendor_does_not_list_is_unrated_never_free() -> None:
    result = rate(usage(("input_tokens", "m9", hour(1), "5")))
    assert result.rated.filter(pl.col("line_kind") == "usage").is_empty()
    assert result.unrated["reason"].to_list() == [
        "no rate in models@v1 matches meter 'input_tokens', model 'm9', dimensions {}"
    ]


def test_markup_earned_is_the_pct_of_list_cost() -> None:
    rates = {r.rate_id: r for r in BOOKS.get("models@v2").rates}
    cost, earned = markup_earned(D("1000000"), rates["m1-output"])
    assert (cost, earned) == (D("8.000000000000"), D("4.000000000000"))


def test_invoice_lines_name_included_usage_and_markup() -> None:
    result = rate(
        usage(("output_tokens", "m1", hour(5), "1200000"), ("input_tokens", "m2", hour(5), "1"))
    )
    account = ACCOUNTS.get("a")
    invoice = build_invoice_lines(result.rated, account, "2026-10")
    described = sorted(zip(invoice["description"], invoice["amount"], strict=True))
    assert described == [
        ("m1 · Output tokens — included usage", D("0.00")),
        ("m1 · Output tokens — vendor list price + markup", D("1.92")),
        ("m2 · Input tokens — vendor list price + markup", D("0.00")),
    ]


PRICE_TERMS = [
    (
        "zero_usage_is_trued_up_to_the_minimum",
        [(3, "0")],
        [("per_unit", "0"), ("price_minimum", "5.00")],
    ),
    ("below_the_minimum", [(3, "10")], [("per_unit", "0.40"), ("price_minimum", "4.60")]),
    ("exactly_at_the_minimum", [(3, "125")], [("per_unit", "5.00")]),
    ("exactly_at_the_cap", [(3, "500")], [("per_unit", "20.00")]),
    ("one_unit_over_the_cap", [(3, "501")], [("per_unit", "20.04"), ("price_cap", "-0.04")]),
    (
        "cap_hit_mid_month_across_a_version_change",
        [(3, "300"), (12, "300"), (25, "400")],
        [("per_unit", "24.00"), ("per_unit", "16.00"), ("price_cap", "-20.00")],
    ),
]


@pytest.mark.parametrize(
    ("parts", "expected"), [c[1:] for c in PRICE_TERMS], ids=[c[0] for c in PRICE_TERMS]
)
def test_per_price_minimum_and_cap(parts: list[tuple], expected: list[tuple]) -> None:
    rated = rate(usage(*[("images", None, hour(day), q) for day, q in parts])).rated
    got = sorted((r["price_model"], r["amount"]) for r in rated.iter_rows(named=True))
    assert got == sorted((m, D(a)) for m, a in expected)


def test_a_version_change_mid_month_applies_the_latest_versions_terms_once() -> None:
    rated = rate(usage(("images", None, hour(3), "400"), ("images", None, hour(20), "400"))).rated
    terms = rated.filter(pl.col("price_model") == "price_cap")
    assert terms.select("price_version", "amount").rows() == [("v2", D("-12.00"))]


def test_account_spend_cap_comes_after_the_discount_and_before_the_minimum() -> None:
    # 1,000 images = 40.00, capped per price at 20.00; 20 M m1 input tokens = 50.00 (2.50 / 1 M)
    rows = [("images", None, hour(3), "1000"), ("input_tokens", "m1", hour(3), "20000000")]
    result = rate(usage(*rows, account="a-cap"))
    contract = result.rated.filter(pl.col("line_kind") != "usage")
    assert contract.select("line_kind", "rate_id", "amount").rows() == [
        ("discount", "discount_pct", D("-7.000000000000")),  # 10 % of 70.00
        ("discount", "maximum_spend", D("-33.000000000000")),  # 63.00 → 30.00
    ]
    invoice = build_invoice_lines(result.rated, ACCOUNTS.get("a-cap"), "2026-10")
    assert invoice["amount"].sum() == D("30.00")
    assert invoice.filter(pl.col("unit") == "maximum_spend")["description"].to_list() == [
        "Spend cap (maximum 30.00 USD a month)"
    ]
    assert "Images — capped at 20.00 a month" in invoice["description"].to_list()


COUPONS = [
    # 20 M m1 input = 50.00; 10 % discount; coupon launch 5.00 in 2026-09 and 2026-10 only
    ("2026-10", "20000000", [("discount_pct", "-5.00"), ("coupon:launch", "-5.00")]),
    # 1 M = 2.50 − 0.25 = 2.25 < 5.00: the coupon takes only what is due, the commit trues up
    (
        "2026-10",
        "1000000",
        [("discount_pct", "-0.25"), ("coupon:launch", "-2.25"), ("minimum_commit", "8.00")],
    ),
    # the launch coupon ended after 2026-10; `later` applies in 2026-11 only
    ("2026-11", "20000000", [("discount_pct", "-5.00"), ("coupon:later", "-3.00")]),
    ("2026-12", "20000000", [("discount_pct", "-5.00")]),
]


@pytest.mark.parametrize(("period", "tokens", "expected"), COUPONS)
def test_fixed_coupons_apply_for_their_months_after_the_discount(
    period: str, tokens: str, expected: list[tuple]
) -> None:
    month = int(period[-2:])
    at = datetime(2026, month, 3, tzinfo=UTC)
    frame = usage(("input_tokens", "m1", at, tokens), account="a-coupon")
    result = rate_usage(frame, period, BOOKS, ACCOUNTS, scope=["a-coupon"])
    contract = result.rated.filter(pl.col("line_kind") != "usage")
    got = [(r, round_decimal(a, 2)) for r, a in contract.select("rate_id", "amount").rows()]
    assert got == [(r, D(a)) for r, a in expected]
    invoice = build_invoice_lines(result.rated, ACCOUNTS.get("a-coupon"), period)
    assert invoice["amount"].sum() >= 0
    coupons = invoice.filter(pl.col("unit").str.starts_with("coupon:"))["description"]
    assert coupons.to_list() == [f"Discount coupon {r[7:]}" for r, _ in expected if "coupon" in r]


def test_invalid_coupon_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "accounts.yaml").write_text(
        'accounts:\n  x: {coupons: [{id: c, amount: "5", from: 2026-13, months: 1}]}\n'
    )
    with pytest.raises(AccountsError, match=r"accounts\.x\.coupons\[0\]\.from: invalid value"):
        load_accounts(tmp_path)


def test_spend_cap_below_the_commitment_is_refused(tmp_path: Path) -> None:
    (tmp_path / "accounts.yaml").write_text(
        'accounts:\n  x: {minimum_commit: "50.00", maximum_spend: "40.00"}\n'
    )
    with pytest.raises(AccountsError, match=r"accounts\.x\.maximum_spend: must be at least"):
        load_accounts(tmp_path)


TIER_FEES = [
    ("zero_usage_enters_no_tier", [("storage_gb", 2, "0")], [("graduated", 1, "0", "0")]),
    (
        "exactly_at_the_tier_edge_pays_only_tier_1s_fee",
        [("storage_gb", 2, "100")],
        [("graduated", 1, "100", "100.00"), ("tier_flat", 1, "0", "10.00")],
    ),
    (
        "crossing_into_tier_2_across_a_version_change_pays_its_fee_once",
        [("storage_gb", 2, "60"), ("storage_gb", 8, "60"), ("storage_gb", 20, "30")],
        [
            ("graduated", 1, "100", "100.00"),
            ("tier_flat", 1, "0", "10.00"),
            ("graduated", 2, "20", "10.00"),
            ("tier_flat", 2, "0", "5.00"),
            ("graduated", 2, "30", "15.00"),
        ],
    ),
    (
        "volume_exactly_at_the_edge_takes_tier_1_and_its_fee",
        [("seats", 2, "10")],
        [("volume", 1, "10", "40.00"), ("tier_flat", 1, "0", "20.00")],
    ),
    (
        "volume_total_picks_the_fee_once_across_versions",
        [("seats", 2, "6"), ("seats", 20, "6")],
        [("volume", 2, "6", "18.00"), ("tier_flat", 2, "0", "25.00"), ("volume", 2, "6", "18.00")],
    ),
]


@pytest.mark.parametrize(
    ("parts", "expected"), [c[1:] for c in TIER_FEES], ids=[c[0] for c in TIER_FEES]
)
def test_per_tier_flat_fees(parts: list[tuple], expected: list[tuple]) -> None:
    rated = rate(usage(*[(meter, None, hour(day), q) for meter, day, q in parts])).rated
    got = sorted(
        (r["price_model"], r["tier"], r["quantity"], r["amount"])
        for r in rated.iter_rows(named=True)
    )
    assert got == sorted((m, t, D(q), D(a)) for m, t, q, a in expected)


FILTERS = [
    ({"region": "eu"}, "egress-eu", "0.50"),
    ({"country": "de"}, "egress-de", "0.80"),
    ({"region": "eu", "country": "de"}, "egress-de", "0.80"),  # both match: priority 1 wins
    ({"region": "eu", "country": "de", "tier": "sovereign"}, "egress-eu-de-sovereign", "2.00"),
]


@pytest.mark.parametrize(("dims", "rate_id", "amount"), FILTERS)
def test_filters_on_several_dimension_keys(dims: dict, rate_id: str, amount: str) -> None:
    frame = usage(("egress_gb", None, hour(2), "10")).with_columns(
        dimensions=pl.lit(json.dumps(dims, sort_keys=True, separators=(",", ":")))
    )
    rated = rate(frame).rated
    assert rated.select("rate_id", "amount").rows() == [(rate_id, D(amount))]


def test_overlapping_filters_without_a_priority_are_refused(tmp_path: Path) -> None:
    rates = (
        "  - {meter_id: x, model_id: '*', dimensions: {region: eu}, unit_price: '1'}\n"
        "  - {meter_id: x, model_id: '*', dimensions: {country: de}, unit_price: '2'}\n"
    )
    with pytest.raises(PricebookError, match=r"rates\[1\]: is ambiguous .*higher `priority`"):
        load_pricebooks(_folder(tmp_path, rates))


TIER_GROUPS = [
    # 80 eu + 80 us: each region stays in tier 1 (pooled, 160 would cross into tier 2)
    (["eu", "us"], [(1, "80", "8.00"), (1, "80", "8.00")]),
    (["eu", "eu"], [(1, "100", "10.00"), (2, "60", "3.00")]),
    # usage without the key is its own group (value "")
    (["eu", None], [(1, "80", "8.00"), (1, "80", "8.00")]),
]


@pytest.mark.parametrize(("regions", "expected"), TIER_GROUPS)
def test_tiers_per_group_value(regions: list[str | None], expected: list[tuple]) -> None:
    rows = [("transcode_minutes", None, hour(2 + i), "80") for i in range(len(regions))]
    dims = [json.dumps({"region": r} if r else {}) for r in regions]
    rated = rate(usage(*rows).with_columns(dimensions=pl.Series(dims))).rated
    got = sorted((r["tier"], r["quantity"], r["amount"]) for r in rated.iter_rows(named=True))
    assert got == sorted((t, D(q), D(a)) for t, q, a in expected)


BLOCKS = [
    ("zero_usage_starts_no_block", ["0"], [("v1", 1, "0", "0")]),
    ("one_unit_bills_a_whole_block", ["1"], [("v1", 1, "1", "10.00")]),
    ("exactly_one_block", ["10"], [("v1", 1, "10", "10.00")]),
    ("one_past_the_block_edge_starts_the_next", ["11"], [("v1", 1, "11", "20.00")]),
    ("a_block_is_billed_once_across_hours", ["5", "5"], [("v1", 1, "10", "10.00")]),
]


@pytest.mark.parametrize(("parts", "expected"), [c[1:] for c in BLOCKS], ids=[c[0] for c in BLOCKS])
def test_blocks_inside_tiers_round_up(parts: list[str], expected: list[tuple]) -> None:
    rated = rate(usage(*[("renders", None, hour(2, i), q) for i, q in enumerate(parts)])).rated
    got = sorted(
        (r["price_version"], r["tier"], r["quantity"], r["amount"])
        for r in rated.iter_rows(named=True)
    )
    assert got == sorted((v, t, D(q), D(a)) for v, t, q, a in expected)


def test_a_started_block_spans_a_version_change_and_the_next_tier_has_its_own() -> None:
    rows = [("renders", None, hour(2), "95"), ("renders", None, hour(20), "10")]
    rated = rate(usage(*rows)).rated
    assert sorted(rated.select("price_version", "tier", "amount").rows()) == [
        ("v1", 1, D("100")),  # 95 units = 10 started blocks of 10
        ("v2", 1, D("0")),  # units 96-100 are in the block already billed
        ("v2", 2, D("25")),  # 5 units start one block of 50 at 0.50
    ]


def test_a_correction_back_below_the_edge_drops_the_tier_fee() -> None:
    rows = [("storage_gb", None, hour(2), "150"), ("storage_gb", None, hour(3), "-60")]
    rated = rate(usage(*rows)).rated
    assert rated.filter(pl.col("price_model") == "tier_flat")["tier"].to_list() == [1]


# --------------------------------------------------------------------------- validation


def _folder(tmp_path: Path, rates: str, vendors_edit: tuple[str, str] | None = None) -> Path:
    """A pricebook folder with the fixture vendors.yaml (optionally edited) and one file."""
    vendors = (FIXTURES / "vendors.yaml").read_text()
    if vendors_edit is not None:
        assert vendors_edit[0] in vendors
        vendors = vendors.replace(*vendors_edit)
    (tmp_path / "vendors.yaml").write_text(vendors)
    (tmp_path / "bad.yaml").write_text(
        'pricebook: t\nversion: "1"\neffective_from: 2026-10-01T00:00:00Z\ncurrency: USD\n'
        f"rates:\n{rates}"
    )
    return tmp_path


INVALID = [
    (
        "free_units_on_volume",
        "  - {meter_id: x, model_id: '*', free_units: 5, tiers: {mode: volume, steps: "
        "[{up_to: null, unit_price: '1'}]}}\n",
        r"bad\.yaml: rates\[0\]\.free_units: not used with volume",
    ),
    (
        "negative_free_units",
        "  - {meter_id: x, model_id: '*', free_units: -1, unit_price: '1'}\n",
        r"bad\.yaml: rates\[0\]\.free_units: must be greater than 0",
    ),
    (
        "markup_with_per",
        "  - {meter_id: input_tokens, model_id: m1, per: 1000,"
        " markup: {vendor: openai, pct: '5'}}\n",
        r"bad\.yaml: rates\[0\]\.per: not used with markup",
    ),
    (
        "markup_float_pct",
        "  - {meter_id: input_tokens, model_id: m1, markup: {vendor: openai, pct: 2.5}}\n",
        r"bad\.yaml: rates\[0\]\.markup\.pct: write decimals as quoted strings",
    ),
    (
        "minimum_above_maximum",
        "  - {meter_id: x, model_id: '*', unit_price: '1', minimum: '9', maximum: '5'}\n",
        r"bad\.yaml: rates\[0\]\.minimum: must not exceed maximum",
    ),
    (
        "maximum_below_a_cent",
        "  - {meter_id: x, model_id: '*', unit_price: '1', maximum: '5.001'}\n",
        r"bad\.yaml: rates\[0\]\.maximum: at most 2 decimal places in USD",
    ),
    (
        "negative_tier_fee",
        "  - {meter_id: x, model_id: '*', tiers: {mode: graduated, steps: "
        "[{up_to: null, unit_price: '1', flat_fee: '-1'}]}}\n",
        r"bad\.yaml: rates\[0\]\.tiers\.steps\[0\]\.flat_fee: must be at least 0",
    ),
    (
        "tier_by_on_per_unit",
        "  - {meter_id: x, model_id: '*', tier_by: [region], unit_price: '1'}\n",
        r"bad\.yaml: rates\[0\]\.tier_by: not used with per_unit",
    ),
    (
        "tier_by_bad_key",
        "  - {meter_id: x, model_id: '*', tier_by: ['a b'], package: {size: 1, price: '1'}}\n",
        r"bad\.yaml: rates\[0\]\.tier_by\[0\]: invalid dimension key",
    ),
    (
        "block_on_volume",
        "  - {meter_id: x, model_id: '*', tiers: {mode: volume, steps: "
        "[{up_to: null, unit_price: '1', block: 10}]}}\n",
        r"bad\.yaml: rates\[0\]\.tiers\.steps\[0\]\.block: only graduated tiers",
    ),
    (
        "markup_unknown_vendor",
        "  - {meter_id: input_tokens, model_id: m1, markup: {vendor: nobody, pct: '5'}}\n",
        r"bad\.yaml: rates\[0\]\.markup\.vendor: unknown vendor 'nobody'",
    ),
    (
        "markup_other_currency",
        "  - {meter_id: input_tokens, model_id: m1, markup: {vendor: anthropic, pct: '5'}}\n",
        r"bad\.yaml: rates\[0\]\.markup\.vendor: anthropic lists prices in EUR",
    ),
    (
        "markup_model_not_listed",
        "  - {meter_id: input_tokens, model_id: m3, markup: {vendor: openai, pct: '5'}}\n",
        r"bad\.yaml: rates\[0\]\.markup: openai has no list rate for m3 input_tokens",
    ),
    (
        "markup_meter_not_listed",
        "  - {meter_id: tool_calls, model_id: '*', markup: {vendor: openai, pct: '5'}}\n",
        r"bad\.yaml: rates\[0\]\.markup: openai lists no tool_calls price",
    ),
]


@pytest.mark.parametrize(
    ("rates", "pattern"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_models_name_file_and_field(tmp_path: Path, rates: str, pattern: str) -> None:
    with pytest.raises(PricebookError, match=pattern):
        load_pricebooks(_folder(tmp_path, rates))


def test_a_list_rate_change_inside_a_markup_version_is_refused(tmp_path: Path) -> None:
    later = (
        "rates:\n  - vendor: openai\n    effective_from: 2026-10-20\n    per: 1000000\n"
        '    prices:\n      m1: {input_tokens: "2.20"}\n'
    )
    rates = "  - {meter_id: input_tokens, model_id: m1, markup: {vendor: openai, pct: '5'}}\n"
    folder = _folder(tmp_path, rates, ("rates:\n", later))
    with pytest.raises(
        PricebookError, match=r"bad\.yaml: rates\[0\]\.markup: .*changes on 2026-10-20"
    ):
        load_pricebooks(folder)
    (tmp_path / "bad2.yaml").write_text(
        (tmp_path / "bad.yaml")
        .read_text()
        .replace('"1"', '"2"')
        .replace("2026-10-01T", "2026-10-20T")
    )
    books = load_pricebooks(folder)  # a version from the change date takes the new list rate
    assert [v.rates[0].unit_price for v in books.versions] == [D("2.1"), D("2.31")]


def test_editing_a_list_rate_a_markup_used_changes_the_version_hash(tmp_path: Path) -> None:
    rates = "  - {meter_id: input_tokens, model_id: m1, markup: {vendor: openai, pct: '5'}}\n"
    before = load_pricebooks(_folder(tmp_path, rates)).fingerprints()
    edited = load_pricebooks(
        _folder(tmp_path, rates, ('input_tokens: "2.00"', 'input_tokens: "2.10"'))
    )
    with pytest.raises(PricebookError, match="content_sha256: file was edited"):
        edited.check_frozen(before)


def test_markup_without_vendors_yaml_names_the_file(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path, "  - {meter_id: input_tokens, model_id: m1, markup: {vendor: openai, pct: '5'}}\n"
    )
    (folder / "vendors.yaml").unlink()
    with pytest.raises(Exception, match="vendors.yaml: vendor mapping file not found"):
        load_pricebooks(folder)


def test_reprice_keeps_list_rates_for_a_proposed_markup_file(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "books")
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text((FIXTURES / "models-v2.yaml").read_text().replace('pct: "25"', 'pct: "10"'))
    from usagebox_pipelines.pricing import reprice_impact

    impact = reprice_impact(
        usage(("input_tokens", "m1", hour(20), "10000000")), "2026-10", BOOKS, proposed, ACCOUNTS
    )
    first = impact.row(0, named=True)
    assert (first["current"], first["proposed"]) == (D("25.00"), D("22.00"))


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400_000), min_size=1, max_size=8))
def test_included_usage_depends_only_on_the_month_total(parts: list[int]) -> None:
    """Invariant: however a month's m2 output is split over hours, the bill is
    max(0, total − 500,000) × 2.00 / 1 M exactly, and no float dtype appears."""
    rows = [("output_tokens", "m2", hour(1 + i), str(q)) for i, q in enumerate(parts)]
    rated = rate(usage(*rows)).rated
    assert all(not dtype.is_float() for dtype in rated.dtypes)
    billed = max(0, sum(parts) - 500_000)
    assert rated["amount"].sum() == D(billed) * D("2.00") / D(1_000_000)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10**12))
def test_markup_amount_is_list_cost_plus_pct(quantity: int) -> None:
    """Invariant: a markup line's amount = list cost × (1 + 25 %), and earned = 25 % of cost."""
    rated = rate(usage(("input_tokens", "m1", hour(1), str(quantity)))).rated
    rule = next(r for r in BOOKS.get("models@v1").rates if r.rate_id == "input-markup@m1")
    cost, earned = markup_earned(D(quantity), rule)
    assert rated["amount"].sum() == cost + earned
    assert earned == (cost * D("0.25")).quantize(D("1e-12"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=10))
def test_a_capped_price_never_bills_above_its_cap_nor_below_its_minimum(parts: list[int]) -> None:
    """Invariant: Σ of the images price's amounts is min(max(0.04 × total, 5.00), 20.00),
    whatever the month's split over hours."""
    rated = rate(usage(*[("images", None, hour(1 + i), str(q)) for i, q in enumerate(parts)])).rated
    assert rated["amount"].sum() == min(max(D("0.04") * sum(parts), D("5.00")), D("20.00"))


def test_two_vendors_star_markups_listing_one_model_are_refused(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).parent.parent / "pricebooks" / "vendors.yaml", tmp_path)
    (tmp_path / "bad.yaml").write_text(
        'pricebook: t\nversion: "1"\neffective_from: 2026-10-01T00:00:00Z\ncurrency: USD\nrates:\n'
        "  - {id: a, meter_id: input_tokens, model_id: '*', markup: {vendor: openai, pct: '5'}}\n"
        "  - {id: b, meter_id: input_tokens, model_id: '*', markup: {vendor: focus, pct: '5'}}\n"
    )
    with pytest.raises(
        PricebookError,
        match=r"rates\[1\]\.markup: focus and rates\[0\] \(openai\) both list gpt-4o ",
    ):
        load_pricebooks(tmp_path)


def test_reprice_loads_list_rates_for_the_first_markup_proposal(tmp_path: Path) -> None:
    """A folder without markup rates yet: the proposed markup version still finds vendors.yaml."""
    from usagebox_pipelines.pricing import reprice_impact

    books = tmp_path / "books"
    books.mkdir()
    shutil.copy(FIXTURES / "vendors.yaml", books)
    (books / "plain.yaml").write_text(
        'pricebook: models\nversion: "v1"\neffective_from: 2026-10-01T00:00:00Z\ncurrency: USD\n'
        "rates:\n  - {meter_id: input_tokens, model_id: m1, per: 1000000, unit_price: '2.00'}\n"
    )
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(
        'pricebook: models\nversion: "v2"\neffective_from: 2026-10-16T00:00:00Z\ncurrency: USD\n'
        "rates:\n  - {meter_id: input_tokens, model_id: m1, markup: {vendor: openai, pct: '50'}}\n"
    )
    frame = usage(("input_tokens", "m1", hour(20), "10000000"))
    impact = reprice_impact(frame, "2026-10", load_pricebooks(books), proposed, ACCOUNTS)
    first = impact.row(0, named=True)
    assert (first["current"], first["proposed"]) == (D("20.00"), D("30.00"))
