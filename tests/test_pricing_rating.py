"""Rating, table-driven with hand-computed amounts (fixture pricebook `simple`).

simple@v1 is in effect from 2026-10-01T00Z, simple@v2 from 2026-10-16T00Z. Prices (v1 → v2):
  input_tokens m1 2.00 → 3.00 per 1 M; input_tokens * 1.00 per 1 M;
  gpu_seconds {gpu: h100} 2.49 → 3.60 per 3600; {gpu: h100, region: eu} 3.00 per 3600;
  output_tokens m1 graduated per 1000: ≤1000 1.00 → 2.00, ≤5000 0.50 → 1.00, above 0.25 → 0.50;
  output_tokens m2 volume per 1000: ≤1000 1.00 → 2.00, ≤5000 0.80 → 1.60, above 0.60 → 1.20;
  tool_calls {tool: web_search} package 1000 for 10.00 → 20.00; {tool: code_interpreter}
  package 100 for 5.00; seats flat 49.00 → 59.00 a month.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from usagebox_pipelines import schemas
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing import load_accounts, load_pricebooks, rate_usage, round_money
from usagebox_pipelines.pricing.contract import INVOICE_LINE_KEYS
from usagebox_pipelines.pricing.rating import RatingResult

FIXTURES = Path(__file__).parent / "fixtures" / "pricebooks" / "rating"
BOOKS = load_pricebooks(FIXTURES)
ACCOUNTS = load_accounts(FIXTURES)
PLAIN = "a-plain"  # not listed: defaults (pricebook simple, USD, no contract terms)


def hour(day: int, h: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, h, tzinfo=UTC)


def usage(*rows: tuple, account: str = PLAIN) -> pl.DataFrame:
    """Rows of (meter, model, dims, hour, quantity[, billable])."""
    records = []
    for meter, model, dims, at, quantity, *rest in rows:
        records.append(
            {
                "account_id": account,
                "meter_id": meter,
                "model_id": model,
                "billable": rest[0] if rest else True,
                "dimensions": json.dumps(dims or {}, sort_keys=True, separators=(",", ":")),
                "hour": at,
                "sum": D(quantity),
                "count": 1,
            }
        )
    return schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.USAGE_HOURLY)


def rate(frame: pl.DataFrame, period: str = "2026-10", **kwargs: Any) -> RatingResult:
    return rate_usage(frame, period, BOOKS, ACCOUNTS, **kwargs)


def lines(result: RatingResult, kind: str = "usage", account: str = PLAIN) -> list[tuple]:
    """(price_version, tier, quantity, amount) of one account's lines of one kind."""
    rows = result.rated.filter((pl.col("line_kind") == kind) & (pl.col("account_id") == account))
    return [
        (r["price_version"], r["tier"], r["quantity"].normalize(), r["amount"].normalize())
        for r in rows.iter_rows(named=True)
    ]


def line(version: str | None, tier: int | None, quantity: str, amount: str) -> tuple:
    return (version, tier, D(quantity).normalize(), D(amount).normalize())


