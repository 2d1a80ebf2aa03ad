"""The month's `events` that per-event rates price (pricing.per_event, ADR 0018), lazily.

Only rows that can reach a per-event rate are read: status ok, the meters some version prices
per event, the hours of every account's billing month (`Accounts.span`, pruned by the
`event_date` partitions), then each account's own window in its time zone (ADR 0017). Callers
cut the scan to a shard of accounts before collecting (stages.rating), so memory is bounded
by a shard, as for `usage_hourly`.
"""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.catalog import EVENTS
from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.per_event import per_event_meters
from usagebox_pipelines.pricing.pricebook import PricebookSet
from usagebox_pipelines.pricing.zones import in_own_period
from usagebox_pipelines.storage import DeltaStore


def month_events(
    store: DeltaStore,
    month: str,
    books: PricebookSet,
    accounts: Accounts,
    *,
    version: int | None = None,
    account_id: str | None = None,
) -> pl.LazyFrame:
    """`events` rows (as of `version`; None: the latest) of the month that per-event rates of
    `books` may price: one account's, or every account's within its own billing month."""
    scan = store.scan(EVENTS, version=version)
    meters = per_event_meters(books)
    if not meters:
        return scan.filter(pl.lit(False))
    window = accounts.window(month, account_id) if account_id else accounts.span(month)
    hour = pl.col("hour")
    scan = scan.filter(
        # event_date first: prunes the partitions of `events` before reading any file
        (pl.col("event_date") >= window.start.date())
        & (pl.col("event_date") <= window.end.date())
        & (hour >= window.start)
        & (hour < window.end)
        & (pl.col("status") == "ok")
        & pl.col("meter_id").is_in(meters)
    )
    if account_id is not None:
        scan = scan.filter(pl.col("account_id") == account_id)
    return in_own_period(scan, month, accounts)
