"""Nightly runs (02:00 UTC): yesterday's day of usage, then the month to date: one run per
month shard (ADR 0019), then its reconciliation (`reconcile_after_month`).

Both are on by default: they only rebuild derived tables (rollups, prices, drafts, guardrails),
which is safe to repeat, and a home whose schedules someone forgot to start bills stale usage.
"""

from datetime import timedelta

import dagster as dg

from usagebox_pipelines.defs.jobs import daily_job, month_run_requests, monthly_job


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
def nightly_monthly(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """The month-to-date partitions (every month shard) of the month that yesterday belongs
    to; reconciliation tables and CSVs follow them (the PDF reports come with the close)."""
    day = context.scheduled_execution_time - timedelta(days=1)
    return month_run_requests(f"nightly-month-{day:%Y-%m-%d}", f"{day:%Y-%m}")


schedules = [nightly_usage, nightly_monthly]