H100 = {"gpu": "h100"}
IN, OUT = "input_tokens", "output_tokens"
CASES = [
    # ---- per unit ----------------------------------------------------------------------------
    (
        "per 1M tokens",
        [(IN, "m1", None, hour(2, 5), "1500000")],
        [line("v1", None, "1500000", "3")],
    ),
    ("zero usage", [(IN, "m1", None, hour(2), "0")], [line("v1", None, "0", "0")]),
    (
        "model * fallback",
        [(IN, "m9", None, hour(2), "2000000")],
        [line("v1", None, "2000000", "2")],
    ),
    (
        "exact model beats *",
        [(IN, "m1", None, hour(2), "500000")],
        [line("v1", None, "500000", "1")],
    ),
    (
        "hours sum before pricing",
        [(IN, "m1", None, hour(2, 1), "250000"), (IN, "m1", None, hour(3, 7), "250000")],
        [line("v1", None, "500000", "1")],
    ),
    (
        "per 3600",
        [("gpu_seconds", None, H100, hour(2), "7200")],
        [line("v1", None, "7200", "4.98")],
    ),
    (
        "per 3600 inexact: half-up at the 12th place",
        [("gpu_seconds", None, H100, hour(2), "1")],
        [line("v1", None, "1", "0.000691666667")],
    ),
    (
        "per 3600 exact tie rounds up, not to even",  # 0.00000018 × 2.49 / 3600 = 1.245e-10
        [("gpu_seconds", None, H100, hour(2), "0.00000018")],
        [line("v1", None, "0.00000018", "0.000000000125")],
    ),
    (
        "more dimensions beat fewer",
        [("gpu_seconds", None, {"gpu": "h100", "region": "eu"}, hour(2), "3600")],
        [line("v1", None, "3600", "3")],
    ),
    (
        "extra usage dimensions still match",
        [("gpu_seconds", None, {"agent_id": "a7", "gpu": "h100"}, hour(2), "3600")],
        [line("v1", None, "3600", "2.49")],
    ),
    # ---- graduated tiers (m1 output, per 1000) -----------------------------------------------
    (
        "graduated boundary hit exactly",
        [(OUT, "m1", None, hour(2), "1000")],
        [line("v1", 1, "1000", "1")],
    ),
    (
        "graduated one past the boundary",
        [(OUT, "m1", None, hour(2), "1001")],
        [line("v1", 1, "1000", "1"), line("v1", 2, "1", "0.0005")],
    ),
    (
        "graduated crossing between hours",
        [(OUT, "m1", None, hour(2, 1), "600"), (OUT, "m1", None, hour(2, 2), "600")],
        [line("v1", 1, "1000", "1"), line("v1", 2, "200", "0.1")],
    ),
    (
        "graduated all three tiers",
        [(OUT, "m1", None, hour(3), "6000")],
        [line("v1", 1, "1000", "1"), line("v1", 2, "4000", "2"), line("v1", 3, "1000", "0.25")],
    ),
    ("graduated zero usage", [(OUT, "m1", None, hour(3), "0")], [line("v1", 1, "0", "0")]),
    # ---- volume tiers (m2 output, per 1000) --------------------------------------------------
    (
        "volume boundary hit exactly",
        [(OUT, "m2", None, hour(2), "1000")],
        [line("v1", 1, "1000", "1")],
    ),
    ("volume one past", [(OUT, "m2", None, hour(2), "1001")], [line("v1", 2, "1001", "0.8008")]),
    ("volume second bound", [(OUT, "m2", None, hour(2), "5000")], [line("v1", 2, "5000", "4")]),
    (
        "volume top tier prices all units",
        [(OUT, "m2", None, hour(2, 1), "2500"), (OUT, "m2", None, hour(9, 1), "2501")],
        [line("v1", 3, "5001", "3.0006")],
    ),
    # ---- packages -----------------------------------------------------------------------------
    (
        "package partial rounds up",
        [("tool_calls", None, {"tool": "web_search"}, hour(2), "1")],
        [line("v1", None, "1", "10")],
    ),
    (
        "package exact multiple",
        [("tool_calls", None, {"tool": "web_search"}, hour(2), "1000")],
        [line("v1", None, "1000", "10")],
    ),
    (
        "package one past",
        [("tool_calls", None, {"tool": "web_search"}, hour(2), "1001")],
        [line("v1", None, "1001", "20")],
    ),
    (
        "package zero usage",
        [("tool_calls", None, {"tool": "web_search"}, hour(2), "0")],
        [line("v1", None, "0", "0")],
    ),
    (
        "package matrix by tool",
        [("tool_calls", None, {"tool": "code_interpreter"}, hour(2), "250")],
        [line("v1", None, "250", "15")],
    ),
    (
        "package partial only at month end",
        [("tool_calls", None, {"tool": "web_search"}, hour(d), "100") for d in range(1, 11)],
        [line("v1", None, "1000", "10")],
    ),
    # ---- flat ----------------------------------------------------------------------------------
    (
        "flat fee once a month",
        [("seats", None, None, hour(2), "3"), ("seats", None, None, hour(5), "2")],
        [line("v1", None, "5", "49")],
    ),
    # ---- across the version change at 2026-10-16T00Z --------------------------------------------
    (
        "per unit each hour by its version",
        [(IN, "m1", None, hour(15, 23), "1000000"), (IN, "m1", None, hour(16, 0), "1000000")],
        [line("v1", None, "1000000", "2"), line("v2", None, "1000000", "3")],
    ),
    (
        "graduated tier continues across the version change",
        [(OUT, "m1", None, hour(15, 23), "600"), (OUT, "m1", None, hour(16, 0), "600")],
        [line("v1", 1, "600", "0.6"), line("v2", 1, "400", "0.8"), line("v2", 2, "200", "0.2")],
    ),
    (
        "volume tier from the month total, priced per version",
        [(OUT, "m2", None, hour(15, 23), "600"), (OUT, "m2", None, hour(16, 0), "600")],
        [line("v1", 2, "600", "0.48"), line("v2", 2, "600", "0.96")],
    ),
    (
        "package belongs to the version its first unit was used in",
        [
            ("tool_calls", None, {"tool": "web_search"}, hour(10), "1500"),
            ("tool_calls", None, {"tool": "web_search"}, hour(20), "600"),
        ],
        [line("v1", None, "1500", "20"), line("v2", None, "600", "20")],
    ),
    (
        "package started before the change is not charged again",
        [
            ("tool_calls", None, {"tool": "web_search"}, hour(10), "500"),
            ("tool_calls", None, {"tool": "web_search"}, hour(20), "400"),
        ],
        [line("v1", None, "500", "10"), line("v2", None, "400", "0")],
    ),
    (
        "flat fee from the version of the first usage",
        [("seats", None, None, hour(20), "1"), ("seats", None, None, hour(25), "1")],
        [line("v2", None, "2", "59")],
    ),
]


