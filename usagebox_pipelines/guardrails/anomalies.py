"""`usage_anomalies`: token surges and spend spikes against each series' own trailing baseline.

A series is one account × model × meter. Each hour is compared with the same hour of day on
each of the previous `baseline_days` days (7 by default: one sample per weekday, so a normal
weekly rhythm sits inside the baseline; the same hour-of-week would give one sample a week, too
few for robust statistics in a month). Baseline = lower median and MAD of those samples
(exact decimals, picked from sorted values, never averaged). Score = robust z:
(value − median) / max(1.4826 · MAD, floor_pct % of the median, one unit).

An hour is flagged only when all hold, so small or young accounts do not alert on noise:
a full baseline (`min_samples` days of history), a minimum volume (`min_tokens` per hour for
token meters, `min_spend` per hour of spend), value ≥ `min_ratio` × median, score ≥ `z`.
Missing history (before the first hour of data) is missing, not zero; an hour of silence after
it is zero. All vectorised and sparse: only hours with volume are candidates, and each lag is
one equi-join of the candidates against the stored hours (a missing hour is 0, an hour before
the data is null). Memory is O(rows with usage), never series × hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.guardrails.schemas import USAGE_ANOMALIES
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Accounts

TOKEN_SURGE = "token_surge"
SPEND_SPIKE = "spend_spike"
_SERIES = ["account_id", "model_id", "meter_id", "kind"]
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class AnomalyConfig:
    """Detection knobs; the defaults keep the demo month quiet except for planted surges."""

    baseline_days: int = 7
    min_samples: int = 7
    z_threshold: float = 6.0
    min_ratio: float = 3.0
    min_tokens: Decimal = Decimal(500_000)
    min_spend: Decimal = Decimal(5)
    floor_pct: float = 10.0


def detect_anomalies(
    series: pl.DataFrame,
    period: str,
    now: datetime,
    accounts: Accounts,
    config: AnomalyConfig = AnomalyConfig(),
    data_from: datetime | None = None,
) -> pl.DataFrame:
    """Flagged hours of `period` up to `now` (USAGE_ANOMALIES), from per-hour `series`.

    `series`: account_id, hour, meter_id, model_id, quantity, velocity (spend.hourly_amounts
    over the month and the `baseline_days` before it). `data_from`: the first hour any data
    exists (default: the earliest hour in `series`).
    """
    start, end = month_bounds(period)
    now = min(max(now, start), end)
    if series.is_empty() or now <= start:
        return pl.DataFrame(schema=USAGE_ANOMALIES)
    lookback = timedelta(days=config.baseline_days)
    first = data_from or series.get_column("hour").min()
    grid_from = max(_hour_floor(first), start - lookback)
    long = _long(series.filter((pl.col("hour") >= grid_from) & (pl.col("hour") < now)), start)
    if long.is_empty():
        return pl.DataFrame(schema=USAGE_ANOMALIES)
    scored = _scored(
        _with_lags(_candidates(long, grid_from, now, start, config), long, grid_from, config),
        config,
        start,
    )
    return _finish(scored, period, now, accounts, config)


def _hour_floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _long(series: pl.DataFrame, start: datetime) -> pl.DataFrame:
    """One value column: token quantities (token meters) and spend velocity (every meter)."""
    keys = ["account_id", "model_id", "meter_id", "hour"]
    rows = series.lazy()
    tokens = rows.filter(pl.col("meter_id").str.ends_with("_tokens")).select(
        *keys, kind=pl.lit(TOKEN_SURGE), value=pl.col("quantity").cast(schemas.QTY)
    )
    spend = rows.select(*keys, kind=pl.lit(SPEND_SPIKE), value=pl.col("velocity").cast(schemas.QTY))
    long = pl.concat([tokens, spend]).group_by(*keys, "kind").agg(pl.col("value").sum())
    active = ((pl.col("hour") >= start) & (pl.col("value") > 0)).any().over(_SERIES)
    return long.filter(active).collect()


def _minimum(config: AnomalyConfig) -> pl.Expr:
    """The per-hour volume an hour needs to be scored (tokens or money, by kind)."""
    return (
        pl.when(pl.col("kind") == TOKEN_SURGE)
        .then(pl.lit(config.min_tokens, dtype=schemas.QTY))
        .otherwise(pl.lit(config.min_spend, dtype=schemas.QTY))
    )


def _candidates(
    long: pl.DataFrame, grid_from: datetime, now: datetime, start: datetime, config: AnomalyConfig
) -> pl.DataFrame:
    """The hours of the month that can be flagged: those with at least the minimum volume.

    A silent hour is 0; it can only qualify when a minimum is not positive, and only then are
    the month's silent hours of every series added (the dense grid of the month, not history).
    """
    month = long.filter(pl.col("hour") >= start)
    if config.min_tokens > 0 and config.min_spend > 0:
        return month.filter(pl.col("value") >= _minimum(config))
    hours = pl.datetime_range(
        max(start, grid_from), now, "1h", closed="left", time_zone="UTC", eager=True
    ).cast(schemas.TS)
    grid = long.select(_SERIES).unique().join(pl.DataFrame({"hour": hours}), how="cross")
    return (
        grid.join(month, on=[*_SERIES, "hour"], how="left", nulls_equal=True)
        .with_columns(pl.col("value").fill_null(0))
        .filter(pl.col("value") >= _minimum(config))
    )


def _lag_names(config: AnomalyConfig) -> list[str]:
    return [f"lag_{k}" for k in range(1, config.baseline_days + 1)]


def _with_lags(
    candidates: pl.DataFrame, long: pl.DataFrame, grid_from: datetime, config: AnomalyConfig
) -> pl.DataFrame:
    """The same hour on each previous day: its value, 0 when silent, null before `grid_from`."""
    out = candidates
    # only the candidates' series can match: look them up in those alone
    long = long.join(candidates.select(_SERIES).unique(), on=_SERIES, how="semi", nulls_equal=True)
    for k, name in enumerate(_lag_names(config), start=1):
        back = pl.col("hour") - pl.duration(hours=24 * k)
        stored = long.select(
            *_SERIES, pl.col("hour") + pl.duration(hours=24 * k), value_lag=pl.col("value")
        )
        out = (
            out.join(stored, on=[*_SERIES, "hour"], how="left", nulls_equal=True)
            .with_columns(
                pl.when(back >= grid_from).then(pl.col("value_lag").fill_null(0)).alias(name)
            )
            .drop("value_lag")
        )
    return out


def _low_median(cols: list[str] | list[pl.Expr]) -> tuple[pl.Expr, pl.Expr]:
    """(lower median, count) of the non-null values across `cols`, exact (picked, not averaged)."""
    values = pl.concat_list(cols).list.drop_nulls()
    n = values.list.len().cast(pl.Int64)
    middle = ((n - 1) // 2).clip(lower_bound=0)
    return values.list.sort().list.get(middle, null_on_oob=True), n


def _scored(frame: pl.DataFrame, config: AnomalyConfig, start: datetime) -> pl.DataFrame:
    """Median, MAD, score and the flag, computed only for hours of the month with volume."""
    names = _lag_names(config)
    frame = frame.filter(pl.col("hour") >= start).with_columns(min_volume=_minimum(config))
    frame = frame.filter(pl.col("value") >= pl.col("min_volume"))
    median, n = _low_median(names)
    frame = frame.with_columns(baseline_median=median, samples=n.cast(pl.Int32))
    deviations = [(pl.col(c) - pl.col("baseline_median")).abs() for c in names]
    mad, _ = _low_median(deviations)
    frame = frame.with_columns(baseline_mad=mad.cast(schemas.QTY))
    med = pl.col("baseline_median").cast(pl.Float64)
    unit = pl.when(pl.col("kind") == TOKEN_SURGE).then(1.0).otherwise(0.01)
    scale = pl.max_horizontal(
        pl.col("baseline_mad").cast(pl.Float64) * _MAD_TO_SIGMA,
        med * (config.floor_pct / 100.0),
        unit,
    )
    value = pl.col("value").cast(pl.Float64)
    frame = frame.with_columns(
        score=(value - med) / scale,
        ratio=pl.when(med > 0).then(value / med).otherwise(float("inf")),
    )
    flagged = (
        (pl.col("samples") >= config.min_samples)
        & (pl.col("score") >= config.z_threshold)
        & (pl.col("ratio") >= config.min_ratio)
    )
    return frame.filter(flagged)


def _finish(
    flagged: pl.DataFrame, period: str, now: datetime, accounts: Accounts, config: AnomalyConfig
) -> pl.DataFrame:
    """USAGE_ANOMALIES rows: the numbers behind every flag, with the baseline window."""
    names = _lag_names(config)
    quoted = [
        pl.when(pl.col(c).is_null()).then(pl.lit("null")).otherwise(pl.format('"{}"', pl.col(c)))
        for c in names
    ]
    ids = flagged.get_column("account_id").unique().to_list()
    currency = pl.DataFrame(
        {"account_id": ids, "currency": [accounts.get(a).currency for a in ids]},
        schema={"account_id": pl.String, "currency": pl.String},
    )
    out = flagged.join(currency, on="account_id", how="left").with_columns(
        period=pl.lit(period),
        unit=pl.when(pl.col("kind") == TOKEN_SURGE).then(pl.lit("tokens")).otherwise("currency"),
        baseline_values=pl.concat_str(
            pl.lit("["), pl.concat_list(quoted).list.join(","), pl.lit("]")
        ),
        baseline_from=pl.col("hour") - pl.duration(days=config.baseline_days),
        baseline_to=pl.col("hour") - pl.duration(days=1) + pl.duration(hours=1),
        z_threshold=pl.lit(config.z_threshold),
        min_ratio=pl.lit(config.min_ratio),
        detected_at=pl.lit(now, dtype=schemas.TS),
    )
    out = schemas.conform(out, USAGE_ANOMALIES)
    return out.sort("account_id", "model_id", "meter_id", "kind", "hour", nulls_last=True)
