"""Stage `events`: fold committed ingest batches into `events`, one day partition per commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from usagebox_pipelines.catalog import (
    EVENTS,
    EVENTS_BUILDS,
    RAW_EVENTS,
)
from usagebox_pipelines.events.build import INHERITED, build_events, resolve_corrections
from usagebox_pipelines.events.raw import accepted_only
from usagebox_pipelines.events.window import min_event_time
from usagebox_pipelines.stages.ingest import committed_batches
from usagebox_pipelines.storage import DeltaStore, writes_tables

# The first hourly partition = the earliest accepted event time (events/window.py): ingest
# quarantines anything earlier, so `events_inside_partitions` holds by construction.
FIRST_HOUR = min_event_time()


def committed_raw_events(store: DeltaStore) -> pl.LazyFrame:
    """Accepted `raw_events` rows of batches whose ingest finished (crashed batches are
    invisible; duplicate and conflict arrivals are in the landing log, never in `events`)."""
    raw = accepted_only(store.scan(RAW_EVENTS))
    return raw.join(committed_batches(store), on="batch_id", how="semi")


@dataclass
class EventsUpdate:
    batches: list[str]
    days: list[date]
    hours: list[datetime]
    rows: int


@writes_tables("events")
def update_events(store: DeltaStore, run_id: str = "cli") -> EventsUpdate:
    """Fold newly committed batches into `events`, rewriting only the days they touch."""
    done = store.scan(EVENTS_BUILDS).select("batch_id")
    new_batches = committed_batches(store).join(done, on="batch_id", how="anti").collect()
    if new_batches.height == 0:
        return EventsUpdate([], [], [], 0)
    raw = committed_raw_events(store)
    fresh = raw.join(new_batches.lazy(), on="batch_id", how="semi")
    corrections = resolve_corrections(*_corrections_and_originals(raw))
    fresh_ids = fresh.select("account_id", "event_id").collect()
    touched = corrections.join(
        fresh_ids.rename({"event_id": "correction_of"}),
        on=["account_id", "correction_of"],
        how="semi",
    )
    hours = (
        pl.concat(
            [
                fresh.select("hour").collect(),
                touched.select("hour"),
                touched.select(pl.col("timestamp").dt.truncate("1h").alias("hour")),
            ]
        )
        .unique()
        .sort("hour")["hour"]
    )
    days = hours.dt.date().unique().sort()
    written = sum(_rewrite_event_day(store, raw, corrections, day, run_id) for day in days)
    now = datetime.now(UTC)
    store.append(EVENTS_BUILDS, new_batches.with_columns(built_at=pl.lit(now)))
    return EventsUpdate(new_batches["batch_id"].to_list(), days.to_list(), hours.to_list(), written)


def _rewrite_event_day(
    store: DeltaStore, raw: pl.LazyFrame, corrections: pl.DataFrame, day: date, run_id: str
) -> int:
    """Recompute one `event_date` partition from raw rows: memory is bounded by one day.

    Each day is its own commit; the whole update is idempotent (`events_builds` is written
    last), so a crash between days is finished by the next run.
    """
    start, end = day_bounds(day)
    rows = raw.filter(
        (pl.col("event_date") == day)  # partition pruning: only this day's files are read
        & pl.col("correction_of").is_null()
        & (pl.col("hour") >= start)
        & (pl.col("hour") < end)
    ).collect(engine="streaming")
    in_day = corrections.filter((pl.col("hour") >= start) & (pl.col("hour") < end))
    events = build_events(rows, in_day)
    store.replace_partition(
        EVENTS, events, event_date=day, metadata={"run_id": run_id, "stage": "events"}
    )
    return events.height


def _corrections_and_originals(raw: pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every correction in history (a small share of events) and the originals they target."""
    corrections = raw.filter(pl.col("correction_of").is_not_null()).collect(engine="streaming")
    targets = corrections.select("account_id", pl.col("correction_of").alias("event_id")).unique()
    originals = (
        raw.filter(pl.col("event_id").is_in(targets["event_id"].implode()))
        .filter(pl.col("correction_of").is_null())
        .select("account_id", "event_id", "quantity", "hour", *INHERITED)
        .collect(engine="streaming")
        .join(targets, on=["account_id", "event_id"], how="semi")
    )
    return corrections, originals


def events_frame(store: DeltaStore, version: int | None = None) -> pl.LazyFrame:
    return store.scan(EVENTS, version=version)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)
