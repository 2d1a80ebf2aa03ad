"""Inbox sensor (new files → ingest) and the follow-up that rebuilds only the touched hours."""

import json

import dagster as dg

from usagebox_pipelines.defs.jobs import hourly_job, ingest_job, monthly_job
from usagebox_pipelines.defs.metering import inbox_files
from usagebox_pipelines.defs.resources import UsageboxResource


@dg.sensor(job=ingest_job, minimum_interval_seconds=30)
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


def affected_hour_keys(hours: list[str]) -> list[str]:
    """ISO hour starts → hourly partition keys (2026-10-01T10:00:00+00:00 → 2026-10-01-10:00)."""
    return sorted({h[:10] + "-" + h[11:16] for h in hours})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_jobs=[hourly_job, monthly_job],
)
def rebuild_touched_hours(context: dg.RunStatusSensorContext):
    """After an ingest run, rebuild exactly the hours (and their months) the new events touch."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("events")), limit=5
    ).records
    hours: list[str] = []
    for record in records:
        if record.run_id == context.dagster_run.run_id:
            meta = record.asset_materialization.metadata.get("affected_hours")
            hours = list(meta.value) if meta is not None else []
    keys = affected_hour_keys(hours)
    run = context.dagster_run.run_id
    for key in keys:
        yield dg.RunRequest(run_key=f"{run}-{key}", job_name="hourly_job", partition_key=key)
    for month in sorted({k[:7] for k in keys}):
        yield dg.RunRequest(
            run_key=f"{run}-{month}", job_name="monthly_job", partition_key=f"{month}-01"
        )


sensors = [inbox_sensor, rebuild_touched_hours]
