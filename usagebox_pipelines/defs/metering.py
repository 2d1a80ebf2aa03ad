"""Metering assets: raw_events (ingest), events (exactly once), usage_hourly, usage_monthly."""

from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from usagebox_pipelines import invariants as inv
from usagebox_pipelines.catalog import EVENTS, RAW_EVENTS, USAGE_HOURLY, USAGE_MONTHLY
from usagebox_pipelines.defs.jobs import PARTITION_RANGE_END, PARTITION_RANGE_START
from usagebox_pipelines.defs.metadata import (
    KINDS,
    OWNERS,
    check_spec,
    events_metadata,
    materialized_by_day,
    materialized_by_shard,
    per_partition,
    raw_events_metadata,
    table_metadata,
)
from usagebox_pipelines.defs.partitions import BY_MONTH, daily, month_shard_keys, month_shards
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.stages.events import (
    FIRST_HOUR,
    events_frame,
    update_events,
)
from usagebox_pipelines.stages.ingest import ingest_files, late_accounts
from usagebox_pipelines.stages.month_shards import shard_rows
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.stages.verify import verify_ingest


class IngestConfig(dg.Config):
    """Files to ingest; empty = every not-yet-ingested file in `<home>/inbox`."""

    files: list[str] = []
    source: str | None = None


def inbox_files(resource: UsageboxResource) -> list[Path]:
    inbox = resource.settings.local_home / "inbox"
    return sorted(p for p in inbox.glob("**/*") if p.is_file()) if inbox.exists() else []


def _check(result: inv.InvariantResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=result.name,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"detail": result.detail, "examples": dg.MetadataValue.json(result.examples)},
    )


@dg.asset(
    group_name="metering",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(RAW_EVENTS),
    check_specs=[
        check_spec(
            "1_ingest_rows_reconcile",
            "raw_events",
            "Invariant 1: per ingest batch, input rows = accepted + duplicates + conflicts + "
            "quarantined (nothing is lost).",
        )
    ],
)
def raw_events(
    context: dg.AssetExecutionContext, config: IngestConfig, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Every accepted input row, append-only; rejected rows go to `quarantine` with a reason."""
    paths = [Path(f) for f in config.files] or inbox_files(usagebox)
    accounts = late_accounts(usagebox.settings.pricebooks)
    summary = ingest_files(
        usagebox.store, paths, config.source, progress=context.log.info, accounts=accounts
    )
    for error in summary.errors:
        context.log.warning(error)
    store = usagebox.store
    check = verify_ingest(store)
    return dg.MaterializeResult(
        metadata=raw_events_metadata(store, summary), check_results=[_check(check)]
    )


@dg.asset(
    group_name="metering",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(EVENTS),
    deps=[raw_events],
    check_specs=[
        check_spec(
            "2_events_unique",
            "events",
            "Invariant 2: no (account_id, event_id) of the days this run wrote or covers "
            "appears twice in `events` (`usagebox verify` checks all of history).",
        ),
        check_spec(
            "events_inside_partitions",
            "events",
            "Every event counts in an hour at or after the first accepted hour "
            "(USAGEBOX_MIN_EVENT_TIME), so no usage falls outside the partitions.",
        ),
    ],
)
def events(context: dg.AssetExecutionContext, usagebox: UsageboxResource) -> dg.MaterializeResult:
    """One row per (account_id, event_id) with corrections resolved; rewrites touched days only."""
    store = usagebox.store
    update = update_events(store, context.run_id)
    frame = events_frame(store)
    days = sorted(set(update.days) | set(_run_days(context.run.tags)))
    return dg.MaterializeResult(
        metadata=events_metadata(store, update),
        check_results=[
            _check(_days_events_unique(frame, days)),
            _check(inv.events_inside_partitions(frame, FIRST_HOUR)),
        ],
    )


def _run_days(tags: Mapping[str, str]) -> list[date]:
    """The UTC days a `daily_job` run covers (its partition or partition range); none for
    an ingest run."""
    first = tags.get(PARTITION_RANGE_START) or tags.get("dagster/partition")
    last = tags.get(PARTITION_RANGE_END) or first
    try:
        start, end = date.fromisoformat(first or ""), date.fromisoformat(last or "")
    except ValueError:
        return []
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def _days_events_unique(frame: pl.LazyFrame, days: list[date]) -> inv.InvariantResult:
    """Invariant 2 for the days this run wrote or covers, against all history: memory is
    bounded by those days' keys (`usagebox verify` checks all of history at once)."""
    if not days:
        return inv.InvariantResult("2_events_unique", True, "no day of events changed", [])
    return inv.selected_events_unique(frame, pl.col("event_date").is_in(days))


@dg.asset(
    group_name="metering",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(USAGE_HOURLY),
    partitions_def=daily,
    deps=[events],
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="usage_hourly",  # caps the day-by-day fan-out (`dagster instance concurrency set`)
    check_specs=[
        check_spec(
            "3_hourly_equals_events",
            "usage_hourly",
            "Invariant 3: for every account, meter and hour of the run's days, the sum of "
            "`events` equals `usage_hourly`.",
        )
    ],
)
def usage_hourly(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Account × meter × model × product × unit × dimensions × hour sums; replaces every hour of
    its days (a Dagster partition is a UTC day; the table grain stays the hour)."""
    window = context.partition_time_window
    store = usagebox.store
    rows = build_usage_hourly(store, window.start, window.end, context.run_id)
    result = inv.hourly_matches_events(
        events_frame(store),
        store.scan(USAGE_HOURLY),
        window.start,
        window.end,
    )
    starts = {  # each day's own rows and window, not the run's
        key: daily.time_window_for_partition_key(key).start for key in context.partition_keys
    }
    per_partition(context, materialized_by_day(store, USAGE_HOURLY, "hour", starts), "usage_hourly")
    return dg.MaterializeResult(
        metadata={"rows_written_by_run": rows, "run_to": window.end.isoformat()},
        check_results=[_check(result)],
    )


@dg.asset(
    group_name="metering",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(USAGE_MONTHLY),
    partitions_def=month_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetDep(usage_hourly, partition_mapping=BY_MONTH)],
    check_specs=[
        check_spec(
            "3_monthly_equals_hourly",
            "usage_monthly",
            "Invariant 3 for months: the month's `usage_monthly` equals the sum of its hours "
            "(checked over the accounts of the run's month shards).",
        )
    ],
)
def usage_monthly(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Account × meter × model × product × unit × month, summed from the month's hours."""
    store = usagebox.store
    accounts = load_accounts(usagebox.settings.pricebooks)
    results = []
    keys = month_shard_keys(context)
    for _, month, shard in keys:
        build_usage_monthly(store, month, context.run_id, shard=shard, accounts=accounts)
        start, end = month_bounds(month)
        hourly = store.scan(USAGE_HOURLY)
        monthly = store.scan(USAGE_MONTHLY)
        month_hours = hourly.filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        mine = shard_rows(
            [month_hours, monthly.filter(pl.col("month") == month)], shard, accounts.root
        )
        results.append(
            inv.monthly_matches_hourly(hourly.filter(mine), monthly.filter(mine), [month])
        )
    by_shard = materialized_by_shard(
        store, USAGE_MONTHLY, keys, lambda m: pl.col("month") == m, accounts.root
    )
    counts = {k: {"month": m, "month_shard": s.index} | by_shard[k] for k, m, s in keys}
    per_partition(context, counts, "usage_monthly")
    return dg.MaterializeResult(check_results=[_check(inv.all_of(results))])


metering_assets = [raw_events, events, usage_hourly, usage_monthly]
