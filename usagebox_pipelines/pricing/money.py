"""Money: minor units per currency, THE rounding rule, and exact scaled-integer arithmetic.

CONTRACT.md §4: amounts stay exact until an invoice line; each line is rounded half-up (half away
from zero) to the currency's minor unit. `round_money` is the only place that rounding happens
for frames, `round_decimal` its scalar twin. Polars rounds decimals half-to-even by default and
its decimal `*` and `/` round half-to-even at the result scale, so exact amounts are computed
here on the Int128 physical value of Decimal(38, 12) ("scaled" integers, 1 = 1e-12).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import polars as pl

from usagebox_pipelines.errors import UsageboxError

SCALE = 12
ONE = 10**SCALE
EXACT = pl.Decimal(38, SCALE)
_INT = pl.Int128
# Scaled Int128 arithmetic wraps silently on overflow: callers check operands stay below this.
SAFE_LIMIT = 2**126

# ISO 4217 minor units for the currencies we bill in. Extend on purpose, never guess.
MINOR_UNITS: dict[str, int] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "SGD": 2,
    "HKD": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "ZAR": 2,
    "CNY": 2,
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "BHD": 3,
    "KWD": 3,
    "JOD": 3,
}


def minor_units(currency: str) -> int:
    """Minor units of `currency`; an unknown code is a user error, never a silent default."""
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        known = ", ".join(sorted(MINOR_UNITS))
        raise UsageboxError(f"unknown currency {currency!r} (known: {known})") from None


def round_money(expr: pl.Expr, minor_units: int = 2) -> pl.Expr:
    """Round an exact amount half away from zero to the minor unit: THE rounding of §4.

    Returns Decimal(18, minor_units): Decimal(18, 2) for USD/EUR/..., Decimal(18, 0) for
    JPY/KRW, Decimal(18, 3) for BHD/KWD. Casting the 0- and 2-place results to Decimal(18, 2)
    (schemas.MONEY2) is exact; 3-place currencies need a wider invoice column. The input is
    cast to Decimal(38, 12) first, so pass decimals (never floats).
    """
    if not 0 <= minor_units <= SCALE:
        raise ValueError(f"minor_units must be between 0 and {SCALE}, got {minor_units}")
    return (
        expr.cast(EXACT)
        .round(minor_units, mode="half_away_from_zero")
        .cast(pl.Decimal(18, minor_units))
    )


def round_decimal(value: Decimal, minor_units: int = 2) -> Decimal:
    """Scalar twin of `round_money`: ROUND_HALF_UP (half away from zero) to the minor unit."""
    return Decimal(value).quantize(Decimal(1).scaleb(-minor_units), rounding=ROUND_HALF_UP)


def exact_decimal(value: Decimal | Fraction) -> Decimal:
    """A value at the exact scale (12 places), half-up at the 12th place: the scalar kernel."""
    if isinstance(value, Fraction):
        return Decimal(half_up_div(value.numerator * ONE, value.denominator)).scaleb(-SCALE)
    return round_decimal(value, SCALE)


def half_up_div(numerator: int, denominator: int) -> int:
    """Integer division rounded half away from zero (Python scalars, denominator > 0)."""
    quotient = (2 * abs(numerator) + denominator) // (2 * denominator)
    return quotient if numerator >= 0 else -quotient


def to_scaled(expr: pl.Expr) -> pl.Expr:
    """A decimal expression as its exact Int128 count of 1e-12 units."""
    return expr.cast(EXACT).to_physical()


def lit_int(value: int) -> pl.Expr:
    """An Int128 literal (Polars will not mix Int128 with Python ints)."""
    return pl.lit(value, dtype=_INT)


def from_scaled(expr: pl.Expr) -> pl.Expr:
    """Int128 count of 1e-12 units back to an exact Decimal(38, 12), with no rounding."""
    whole = expr // lit_int(ONE)
    fraction = expr - whole * lit_int(ONE)
    tick = pl.lit(Decimal(1).scaleb(-SCALE), dtype=EXACT)
    return whole.cast(EXACT) + fraction.cast(EXACT) * tick


def scaled_half_up_div(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """Int128 division rounded half away from zero (denominator > 0): the 12th-place rule."""
    two = lit_int(2)
    zero = lit_int(0)
    up = (two * numerator + denominator) // (two * denominator)
    down = zero - ((zero - two * numerator + denominator) // (two * denominator))
    return pl.when(numerator >= zero).then(up).otherwise(down)


def scaled_ceil_div(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """Int128 ceiling division (denominator > 0): partial packages round up."""
    zero = lit_int(0)
    return zero - ((zero - numerator) // denominator)


def fraction_of(value: Decimal) -> Fraction:
    """An exact decimal as a fraction (for price / per and package sizes)."""
    return Fraction(value)
