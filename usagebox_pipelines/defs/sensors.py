"""Inbox sensor (new files → ingest) and the follow-ups that rebuild only the touched days.

After an ingest run (exclusive: key index, batches, the `events` fold), `rebuild_touched_days`
requests one `hourly_job` run per touched UTC day. Those take the *shared* lease (ADR 0012), so
they run side by side, bounded by `max_concurrent_runs`, the `usage_hourly` pool and one run per
`dagster/partition`. Once every one of them has succeeded, `month_after_touched_days` requests
`monthly_job` (a run per month shard) for the months they belong to: it never reads a
half-rebuilt month. When the last shard run of a month succeeds, `reconcile_after_month`
requests the month's `reconcile_job`. A close goes the same way: after `close_job` numbered a
month, `documents_after_numbering` requests an `invoice_documents_job` run per month shard, and
when the last succeeds `finish_close_after_documents` requests `finish_close_job`.
With accounts in time zones a day at a month edge also belongs to the neighbouring month
(ADR 0017: 1 November UTC holds New York's last October hours).
"""

import json
from datetime import date, timedelta

import dagster as dg

from usagebox_pipelines.config import resolve_pricebooks
from usagebox_pipelines.defs.jobs import (
    close_job,
    finish_close_job,
    hourly_job,
    ingest_job,
    invoice_documents_job,
    month_of_run,
    month_run_requests,
    monthly_job,
    reconcile_job,
)
from usagebox_pipelines.defs.metering import inbox_files
from usagebox_pipelines.defs.partitions import START
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.pricing.accounts import Accounts, AccountsError, load_accounts
from usagebox_pipelines.pricing.zones import months_of_days


