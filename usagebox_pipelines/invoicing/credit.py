"""Prepaid credit: a grant drawn only by ISSUED invoices, in issue order, never beyond it.

A draft shows the credit it *would* apply: the account's balance is the grant minus what the
issued invoices of closed periods have drawn so far (`balances`). A draft never draws, so
rebuilding a draft (or leaving a month open forever) changes no balance. A close applies that
balance, stamps it on `period_closes.opening_credit` (so verify re-rates exactly) and, once its
marker is written, rewrites `credit_ledger` from the issued invoices (`ledger`): one row per
account and closed period, in close order, each opening = the previous closing.

`credit_ledger` is derived, never read to rate: the issued credit lines are the truth, so a
crash between the marker and the ledger write changes nothing (the next close rewrites it).
See docs/adr/0007-credit-is-drawn-by-issued-invoices.md.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from decimal import Decimal

import polars as pl

from usagebox_pipelines.invoicing.hard_stop import waived_amounts
from usagebox_pipelines.pricing.contract import WAIVER_RATE, contract_lines
from usagebox_pipelines.schemas import CREDIT_LEDGER, RATED_USAGE, conform

_ZERO = Decimal(0)


def grants(accounts: object) -> dict[str, Decimal]:
    """{account: prepaid_credit} of every configured account with a grant."""
    out = {}
    for account_id in accounts.ids():
        grant = accounts.get(account_id).prepaid_credit
        if grant is not None:
            out[account_id] = grant
    return out


def drawn(issued_lines: pl.DataFrame) -> dict[str, Decimal]:
    """{account: credit drawn} by the given issued lines (credit lines are negative amounts)."""
    credit = issued_lines.filter(pl.col("kind") == "credit")
    if credit.is_empty():
        return {}
    sums = credit.group_by("account_id").agg(pl.col("amount").sum())
    return {a: -Decimal(v) for a, v in sums.iter_rows() if v}


def balances(grant: Mapping[str, Decimal], issued_lines: pl.DataFrame) -> dict[str, Decimal]:
    """Opening balance of the next close (and of every draft): grant − drawn by issued lines.

    Every account with a grant is listed, so rating never falls back to the full grant for an
    account that already drew some of it.
    """
    used = drawn(issued_lines)
    return {a: g - used.get(a, _ZERO) for a, g in sorted(grant.items())}


def ledger(
    grant: Mapping[str, Decimal], closes: Iterable[str], issued_lines: pl.DataFrame
) -> pl.DataFrame:
    """CREDIT_LEDGER rows from the issued lines: per closed period (in close order, `closes`)
    and account with a grant (or a draw), opening − drawn = closing, chained."""
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


def with_current_credit(
    rated: pl.DataFrame,
    accounts: object,
    period: str,
    opening: Mapping[str, Decimal],
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
