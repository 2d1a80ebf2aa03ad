"""Contract lines: [waiver →] discount → coupons → spend cap → minimum true-up → tax → prepaid
credit.

The order is fixed: usage waived after a guardrail hard stop (`after_hard_stop: waive`, its
rows made by invoicing.hard_stop, rate_id `WAIVER_RATE`) comes off the usage first; the
discount applies to the usage that is billed; fixed-amount coupons in effect for the period
come off next, in listed order, never below zero (`discount` rows, rate_id `coupon:<id>`);
`maximum_spend` cuts the discounted usage to the cap (a `discount` row, rate_id
`SPEND_CAP_RATE`); the minimum commit tops up what is left (validation keeps the commit at or
below the cap); tax (pricing.tax) is charged on that net amount; prepaid credit pays what is
left, tax included (never more, so a total never goes below zero). All
are computed on the invoice's usage subtotal: rated rows summed to invoice lines
(`INVOICE_LINE_KEYS`, the grain invoicing.lines groups by: dimensions summed away), each line
rounded once with `round_money`. So a customer can check them on the invoice, a true-up lands
exactly on the commit, and credit never turns a total negative by a cent. Discount amounts are
stored exact; minimum and credit amounts are whole minor units. Loops here are over accounts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.pricing.accounts import Account, Accounts
from usagebox_pipelines.pricing.money import exact_decimal, minor_units, round_decimal, round_money
from usagebox_pipelines.pricing.tax import tax_of

_ZERO = Decimal(0)
_ONE = Decimal(1)
# One invoice usage line per account × meter × model × rate × version × tier × price
# (must match invoicing.lines._usage_lines, which sums the rated rows' dimensions away).
INVOICE_LINE_KEYS = [
    "account_id", "meter_id", "model_id", "rate_id", "price_version", "tier",
    "unit_price", "per", "price_model", "currency",
]  # fmt: skip
#: rate_id of the `discount` rows that waive usage after a hard stop (invoicing.hard_stop).
WAIVER_RATE = "after_hard_stop"


def contract_lines(
    usage_lines: pl.DataFrame,
    period: str,
    accounts: Accounts,
    opening_credit: Mapping[str, Decimal] | None = None,
    waived: Mapping[str, Decimal] | None = None,
    scope: Collection[str] | None = None,
) -> tuple[pl.DataFrame, dict[str, Decimal]]:
    """Contract rows (schemas.RATED_USAGE) and the prepaid balance of each account after them.

    Accounts in `opening_credit` start from that balance; other accounts with a
    `prepaid_credit` start from it (their first rated period). `waived` (account → positive
    rounded amount, the sum of its waiver rows) comes off the usage subtotal before the
    discount, so discount, minimum and credit apply to the bill after the waiver. `scope`
    limits the rows to those accounts (a shard of the month, see `shards`): an account with
    terms but no usage gets its rows from the one shard it belongs to.
    """
    opening = dict(opening_credit or {})
    subtotals = rounded_usage_subtotals(usage_lines)
    ids = set(subtotals) | set(opening) | {a for a in accounts.ids() if _has_terms(accounts.get(a))}
    if scope is not None:
        ids &= set(scope)
    rows: list[dict] = []
    closing: dict[str, Decimal] = {}
    for account_id in sorted(ids):
        account = accounts.get(account_id)
        balance = opening.get(account_id, account.prepaid_credit)
        usage = subtotals.get(account_id, _ZERO) - (waived or {}).get(account_id, _ZERO)
        account_rows, left = _account_lines(account, usage, balance, period)
        rows.extend({"period": period, "account_id": account_id, **r} for r in account_rows)
        if left is not None:
            closing[account_id] = left
    frame = pl.DataFrame(rows, schema=_ROW_SCHEMA) if rows else pl.DataFrame(schema=_ROW_SCHEMA)
    return schemas.conform(frame, schemas.RATED_USAGE), closing


def rounded_usage_subtotals(rated: pl.DataFrame) -> dict[str, Decimal]:
    """Per account: Σ over invoice usage lines of round_money(Σ exact amounts of the line)."""
    totals: dict[str, Decimal] = {}
    usage = rated.filter(pl.col("line_kind") == "usage")
    for currency in usage.get_column("currency").unique().to_list():
        mu = minor_units(currency)
        sums = (
            usage.filter(pl.col("currency") == currency)
            .group_by(INVOICE_LINE_KEYS)
            .agg(pl.col("amount").sum())
            .group_by("account_id")
            .agg(round_money(pl.col("amount"), mu).sum().alias("total"))
        )
        totals.update(dict(sums.iter_rows()))
    return totals


#: rate_id prefix of a fixed-amount coupon's `discount` row (`coupon:<id>`).
COUPON_RATE = "coupon"
#: rate_id of the `discount` row that cuts usage after discount to the account's maximum_spend.
SPEND_CAP_RATE = "maximum_spend"


def _has_terms(account: Account) -> bool:
    return account.minimum_commit is not None or account.prepaid_credit is not None


def _account_lines(
    account: Account, usage: Decimal, balance: Decimal | None, period: str
) -> tuple[list[dict], Decimal | None]:
    """The discount, minimum and credit rows of one account, and its closing balance."""
    mu = minor_units(account.currency)
    rows = []
    discount = _ZERO
    if account.discount_pct and usage:
        exact = exact_decimal(-Fraction(usage) * Fraction(account.discount_pct) / 100)
        discount = round_decimal(exact, mu)
        rows.append(
            _row(
                account,
                "discount",
                "discount_pct",
                usage,
                Decimal(100),
                -account.discount_pct,
                exact,
            )
        )
    total = usage + discount
    for coupon in account.coupons:
        if not coupon.applies_to(period):
            continue
        off = min(round_decimal(coupon.amount, mu), max(_ZERO, total))
        if off > 0:
            rate = f"{COUPON_RATE}:{coupon.coupon_id}"
            rows.append(_row(account, "discount", rate, _ONE, _ONE, -off, -off))
            total -= off
    if account.maximum_spend is not None:
        over = total - round_decimal(account.maximum_spend, mu)
        if over > 0:
            rows.append(_row(account, "discount", SPEND_CAP_RATE, _ONE, _ONE, -over, -over))
            total -= over
    if account.minimum_commit is not None:
        true_up = round_decimal(account.minimum_commit, mu) - total
        if true_up > 0:
            rows.append(_row(account, "minimum", "minimum_commit", _ONE, _ONE, true_up, true_up))
            total += true_up
    tax = account.tax
    if tax is not None and tax.has_line and total:
        amount = tax_of(total, tax.rate, mu)
        rows.append(_row(account, "tax", tax.code, total, Decimal(100), tax.rate, amount))
        total += amount
    if balance is None:
        return rows, None
    spendable = max(_ZERO, balance).quantize(Decimal(1).scaleb(-mu), rounding=ROUND_DOWN)
    drawn = min(spendable, max(_ZERO, total))
    if drawn > 0:
        rows.append(_row(account, "credit", "prepaid_credit", _ONE, _ONE, -drawn, -drawn))
    return rows, balance - drawn


def _row(
    account: Account,
    kind: str,
    term: str,
    quantity: Decimal,
    per: Decimal,
    unit_price: Decimal,
    amount: Decimal,
) -> dict:
    return {
        "line_kind": kind,
        "pricebook": account.pricebook,
        "rate_id": term,
        "quantity": quantity,
        "per": per,
        "unit_price": unit_price,
        "amount": amount,
        "currency": account.currency,
    }


_ROW_SCHEMA = {
    "period": pl.String,
    "account_id": pl.String,
    "line_kind": pl.String,
    "pricebook": pl.String,
    "rate_id": pl.String,
    "quantity": schemas.QTY,
    "per": schemas.QTY,
    "unit_price": schemas.MONEY,
    "amount": schemas.MONEY,
    "currency": pl.String,
}
