"""Nightly runs (02:00 UTC): yesterday's day of usage, then the month-to-date monthly partition.

Both are on by default: they only rebuild derived tables (rollups, prices, drafts, guardrails),
which is safe to repeat, and a home whose schedules someone forgot to start bills stale usage.
"""

from datetime import timedelta

import dagster as dg

from usagebox_pipelines.defs.jobs import daily_job, monthly_job


@dg.schedule(
    job=daily_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_usage(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The previous UTC day (its 24 hours of `usage_hourly`), in one run."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"nightly-usage-{day}", partition_key=day)


@dg.schedule(
    job=monthly_job,
    cron_schedule="30 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_monthly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The month-to-date partition of the month that yesterday belongs to (reconciliation
    tables and CSVs; the PDF reports come with the close)."""
    day = context.scheduled_execution_time - timedelta(days=1)
    return dg.RunRequest(run_key=f"nightly-month-{day:%Y-%m-%d}", partition_key=f"{day:%Y-%m-01}")


schedules = [nightly_usage, nightly_monthly]
