"""Credit grants: drawn only by ISSUED invoices, in issue order, never beyond a grant.

An account's grants are its `credit_grants` plus `prepaid_credit` (the grant
`prepaid_credit`). A draft shows the credit it *would* apply: each grant's balance is its
amount minus what the issued invoices of closed periods have drawn from it (`balances`). A
draft never draws, so rebuilding a draft (or leaving a month open forever) changes no balance.
A close applies those balances, stamps them on `period_closes.opening_credit` (so verify
re-rates exactly) and, once its marker is written, writes the books:

- `credit_grant_ledger` is append-only: a close appends the rows the issued history implies
  and the table lacks (`grant_ledger_rows`): one `grant` row per grant the first time a close
  sees it, one `draw` row per grant and issued invoice that drew it (its balance after), one
  `expiry` row when a grant's expiry passes (the balance that lapsed). A rerun appends
  nothing; a crash before the append is caught up by the next close (its rows keep their own
  period), so no row is lost and none is written twice.
- `credit_ledger` stays the per-account summary it was (derived, rewritten: `ledger`).

Neither is read to rate: the issued credit lines are the truth. See ADR 0007 and ADR 0016.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import polars as pl

from usagebox_pipelines.invoicing.hard_stop import waived_amounts
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import PREPAID_GRANT, CreditGrant
from usagebox_pipelines.pricing.contract import (
    GRANT_RATE,
    WAIVER_RATE,
    CreditBalances,
    contract_lines,
)
from usagebox_pipelines.schemas import (
    CREDIT_GRANT_LEDGER,
    CREDIT_LEDGER,
    MONEY,
    RATED_USAGE,
    conform,
)

_ZERO = Decimal(0)
#: Grants per account: {account: {grant id: grant}}.
Grants = Mapping[str, Mapping[str, CreditGrant]]


def grants(accounts: object) -> dict[str, dict[str, CreditGrant]]:
    """{account: {grant id: grant}} of every configured account with a grant."""
    out = {}
    for account_id in accounts.ids():
        own = accounts.get(account_id).grants
        if own:
            out[account_id] = {g.grant_id: g for g in own}
    return out


def grant_totals(grant: Grants) -> dict[str, Decimal]:
    """{account: Σ grant amounts}: what `credit_ledger` (per account) opens with."""
    return {a: sum((g.amount for g in own.values()), _ZERO) for a, own in grant.items()}


def grant_id() -> pl.Expr:
    """The grant a credit line drew (from its unit): `credit_grant:<id>` → `<id>`; the old
    `credit` unit is the grant `prepaid_credit`."""
    unit = pl.col("unit").fill_null("credit")
    prefix = GRANT_RATE + ":"
    return (
        pl.when(unit.str.starts_with(prefix))
        .then(unit.str.strip_prefix(prefix))
        .otherwise(pl.lit(PREPAID_GRANT))
    )


def drawn(issued_lines: pl.DataFrame) -> dict[str, Decimal]:
    """{account: credit drawn} by the given issued lines (credit lines are negative amounts)."""
    credit = issued_lines.filter(pl.col("kind") == "credit")
    if credit.is_empty():
        return {}
    sums = credit.group_by("account_id").agg(pl.col("amount").sum())
    return {a: -Decimal(v) for a, v in sums.iter_rows() if v}


def drawn_by_grant(issued_lines: pl.DataFrame) -> dict[str, dict[str, Decimal]]:
    """{account: {grant id: credit drawn}} by the given issued lines."""
    credit = issued_lines.filter(pl.col("kind") == "credit")
    out: dict[str, dict[str, Decimal]] = {}
    if credit.is_empty():
        return out
    sums = credit.group_by("account_id", grant_id().alias("grant_id")).agg(pl.col("amount").sum())
    for account_id, grant, amount in sums.iter_rows():
        if amount:
            out.setdefault(account_id, {})[grant] = -Decimal(amount)
    return out


def balances(grant: Grants, issued_lines: pl.DataFrame) -> dict[str, dict[str, Decimal]]:
    """Opening balances of the next close (and of every draft): per account and grant,
    amount − drawn by issued lines.

    Every grant of every account is listed, so rating never falls back to the full amount
    of a grant that already paid some invoices.
    """
    used = drawn_by_grant(issued_lines)
    return {
        a: {g: own[g].amount - used.get(a, {}).get(g, _ZERO) for g in sorted(own)}
        for a, own in sorted(grant.items())
    }


def ledger(
    grant: Mapping[str, Decimal], closes: Iterable[str], issued_lines: pl.DataFrame
) -> pl.DataFrame:
    """CREDIT_LEDGER rows from the issued lines: per closed period (in close order, `closes`)
    and account with a grant (or a draw), opening − drawn = closing, chained. `grant`: the
    account totals (`grant_totals`)."""
    by_period = {
        p: drawn(part)
        for (p,), part in issued_lines.filter(pl.col("kind") == "credit").group_by("period")
    }
    balance = dict(grant)
    rows = []
    for period in closes:
        used = by_period.get(period, {})
        for account_id in sorted(set(balance) | set(used)):
            opening = balance.get(account_id, _ZERO)
            take = used.get(account_id, _ZERO)
            balance[account_id] = opening - take
            rows.append(
                {
                    "account_id": account_id,
                    "period": period,
                    "opening": opening,
                    "drawn": take,
                    "closing": opening - take,
                }
            )
    return pl.DataFrame(rows, schema=CREDIT_LEDGER) if rows else pl.DataFrame(schema=CREDIT_LEDGER)


# --------------------------------------------------------------------------- grant ledger

_ONCE = ["account_id", "grant_id", "kind"]
_DRAW_KEY = ["account_id", "grant_id", "kind", "period", "invoice_number"]


def grant_ledger_rows(
    grant: Grants,
    closes: Sequence[str],
    issued_lines: pl.DataFrame,
    stored: pl.DataFrame,
    period: str,
    starts: Mapping[str, datetime] | None = None,
) -> pl.DataFrame:
    """The CREDIT_GRANT_LEDGER rows the close of `period` appends: the rows the issued history
    implies (`closes` in close order, `issued_lines` their lines) that `stored` lacks.

    `grant` rows (amount = the grant) and `expiry` rows (amount = minus what lapsed; a grant
    expires at the first close of a period starting at or after its `expires`) happen once per
    grant and carry the period of the close that wrote them; a `draw` row per grant and issued
    invoice carries the invoice's period and the grant's balance after it, in close order.
    `recorded_at` and `run_id` are left null for the writer. `starts` (account → the start of
    its period, ADR 0017) is where an account in a time zone begins `period`; others begin it
    at the UTC month.
    """
    utc_start, _ = month_bounds(period)
    draws = _draw_rows(grant, closes, issued_lines)
    used = drawn_by_grant(issued_lines)
    once = []
    for account_id, own in sorted(grant.items()):
        for g in sorted(own.values(), key=lambda g: g.burn_key):
            once.append(_once_row(account_id, g.grant_id, period, "grant", g.amount, g.amount))
            if g.expired_by((starts or {}).get(account_id, utc_start)):
                lapsed = g.amount - used.get(account_id, {}).get(g.grant_id, _ZERO)
                once.append(_once_row(account_id, g.grant_id, period, "expiry", -lapsed, _ZERO))
    once_frame = pl.DataFrame(once, schema=CREDIT_GRANT_LEDGER) if once else draws.clear()
    new_once = once_frame.join(stored.select(_ONCE), on=_ONCE, how="anti", maintain_order="left")
    new_draws = draws.join(
        stored.select(_DRAW_KEY), on=_DRAW_KEY, how="anti", nulls_equal=True, maintain_order="left"
    )
    kind_order = pl.col("kind").replace_strict({"grant": 0, "draw": 1, "expiry": 2})
    return conform(
        pl.concat([new_once, new_draws]).sort(kind_order, maintain_order=True), CREDIT_GRANT_LEDGER
    )


def _once_row(
    account_id: str, grant: str, period: str, kind: str, amount: Decimal, after: Decimal
) -> dict:
    return {
        "account_id": account_id,
        "grant_id": grant,
        "period": period,
        "invoice_number": None,
        "kind": kind,
        "amount": amount,
        "balance_after": after,
    }


def _draw_rows(grant: Grants, closes: Sequence[str], issued_lines: pl.DataFrame) -> pl.DataFrame:
    """One `draw` row per account × grant × issued invoice, balance chained in close order."""
    credit = issued_lines.filter(pl.col("kind") == "credit")
    if credit.is_empty():
        return pl.DataFrame(schema=CREDIT_GRANT_LEDGER)
    amounts = pl.DataFrame(
        [(a, g.grant_id, g.amount) for a, own in grant.items() for g in own.values()],
        schema={"account_id": pl.String, "grant_id": pl.String, "granted": MONEY},
        orient="row",
    )
    order = {p: i for i, p in enumerate(closes)}
    rows = (
        credit.group_by("account_id", grant_id().alias("grant_id"), "period", "invoice_number")
        .agg(pl.col("amount").sum().cast(MONEY))
        .filter(pl.col("amount") != 0)
        .with_columns(pos=pl.col("period").replace_strict(order, default=len(order)))
        .sort("account_id", "grant_id", "pos", "invoice_number")
        .join(amounts, on=["account_id", "grant_id"], how="left", maintain_order="left")
    )
    after = pl.col("granted").fill_null(_ZERO) + pl.col("amount").cum_sum().over(
        "account_id", "grant_id"
    )
    return conform(
        rows.with_columns(kind=pl.lit("draw"), balance_after=after).sort("pos", "account_id"),
        CREDIT_GRANT_LEDGER,
    )


def with_current_credit(
    rated: pl.DataFrame,
    accounts: object,
    period: str,
    opening: CreditBalances,
    scope: Collection[str] | None = None,
) -> pl.DataFrame:
    """`rated` (RATED_USAGE of one period) with its contract rows recomputed from `opening`.

    Stored `rated_usage` was rated against the balances of its build; a close since then may
    have drawn credit, so a draft recomputes discount/minimum/credit from its usage rows (after
    its hard-stop waiver rows, which are kept: invoicing.hard_stop). `scope`: the accounts of
    this shard of the period (pricing.contract.contract_lines).
    """
    usage = rated.filter(pl.col("line_kind").fill_null("usage") == "usage")
    waivers = rated.filter(pl.col("rate_id").fill_null("") == WAIVER_RATE)
    waived = waived_amounts(waivers)
    contract, _ = contract_lines(usage, period, accounts, opening, waived, scope=scope)
    return pl.concat([usage, conform(waivers, RATED_USAGE), conform(contract, RATED_USAGE)])
