"""Invoice notes for guardrail hard stops that agree with the bill (ADR 0005).

A hard stop is a guardrail decision; it does not remove usage from `events`. Under the account's
`after_hard_stop: bill` policy (the default, accounts.yaml) the usage after the stop is billed,
so the note says so and how much: `Hard budget limit of $50.00 reached on 2026-10-06 12:00 UTC;
usage after that time is billed: $56.35.` The amount is the account's rounded usage subtotal
(for a cap: of the capped meter/model) minus that of the hours that ended by the stop, rated
the same way; with graduated tiers that is exact, the tiers run in hour order. Customer-facing
text never carries internal decision ids.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.contract import rounded_usage_subtotals
from usagebox_pipelines.pricing.pricebook import PricebookSet
from usagebox_pipelines.pricing.rating import rate_usage

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def hard_stop_notes(
    decisions: pl.DataFrame,
    hourly: pl.DataFrame,
    account_id: str,
    period: str,
    books: PricebookSet,
    accounts: Accounts,
) -> list[str]:
    """One note per limit that hard-stopped the account in the period (its first stop)."""
    stops = (
        decisions.filter(
            (pl.col("account_id") == account_id)
            & (pl.col("period") == period)
            & (pl.col("to_status") == "hard_stop")
        )
        .sort("effective_at", "decision_id")
        .unique("limit_id", keep="first", maintain_order=True)
    )
    mine = hourly.filter(pl.col("account_id") == account_id)
    notes = []
    for row in stops.iter_rows(named=True):
        scope = mine
        for col in ("meter_id", "model_id"):
            if row.get(col) is not None and row["limit_id"] != "budget":
                scope = scope.filter(pl.col(col) == row[col])
        after = billed_after(scope, account_id, period, row["effective_at"], books, accounts)
        notes.append(_note(row, after))
    return notes


def billed_after(
    hourly: pl.DataFrame,
    account_id: str,
    period: str,
    stop_at: datetime,
    books: PricebookSet,
    accounts: Accounts,
) -> Decimal:
    """Usage billed for hours not ended by `stop_at`: rounded subtotal all − before the stop."""
    before = hourly.filter(pl.col("hour") + timedelta(hours=1) <= stop_at)
    return _subtotal(hourly, account_id, period, books, accounts) - _subtotal(
        before, account_id, period, books, accounts
    )


def _subtotal(hourly, account_id, period, books, accounts) -> Decimal:
    if hourly.is_empty():
        return Decimal(0)
    rated = rate_usage(hourly, period, books, accounts).rated
    return rounded_usage_subtotals(rated).get(account_id, Decimal(0))


def _note(row: dict, after: Decimal) -> str:
    currency = row.get("currency") or ""
    if row["limit_id"] == "budget":
        what = "Hard budget limit"
    elif row["rule"] == "parent_remainder":
        what = f"Hard limit (remaining allocation of {row['limited_by']})"
    else:
        what = f"Hard limit ({row['limit_id'].removeprefix('cap:').replace(':', ' ')})"
    return (
        f"{what} of {money(row['threshold'], currency)} reached on "
        f"{row['effective_at']:%Y-%m-%d %H:%M} UTC; usage after that time is billed: "
        f"{money(after, currency)}."
    )


def money(value: Decimal | None, currency: str) -> str:
    """`$1,875.00`, or `1,875.00 CHF` for currencies without a symbol here."""
    if value is None:
        return "?"
    text = f"{value.quantize(Decimal('0.01')):,}"
    symbol = _SYMBOLS.get(currency)
    if symbol:
        return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"
    return f"{text} {currency}".strip()
