"""Stage `rated_usage`: rate one month of `usage_hourly` with the pricebooks and accounts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import (
    GUARDRAIL_DECISIONS,
    RATED_USAGE,
    UNRATED_USAGE,
    USAGE_HOURLY,
)
from usagebox_pipelines.invoicing.hard_stop import apply_waivers
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.stages.books import (
    opening_credit,
)
from usagebox_pipelines.storage import DeltaStore, writes_tables


@dataclass
class RatedMonth:
    rated: pl.DataFrame
    unrated: pl.DataFrame


def rate_month(store: DeltaStore, pricebooks_dir: Path, month: str) -> RatedMonth:
    """Rate one month of `usage_hourly` (nothing written): usage and contract lines.

    Prepaid credit is what the month WOULD apply if issued now: the grant minus what issued
    invoices have drawn (invoicing.credit); a draft or an open month never draws. Usage after
    a hard stop of an `after_hard_stop: waive` account is waived (invoicing.hard_stop), with
    the decisions recorded so far.
    """
    books = load_pricebooks(pricebooks_dir)
    accounts = load_accounts(pricebooks_dir)
    start, end = month_bounds(month)
    in_month = (pl.col("hour") >= start) & (pl.col("hour") < end)
    hourly = store.scan(USAGE_HOURLY).filter(in_month).collect()
    opening = opening_credit(store, accounts)
    result = rate_usage(hourly, month, books, accounts, opening)
    decisions = store.read(GUARDRAIL_DECISIONS)
    rated = apply_waivers(result.rated, hourly, decisions, month, books, accounts, opening)
    return RatedMonth(rated, result.unrated)


@writes_tables("rated_usage")
def build_rated_usage(
    store: DeltaStore, pricebooks_dir: Path, month: str, run_id: str = "cli"
) -> RatedMonth:
    """Replace the month's `rated_usage` and `unrated_usage` rows (never `credit_ledger`:
    only a close draws credit, see invoicing.credit)."""
    rated = rate_month(store, pricebooks_dir, month)
    meta = {"run_id": run_id, "stage": "rated_usage", "period": month}
    store.replace_partition(RATED_USAGE, rated.rated, period=month, metadata=meta)
    store.replace_partition(UNRATED_USAGE, rated.unrated, period=month, metadata=meta)
    return rated
