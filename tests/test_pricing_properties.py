"""Property tests: additivity, no floats, rounding bounds, tiers and packages conserve units."""

from __future__ import annotations

import math
from decimal import Decimal as D
from fractions import Fraction

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_pricing_rating import ACCOUNTS, BOOKS, hour, rate, usage
from usagebox_pipelines import schemas
from usagebox_pipelines.pricing import round_money
from usagebox_pipelines.pricing.rating import match_usage, merge_runs, price_matched

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
quantities = st.decimals(min_value=0, max_value=10**9, places=12, allow_nan=False)
whole = st.integers(min_value=0, max_value=10**9).map(D)
hours = st.tuples(st.integers(1, 31), st.integers(0, 23)).map(lambda dh: hour(*dh))
UNIT_METERS = [("input_tokens", "m1", None), ("gpu_seconds", None, {"gpu": "h100"})]
ANY_METER = [
    *UNIT_METERS,
    ("output_tokens", "m1", None),
    ("output_tokens", "m2", None),
    ("tool_calls", None, {"tool": "web_search"}),
    ("seats", None, None),
    ("nope", None, None),
]


def _usage_amounts(frame: pl.DataFrame) -> list[D]:
    rated = rate(frame).rated.filter(
        (pl.col("line_kind") == "usage") & (pl.col("account_id") == "a-plain")
    )
    return rated.get_column("amount").to_list()


@SETTINGS
@given(
    meter=st.sampled_from(UNIT_METERS),
    rows=st.lists(st.tuples(hours, quantities), min_size=1, max_size=8),
)
def test_per_unit_rating_is_additive_across_hours(meter: tuple, rows: list) -> None:
    together = sum(_usage_amounts(usage(*[(*meter, at, str(q)) for at, q in rows])), D(0))
    apart = sum((sum(_usage_amounts(usage((*meter, at, str(q)))), D(0)) for at, q in rows), D(0))
    # each line rounds once at the 12th place, so split ratings differ by < 1e-12 per line
    assert abs(together - apart) <= D("1e-12") * (len(rows) + 2)


@SETTINGS
@given(rows=st.lists(st.tuples(hours, whole), min_size=1, max_size=8))
def test_per_unit_rating_is_exactly_additive_when_division_is_exact(rows: list) -> None:
    meter = ("input_tokens", "m1", None)
    together = sum(_usage_amounts(usage(*[(*meter, at, str(q)) for at, q in rows])), D(0))
    apart = sum((sum(_usage_amounts(usage((*meter, at, str(q)))), D(0)) for at, q in rows), D(0))
    assert together == apart


@SETTINGS
@given(
    rows=st.lists(st.tuples(st.sampled_from(ANY_METER), hours, quantities), max_size=10),
)
def test_amounts_never_use_float(rows: list) -> None:
    result = rate(usage(*[(*meter, at, str(q)) for meter, at, q in rows]))
    for frame, schema in (
        (result.rated, schemas.RATED_USAGE),
        (result.unrated, schemas.UNRATED_USAGE),
    ):
        assert frame.schema == schema
        assert not any(dtype.is_float() for dtype in frame.schema.values())
    for column in ("quantity", "per", "unit_price", "amount"):
        assert result.rated.schema[column] == pl.Decimal(38, 12)
    assert all(isinstance(v, D) for v in result.closing_credit.values())


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(ANY_METER[:-1]), hours, quantities), min_size=1, max_size=12
    ),
)
def test_rounded_lines_stay_within_half_a_minor_unit_per_line(rows: list) -> None:
    rated = rate(usage(*[(*meter, at, str(q)) for meter, at, q in rows])).rated
    totals = rated.select(
        exact=pl.col("amount").sum(), rounded=round_money(pl.col("amount")).sum(), lines=pl.len()
    ).row(0, named=True)
    assert abs(totals["rounded"] - totals["exact"]) <= D("0.005") * totals["lines"]


@SETTINGS
@given(rows=st.lists(st.tuples(hours, quantities), min_size=1, max_size=10))
def test_graduated_tiers_conserve_units_and_match_a_reference(rows: list) -> None:
    first_half = [(hour(min(at.day, 15), at.hour), q) for at, q in rows]  # v1 only
    rated = rate(usage(*[("output_tokens", "m1", None, at, str(q)) for at, q in first_half])).rated
    mine = rated.filter(pl.col("account_id") == "a-plain")
    total = sum((q for _, q in first_half), D(0))
    assert sum(mine.get_column("quantity").to_list(), D(0)) == total
    expected = _graduated_reference(Fraction(total))
    assert abs(Fraction(sum(mine.get_column("amount").to_list(), D(0))) - expected) <= Fraction(
        mine.height, 2 * 10**12
    )


def _graduated_reference(total: Fraction) -> Fraction:
    """simple@v1 out-m1 by hand: 1.00 up to 1000, 0.50 up to 5000, 0.25 above, per 1000."""
    steps = [
        (Fraction(1000), Fraction(1)),
        (Fraction(5000), Fraction(1, 2)),
        (None, Fraction(1, 4)),
    ]
    amount, lower = Fraction(0), Fraction(0)
    for upper, price in steps:
        top = total if upper is None else min(total, upper)
        if top > lower:
            amount += (top - lower) * price / 1000
        lower = upper if upper is not None else lower
    return amount


@SETTINGS
@given(rows=st.lists(st.tuples(hours, st.integers(0, 5000)), min_size=1, max_size=10))
def test_packages_bill_the_month_total_rounded_up_once(rows: list) -> None:
    frame = usage(*[("tool_calls", None, {"tool": "web_search"}, at, str(q)) for at, q in rows])
    rated = rate(frame).rated.filter(pl.col("account_id") == "a-plain")
    packages = sum(
        (amount / price for amount, price in rated.select("amount", "unit_price").rows()), D(0)
    )
    assert packages == math.ceil(sum(q for _, q in rows) / 1000)


_LINE = ["account_id", "line_kind", "meter_id", "model_id", "product_id", "unit", "dimensions",
         "price_version", "tier", "price_model"]  # fmt: skip


def _lines_by_key(matched: pl.DataFrame) -> list[tuple]:
    rated = price_matched(matched, "2026-10", BOOKS, ACCOUNTS)
    totals = rated.group_by(_LINE).agg(q=pl.col("quantity").sum(), a=pl.col("amount").sum())
    kept = totals.filter((pl.col("q") != 0) | (pl.col("a") != 0))
    return kept.sort(_LINE, nulls_last=True).rows()


# Lines that share one tier position (out-m1 prices every feature), so their order matters.
INTERLEAVED = [("output_tokens", "m1", {"feature": f}) for f in ("chat", "search")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([*INTERLEAVED, *INTERLEAVED, *ANY_METER[:-1]]),
            hours,
            st.integers(-900_000, 3_000_000),
        ),
        min_size=2,
        max_size=14,
    )
)
def test_merged_runs_rate_like_the_rows_they_merge(rows: list) -> None:
    """Invariant (guardrail spend is priced like the invoice, ADR 0005): the rows
    `pricing.rating.merge_runs` merges give every line the same quantity and amount, tiers,
    packages, flat fees and corrections included."""
    frame = usage(*[(*meter, at, str(q)) for meter, at, q in rows])
    matched = match_usage(frame, "2026-10", BOOKS, ACCOUNTS)
    assert _lines_by_key(merge_runs(matched, BOOKS)) == _lines_by_key(matched)
