"""Inbox sensor (new files → ingest) and the follow-up that rebuilds only the touched days."""

import json
from datetime import date, timedelta

import dagster as dg

from usagebox_pipelines.defs.jobs import daily_job, day_range_tags, ingest_job, monthly_job
from usagebox_pipelines.defs.metering import inbox_files
from usagebox_pipelines.defs.resources import UsageboxResource


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


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_jobs=[daily_job, monthly_job],
    # on with the inbox sensor: without it ingested events would wait for the nightly runs
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def rebuild_touched_days(context: dg.RunStatusSensorContext):
    """After an ingest run, rebuild exactly the days (and their months) the new events touch."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("events")), limit=5
    ).records
    hours: list[str] = []
    for record in records:
        if record.run_id == context.dagster_run.run_id:
            meta = record.asset_materialization.metadata.get("affected_hours")
            hours = list(meta.value) if meta is not None else []
    spans = affected_day_spans(hours)
    run = context.dagster_run.run_id
    for first, last in spans:
        yield dg.RunRequest(
            run_key=f"{run}-{first}..{last}", job_name="daily_job", tags=day_range_tags(first, last)
        )
    for month in sorted({h[:7] for h in hours}):
        yield dg.RunRequest(
            run_key=f"{run}-{month}", job_name="monthly_job", partition_key=f"{month}-01"
        )


sensors = [inbox_sensor, rebuild_touched_days]
