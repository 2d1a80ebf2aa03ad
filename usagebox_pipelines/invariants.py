"""The invariants of CONTRACT.md §5 as pure checks over (lazy) frames.

Each check returns an `InvariantResult` naming the invariant and up to a few offending rows,
so `usagebox verify` and the Dagster asset checks report the same thing in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import polars as pl

from usagebox_pipelines.decimals import decimal_text

SAMPLE = 5


@dataclass
class InvariantResult:
    name: str
    passed: bool
    detail: str = ""
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "invariant": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "examples": self.examples,
        }


def _examples(frame: pl.DataFrame) -> list[dict]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.head(SAMPLE).to_dicts()]


def _plain(value: object) -> object:
    """JSON-friendly example values: decimals as plain text ('0', not '0E-12')."""
    if value is None or isinstance(value, int | bool):
        return value
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


COUNTED = ["raw", "raw_duplicates", "raw_conflicts", "legacy", "quarantined", "conflicted"]


def ingest_counts_add_up(ingest_log: pl.DataFrame, actual: pl.DataFrame) -> InvariantResult:
    """1. Per batch: rows = accepted + duplicates + conflicts + quarantined, from the tables.

    `actual`: per batch_id the rows really stored: `raw_events` arrivals by disposition (`raw`
    accepted, `raw_duplicates`, `raw_conflicts`), `quarantined`, `conflicted` (event_conflicts)
    and `legacy` (raw rows from before `disposition` existed, counted as accepted). Every input
    row is one stored row, so the tables alone must give `rows` = raw arrivals + quarantine
    rows, and each count in `ingest_log` must match its table. Legacy batches stored only
    accepted rows: for them the duplicate rows cannot be checked, only the per-table counts.
    """
    for name in COUNTED:
        if name not in actual.columns:
            actual = actual.with_columns(pl.lit(0, dtype=pl.Int64).alias(name))
    joined = ingest_log.join(actual, on="batch_id", how="left").with_columns(
        pl.col(COUNTED).fill_null(0)
    )
    modern = pl.col("legacy") == 0
    stored_rows = (
        pl.col("raw") + pl.col("raw_duplicates") + pl.col("raw_conflicts") + pl.col("quarantined")
    )
    bad = joined.filter(
        (
            pl.col("rows")
            != pl.col("accepted") + pl.col("duplicates") + pl.col("conflicts") + pl.col("rejected")
        )
        | (pl.col("raw") != pl.col("accepted"))
        | (pl.col("quarantined") != pl.col("rejected"))
        | (pl.col("conflicted") != pl.col("conflicts"))
        | (modern & (pl.col("raw_duplicates") != pl.col("duplicates")))
        | (modern & (pl.col("raw_conflicts") != pl.col("conflicts")))
        | (modern & (stored_rows != pl.col("rows")))
    )
    return InvariantResult(
        "1_ingest_rows_reconcile",
        bad.height == 0,
        f"{ingest_log.height} batches checked; {bad.height} do not add up",
        _examples(
            bad.select(
                "source_file",
                "rows",
                "accepted",
                "duplicates",
                "conflicts",
                "rejected",
                "raw",
                "raw_duplicates",
                "raw_conflicts",
                "quarantined",
                "conflicted",
            )
        ),
    )


def events_unique(events: pl.LazyFrame) -> InvariantResult:
    """2. `events` has no duplicate (account_id, event_id)."""
    dups = (
        events.group_by("account_id", "event_id")
        .agg(n=pl.len())
        .filter(pl.col("n") > 1)
        .collect(engine="streaming")
    )
    return InvariantResult(
        "2_events_unique", dups.height == 0, f"{dups.height} duplicated keys", _examples(dups)
    )


def hourly_matches_events(
    events: pl.LazyFrame, hourly: pl.LazyFrame, start: datetime | None, end: datetime | None
) -> InvariantResult:
    """3a. Per account × meter × hour, the sum of counted events equals `usage_hourly`."""
    keys = ["account_id", "meter_id", "hour"]
    ev = _window(events.filter(pl.col("status") == "ok"), "hour", start, end)
    ev = ev.group_by(keys).agg(events_sum=pl.col("quantity").sum())
    hr = _window(hourly, "hour", start, end).group_by(keys).agg(hourly_sum=pl.col("sum").sum())
    diff = _mismatch(ev, hr, keys, "events_sum", "hourly_sum")
    return InvariantResult(
        "3_hourly_equals_events",
        diff.height == 0,
        f"{diff.height} account × meter × hour groups differ"
        + ("; rebuild those hours with `usagebox run`" if diff.height else ""),
        _examples(diff),
    )


def monthly_matches_hourly(
    hourly: pl.LazyFrame, monthly: pl.LazyFrame, months: list[str]
) -> InvariantResult:
    """3b. Per account × meter × month, `usage_monthly` equals the sum of its hours."""
    keys = ["account_id", "meter_id", "month"]
    hr = (
        hourly.with_columns(month=pl.col("hour").dt.strftime("%Y-%m"))
        .filter(pl.col("month").is_in(months))
        .group_by(keys)
        .agg(hourly_sum=pl.col("sum").sum())
    )
    mo = (
        monthly.filter(pl.col("month").is_in(months))
        .group_by(keys)
        .agg(monthly_sum=pl.col("sum").sum())
    )
    diff = _mismatch(hr, mo, keys, "hourly_sum", "monthly_sum")
    return InvariantResult(
        "3_monthly_equals_hourly",
        diff.height == 0,
        f"{len(months)} months checked; {diff.height} groups differ",
        _examples(diff),
    )


def events_inside_partitions(events: pl.LazyFrame, first_hour: datetime) -> InvariantResult:
    """Every counted event falls in some hourly partition (none before the first one)."""
    outside = (
        events.filter(pl.col("hour") < first_hour)
        .select("account_id", "event_id", "timestamp")
        .collect()
    )
    return InvariantResult(
        "events_inside_partitions",
        outside.height == 0,
        f"{outside.height} events before the first hourly partition {first_hour.isoformat()}",
        _examples(outside),
    )


def _window(frame: pl.LazyFrame, col: str, start, end) -> pl.LazyFrame:
    if start is not None:
        frame = frame.filter(pl.col(col) >= start)
    if end is not None:
        frame = frame.filter(pl.col(col) < end)
    return frame


def _mismatch(left: pl.LazyFrame, right: pl.LazyFrame, keys, a: str, b: str) -> pl.DataFrame:
    joined = left.join(right, on=keys, how="full", coalesce=True, nulls_equal=True)
    zero = pl.lit(0).cast(pl.Decimal(38, 12))
    return (
        joined.with_columns(pl.col(a).fill_null(zero), pl.col(b).fill_null(zero))
        .filter(pl.col(a) != pl.col(b))
        .sort(keys)
        .collect(engine="streaming")
    )
