"""The one rounding rule (half away from zero to the minor unit) and the exact kernel."""

from __future__ import annotations

from decimal import Decimal as D

import polars as pl
import pytest

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.pricing.money import (
    EXACT,
    MINOR_UNITS,
    from_scaled,
    minor_units,
    round_decimal,
    round_money,
    scaled_ceil_div,
    scaled_half_up_div,
    to_scaled,
)


@pytest.mark.parametrize(
    ("value", "minor", "expected"),
    [
        ("1.005", 2, "1.01"),  # half-to-even would give 1.00
        ("1.015", 2, "1.02"),
        ("2.675", 2, "2.68"),
        ("-1.005", 2, "-1.01"),  # half away from zero, symmetric
        ("0.004999999999", 2, "0.00"),
        ("0.125", 2, "0.13"),
        ("0.135", 2, "0.14"),
        ("12345678.994999999999", 2, "12345678.99"),
        ("2.5", 0, "3"),  # JPY
        ("-2.5", 0, "-3"),
        ("1.0005", 3, "1.001"),  # BHD / KWD
        ("0", 2, "0.00"),
    ],
)
def test_round_money_is_half_up_to_the_minor_unit(value: str, minor: int, expected: str) -> None:
    frame = pl.DataFrame({"a": [D(value)]}, schema={"a": EXACT})
    out = frame.select(round_money(pl.col("a"), minor))
    assert out.schema["a"] == pl.Decimal(18, minor)
    assert out.item() == D(expected)
    assert round_decimal(D(value), minor) == D(expected)


def test_round_money_returns_decimal_18_2_for_two_place_currencies() -> None:
    frame = pl.DataFrame({"a": [D("3.14159")]}, schema={"a": EXACT})
    assert frame.select(round_money(pl.col("a"))).schema["a"] == pl.Decimal(18, 2)


def test_polars_default_rounding_differs_which_is_why_round_money_exists() -> None:
    frame = pl.DataFrame({"a": [D("0.125"), D("0.135")]}, schema={"a": EXACT})
    banker = frame.select(pl.col("a").round(2)).to_series().to_list()
    assert banker == [D("0.12"), D("0.14")]
    assert frame.select(round_money(pl.col("a"))).to_series().to_list() == [D("0.13"), D("0.14")]


def test_minor_units_known_and_unknown() -> None:
    assert (MINOR_UNITS["USD"], MINOR_UNITS["EUR"], MINOR_UNITS["JPY"]) == (2, 2, 0)
    with pytest.raises(UsageboxError, match="unknown currency 'XXX'"):
        minor_units("XXX")


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(5, 10, 1), (15, 10, 2), (25, 10, 3), (-25, 10, -3), (24, 10, 2), (-24, 10, -2), (0, 7, 0)],
)
def test_scaled_division_is_half_up(numerator: int, denominator: int, expected: int) -> None:
    frame = pl.DataFrame(
        {"n": [numerator], "d": [denominator]}, schema={"n": pl.Int128, "d": pl.Int128}
    )
    assert frame.select(scaled_half_up_div(pl.col("n"), pl.col("d"))).item() == expected


@pytest.mark.parametrize(("numerator", "expected"), [(1, 1), (1000, 1), (1001, 2), (0, 0), (-1, 0)])
def test_scaled_ceil_division(numerator: int, expected: int) -> None:
    frame = pl.DataFrame({"n": [numerator], "d": [1000]}, schema={"n": pl.Int128, "d": pl.Int128})
    assert frame.select(scaled_ceil_div(pl.col("n"), pl.col("d"))).item() == expected


@pytest.mark.parametrize(
    "value", ["0", "1.5", "-2.000000000001", "123456789012345.123456789012", "-0.000000000001"]
)
def test_scaled_round_trip_is_exact(value: str) -> None:
    frame = pl.DataFrame({"a": [D(value)]}, schema={"a": EXACT})
    out = frame.select(from_scaled(to_scaled(pl.col("a"))))
    assert out.schema["a"] == EXACT
    assert out.item() == D(value)
