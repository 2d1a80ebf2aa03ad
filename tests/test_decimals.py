"""The one Decimal → text module: each meaning, and the callers that keep their output."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from usagebox_pipelines.decimals import decimal_text, grouped_text, plain, price_text
from usagebox_pipelines.documents import format_quantity, format_unit_price
from usagebox_pipelines.guardrails.export import money
from usagebox_pipelines.rollups.usage_query import decimal_str

D = Decimal


def test_decimal_text_is_exact_without_exponent_or_trailing_zeros() -> None:
    cases = {"1500.000": "1500", "0.250000000000": "0.25", "1.5E+3": "1500", "-0.000": "0"}
    assert {k: decimal_text(D(k)) for k in cases} == cases
    assert decimal_str(None) == "0" and money(None) is None
    assert decimal_str(D("6.1294762805000")) == money(D("6.1294762805000")) == "6.1294762805"


def test_grouped_and_price_text() -> None:
    assert [grouped_text(D(x)) for x in ("1250000.000", "12345.50", "0.5")] == [
        "1,250,000",
        "12,345.5",
        "0.5",
    ]
    assert format_quantity(1_000) == "1,000" and format_quantity(None) == ""
    assert [price_text(D(x)) for x in ("8", "3.125000", "0.0000025", "0")] == [
        "8.00",
        "3.125",
        "0.0000025",
        "0.00",
    ]
    assert format_unit_price(D("-0.0000025"), "USD") == "-$0.0000025"


def test_plain_keeps_money_scale_and_drops_exact_padding() -> None:
    assert plain(D("12.50")) == "12.50"
    assert plain(D("0.000000250000")) == "0.00000025"
    assert plain(datetime(2026, 10, 1, tzinfo=UTC)) == "2026-10-01T00:00:00+00:00"
    assert plain(3) == 3
