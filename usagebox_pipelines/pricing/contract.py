"""Contract lines: [waiver →] discount → coupons → spend cap → minimum true-up → tax → prepaid
credit.

The order is fixed: usage waived after a guardrail hard stop (`after_hard_stop: waive`, its
rows made by invoicing.hard_stop, rate_id `WAIVER_RATE`) comes off the usage first; the
discount applies to the usage that is billed; fixed-amount coupons in effect for the period
come off next, in listed order, never below zero (`discount` rows, rate_id `coupon:<id>`);
`maximum_spend` cuts the discounted usage to the cap (a `discount` row, rate_id
`SPEND_CAP_RATE`); the minimum commit tops up what is left (validation keeps the commit at or
below the cap); tax (pricing.tax) is charged on that net amount; prepaid credit pays what is
left, tax included (never more, so a total never goes below zero), grant by grant in burn order
(`draw_grants`, ADR 0016). All
are computed on the invoice's usage subtotal: rated rows summed to invoice lines
(`INVOICE_LINE_KEYS`, the grain invoicing.lines groups by: dimensions summed away), each line
rounded once with `round_money`. So a customer can check them on the invoice, a true-up lands
exactly on the commit, and credit never turns a total negative by a cent. Discount amounts are
stored exact; minimum and credit amounts are whole minor units. Loops here are over accounts.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.pricing.accounts import PREPAID_GRANT, Account, Accounts, CreditGrant
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
#: rate_id (and unit) prefix of a credit grant's `credit` row (`credit_grant:<id>`); the grant
#: PREPAID_GRANT keeps the rate_id `prepaid_credit` its lines always had.
GRANT_RATE = "credit_grant"
#: Per account, per grant id: the balance a period opens with (invoicing.credit.balances). A
#: plain Decimal (the form before credit grants) is the balance of the grant `prepaid_credit`.
CreditBalances = Mapping[str, Mapping[str, Decimal] | Decimal]


def contract_lines(
    usage_lines: pl.DataFrame,
    period: str,
    accounts: Accounts,
    opening_credit: CreditBalances | None = None,
    waived: Mapping[str, Decimal] | None = None,
    scope: Collection[str] | None = None,
) -> tuple[pl.DataFrame, dict[str, dict[str, Decimal]]]:
    """Contract rows (schemas.RATED_USAGE) and each account's grant balances after them.

    Accounts in `opening_credit` start from the grant balances listed there (a grant it does
    not list did not exist when they were stamped: it pays nothing); other accounts with
    grants start from their full amounts (their first rated period). `waived` (account → positive
    rounded amount, the sum of its waiver rows) comes off the usage subtotal before the
    discount, so discount, minimum and credit apply to the bill after the waiver. `scope`
    limits the rows to those accounts (a shard of the month, see `shards`): an account with
    terms but no usage gets its rows from the one shard it belongs to.
    """
    opening = dict(opening_credit or {})
    subtotals = rounded_usage_subtotals(usage_lines)
    restricted = any(g.restricted for a in accounts.ids() for g in accounts.get(a).grants)
    by_line = rounded_usage_by_meter_model(usage_lines) if restricted else {}
    ids = set(subtotals) | set(opening) | {a for a in accounts.ids() if _has_terms(accounts.get(a))}
    if scope is not None:
        ids &= set(scope)
    rows: list[dict] = []
    closing: dict[str, dict[str, Decimal]] = {}
    for account_id in sorted(ids):
        account = accounts.get(account_id)
        balances = grant_balances(opening.get(account_id), account)
        usage = subtotals.get(account_id, _ZERO) - (waived or {}).get(account_id, _ZERO)
        account_rows, due = _account_lines(account, usage, period)
        grant_rows, left = draw_grants(account, due, balances, period, by_line.get(account_id, {}))
        rows.extend(
            {"period": period, "account_id": account_id, **r} for r in [*account_rows, *grant_rows]
        )
        if balances:
            closing[account_id] = left
    frame = pl.DataFrame(rows, schema=_ROW_SCHEMA) if rows else pl.DataFrame(schema=_ROW_SCHEMA)
    return schemas.conform(frame, schemas.RATED_USAGE), closing


def grant_balances(
    stamped: Mapping[str, Decimal] | Decimal | None, account: Account
) -> dict[str, Decimal]:
    """{grant id: opening balance}: as stamped, else every grant's full amount."""
    if stamped is None:
        return {g.grant_id: g.amount for g in account.grants}
    if isinstance(stamped, Decimal):
        return {PREPAID_GRANT: stamped}
    return dict(stamped)


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


def rounded_usage_by_meter_model(
    rated: pl.DataFrame,
) -> dict[str, dict[tuple[str | None, str | None], Decimal]]:
    """Per account and (meter, model): Σ of its rounded invoice usage lines, what a grant with
    `applies_to` may pay at most."""
    out: dict[str, dict[tuple[str | None, str | None], Decimal]] = {}
    usage = rated.filter(pl.col("line_kind") == "usage")
    for currency in usage.get_column("currency").unique().to_list():
        sums = (
            usage.filter(pl.col("currency") == currency)
            .group_by(INVOICE_LINE_KEYS)
            .agg(pl.col("amount").sum())
            .group_by("account_id", "meter_id", "model_id")
            .agg(round_money(pl.col("amount"), minor_units(currency)).sum().alias("total"))
        )
        for account_id, meter, model, total in sums.iter_rows():
            out.setdefault(account_id, {})[(meter, model)] = total
    return out


