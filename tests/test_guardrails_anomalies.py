"""Anomaly detection: a planted surge is found with the numbers behind it; normal rhythm is not.

Series are built by hand: every hour of a day carries that day's value, so the baseline of an
hour is the value of each of the 7 previous days.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from decimal import Decimal as D

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_guardrails_fixtures import PERIOD, START
from usagebox_pipelines import schemas
from usagebox_pipelines.guardrails import anomalies as an
from usagebox_pipelines.guardrails.anomalies import AnomalyConfig, detect_anomalies
from usagebox_pipelines.pricing import Accounts

HOUR = timedelta(hours=1)
BASE = [1000, 1100, 900, 1000, 1050, 950, 1000]  # by day index mod 7
SPEND_PER_TOKEN = D("0.00001")


def series(values: dict[datetime, int], account: str = "a") -> pl.DataFrame:
    """Per-hour output_tokens of model m1; spend velocity = tokens × 0.00001."""
    return pl.DataFrame(
        {
            "account_id": account,
            "hour": list(values),
            "meter_id": "output_tokens",
            "model_id": "m1",
            "quantity": [D(v) for v in values.values()],
            "gross": [D(v) * SPEND_PER_TOKEN for v in values.values()],
            "velocity": [D(v) * SPEND_PER_TOKEN for v in values.values()],
        },
        schema_overrides={
            "hour": schemas.TS,
            "quantity": schemas.QTY,
            "gross": schemas.MONEY,
            "velocity": schemas.MONEY,
        },
    )


def daily(days: int, value_of) -> dict[datetime, int]:
    return {START + h * HOUR: value_of(h // 24, h % 24) for h in range(days * 24)}


def detect(frame: pl.DataFrame, now: datetime, **config) -> pl.DataFrame:
    return detect_anomalies(frame, PERIOD, now, Accounts(), AnomalyConfig(**config))


def test_planted_token_surge_is_detected_with_its_numbers() -> None:
    """Day 10, 15:00: 2,000,000 tokens against days 3..9 at 15:00 =
    [900, 1100, 1000, 1000, 950, 1050, 1000] (lag 1..7): median 1000, MAD 50,
    scale max(1.4826·50, 10 % of 1000, 1) = 100, score (2,000,000 − 1000) / 100 = 19,990."""
    surge_at = START + timedelta(days=10, hours=15)
    values = daily(14, lambda d, h: BASE[d % 7])
    values[surge_at] = 2_000_000
    found = detect(series(values), START + timedelta(days=14))
    tokens = found.filter(pl.col("kind") == "token_surge")
    assert tokens.height == 1
    hit = tokens.row(0, named=True)
    assert hit["hour"] == surge_at and hit["value"] == D(2_000_000)
    assert hit["baseline_median"] == D(1000) and hit["baseline_mad"] == D(50)
    assert hit["samples"] == 7 and hit["score"] == 19_990.0 and hit["ratio"] == 2000.0
    lags = [900, 1100, 1000, 1000, 950, 1050, 1000]
    assert [D(v) for v in json.loads(hit["baseline_values"])] == lags
    assert hit["baseline_from"] == surge_at - timedelta(days=7)
    assert hit["baseline_to"] == surge_at - timedelta(days=1) + HOUR
    assert hit["min_volume"] == D(500_000) and hit["unit"] == "tokens"
    spend = found.filter(pl.col("kind") == "spend_spike").row(0, named=True)
    # 20.00 against a median of 0.01 (MAD 0.0005): scale is the one-cent floor
    assert spend["value"] == D(20) and spend["baseline_median"] == D("0.01")
    assert math.isclose(spend["score"], (20 - 0.01) / 0.01) and spend["unit"] == "USD"


def test_normal_weekly_pattern_is_not_flagged() -> None:
    """Four weeks of weekdays at ~800k tokens/h and weekends at ~300k, with a daily curve and
    ±5 % wobble: Mondays after a quiet weekend are inside their 7-day baseline."""

    def value(day: int, hour: int) -> int:
        weekday = (START + timedelta(days=day)).weekday()
        level = 300_000 if weekday >= 5 else 800_000
        curve = 1 + 0.4 * math.sin((hour - 6) / 24 * 2 * math.pi)
        wobble = 1 + 0.05 * math.sin(day * 7.3 + hour * 1.7)
        return int(level * curve * wobble)

    frame = series(daily(28, value))
    now = START + timedelta(days=28)
    assert detect(frame, now).is_empty()
    # not vacuous: with no score/ratio bar, every evaluated hour at or above its median flags
    assert detect(frame, now, z_threshold=0.0, min_ratio=0.0).height > 50


def test_small_accounts_do_not_alert_below_the_minimum_volume() -> None:
    surge_at = START + timedelta(days=10, hours=3)
    values = daily(12, lambda d, h: 10)
    values[surge_at] = 400_000  # 40,000 × its baseline, but under 500,000 tokens
    frame = series(values)
    now = START + timedelta(days=12)
    assert detect(frame, now, min_spend=D(100)).is_empty()
    assert detect(frame, now, min_tokens=D(100_000), min_spend=D(100)).height == 1


def test_no_alert_without_a_full_baseline() -> None:
    """Day 3 has only 3 days of history (missing, not zero): no verdict yet."""
    values = daily(5, lambda d, h: 1000)
    values[START + timedelta(days=3, hours=12)] = 5_000_000
    assert detect(series(values), START + timedelta(days=5)).is_empty()
    assert detect(series(values), START + timedelta(days=5), min_samples=3).height == 2


def test_a_silent_hour_after_the_first_data_counts_as_zero() -> None:
    """A series that only ever appears once still has zeros as its baseline."""
    values = {START + timedelta(days=d): 1 for d in range(9)}
    values[START + timedelta(days=9, hours=1)] = 600_000
    found = detect(series(values), START + timedelta(days=10), min_spend=D(100))
    assert found.height == 1 and found["baseline_median"].item() == 0


# --------------------------------------------------------------------------- sparse = dense


def _dense_reference(
    frame: pl.DataFrame, now: datetime, config: AnomalyConfig, data_from: datetime | None = None
) -> pl.DataFrame:
    """The former implementation: every series × every hour of the grid, lags by `shift`."""
    start, end = an.month_bounds(PERIOD)
    now = min(max(now, start), end)
    if frame.is_empty() or now <= start:
        return pl.DataFrame(schema=an.USAGE_ANOMALIES)
    first = data_from or frame.get_column("hour").min()
    grid_from = max(an._hour_floor(first), start - timedelta(days=config.baseline_days))
    long = an._long(frame.filter((pl.col("hour") >= grid_from) & (pl.col("hour") < now)), start)
    if long.is_empty():
        return pl.DataFrame(schema=an.USAGE_ANOMALIES)
    hours = pl.datetime_range(
        grid_from, now, "1h", closed="left", time_zone="UTC", eager=True
    ).cast(schemas.TS)
    grid = long.select(an._SERIES).unique().join(pl.DataFrame({"hour": hours}), how="cross")
    dense = (
        grid.join(long, on=[*an._SERIES, "hour"], how="left", nulls_equal=True)
        .with_columns(pl.col("value").fill_null(0))
        .sort([*an._SERIES, "hour"], nulls_last=True)
    )
    lags = [
        pl.col("value").shift(24 * k).over(an._SERIES).alias(name)
        for k, name in enumerate(an._lag_names(config), start=1)
    ]
    scored = an._scored(dense.with_columns(lags), config, start)
    return an._finish(scored, PERIOD, now, Accounts(), config)


@st.composite
def sparse_series(draw) -> tuple[pl.DataFrame, datetime, dict]:
    """A few series over the month and the week before it, with gaps, surges and negatives."""
    n = draw(st.integers(1, 120))
    rows = []
    for _ in range(n):
        rows.append(
            {
                "account_id": draw(st.sampled_from(["a", "b"])),
                "hour": START + HOUR * draw(st.integers(-9 * 24, 20 * 24)),
                "meter_id": draw(st.sampled_from(["output_tokens", "requests"])),
                "model_id": draw(st.sampled_from(["m1", None])),
                "quantity": D(draw(st.sampled_from([0, 1, 900, 1000, 600_000, 3_000_000, -5]))),
                "velocity": D(draw(st.sampled_from([0, "0.01", "1", "7.5", "60", "-1"]))),
            }
        )
    frame = pl.DataFrame(
        rows,
        schema={
            "account_id": pl.String,
            "hour": schemas.TS,
            "meter_id": pl.String,
            "model_id": pl.String,
            "quantity": schemas.QTY,
            "velocity": schemas.MONEY,
        },
    )
    now = (
        START
        + HOUR * draw(st.integers(-3, 22 * 24))
        + timedelta(minutes=draw(st.sampled_from([0, 30])))
    )
    config = draw(
        st.sampled_from(
            [
                {},
                {"min_samples": 2, "z_threshold": 1.0, "min_ratio": 1.5},
                {"min_tokens": D(0), "min_spend": D(0), "z_threshold": 0.0, "min_ratio": 0.0},
                {"baseline_days": 3, "min_samples": 1, "min_tokens": D(500), "min_spend": D(1)},
            ]
        )
    )
    return frame, now, config


@settings(max_examples=60, deadline=None)
@given(sparse_series(), st.booleans())
def test_sparse_lags_equal_the_dense_grid(case, with_data_from: bool) -> None:
    frame, now, config = case
    cfg = AnomalyConfig(**config)
    data_from = START - timedelta(days=2, minutes=20) if with_data_from else None
    expected = _dense_reference(frame, now, cfg, data_from)
    found = detect_anomalies(frame, PERIOD, now, Accounts(), cfg, data_from)
    assert found.equals(expected)
