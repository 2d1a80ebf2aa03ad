"""Invoice notes for guardrail hard stops that agree with the bill (ADR 0005).

A hard stop is a guardrail decision; it does not remove usage from `events`. Under the account's
`after_hard_stop: bill` policy (the default, accounts.yaml) the usage after the stop is billed,
so the note says so and how much: `Hard budget limit of $50.00 reached on 2026-10-06 12:00 UTC;
usage after that time is billed: $56.35.` The amount is the account's rounded usage subtotal
(for a cap: of the capped meter/model) minus that of the hours that ended by the stop, rated
the same way; with graduated tiers that is exact, the tiers run in hour order. Customer-facing
text never carries internal decision ids.

Under `after_hard_stop: waive` that same amount is taken off the bill: `apply_waivers` adds one
`discount` row per stop (rate_id `WAIVER_RATE`, `first_hour` = the stop's effective time,
amount = −billed after it) and recomputes the account's discount, minimum and credit on the
usage left, so they apply to the waived bill (pricing.contract). Several stops of one account
are taken in effective order, each waiving what the earlier ones left, so nothing is waived
twice. The waiver is derived only from the decisions and the hourly usage it is given: a close
passes the `guardrail_decisions` version it read (recorded in its commits, so verify reads the
same rows) and `usage_hourly` rebuilt at the stamped `events` version.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.contract import (
    WAIVER_RATE,
    CreditBalances,
    contract_lines,
    rounded_usage_subtotals,
)
from usagebox_pipelines.pricing.pricebook import PricebookSet
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.schemas import RATED_USAGE, conform

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
    waive = accounts.get(account_id).after_hard_stop == "waive"
    amounts = _stop_amounts(decisions, hourly, account_id, period, books, accounts, waive)
    return [_note(row, after, waive) for row, after in amounts]


def first_stops(decisions: pl.DataFrame, account_id: str, period: str) -> pl.DataFrame:
    """The first `hard_stop` decision of each limit of the account in the period, in order."""
    return (
        decisions.filter(
            (pl.col("account_id") == account_id)
            & (pl.col("period") == period)
            & (pl.col("to_status") == "hard_stop")
        )
        .sort("effective_at", "decision_id")
        .unique("limit_id", keep="first", maintain_order=True)
    )


def _stop_amounts(
    decisions: pl.DataFrame,
    hourly: pl.DataFrame,
    account_id: str,
    period: str,
    books: PricebookSet,
    accounts: Accounts,
    waive: bool,
) -> list[tuple[dict, Decimal]]:
    """(decision, amount billed after it) per first stop. Waived stops run in order on what
    the earlier ones left (no usage is waived twice); billed ones each on all the usage."""
    stops = first_stops(decisions, account_id, period)
    if stops.is_empty():  # most accounts: no need to look at their usage at all
        return []
    mine = hourly.filter(pl.col("account_id") == account_id)
    out = []
    for row in stops.iter_rows(named=True):
        scope = _in_scope(row)
        after = scope & (pl.col("hour") + timedelta(hours=1) > row["effective_at"])
        if waive:
            left = mine.filter(~after)
            amount = _subtotal(mine, account_id, period, books, accounts) - _subtotal(
                left, account_id, period, books, accounts
            )
            mine = left
        else:
            amount = billed_after(
                mine.filter(scope), account_id, period, row["effective_at"], books, accounts
            )
        out.append((row, amount))
    return out


def _in_scope(row: dict) -> pl.Expr:
    """The usage a limit covers: all of it for the budget, the capped meter/model for a cap."""
    cond = pl.lit(True)
    if row["limit_id"] != "budget":
        for col in ("meter_id", "model_id"):
            if row.get(col) is not None:
                cond &= pl.col(col) == row[col]
    return cond


def apply_waivers(
    rated: pl.DataFrame,
    hourly: pl.DataFrame | pl.LazyFrame,
    decisions: pl.DataFrame,
    period: str,
    books: PricebookSet,
    accounts: Accounts,
    opening: CreditBalances | None = None,
) -> pl.DataFrame:
    """`rated` (RATED_USAGE of `period`) with the hard-stop waivers of `waive` accounts.

    For each such account with a stop in `decisions`: one waiver row per stop, and its
    contract rows recomputed (from `opening`, as `rated` was) on the usage left after them.
    Waiver rows already in `rated` are replaced (idempotent). Accounts under `bill`, or
    without a stop, are returned untouched; `hourly` (a LazyFrame is collected only when a
    waiver is due) is `usage_hourly` of the period, as `rated` was rated from.
    """
    before = waived_amounts(rated)
    stopped = decisions.filter((pl.col("period") == period) & (pl.col("to_status") == "hard_stop"))[
        "account_id"
    ].unique()
    ids = sorted(a for a in stopped.to_list() if accounts.get(a).after_hard_stop == "waive")
    if not ids and not before:
        return rated
    if isinstance(hourly, pl.LazyFrame):
        hourly = hourly.filter(pl.col("account_id").is_in(ids)).collect()
    rows = []
    for account_id in ids:
        account = accounts.get(account_id)
        stops = _stop_amounts(decisions, hourly, account_id, period, books, accounts, True)
        rows += [_waiver_row(account, period, row, amount) for row, amount in stops if amount]
    waivers = conform(pl.DataFrame(rows, schema=_WAIVER_SCHEMA), RATED_USAGE)
    waived = waived_amounts(waivers)
    touched = pl.col("account_id").is_in(sorted(set(waived) | set(before)))
    usage = pl.col("line_kind").fill_null("usage") == "usage"
    contract, _ = contract_lines(rated.filter(touched & usage), period, accounts, opening, waived)
    return pl.concat(
        [
            conform(rated.filter(~touched | usage), RATED_USAGE),
            waivers,
            conform(contract.filter(touched), RATED_USAGE),
        ]
    )


def waived_amounts(rated: pl.DataFrame) -> dict[str, Decimal]:
    """{account: positive amount waived} from the waiver rows in `rated`."""
    rows = rated.filter(pl.col("rate_id").fill_null("") == WAIVER_RATE)
    if rows.is_empty():
        return {}
    sums = rows.group_by("account_id").agg(pl.col("amount").sum())
    return {a: -Decimal(v) for a, v in sums.iter_rows()}


def waiver_description(unit: str | None, stop_at: datetime | None) -> str:
    """`Usage after the hard budget stop on 2026-10-10 12:00 UTC waived` (from a waiver row)."""
    limit = (unit or "").removeprefix(f"{WAIVER_RATE}:")
    when = f"{stop_at:%Y-%m-%d %H:%M} UTC" if stop_at else "?"
    if limit in ("", "budget"):
        return f"Usage after the hard budget stop on {when} waived"
    what = limit.removeprefix("cap:").replace(":", " ")
    return f"Usage of {what} after its hard limit on {when} waived"


def _waiver_row(account, period: str, row: dict, amount: Decimal) -> dict:
    return {
        "period": period,
        "account_id": account.account_id,
        "line_kind": "discount",
        "unit": f"{WAIVER_RATE}:{row['limit_id']}",
        "pricebook": account.pricebook,
        "rate_id": WAIVER_RATE,
        "quantity": Decimal(1),
        "per": Decimal(1),
        "unit_price": -amount,
        "amount": -amount,
        "currency": account.currency,
        "first_hour": row["effective_at"],
        "last_hour": row["effective_at"],
    }


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


def _note(row: dict, after: Decimal, waived: bool = False) -> str:
    currency = row.get("currency") or ""
    if row["limit_id"] == "budget":
        what = "Hard budget limit"
    elif row["rule"] == "parent_remainder":
        what = f"Hard limit (remaining allocation of {row['limited_by']})"
    else:
        what = f"Hard limit ({row['limit_id'].removeprefix('cap:').replace(':', ' ')})"
    return (
        f"{what} of {money(row['threshold'], currency)} reached on "
        f"{row['effective_at']:%Y-%m-%d %H:%M} UTC; usage after that time is "
        f"{'waived' if waived else 'billed'}: {money(after, currency)}."
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


_WAIVER_SCHEMA = {
    "period": pl.String,
    "account_id": pl.String,
    "line_kind": pl.String,
    "unit": pl.String,
    "pricebook": pl.String,
    "rate_id": pl.String,
    "quantity": RATED_USAGE["quantity"],
    "per": RATED_USAGE["per"],
    "unit_price": RATED_USAGE["unit_price"],
    "amount": RATED_USAGE["amount"],
    "currency": pl.String,
    "first_hour": RATED_USAGE["first_hour"],
    "last_hour": RATED_USAGE["last_hour"],
}