#: rate_id prefix of a fixed-amount coupon's `discount` row (`coupon:<id>`).
COUPON_RATE = "coupon"
#: rate_id of the `discount` row that cuts usage after discount to the account's maximum_spend.
SPEND_CAP_RATE = "maximum_spend"


def _has_terms(account: Account) -> bool:
    return account.minimum_commit is not None or bool(account.grants)


def _account_lines(account: Account, usage: Decimal, period: str) -> tuple[list[dict], Decimal]:
    """The discount, coupon, spend cap, minimum and tax rows of one account, and what is due
    after them (what its credit grants may pay)."""
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
    return rows, total


def draw_grants(
    account: Account,
    due: Decimal,
    balances: Mapping[str, Decimal],
    period: str,
    by_line: Mapping[tuple[str | None, str | None], Decimal],
) -> tuple[list[dict], dict[str, Decimal]]:
    """The `credit` rows that pay `due` from the account's grants, and every balance after.

    Grants usable in the account's period (`CreditGrant.usable_in`; its local month when it
    has a time zone) with a balance burn in the fixed
    order (`CreditGrant.burn_key`), each whole minor units (never more than its balance, the
    total never more than is due). A grant with `applies_to` pays at most the rounded usage
    lines of its meters/models (`by_line`) not yet paid by an earlier restricted grant. A grant
    not in `balances` (added after the stamp) pays nothing; an expired one keeps its balance
    here (the ledger records its expiry: invoicing.credit).
    """
    mu = minor_units(account.currency)
    window = account.period(period)  # the account's own month (ADR 0017)
    left = dict(balances)
    unpaid = {k: max(_ZERO, v) for k, v in by_line.items()}
    rest = max(_ZERO, due)
    rows = []
    usable = [g for g in stamped_grants(account, left) if g.usable_in(window.start, window.end)]
    for grant in sorted(usable, key=lambda g: g.burn_key):
        balance = left[grant.grant_id]
        spendable = max(_ZERO, balance).quantize(Decimal(1).scaleb(-mu), rounding=ROUND_DOWN)
        cap = sum((v for k, v in unpaid.items() if grant.pays_for(*k)), _ZERO)
        drawn = min(spendable, rest, cap if grant.restricted else rest)
        if drawn <= 0:
            continue
        if grant.restricted:
            _pay_lines(unpaid, grant, drawn)
        rest -= drawn
        left[grant.grant_id] = balance - drawn
        rows.append(_grant_row(account, grant, drawn, left[grant.grant_id], mu))
    return rows, left


def stamped_grants(account: Account, balances: Mapping[str, Decimal]) -> list[CreditGrant]:
    """The account's grants that have a balance in `balances`, plus a plain grant (no dates,
    priority 0, for everything) for a balance whose grant accounts.yaml no longer lists: an
    issued invoice that drew it still rebuilds (exactly so for `prepaid_credit`)."""
    known = [g for g in account.grants if g.grant_id in balances]
    listed = {g.grant_id for g in known}
    return known + [CreditGrant(g, _ZERO) for g in sorted(balances) if g not in listed]


def _pay_lines(
    unpaid: dict[tuple[str | None, str | None], Decimal], grant: CreditGrant, drawn: Decimal
) -> None:
    """Mark `drawn` of the grant's meter × model lines paid, in meter, model order."""
    mine = sorted((k for k in unpaid if grant.pays_for(*k)), key=lambda k: (str(k[0]), str(k[1])))
    for key in mine:
        take = min(unpaid[key], drawn)
        unpaid[key] -= take
        drawn -= take


def _grant_row(
    account: Account, grant: CreditGrant, drawn: Decimal, after: Decimal, mu: int
) -> dict:
    """One grant's `credit` row; the grant `prepaid_credit` keeps the row it always had, the
    others carry their id in rate_id and unit and the balance left (money text) in
    `dimensions`, which the invoice line names."""
    if grant.grant_id == PREPAID_GRANT:
        return _row(account, "credit", PREPAID_GRANT, _ONE, _ONE, -drawn, -drawn)
    rate = f"{GRANT_RATE}:{grant.grant_id}"
    return _row(account, "credit", rate, _ONE, _ONE, -drawn, -drawn) | {
        "unit": rate,
        "dimensions": json.dumps({"balance_after": f"{after:,.{mu}f}"}),
    }


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
    "unit": pl.String,
    "dimensions": pl.String,
    "pricebook": pl.String,
    "rate_id": pl.String,
    "quantity": schemas.QTY,
    "per": schemas.QTY,
    "unit_price": schemas.MONEY,
    "amount": schemas.MONEY,
    "currency": pl.String,
}
