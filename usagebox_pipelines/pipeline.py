"""Pipeline stages: read tables, call the pure logic, write one atomic Delta commit per stage.

Dagster assets and the CLI both call these functions, so a stage behaves the same whichever
way it is run. Every stage is idempotent: rerunning it after a crash finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from usagebox_pipelines import invariants as inv
from usagebox_pipelines.catalog import (
    EVENT_CONFLICTS,
    EVENTS,
    EVENTS_BUILDS,
    HOUR_BUILDS,
    INGEST_LOG,
    QUARANTINE,
    RATED_USAGE,
    RAW_EVENTS,
    UNRATED_USAGE,
    USAGE_HOURLY,
    USAGE_MONTHLY,
)
from usagebox_pipelines.events.build import INHERITED, build_events, resolve_corrections
from usagebox_pipelines.events.ingest import committed_batches
from usagebox_pipelines.events.raw import accepted_only, with_disposition
from usagebox_pipelines.events.window import min_event_time
from usagebox_pipelines.guardrails.schemas import GUARDRAIL_DECISIONS
from usagebox_pipelines.invoicing.credit import opening_credit
from usagebox_pipelines.invoicing.hard_stop import apply_waivers
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.rollups.aggregate import rollup_hourly, rollup_monthly
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


@writes_tables("usage_hourly")
def build_usage_hourly(
    store: DeltaStore, start: datetime, end: datetime, run_id: str = "cli"
) -> int:
    """Replace exactly the hours [start, end) of `usage_hourly` and record them as built."""
    rows = rollup_hourly(events_frame(store), start, end)
    meta = {
        "run_id": run_id,
        "stage": "usage_hourly",
        "from": start.isoformat(),
        "to": end.isoformat(),
    }
    store.replace_partition(USAGE_HOURLY, rows, hour=slice(start, end), metadata=meta)
    hours = pl.datetime_range(start, end, "1h", closed="left", time_zone="UTC", eager=True)
    builds = pl.DataFrame({"hour": hours}).with_columns(
        built_at=pl.lit(datetime.now(UTC)), run_id=pl.lit(run_id)
    )
    store.replace_partition(HOUR_BUILDS, builds, hour=slice(start, end))
    return rows.height


@writes_tables("usage_monthly")
def build_usage_monthly(store: DeltaStore, month: str, run_id: str = "cli") -> int:
    """Replace one month of `usage_monthly` from the hourly rollup of its hours."""
    rows = rollup_monthly(store.scan(USAGE_HOURLY), month)
    meta = {"run_id": run_id, "stage": "usage_monthly", "month": month}
    store.replace_partition(USAGE_MONTHLY, rows, month=month, metadata=meta)
    return rows.height


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
    hourly = store.scan(USAGE_HOURLY).filter((pl.col("hour") >= start) & (pl.col("hour") < end))
    opening = opening_credit(store, accounts)
    hourly = hourly.collect()
    result = rate_usage(hourly, month, books, accounts, opening)
    decisions = store.read("guardrail_decisions", GUARDRAIL_DECISIONS)
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


def verify(store: DeltaStore, month: str | None = None) -> list[inv.InvariantResult]:
    """Check the stored tables against CONTRACT.md §5 (invariants 1–3; 4–5 once invoices exist)."""
    start, end = month_bounds(month) if month else (None, None)
    events = events_frame(store)
    hourly = store.scan(USAGE_HOURLY)
    if month:
        months = [month]
    else:
        months = store.scan(USAGE_MONTHLY).select("month").unique().collect()["month"].to_list()
    return [
        verify_ingest(store),
        inv.events_unique(events),
        inv.hourly_matches_events(events, hourly, start, end),
        inv.monthly_matches_hourly(hourly, store.scan(USAGE_MONTHLY), months),
        inv.events_inside_partitions(events, FIRST_HOUR),
    ]


def verify_ingest(store: DeltaStore) -> inv.InvariantResult:
    """Invariant 1 alone (cheap: per-batch counts), for the ingest asset's blocking check."""
    return inv.ingest_counts_add_up(store.read(INGEST_LOG), _stored_counts_per_batch(store))


def _stored_counts_per_batch(store: DeltaStore) -> pl.DataFrame:
    """Per batch, rows really stored: raw arrivals by disposition, quarantined, conflicts.

    `legacy` counts raw rows written before `disposition` existed (duplicates were not stored
    then, so only the accepted count can be checked for those batches).
    """
    raw = store.scan(RAW_EVENTS)
    legacy = (
        pl.col("disposition").is_null().sum()
        if "disposition" in raw.collect_schema().names()
        else pl.len()
    )
    counts = [
        with_disposition(raw)
        .group_by("batch_id")
        .agg(
            raw=(pl.col("disposition") == "accepted").sum(),
            raw_duplicates=(pl.col("disposition") == "duplicate").sum(),
            raw_conflicts=(pl.col("disposition") == "conflict").sum(),
            legacy=legacy,
        )
        .collect()
    ]
    for table, name in ((QUARANTINE, "quarantined"), (EVENT_CONFLICTS, "conflicted")):
        counts.append(store.scan(table).group_by("batch_id").agg(pl.len().alias(name)).collect())
    out = counts[0]
    for frame in counts[1:]:
        out = out.join(frame, on="batch_id", how="full", coalesce=True)
    names = ["raw", "raw_duplicates", "raw_conflicts", "legacy", "quarantined", "conflicted"]
    return out.with_columns(pl.col(names).cast(pl.Int64))


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)
