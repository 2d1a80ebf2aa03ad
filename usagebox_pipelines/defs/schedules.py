"""Nightly runs (02:00 UTC): yesterday's hours, then the month-to-date monthly partition."""

from datetime import timedelta

import dagster as dg

from usagebox_pipelines.defs.jobs import hour_range_tags, hourly_job, monthly_job


@dg.schedule(job=hourly_job, cron_schedule="0 2 * * *", execution_timezone="UTC")
def nightly_hourly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """All 24 hours of the previous UTC day, in one run."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(
        run_key=f"nightly-hours-{day}", tags=hour_range_tags(f"{day}-00:00", f"{day}-23:00")
    )


@dg.schedule(job=monthly_job, cron_schedule="30 2 * * *", execution_timezone="UTC")
def nightly_monthly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The month-to-date partition of the month that yesterday belongs to."""
    day = context.scheduled_execution_time - timedelta(days=1)
    key = day.strftime("%Y-%m-01")
    return dg.RunRequest(run_key=f"nightly-month-{day:%Y-%m-%d}", partition_key=key)


schedules = [nightly_hourly, nightly_monthly]