# On by default: a file dropped in the inbox is the ingest interface of a deployment.
@dg.sensor(
    job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def inbox_sensor(context: dg.SensorEvaluationContext, usagebox: UsageboxResource):
    """Ingest files that appeared (or changed) in `<home>/inbox` since the last tick."""
    seen = json.loads(context.cursor) if context.cursor else {}
    fresh = {}
    for path in inbox_files(usagebox):
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        if seen.get(str(path)) != stamp:
            fresh[str(path)] = stamp
    if not fresh:
        return dg.SkipReason("no new files in the inbox")
    context.update_cursor(json.dumps(seen | fresh))
    files = sorted(fresh)
    return dg.RunRequest(
        run_key="inbox-" + str(abs(hash(tuple(files + list(fresh.values()))))),
        run_config={"ops": {"raw_events": {"config": {"files": files}}}},
    )


def affected_day_spans(hours: list[str]) -> list[tuple[str, str]]:
    """ISO hour starts → runs of consecutive daily partition keys, as (first, last) pairs.

    One run per span keeps a late batch spread over a month to one Dagster run, while days
    nobody touched are never rebuilt.
    """
    days = sorted({date.fromisoformat(h[:10]) for h in hours})
    spans: list[tuple[date, date]] = []
    for day in days:
        if spans and day == spans[-1][1] + timedelta(days=1):
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return [(a.isoformat(), b.isoformat()) for a, b in spans]


AFTER_INGEST_TAG = "usagebox/after_ingest"  # the ingest run an `hourly_job` run follows
TOUCHED_DAYS_TAG = "usagebox/touched_days"  # how many day runs that ingest requested


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_jobs=[hourly_job],
    # on with the inbox sensor: without it ingested events would wait for the nightly runs
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def rebuild_touched_days(context: dg.RunStatusSensorContext):
    """After an ingest run, rebuild exactly the days the new events touch: one shared-lease
    `hourly_job` run per day, which run concurrently (their months follow, see below)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("events")), limit=5
    ).records
    hours: list[str] = []
    for record in records:
        if record.run_id == context.dagster_run.run_id:
            meta = record.asset_materialization.metadata.get("affected_hours")
            hours = list(meta.value) if meta is not None else []
    days = touched_days(hours)
    run = context.dagster_run.run_id
    tags = {AFTER_INGEST_TAG: run, TOUCHED_DAYS_TAG: str(len(days))}
    for day in days:
        yield dg.RunRequest(
            run_key=f"{run}-{day}", job_name="hourly_job", partition_key=day, tags=tags
        )


def touched_days(hours: list[str]) -> list[str]:
    """ISO hour starts → the daily partition keys they fall in, sorted, once each."""
    return [a for first, last in affected_day_spans(hours) for a in _days(first, last)]


def _days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[hourly_job],
    request_jobs=[monthly_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def month_after_touched_days(context: dg.RunStatusSensorContext):
    """When the last day run that followed an ingest succeeds, rebuild the months of those days
    (exclusive `monthly_job`, once per month: the run key is the ingest run and the month)."""
    ingest = context.dagster_run.tags.get(AFTER_INGEST_TAG)
    expected = context.dagster_run.tags.get(TOUCHED_DAYS_TAG)
    if not ingest or not expected:
        return dg.SkipReason("not a day run that followed an ingest")
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={AFTER_INGEST_TAG: ingest}))
    done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    if len(done) < int(expected):
        return dg.SkipReason(f"{len(done)} of {expected} day runs of ingest {ingest} done")
    months = touched_months([r.tags["dagster/partition"] for r in done])
    return [r for month in months for r in month_run_requests(f"{ingest}-{month}", month)]


_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[monthly_job],
    request_jobs=[reconcile_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def reconcile_after_month(context: dg.RunStatusSensorContext):
    """When a month's last `monthly_job` run in flight succeeds (every shard's rated usage is
    then as fresh as the runs made it), reconcile the month against the vendor bills."""
    return after_last_shard_run(context, "monthly_job", "reconcile_job", "reconcile")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[close_job],
    request_jobs=[invoice_documents_job],
    # on: a close that numbered its invoices must go on to render them and mark the month
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def documents_after_numbering(context: dg.RunStatusSensorContext):
    """After `close_job` numbered a month, render its documents: an `invoice_documents_job`
    run per month shard (side by side). A no-op close (a closed month) renders nothing."""
    month = month_of_run(context.dagster_run.tags)
    if month is None:
        return dg.SkipReason("the run has no month partition")
    run_key = f"documents-{month}-{context.dagster_run.run_id}"
    return month_run_requests(run_key, month, job_name="invoice_documents_job")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[invoice_documents_job],
    request_jobs=[finish_close_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def finish_close_after_documents(context: dg.RunStatusSensorContext):
    """When a month's last `invoice_documents_job` run in flight succeeds, finish its close
    (the marker step checks that every shard rendered; a shard that failed fails it, naming
    the shards to rerun)."""
    return after_last_shard_run(context, "invoice_documents_job", "finish_close_job", "finish")


def after_last_shard_run(
    context: dg.RunStatusSensorContext, shard_job: str, monthly: str, key: str
) -> dg.RunRequest | dg.SkipReason:
    """The month's run of the monthly job `monthly` once the succeeded run of the month ×
    shard job `shard_job` is the last of its month in flight (the run key names `key`, the
    month and the run, so each success is answered once)."""
    month = month_of_run(context.dagster_run.tags)
    if month is None:
        return dg.SkipReason("the run has no month partition")
    runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=shard_job, statuses=_IN_FLIGHT))
    waiting = [r.run_id for r in runs if month_of_run(r.tags) == month]
    if waiting:
        return dg.SkipReason(f"{month}: {len(waiting)} {shard_job} run(s) still in flight")
    run_key = f"{key}-{month}-{context.dagster_run.run_id}"
    return dg.RunRequest(run_key=run_key, job_name=monthly, partition_key=f"{month}-01")


def touched_months(days: list[str]) -> list[str]:
    """The months to rebuild after day runs of `days`: their UTC months, plus a neighbouring
    month that an account's time zone reaches into (ADR 0017), from the accounts.yaml the
    resource reads (its `pricebooks` is env/defaults: `resolve_pricebooks`). A month before the
    first monthly partition has no partition to run. An invalid accounts.yaml falls back to
    the UTC months: the monthly run then refuses it, naming the file and field."""
    try:
        accounts = load_accounts(resolve_pricebooks(None))
    except AccountsError:
        accounts = Accounts()
    first = START.strftime("%Y-%m")
    return [m for m in months_of_days(days, accounts) if m >= first]


sensors = [
    inbox_sensor,
    rebuild_touched_days,
    month_after_touched_days,
    reconcile_after_month,
    documents_after_numbering,
    finish_close_after_documents,
]
