"""Dry run of a price change: what a month costs under a proposed version versus now.

The proposed file is validated like any pricebook and joins the set as an extra version, or
replaces the version with the same `version` or `effective_from`. Nothing is written. The
compared figure is the invoice total before prepaid credit (usage lines rounded, discount,
minimum true-up): credit changes who pays, not what the month costs.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl

from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.money import EXACT, minor_units, round_money
from usagebox_pipelines.pricing.per_event import per_event_meters
from usagebox_pipelines.pricing.pricebook import PricebookSet, load_pricebook_file
from usagebox_pipelines.pricing.rating import RatingResult, rate_usage

TOTAL = "TOTAL"
_COST_KINDS = ("usage", "discount", "minimum")
_MONEY = pl.Decimal(38, 2)


def reprice_impact(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    period: str,
    pricebooks: PricebookSet,
    proposed_file: Path,
    accounts: Accounts,
    events: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """Per account and currency: current, proposed, delta, delta_pct; then one TOTAL row per
    currency (account_id "TOTAL"). Also `unrated_current`/`unrated_proposed`: unrated usage
    groups, since usage a proposal leaves unpriced would look like a saving. `events`: the
    `events` table (lazily), for rates priced per event in either version (ADR 0018).
    """
    proposed = load_pricebook_file(Path(proposed_file))
    assert proposed is not None  # required=True raises instead
    proposed_books = pricebooks.with_version(proposed)
    span = accounts.span(period)  # every account's own month (ADR 0017)
    hour = pl.col("hour")
    usage = usage_hourly.lazy().filter((hour >= span.start) & (hour < span.end)).collect()
    month_events = None
    if events is not None:
        meters = sorted({*per_event_meters(pricebooks), *per_event_meters(proposed_books)})
        month_events = (
            events.lazy()
            .filter((hour >= span.start) & (hour < span.end) & pl.col("meter_id").is_in(meters))
            .collect()
        )
    now = rate_usage(usage, period, pricebooks, accounts, events=month_events)
    new = rate_usage(usage, period, proposed_books, accounts, events=month_events)
    joined = (
        _costs(now, "current")
        .join(_costs(new, "proposed"), on=["account_id", "currency"], how="full", coalesce=True)
        .with_columns(pl.col("current", "proposed").fill_null(Decimal(0)).cast(_MONEY))
        .join(_unrated(now, "unrated_current"), on="account_id", how="left")
        .join(_unrated(new, "unrated_proposed"), on="account_id", how="left")
        .with_columns(pl.col("unrated_current", "unrated_proposed").fill_null(0))
        .sort("currency", "account_id")
    )
    totals = joined.group_by("currency").agg(
        pl.lit(TOTAL).alias("account_id"),
        pl.col("current", "proposed").sum().cast(_MONEY),
        pl.col("unrated_current", "unrated_proposed").sum(),
    )
    out = pl.concat([joined, totals.select(joined.columns).sort("currency")])
    return out.with_columns(
        delta=(pl.col("proposed") - pl.col("current")).cast(_MONEY),
        delta_pct=_pct(pl.col("proposed") - pl.col("current"), pl.col("current")),
    ).select(
        "account_id",
        "currency",
        "current",
        "proposed",
        "delta",
        "delta_pct",
        "unrated_current",
        "unrated_proposed",
    )


def _costs(result: RatingResult, name: str) -> pl.DataFrame:
    """Invoice total before credit per account: Σ rounded lines except credit."""
    lines = result.rated.filter(pl.col("line_kind").is_in(_COST_KINDS))
    parts = [
        lines.filter(pl.col("currency") == currency)
        .group_by("account_id", "currency")
        .agg(round_money(pl.col("amount"), minor_units(currency)).cast(_MONEY).sum().alias(name))
        for currency in lines.get_column("currency").unique().sort().to_list()
    ]
    empty = pl.DataFrame(schema={"account_id": pl.String, "currency": pl.String, name: _MONEY})
    return pl.concat([p.with_columns(pl.col(name).cast(_MONEY)) for p in parts]) if parts else empty


def _unrated(result: RatingResult, name: str) -> pl.DataFrame:
    return result.unrated.group_by("account_id").agg(pl.len().cast(pl.Int64).alias(name))


def _pct(delta: pl.Expr, base: pl.Expr) -> pl.Expr:
    """delta / base × 100 at 2 places (half-up); null when the base is zero."""
    ratio = delta.cast(EXACT) * pl.lit(Decimal(100), dtype=EXACT) / base.cast(EXACT)
    return (
        pl.when(base != 0)
        .then(ratio.round(2, mode="half_away_from_zero").cast(pl.Decimal(18, 2)))
        .otherwise(None)
    )
