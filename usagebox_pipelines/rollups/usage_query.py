"""`usagebox usage`: an account's usage over a half-open window, from rollups or raw events.

`rollup` answers whole hours from `usage_hourly` (partial edge hours from `events`), `raw` only
from `events`, and `auto` uses the rollup for hours that are built and not stale (no event
arrived after the build) and `events` for the rest, such as the still-open hour. For closed
hours the three agree exactly (property-tested).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines.decimals import decimal_text
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.schemas import QTY

SOURCES = ("rollup", "raw", "auto")
ROLLUP_COLUMNS = ["meter_id", "model_id", "product_id", "unit", "billable", "dimensions"]
RAW_ONLY_COLUMNS = ["project_id", "correlation_id", "event_id"]
TIME_COLUMNS = {"hour": "1h", "day": "1d", "month": "1mo"}


def parse_time(value: str, option: str) -> datetime:
    """RFC 3339 with an offset or Z (a bare date means midnight UTC); returned in UTC."""
    text = value.strip().replace("z", "Z")
    if len(text) == 10:
        text += "T00:00:00Z"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageboxError(
            f"{option} {value!r}: not a UTC-parsable time; use RFC 3339 such as "
            "2026-10-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise UsageboxError(f"{option} {value!r}: add an offset or Z (times are UTC)")
    return parsed.astimezone(UTC)


def parse_group_by(value: str | None, source: str) -> list[str]:
    """Validate group-by columns: rollup columns, hour/day/month, `dimensions.<key>`.

    `meter_id` is always one of them (added last when not named): a meter has one unit, so a
    group's `sum` never adds tokens to GPU seconds or tool calls."""
    cols = [c.strip() for c in (value or "meter_id").split(",") if c.strip()]
    if "meter_id" not in cols:
        cols.append("meter_id")
    allowed = ROLLUP_COLUMNS + list(TIME_COLUMNS) + (RAW_ONLY_COLUMNS if source == "raw" else [])
    for col in cols:
        if col.startswith("dimensions.") and len(col) > len("dimensions."):
            continue
        if col not in allowed:
            hint = " (only with --source raw)" if col in RAW_ONLY_COLUMNS else ""
            raise UsageboxError(
                f"--group-by {col!r}: unknown column{hint}; choose from "
                f"{', '.join(allowed)} or dimensions.<key>"
            )
    return cols


def usage_query(
    events: pl.LazyFrame,
    hourly: pl.LazyFrame,
    builds: pl.DataFrame,
    account: str,
    start: datetime,
    end: datetime,
    group_by: list[str],
    source: str,
    now: datetime | None = None,
) -> dict:
    """The CONTRACT §1 answer: {"source", "groups": [{<cols>, "sum", "count"}]}."""
    if start >= end:
        raise UsageboxError(f"--from {start.isoformat()} must be before --to {end.isoformat()}")
    if source not in SOURCES:
        raise UsageboxError(f"--source {source!r}: choose rollup, raw or auto")
    now = now or datetime.now(UTC)
    ev = _counted_events(events, account)
    if source == "raw":
        extra = [pl.col(c) for c in group_by if c in RAW_ONLY_COLUMNS]
        rows = _from_events(ev, start, end).select(*_common(), *extra).collect()
        return {"source": source, "groups": _groups(rows, group_by)}
    rollup_hours = _rollup_hours(ev, builds, start, end, now if source == "auto" else None)
    parts = [
        _from_rollup(hourly, account, rollup_hours),
        _from_events(ev, start, end).filter(~pl.col("hour").is_in(rollup_hours.implode())),
    ]
    rows = pl.concat([p.select(_common()) for p in parts]).collect()
    return {"source": source, "groups": _groups(rows, group_by)}


def _counted_events(events: pl.LazyFrame, account: str) -> pl.LazyFrame:
    return events.filter((pl.col("account_id") == account) & (pl.col("status") == "ok"))


def _from_events(ev: pl.LazyFrame, start: datetime, end: datetime) -> pl.LazyFrame:
    """Events by effective time: own timestamp, or the corrected event's hour."""
    at = pl.when(pl.col("correction_of").is_null()).then(pl.col("timestamp")).otherwise("hour")
    return ev.filter((at >= start) & (at < end)).with_columns(
        sum=pl.col("quantity"), count=pl.lit(1, dtype=pl.Int64)
    )


def _from_rollup(hourly: pl.LazyFrame, account: str, hours: pl.Series) -> pl.LazyFrame:
    return hourly.filter((pl.col("account_id") == account) & pl.col("hour").is_in(hours.implode()))


def _rollup_hours(
    ev: pl.LazyFrame, builds: pl.DataFrame, start: datetime, end: datetime, now: datetime | None
) -> pl.Series:
    """Whole hours inside [start, end) answerable from the rollup (built and, for auto, fresh)."""
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    whole = builds.filter(
        (pl.col("hour") >= first) & (pl.col("hour") + pl.duration(hours=1) <= end)
    )
    if now is not None:
        stale = (
            ev.filter(pl.col("hour").is_in(whole["hour"].implode()))
            .join(whole.lazy(), on="hour")
            .filter(pl.col("ingested_at") > pl.col("built_at"))
            .select("hour")
            .unique()
            .collect()["hour"]
        )
        whole = whole.filter(
            ~pl.col("hour").is_in(stale.implode()) & (pl.col("hour") + pl.duration(hours=1) <= now)
        )
    return whole["hour"]


def _common() -> list[pl.Expr]:
    return [
        *[pl.col(c) for c in ROLLUP_COLUMNS],
        pl.col("hour"),
        pl.col("sum").cast(QTY),
        pl.col("count").cast(pl.Int64),
    ]


def _groups(rows: pl.DataFrame, group_by: list[str]) -> list[dict]:
    exprs = []
    for col in group_by:
        if col in TIME_COLUMNS:
            fmt = {"hour": "%Y-%m-%dT%H:00:00Z", "day": "%Y-%m-%d", "month": "%Y-%m"}[col]
            exprs.append(pl.col("hour").dt.truncate(TIME_COLUMNS[col]).dt.strftime(fmt).alias(col))
        elif col.startswith("dimensions."):
            key = col.split(".", 1)[1]
            exprs.append(pl.col("dimensions").str.json_path_match(f"$.{key}").alias(col))
        else:
            exprs.append(pl.col(col))
    if rows.height == 0:
        return []
    agg = (
        rows.group_by(exprs)
        .agg(pl.col("sum").sum(), pl.col("count").sum())
        .sort(group_by, nulls_last=True)
    )
    return [
        {**{c: row[c] for c in group_by}, "sum": decimal_str(row["sum"]), "count": row["count"]}
        for row in agg.to_dicts()
    ]


def decimal_str(value: Decimal | None) -> str:
    """`decimals.decimal_text`, with None (an empty sum) as `0`."""
    return "0" if value is None else decimal_text(value)
