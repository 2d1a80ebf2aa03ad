"""Cost attribution: each vendor's billed cost split over the customers who metered that usage.

Allocation is per vendor × UTC day × model × meter, in proportion to each account's metered
quantity (split further by feature / agent_id where events carry them), by largest remainder at
the storage precision (10^-12 currency units): allocations sum exactly to the bill, and nobody is
shifted more than 10^-12 from their exact share. (At cents, the rounding of ~30 meters × 31 days
per account would move whole dollars between small accounts.) Integer arithmetic on the Decimal
physical values keeps it exact and vectorised. A vendor line without a model (an OpenAI day
total) is split the same way over the vendor's day, weighted by metered cost at list rates.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.reconciliation.reconcile import period_days
from usagebox_pipelines.reconciliation.schemas import (
    COST_ALLOCATIONS,
    COST_ATTRIBUTION,
    UNATTRIBUTED,
    VENDOR_ADJUSTMENTS,
    VENDOR_COSTS,
)
from usagebox_pipelines.schemas import MONEY, QTY, RATED_USAGE, conform

_UNIT = 10**12  # Decimal(38, 12) physical units per currency unit
_WEIGHT_DIGITS = 6  # weights are taken in micro-units: exact for token counts
_I128 = pl.Int128()
DRIVER_KEYS = ["vendor", "date", "model_id", "driver_meter"]
ACCOUNT_GRAIN = ["account_id", "model_id", "feature", "agent_id"]


def allocate_costs(
    costs: pl.DataFrame,
    drivers: pl.DataFrame,
    on: list[str],
    *,
    amount: str = "amount",
    weight: str = "weight",
    weight_digits: int = _WEIGHT_DIGITS,
) -> pl.DataFrame:
    """Split each cost row over the driver rows sharing its `on` keys, exactly.

    Returns one row per (cost row, driver row with positive weight) with `allocated_cost`, plus
    one row per cost row no driver matches (driver columns null, the whole amount). For every
    cost row the allocations sum to its `amount` exactly (largest remainder at 10^-12; ties go to
    the driver rows in their sort order, so results are deterministic). Weights are taken at
    `weight_digits` decimals: 6 (micro-units) is exact for token counts, 12 for money weights.
    """
    cells = costs.with_row_index("_cell").with_columns(_U=pl.col(amount).cast(MONEY).to_physical())
    drv = drivers.filter(pl.col(weight) > 0).with_columns(
        _w=pl.col(weight).cast(QTY).to_physical() // pl.lit(10 ** (12 - weight_digits), _I128)
    )
    driver_cols = [c for c in drv.columns if c not in on]
    joined = cells.join(drv, on=on, how="inner", nulls_equal=True)
    joined = _fit_int128(joined).filter(pl.col("_W") > 0)
    shares = _largest_remainder(joined, [c for c in driver_cols if c not in ("_w",)])
    unmatched = cells.join(shares.select("_cell").unique(), on="_cell", how="anti").with_columns(
        allocated_cost=pl.col(amount).cast(MONEY)
    )
    out = pl.concat([shares, unmatched], how="diagonal_relaxed")
    drop = [c for c in ("_U", "_w", "_W", "_P") if c in out.columns]
    return out.sort("_cell", *driver_cols, nulls_last=True).drop(*drop, "_cell")


def _fit_int128(joined: pl.DataFrame) -> pl.DataFrame:
    """Coarsen a cell's weights (never amounts) if its total weight W reaches 10^18.

    The split below multiplies only numbers < W², so W < 10^18 keeps every product inside
    Int128 (Polars wraps silently on overflow). 10^18 micro-units = 10^12 tokens per vendor ×
    day × model × meter, so in practice this never triggers.
    """
    joined = joined.with_columns(_W=pl.col("_w").sum().over("_cell"))
    digits = pl.col("_W").cast(pl.String).str.len_chars().cast(pl.Int32)
    shifts = joined.select(s=(digits - 18).clip(lower_bound=0))["s"].unique().to_list()
    if not any(shifts):
        return joined
    divisor = pl.lit(1, _I128)
    shift = (digits - 18).clip(lower_bound=0)
    for k in sorted(x for x in shifts if x):
        divisor = pl.when(shift == k).then(pl.lit(10**k, _I128)).otherwise(divisor)
    joined = joined.with_columns(_w=pl.col("_w") // divisor)
    return joined.with_columns(_W=pl.col("_w").sum().over("_cell"))


def _largest_remainder(joined: pl.DataFrame, tie_cols: list[str]) -> pl.DataFrame:
    """floor(|U|·w/W) per driver, then +1 unit to the largest remainders until the cell sums.

    |U|·w is computed as q·w + r·w with |U| = q·W + r, so no product exceeds max(|U|, W²).
    """
    a = pl.col("_U").abs()
    w, big_w = pl.col("_w"), pl.col("_W")
    with_floor = joined.with_columns(_q=a // big_w, _r=a % big_w).with_columns(
        _floor=pl.col("_q") * w + (pl.col("_r") * w) // big_w,
        _rem=(pl.col("_r") * w) % big_w,
    )
    ranked = with_floor.sort(
        ["_cell", "_rem", *tie_cols], descending=[False, True] + [False] * len(tie_cols)
    ).with_columns(
        _left=(a - pl.col("_floor").sum().over("_cell")),
        _rank=pl.int_range(pl.len()).over("_cell").cast(_I128),
    )
    raw = (pl.col("_floor") + (pl.col("_rank") < pl.col("_left")).cast(_I128)) * pl.col(
        "_U"
    ).sign().cast(_I128)
    return ranked.with_columns(allocated_cost=_from_units(raw)).drop(
        "_q", "_r", "_floor", "_rem", "_left", "_rank"
    )


def _from_units(raw: pl.Expr) -> pl.Expr:
    """Int128 count of 10^-12 units -> Decimal(38, 12), exactly (split to avoid cast overflow)."""
    unit = pl.lit(_UNIT, _I128)
    whole = (raw // unit).cast(MONEY)
    frac = (raw % unit).cast(MONEY) / pl.lit(Decimal(_UNIT), dtype=MONEY)
    return whole + frac


def cost_allocations(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    vendor_costs: pl.DataFrame,
    mapping: VendorMapping,
    period: str,
    *,
    days: tuple[date, date] | None = None,
) -> pl.DataFrame:
    """COST_ALLOCATIONS of a month: billed usage cost per vendor × day × model × meter, split
    over accounts × feature × agent_id by their metered quantity of the meter's driver
    (`allocate_by` in vendors.yaml: cache writes follow input_tokens). Null account = no
    customer metered that usage. A costs line with no model (an OpenAI export without
    `group_by`: the day's total, or one meter's) is split by metered cost at list rates over
    the vendor's whole day instead (`_day_level_allocations`). `days` = [first, end) narrows it
    to part of the month (allocation never crosses a day)."""
    start, end = days or period_days(period)
    billed = conform(vendor_costs, VENDOR_COSTS).filter(
        (pl.col("charge_class") == "usage")
        & (pl.col("source_kind") != "usage")
        & pl.col("amount").is_not_null()
        & (pl.col("date") >= start)
        & (pl.col("date") < end)
    )
    # A costs line with no model is a day total (reconcile._is_day_total): split by list cost.
    day_level = pl.col("model_id").is_null() & (pl.col("source_kind") == "costs")
    costs = (
        billed.filter(~day_level)
        .group_by("vendor", "date", "model_id", "meter_id", "currency")
        .agg(amount=pl.col("amount").sum())
        .join(mapping.driver_frame(), on="meter_id", how="left")
        .with_columns(driver_meter=pl.coalesce("driver_meter", "meter_id"))
        .sort("vendor", "date", "model_id", "meter_id")
    )
    drivers = _drivers(usage_hourly, mapping, start, end)
    drivers = pl.concat([drivers, _unmetered(vendor_costs, drivers, start, end)])
    out = allocate_costs(costs, drivers, DRIVER_KEYS, amount="amount", weight="weight")
    day_lines = billed.filter(day_level)
    if day_lines.height:
        by_cost = _day_level_allocations(day_lines, drivers, mapping)
        out = pl.concat([out, by_cost], how="diagonal_relaxed")
    return conform(out, COST_ALLOCATIONS)


def _day_level_allocations(
    billed: pl.DataFrame, drivers: pl.DataFrame, mapping: VendorMapping
) -> pl.DataFrame:
    """Vendor lines with no model (an OpenAI day total, or a day's total of one meter) split
    over accounts × model × feature × agent in proportion to their metered cost at the
    vendor's list rates that day (all meters of the day, or the line's meter), exactly (largest
    remainder at 10^-12). `weight` is that list cost; cost nobody metered is unattributed."""
    metered = drivers.filter(pl.col("account_id").is_not_null())
    priced = mapping.with_rates(
        metered.rename({"driver_meter": "meter_id"}).with_columns(pl.col("weight").cast(QTY))
    ).with_columns(weight=pl.col("weight") * pl.col("unit_price") / pl.col("rate_per"))
    grain = ["account_id", "model_id", "feature", "agent_id"]
    by_day = priced.group_by("vendor", "date", *grain).agg(weight=pl.col("weight").sum())
    by_meter = priced.group_by("vendor", "date", "meter_id", *grain).agg(
        weight=pl.col("weight").sum()
    )
    cells = billed.group_by("vendor", "date", "meter_id", "currency").agg(
        amount=pl.col("amount").sum()
    )
    whole = cells.filter(pl.col("meter_id").is_null())
    per_meter = cells.filter(pl.col("meter_id").is_not_null())
    parts = [
        allocate_costs(whole.drop("meter_id"), by_day, ["vendor", "date"], weight_digits=12),
        allocate_costs(per_meter, by_meter, ["vendor", "date", "meter_id"], weight_digits=12),
    ]
    return pl.concat(parts, how="diagonal_relaxed")


def _unmetered(vendor_costs: pl.DataFrame, drivers: pl.DataFrame, start, end) -> pl.DataFrame:
    """A null-account driver for usage the vendor reported beyond what customers metered.

    Its share of the bill lands in the `unattributed` row instead of being spread over
    customers; cache-write cells driven by the same meter share that proportion.
    """
    reported = (
        conform(vendor_costs, VENDOR_COSTS)
        .filter(
            (pl.col("charge_class") == "usage")
            & (pl.col("source_kind") != "costs")
            & pl.col("quantity").is_not_null()
            & (pl.col("date") >= start)
            & (pl.col("date") < end)
        )
        .group_by("vendor", "date", "model_id", "meter_id")
        .agg(vq=pl.col("quantity").sum())
        .rename({"meter_id": "driver_meter"})
    )
    metered = drivers.group_by(DRIVER_KEYS).agg(mq=pl.col("weight").sum())
    return (
        reported.join(metered, on=DRIVER_KEYS, how="left", nulls_equal=True)
        .filter(pl.col("mq").is_not_null() & (pl.col("vq") > pl.col("mq")))
        .select(
            *DRIVER_KEYS,
            account_id=pl.lit(None, dtype=pl.String),
            feature=pl.lit(None, dtype=pl.String),
            agent_id=pl.lit(None, dtype=pl.String),
            weight=(pl.col("vq") - pl.col("mq")).cast(QTY),
        )
        .select(drivers.columns)
    )


def _drivers(usage_hourly, mapping: VendorMapping, start, end) -> pl.DataFrame:
    """Metered quantity per vendor × day × model × meter × account × feature × agent."""
    lf = usage_hourly.lazy()
    cols = set(lf.collect_schema().names())
    dims = pl.col("dimensions") if "dimensions" in cols else pl.lit(None, dtype=pl.String)
    keys = ["vendor", "date", "model_id", "meter_id", "account_id"]
    since, until = (datetime.combine(d, time(), UTC) for d in (start, end))
    summed = (
        lf.filter((pl.col("hour") >= since) & (pl.col("hour") < until))  # prunes by file stats
        .with_columns(date=pl.col("hour").dt.date())
        .filter(
            (pl.col("date") >= start)
            & (pl.col("date") < end)
            & pl.col("meter_id").is_in(mapping.metered_meters)
            & pl.col("model_id").is_not_null()
        )
        .with_columns(vendor=mapping.route_expr(cols), _dims=dims)
        .filter(pl.col("vendor").is_not_null())
        .group_by(*keys, "_dims")
        .agg(weight=pl.col("sum").sum())
        .collect(engine="streaming")  # a month of hourly rows is aggregated, never held
    )
    return (
        _with_feature_agent(summed, "_dims")
        .group_by(*keys, "feature", "agent_id")
        .agg(weight=pl.col("weight").sum().cast(QTY))
        .rename({"meter_id": "driver_meter"})
        .sort(DRIVER_KEYS + ["account_id", "feature", "agent_id"], nulls_last=True)
    )


def _with_feature_agent(rows: pl.DataFrame, dims: str) -> pl.DataFrame:
    """`feature` and `agent_id` from the dimensions JSON in column `dims` (which is dropped),
    parsed once per distinct dimensions text (a month has a few dozen)."""
    distinct = rows.select(dims).unique()
    parsed = distinct.with_columns(
        feature=pl.col(dims).str.json_path_match("$.feature"),
        agent_id=pl.col(dims).str.json_path_match("$.agent_id"),
    )
    return rows.join(parsed, on=dims, how="left", nulls_equal=True).drop(dims)


def cost_attribution(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    vendor_costs: pl.DataFrame,
    rated_usage: pl.DataFrame | pl.LazyFrame,
    mapping: VendorMapping,
    period: str,
) -> pl.DataFrame:
    """COST_ATTRIBUTION of a month: revenue, allocated cost and margin per account × model
    (× feature × agent_id where both revenue and usage carry them), plus an `unattributed` row
    per model for vendor usage no customer metered and `vendor_adjustments` rows for credits,
    tax and corrections. Total allocated_cost = everything the vendors billed in the month."""
    revenue = _revenue(rated_usage, period)
    cost, currencies = _allocated_by_day(usage_hourly, vendor_costs, mapping, period, revenue)
    if len(currencies) > 1:
        raise UsageboxError(f"vendor costs of {period} mix currencies {currencies}: no FX")
    cost_ccy = currencies[0] if currencies else None
    rows = revenue.join(cost, on=ACCOUNT_GRAIN, how="full", coalesce=True, nulls_equal=True)
    rows = rows.with_columns(
        row_kind=pl.when(pl.col("account_id") == UNATTRIBUTED)
        .then(pl.lit("unattributed"))
        .otherwise(pl.lit("account")),
        charge_class=pl.lit("usage"),
    )
    rows = pl.concat([rows, _adjustments(vendor_costs, period)], how="diagonal_relaxed")
    return _margins(rows, period, cost_ccy)


def _allocated_by_day(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    vendor_costs: pl.DataFrame,
    mapping: VendorMapping,
    period: str,
    revenue: pl.DataFrame,
) -> tuple[pl.DataFrame, list[str]]:
    """Allocated cost per account grain, and the cost currencies, allocated one UTC day at a
    time: the drivers of a day × account × model × meter are a month-sized frame otherwise,
    and sums of exact daily allocations are the monthly ones."""
    first, end = period_days(period)
    parts, currencies = [], set()
    for n in range((end - first).days):
        day = first + timedelta(days=n)
        alloc = cost_allocations(
            usage_hourly, vendor_costs, mapping, period, days=(day, day + timedelta(days=1))
        )
        currencies |= set(alloc["currency"].drop_nulls().to_list())
        parts.append(_account_costs(alloc, revenue))
    cost = (
        pl.concat(parts).group_by(ACCOUNT_GRAIN).agg(allocated_cost=pl.col("allocated_cost").sum())
    )
    return cost, sorted(currencies)


def _revenue(rated_usage, period: str) -> pl.DataFrame:
    """Rated revenue per account × model × feature × agent; contract lines at account level."""
    rated = conform(rated_usage.lazy().filter(pl.col("period") == period).collect(), RATED_USAGE)
    usage = pl.col("line_kind").is_null() | (pl.col("line_kind") == "usage")
    return (
        _with_feature_agent(rated.with_columns(_dims=pl.col("dimensions")), "_dims")
        .with_columns(
            model_id=pl.when(usage).then("model_id"),
            feature=pl.when(usage).then("feature"),
            agent_id=pl.when(usage).then("agent_id"),
        )
        .group_by(ACCOUNT_GRAIN)
        .agg(
            revenue=pl.col("amount").sum().cast(MONEY),
            revenue_currency=pl.col("currency").drop_nulls().unique().sort().str.join(","),
        )
    )


def _account_costs(alloc: pl.DataFrame, revenue: pl.DataFrame) -> pl.DataFrame:
    """Allocated cost per account grain; feature/agent collapse where revenue lacks them."""
    detailed = (
        revenue.filter(pl.col("feature").is_not_null() | pl.col("agent_id").is_not_null())
        .select("account_id", "model_id")
        .unique()
        .with_columns(_detail=pl.lit(True))
    )
    keep = pl.col("_detail").fill_null(False)
    return (
        alloc.with_columns(account_id=pl.coalesce("account_id", pl.lit(UNATTRIBUTED)))
        .join(detailed, on=["account_id", "model_id"], how="left", nulls_equal=True)
        .with_columns(
            feature=pl.when(keep).then("feature"), agent_id=pl.when(keep).then("agent_id")
        )
        .group_by(ACCOUNT_GRAIN)
        .agg(allocated_cost=pl.col("allocated_cost").sum())
    )


def _adjustments(vendor_costs: pl.DataFrame, period: str) -> pl.DataFrame:
    """Credits, tax, corrections... billed in the period: not allocated to customers."""
    return (
        conform(vendor_costs, VENDOR_COSTS)
        .filter((pl.col("charge_class") != "usage") & (pl.col("billing_period") == period))
        .group_by("model_id", "charge_class")
        .agg(allocated_cost=pl.col("amount").sum())
        .with_columns(
            account_id=pl.lit(VENDOR_ADJUSTMENTS),
            row_kind=pl.lit("vendor_adjustment"),
        )
    )


def _margins(rows: pl.DataFrame, period: str, cost_ccy: str | None) -> pl.DataFrame:
    """Margin = revenue − allocated cost, % of revenue; null when currencies differ."""
    is_account = pl.col("row_kind") == "account"
    rows = rows.with_columns(
        month=pl.lit(period),
        revenue=pl.when(is_account).then(pl.col("revenue").fill_null(0)).otherwise("revenue"),
        allocated_cost=pl.col("allocated_cost").fill_null(0).cast(MONEY),
        cost_currency=pl.lit(cost_ccy, dtype=pl.String),
    )
    clash = (
        pl.col("revenue_currency").is_not_null()
        & pl.col("cost_currency").is_not_null()
        & (pl.col("revenue_currency") != pl.col("cost_currency"))
    )
    margin = pl.col("revenue").fill_null(0) - pl.col("allocated_cost")
    rows = rows.with_columns(
        margin=pl.when(~clash).then(margin),
        note=pl.when(clash).then(
            pl.format("revenue in {}, cost in {}: no FX", "revenue_currency", "cost_currency")
        ),
    ).with_columns(
        margin_pct=pl.when(pl.col("revenue").fill_null(0) != 0).then(
            pl.col("margin") * pl.lit(Decimal(100), dtype=QTY) / pl.col("revenue")
        )
    )
    order = ["row_kind", "account_id", "model_id", "charge_class", "feature", "agent_id"]
    return conform(rows, COST_ATTRIBUTION).sort(order, nulls_last=True)
