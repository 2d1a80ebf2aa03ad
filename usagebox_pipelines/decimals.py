"""Decimal → text, once: every module that writes a Decimal as text uses these.

Four meanings, kept apart because their output is stored or hashed:

* `decimal_text`: exact, no exponent, no trailing zeros (`1500`, `0.25`, `6.1294762805`):
  query results, guardrail policy exports, invariant examples.
* `grouped_text`: the same with thousands separators (`1,250,000`, `0.5`): quantities on
  invoices and in the document filters.
* `price_text`: unit prices with at least two decimals, separators, no trailing noise
  (`8.00`, `3.125`, `0.0000025`).
* `plain` / `plain_text` / `plain_row`: JSON-friendly scalars for stamps and explanations:
  a Decimal keeps its scale (`12.50` stays `12.50`) unless it is an exact Decimal(38, 12)
  value, which loses its padding (`0.000000250000` → `0.00000025`); times become ISO text.

Deliberately not here: `guardrails.decisions._text` (the text hashed into decision ids, which
must never change) and the readers' JSON-scalar text of raw input (`events.readers`), which
parse input rather than format our numbers.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal


def decimal_text(value: Decimal) -> str:
    """Exact decimal text without exponent or trailing zeros (`1500`, `0.25`, `-3`, `0`)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def grouped_text(value: Decimal) -> str:
    """`decimal_text` with thousands separators: `1,250,000`, `12,345.5`, `0.5`."""
    if value == value.to_integral_value():
        return f"{int(value):,}"
    return f"{value.normalize():,f}"


def price_text(value: Decimal) -> str:
    """A unit price with at least two decimals and no trailing noise: `8.00`, `0.0000025`."""
    p = value.normalize()
    exponent = p.as_tuple().exponent
    places = max(2, -exponent) if p != 0 and isinstance(exponent, int) else 2
    return f"{value:,.{places}f}"


def to_decimal(value: object) -> Decimal:
    """A Decimal from a Decimal, int or its text (`"12.50"`), never through float."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def plain(value: object) -> object:
    """JSON-friendly scalar: Decimals as exact strings, times as ISO text."""
    if isinstance(value, Decimal):
        # exact Decimal(38, 12) values lose their padding; money and YAML terms keep theirs
        exponent = value.as_tuple().exponent
        exact = isinstance(exponent, int) and exponent <= -12
        return f"{value.normalize():f}" if exact else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def plain_row(row: dict) -> dict:
    """`plain` on every value of a row."""
    return {k: plain(v) for k, v in row.items()}


def plain_text(value: object) -> str | None:
    """`plain` as text (None stays None)."""
    out = plain(value)
    return None if out is None else str(out)
