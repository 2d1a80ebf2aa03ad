"""Quantities parsed exactly from their literal text into Decimal(38, 12), or a reason.

Every quantity arrives as text: JSON numbers are quoted before decoding (readers), CSV cells are
text, and Parquet/float columns are turned into their shortest round-trip text (Polars' float
formatting, the same digits Python's `repr` gives) before they get here. So `0.1` from a
float64 column is the decimal 0.1, and a float 1e-20 is *rejected* (20 decimal places), never
rounded to 0.

Plain decimals (`12.5`, `-3`, `.5`, `+7`) are handled by Polars string expressions over the whole
column. Only texts with an exponent (`1e-20`, `1.5E3`) take a Python `Decimal` step, once per
distinct text: exponents are rare, and `Decimal(text)` is exact, so the result never depends on
float rounding. Nothing is ever rounded: a value that is not exactly representable in
Decimal(38, 12) is rejected with the reason.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import polars as pl

from usagebox_pipelines.schemas import QTY

SCALE = 12
MAX_INTEGER_DIGITS = 38 - SCALE
_PLAIN = r"^-?(\d+\.?\d*|\.\d+)$"
_EXPONENT = r"^-?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$"
_NOT_FINITE = r"^-?(nan|inf|infinity)$"
NOT_A_NUMBER = "quantity is not a number"
NOT_FINITE = "quantity is NaN or Infinity; send a finite decimal"
TOO_PRECISE = f"quantity has more than {SCALE} decimal places (it cannot be stored exactly)"
TOO_BIG = f"quantity out of range (max {MAX_INTEGER_DIGITS} integer digits)"


def parse_quantities(text: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(Decimal(38, 12) values, reasons) for a column of quantity text; null text stays null.

    Invariant: for every non-null input exactly one of (value, reason) is non-null, and a value
    is the exact decimal the text denotes.
    """
    frame = pl.DataFrame({"t": text.cast(pl.String)}).with_columns(
        t=pl.col("t").str.strip_chars().str.strip_prefix("+").replace("", None)
    )
    exp = frame.select(pl.col("t").str.contains(_EXPONENT).fill_null(False)).to_series()
    plain_text = frame["t"]
    if exp.any():
        distinct = frame.filter(exp)["t"].unique()
        mapped = {t: _exponent_to_plain(t) for t in distinct.to_list()}
        keys = list(mapped)
        fixed = pl.Series([mapped[k] for k in keys], dtype=pl.String)
        plain_text = frame.select(
            pl.when(exp)
            .then(pl.col("t").replace_strict(keys, fixed, default=None, return_dtype=pl.String))
            .otherwise(pl.col("t"))
        ).to_series()
    else:
        keys = []
    out = pl.DataFrame({"t": frame["t"], "p": plain_text, "exp": exp}).with_columns(
        p=pl.col("p")
        .str.replace(r"^(-?\d*\.\d*?)0+$", "${1}")
        .str.replace(r"\.$", "")
        .str.replace(r"^-?$", "0")
    )
    integer_digits = (
        pl.col("p").str.replace(r"^-", "").str.replace(r"\..*$", "").str.replace(r"^0+", "")
    ).str.len_chars()
    reason = (
        pl.when(pl.col("t").is_null())
        .then(None)
        .when(pl.col("t").str.to_lowercase().str.contains(_NOT_FINITE))
        .then(pl.lit(NOT_FINITE))
        .when(pl.col("exp") & pl.col("p").is_null())
        .then(pl.lit("__exp__"))
        .when(~pl.col("exp") & ~pl.col("t").str.contains(_PLAIN))
        .then(pl.lit(NOT_A_NUMBER))
        .when(pl.col("p").str.contains(r"\.\d{13,}$"))
        .then(pl.lit(TOO_PRECISE))
        .when(integer_digits > MAX_INTEGER_DIGITS)
        .then(pl.lit(TOO_BIG))
        .otherwise(None)
    )
    out = out.with_columns(reason=reason)
    if keys:  # exponent texts that failed carry their own reason
        reasons = {k: v for k, v in ((k, _exponent_reason(k)) for k in keys) if v is not None}
        if reasons:
            out = out.with_columns(
                reason=pl.when(pl.col("reason") == "__exp__")
                .then(
                    pl.col("t").replace_strict(
                        list(reasons), list(reasons.values()), default=None, return_dtype=pl.String
                    )
                )
                .otherwise(pl.col("reason"))
            )
    value = out.select(
        pl.when(pl.col("reason").is_null()).then(pl.col("p").cast(QTY, strict=False))
    ).to_series()
    return value.alias("quantity"), out["reason"].alias("reason")


def _digits(text: str) -> tuple[int, str, int] | None:
    """(sign, significant digits without trailing zeros, exponent) of exact decimal text."""
    try:
        d = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not d.is_finite():
        return None
    sign, digits, exponent = d.as_tuple()
    text_digits = "".join(map(str, digits)).lstrip("0")
    if not text_digits:
        return 0, "0", 0
    stripped = text_digits.rstrip("0")
    exponent += len(text_digits) - len(stripped)
    return sign, stripped, exponent


def _exponent_reason(text: str) -> str | None:
    parts = _digits(text)
    if parts is None:
        return NOT_A_NUMBER
    _sign, digits, exponent = parts
    if exponent < -SCALE:
        return TOO_PRECISE
    if len(digits) + exponent > MAX_INTEGER_DIGITS:
        return TOO_BIG
    return None


def _exponent_to_plain(text: str) -> str | None:
    """'1.5e3' -> '1500'; None when the value cannot be stored exactly (see _exponent_reason)."""
    if _exponent_reason(text) is not None:
        return None
    sign, digits, exponent = _digits(text)  # type: ignore[misc]
    if exponent >= 0:
        body = digits + "0" * exponent
    else:
        point = len(digits) + exponent
        body = digits[:point] + "." + digits[point:] if point > 0 else "0." + "0" * -point + digits
    return ("-" if sign else "") + body