@pytest.mark.parametrize(("rows", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_price_models(rows: list[tuple], expected: list[tuple]) -> None:
    result = rate(usage(*rows))
    assert result.unrated.is_empty()
    assert lines(result) == expected


def test_amount_is_quantity_times_price_over_per_on_tiered_and_unit_lines() -> None:
    rows = [(OUT, "m1", None, hour(3), "6000"), ("gpu_seconds", None, H100, hour(3), "5")]
    rated = rate(usage(*rows)).rated
    for r in rated.iter_rows(named=True):
        exact = r["quantity"] * r["unit_price"] / r["per"]
        assert abs(exact - r["amount"]) <= D("0.0000000000005")


def test_rated_lines_carry_version_rate_tier_and_hours() -> None:
    rows = [(OUT, "m1", None, hour(15, 23), "600"), (OUT, "m1", None, hour(16, 0), "600")]
    rated = rate(usage(*rows)).rated
    assert rated.schema == schemas.RATED_USAGE
    first = rated.filter(pl.col("account_id") == PLAIN).row(0, named=True)
    assert first["pricebook"] == "simple" and first["rate_id"] == "out-m1"
    assert first["price_model"] == "graduated" and first["currency"] == "USD"
    assert first["first_hour"] == hour(15, 23) and first["last_hour"] == hour(15, 23)
    assert first["per"] == D(1000) and first["unit_price"] == D("1.00")


def test_lines_keep_dimensions_and_tiers_are_shared_across_them() -> None:
    rows = [
        (OUT, "m1", {"feature": "chat"}, hour(2, 1), "800"),
        (OUT, "m1", {"feature": "search"}, hour(2, 2), "400"),
    ]
    rated = rate(usage(*rows)).rated.filter(pl.col("account_id") == PLAIN)
    got = rated.select("dimensions", "tier", "quantity", "amount").rows()
    assert got == [
        ('{"feature":"chat"}', 1, D(800), D("0.8")),
        ('{"feature":"search"}', 1, D(200), D("0.2")),
        ('{"feature":"search"}', 2, D(200), D("0.1")),
    ]


def test_row_order_of_the_input_does_not_change_the_result() -> None:
    rows = [(OUT, "m1", None, hour(d, h), str(100 * d + h)) for d in (1, 9, 16, 30) for h in (0, 5)]
    frame = usage(*rows)
    assert rate(frame).rated.equals(rate(frame.reverse()).rated)
    assert rate(frame.lazy()).rated.equals(rate(frame).rated)


# ---- what is ignored and what is unrated --------------------------------------------------------


def test_non_billable_rows_and_other_months_are_ignored() -> None:
    rows = [
        (IN, "m1", None, hour(2), "1000000", False),
        (IN, "m1", None, hour(1, 0, month=11), "1000000"),
        (IN, "m1", None, hour(30, 23, month=9), "1000000"),
        (IN, "m1", None, hour(31, 23), "1000000"),
    ]
    result = rate(usage(*rows))
    assert lines(result) == [line("v2", None, "1000000", "3")]  # the month's last hour
    assert result.unrated.is_empty()


UNRATED = [
    (
        "unknown meter",
        PLAIN,
        ("foo", "m1", None, hour(2), "5"),
        "2026-10",
        "no rate in simple@v1 matches meter 'foo', model 'm1', dimensions {}",
    ),
    (
        "unknown tool",
        PLAIN,
        ("tool_calls", None, {"tool": "other"}, hour(2), "5"),
        "2026-10",
        "no rate in simple@v1 matches meter 'tool_calls', model '(none)', dimensions "
        '{"tool":"other"}',
    ),
    (
        "gpu without gpu dimension",
        PLAIN,
        ("gpu_seconds", None, None, hour(2), "5"),
        "2026-10",
        "no rate in simple@v1 matches meter 'gpu_seconds'",
    ),
    (
        "before the first version",
        PLAIN,
        (IN, "m1", None, hour(2, month=9), "5"),
        "2026-09",
        "no version of pricebook 'simple' is in effect at this hour",
    ),
    (
        "missing pricebook",
        "a-nobook",
        (IN, "m1", None, hour(2), "5"),
        "2026-10",
        "account's pricebook 'nope' does not exist",
    ),
    (
        "currency mismatch",
        "a-mismatch",
        (IN, "m1", None, hour(2), "5"),
        "2026-10",
        "account bills in EUR but pricebook 'simple' is in USD",
    ),
]


@pytest.mark.parametrize(
    ("account", "row", "period", "reason"), [c[1:] for c in UNRATED], ids=[c[0] for c in UNRATED]
)
def test_unmatched_usage_is_reported_never_free(
    account: str, row: tuple, period: str, reason: str
) -> None:
    result = rate(usage(row, account=account), period=period)
    assert result.blocks_close
    assert result.unrated.schema == schemas.UNRATED_USAGE
    got = result.unrated.row(0, named=True)
    assert reason in got["reason"]
    assert (got["account_id"], got["quantity"], got["period"]) == (account, D(5), period)
    assert result.rated.filter(pl.col("line_kind") == "usage").is_empty()


def test_unrated_groups_hours_and_keeps_the_first_hour() -> None:
    rows = [("foo", None, None, hour(3, 4), "2"), ("foo", None, None, hour(2, 9), "3")]
    got = rate(usage(*rows)).unrated.select("quantity", "first_hour").rows()
    assert got == [(D(5), hour(2, 9))]


def test_bad_period_is_a_user_error() -> None:
    with pytest.raises(UsageboxError, match="period must be YYYY-MM"):
        rate(usage(), period="2026-13")
    assert month_bounds("2026-12") == (hour(1, month=12), datetime(2027, 1, 1, tzinfo=UTC))


# ---- currencies ---------------------------------------------------------------------------------


def test_other_currencies_rate_in_their_own_pricebook() -> None:
    eur = rate(usage((IN, "m1", None, hour(2), "1000000"), account="a-eur")).rated
    eur = eur.filter(pl.col("account_id") == "a-eur")
    assert eur.select("currency", "amount").rows() == [("EUR", D("0.90"))]
    yen = rate(usage((IN, "m1", None, hour(2), "1234567"), account="a-yen")).rated
    yen = yen.filter(pl.col("account_id") == "a-yen")
    assert yen.select("currency", "amount").rows() == [("JPY", D("185.18505"))]
    assert yen.select(round_money(pl.col("amount"), 0)).item() == D(185)


# ---- contract lines: usage → discount → minimum true-up → credit --------------------------------

M1 = (IN, "m1", None)  # 2.00 per 1 M tokens in v1


def contract(account: str, tokens: list[tuple[datetime, str]], **kwargs: Any) -> RatingResult:
    return rate(usage(*[(*M1, at, q) for at, q in tokens], account=account), **kwargs)


def kinds(result: RatingResult, account: str) -> list[tuple[str, D]]:
    rows = result.rated.filter(pl.col("account_id") == account)
    return [(k, a.normalize()) for k, a in rows.select("line_kind", "amount").rows()]


def test_discount_is_taken_on_the_rounded_usage_subtotal() -> None:
    # 1,234,567 tokens × 2.00 / 1 M = 2.469134 → 2.47 on the invoice; 10 % of 2.47 = 0.247
    result = contract("a-disc", [(hour(2), "1234567")])
    assert kinds(result, "a-disc") == [("usage", D("2.469134")), ("discount", D("-0.247"))]
    discount = result.rated.filter(pl.col("line_kind") == "discount").row(0, named=True)
    assert (discount["quantity"], discount["per"], discount["unit_price"]) == (
        D("2.47"), D(100), D(-10))  # fmt: skip
    assert discount["rate_id"] == "discount_pct"


def test_minimum_commit_true_up_when_usage_is_below() -> None:
    result = contract("a-min", [(hour(2), "15000000")])  # 30.00 of a 100.00 commit
    assert kinds(result, "a-min") == [("usage", D(30)), ("minimum", D(70))]


def test_minimum_commit_without_any_usage_bills_the_whole_commit() -> None:
    result = rate(usage())
    assert kinds(result, "a-min") == [("minimum", D(100))]


def test_no_true_up_when_usage_reaches_the_minimum() -> None:
    result = contract("a-min", [(hour(2), "50000000")])  # exactly 100.00
    assert kinds(result, "a-min") == [("usage", D(100))]


def test_prepaid_credit_pays_usage_and_the_balance_carries() -> None:
    result = contract("a-credit", [(hour(2), "15000000")])  # 30.00 of 50.00 credit
    assert kinds(result, "a-credit") == [("usage", D(30)), ("credit", D(-30))]
    assert result.closing_credit["a-credit"] == D(20)


def test_credit_exhausted_mid_month_bills_the_rest() -> None:
    # 40.00 in the first half (v1), 30.00 in the second (v2): the 50.00 credit runs out
    result = contract("a-credit", [(hour(3), "20000000"), (hour(20), "10000000")])
    assert kinds(result, "a-credit") == [
        ("usage", D(40)), ("usage", D(30)), ("credit", D(-50))]  # fmt: skip
    assert result.closing_credit["a-credit"] == 0


def test_opening_credit_from_the_previous_period_replaces_the_grant() -> None:
    result = contract("a-credit", [(hour(2), "15000000")], opening_credit={"a-credit": D(20)})
    assert kinds(result, "a-credit") == [("usage", D(30)), ("credit", D(-20))]
    assert result.closing_credit["a-credit"] == 0
    spent = contract("a-credit", [(hour(2), "15000000")], opening_credit={"a-credit": D(0)})
    assert kinds(spent, "a-credit") == [("usage", D(30))]


def test_credit_never_takes_a_total_below_zero_even_on_sub_cent_usage() -> None:
    result = contract("a-credit", [(hour(2), "2000")])  # 0.004 → 0.00 on the invoice
    assert kinds(result, "a-credit") == [("usage", D("0.004"))]
    assert result.closing_credit["a-credit"] == 50


def test_all_terms_apply_in_order() -> None:
    # usage 50.00 → discount -5.00 → minimum +55.00 (to 100.00) → credit -30.00 → due 70.00
    result = contract("a-all", [(hour(2), "25000000")])
    assert kinds(result, "a-all") == [
        ("usage", D(50)), ("discount", D(-5)), ("minimum", D(55)), ("credit", D(-30))]  # fmt: skip
    assert result.closing_credit["a-all"] == 0


def test_closing_credit_lists_every_prepaid_account_even_without_usage() -> None:
    closing = rate(usage()).closing_credit
    assert closing == {"a-credit": D(50), "a-all": D(0)}  # a-all's credit paid its minimum


def test_child_account_inherits_the_org_discount() -> None:
    result = contract("team", [(hour(2), "5000000")])  # 10.00
    assert kinds(result, "team") == [("usage", D(10)), ("discount", D(-2))]
    assert kinds(result, "org") == []


def _invoice_total(rated: pl.DataFrame, account: str) -> D:
    """What invoicing does: usage summed to INVOICE_LINE_KEYS lines, every line rounded once."""
    mine = rated.filter(pl.col("account_id") == account)
    usage_lines = (
        mine.filter(pl.col("line_kind") == "usage")
        .group_by(INVOICE_LINE_KEYS)
        .agg(pl.col("amount").sum())
    )
    contract_lines = (
        mine.filter(pl.col("line_kind") != "usage")
        .group_by("line_kind")
        .agg(pl.col("amount").sum())
    )
    both = pl.concat([usage_lines.select("amount"), contract_lines.select("amount")])
    return both.select(round_money(pl.col("amount")).sum()).item()


def test_invoice_total_lands_exactly_on_the_minimum_less_credit() -> None:
    dims = [{"feature": f} for f in ("chat", "search", "extract")]
    rows = [(IN, "m1", d, hour(2, i), "1234567") for i, d in enumerate(dims)]
    rows += [(IN, "m1", d, hour(20, i), "7654321") for i, d in enumerate(dims)]
    result = rate(usage(*rows, account="a-all"))
    assert _invoice_total(result.rated, "a-all") == D("70.00")  # 100.00 minimum - 30.00 credit


def test_credit_pays_the_invoice_to_exactly_zero_when_it_covers_everything() -> None:
    # three rated rows of 0.005 (2,500 tokens each): rounded one by one they would make 0.03,
    # but the invoice shows one line of 0.015 → 0.02, so exactly 0.02 of credit is drawn
    dims = [{"feature": f} for f in ("chat", "search", "extract")]
    rows = [(IN, "m1", d, hour(2, i), "2500") for i, d in enumerate(dims)]
    result = rate(usage(*rows, account="a-credit"))
    assert _invoice_total(result.rated, "a-credit") == D("0.00")
    assert result.closing_credit["a-credit"] == D("49.98")
