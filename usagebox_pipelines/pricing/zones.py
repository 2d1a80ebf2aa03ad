"""Billing months in the customer's time zone as Polars frames and expressions (ADR 0017).

An account with a `time_zone` bills its local month, a UTC window that differs from the UTC
month by a whole number of hours at each end (`Accounts.period`). Stages read the hours of the
span of every account's month (`Accounts.span`) and keep, per account, those inside its own
window: one small frame of windows (a row per account) joined to the hourly rows, never a
Python loop over rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.months import shift_month, zone_period
from usagebox_pipelines.pricing.accounts import Accounts

_UTC = "UTC"


def period_windows(ids: pl.Series, period: str, accounts: Accounts) -> pl.DataFrame:
    """`account_id`, `_start`, `_end`: each account's period as a UTC window. Accounts are
    mapped to their zone by an expression and the window is computed once per zone in use
    (through one account of it, so `Accounts.period` checks the zone for that month)."""
    frame = pl.DataFrame({"account_id": ids}, schema={"account_id": pl.String})
    frame = frame.with_columns(_zone=account_zone(accounts))
    first = frame.unique("_zone", keep="first", maintain_order=True).rows()
    bounds = {zone: accounts.period(account_id, period) for account_id, zone in first}
    windows = pl.DataFrame(
        {
            "_zone": list(bounds),
            "_start": [p.start for p in bounds.values()],
            "_end": [p.end for p in bounds.values()],
        },
        schema={"_zone": pl.String, "_start": schemas.TS, "_end": schemas.TS},
    )
    return frame.join(windows, on="_zone", how="left", maintain_order="left").drop("_zone")


def own_period_rows(rows: pl.DataFrame, period: str, accounts: Accounts) -> pl.DataFrame:
    """The rows (with `account_id` and `hour`, from the span of every account's `period`)
    inside their own account's period: an inner join with one window row per account, then a
    filter, so an hour counts in exactly one month per account however the zones differ."""
    windows = period_windows(rows.get_column("account_id").unique().sort(), period, accounts)
    return (
        rows.join(windows, on="account_id", how="inner", maintain_order="left")
        .filter((pl.col("hour") >= pl.col("_start")) & (pl.col("hour") < pl.col("_end")))
        .drop("_start", "_end")
    )


def in_own_period(rows: pl.LazyFrame, period: str, accounts: Accounts) -> pl.LazyFrame:
    """`own_period_rows` for a lazy scan (rows with `account_id` and `hour`): the listed
    accounts whose zone differs from the defaults' get their own window (a left join with
    their windows), everyone else the defaults' period. The scan is cut to the span first, so
    file statistics still prune it."""
    span, default = accounts.span(period), zone_period(period, accounts.defaults.time_zone)
    own = [a for a in accounts.listed.values() if a.time_zone != accounts.defaults.time_zone]
    ids = pl.Series([a.account_id for a in own], dtype=pl.String)
    hour = pl.col("hour")
    start = pl.coalesce(pl.col("_start"), pl.lit(default.start, dtype=schemas.TS))
    end = pl.coalesce(pl.col("_end"), pl.lit(default.end, dtype=schemas.TS))
    return (
        rows.filter((hour >= span.start) & (hour < span.end))
        .join(period_windows(ids, period, accounts).lazy(), on="account_id", how="left")
        .filter((hour >= start) & (hour < end))
        .drop("_start", "_end")
    )


def account_zone(accounts: Accounts) -> pl.Expr:
    """Each row's account's zone name ("UTC" for none), from `account_id`: a mapping of the
    listed accounts whose zone differs from the defaults', the defaults' zone for the rest."""
    default = accounts.defaults.time_zone or _UTC
    differ = {
        a.account_id: a.time_zone or _UTC
        for a in accounts.listed.values()
        if (a.time_zone or _UTC) != default
    }
    if not differ:
        return pl.lit(default)
    return pl.col("account_id").replace_strict(differ, default=default, return_dtype=pl.String)


def local_month(hour: pl.Expr, accounts: Accounts) -> pl.Expr:
    """`YYYY-MM` of `hour` in the zone of the row's account: the billing month the hour is
    billed in (one `when` per zone in use, a few; the UTC month when nobody is zoned)."""
    month = hour.dt.strftime("%Y-%m")
    if not accounts.zoned:
        return month
    zone = account_zone(accounts)
    for name in sorted(z for z in accounts.zones() if z is not None):
        local = hour.dt.convert_time_zone(name).dt.strftime("%Y-%m")
        month = pl.when(zone == name).then(local).otherwise(month)
    return month


def months_of_days(days: Iterable[str], accounts: Accounts) -> list[str]:
    """The billing months with hours in the UTC days `YYYY-MM-DD`: each day's UTC month and,
    with accounts in time zones, the neighbouring month whose span reaches into the day (1
    November UTC still holds New York's October). Without zones: the days' UTC months."""
    out: set[str] = set()
    for day in days:
        month = day[:7]
        out.add(month)
        if not accounts.zoned:
            continue
        start = datetime.fromisoformat(day[:10]).replace(tzinfo=UTC)
        end = start + timedelta(days=1)
        for neighbour in (shift_month(month, -1), shift_month(month, 1)):
            span = accounts.span(neighbour)
            if span.start < end and start < span.end:
                out.add(neighbour)
    return sorted(out)
