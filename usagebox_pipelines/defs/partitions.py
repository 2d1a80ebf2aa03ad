"""UTC daily and monthly partitions, starting at the first hour the pipeline accepts.

That hour is `USAGEBOX_MIN_EVENT_TIME` (events/window.py): ingest quarantines earlier events, so
no accepted event falls outside the partitions. `usage_hourly` keeps its hourly grain in the
table but is partitioned by UTC day in Dagster: a month is 31 partitions, not 744, so planning
and materialization events stay a handful per run (issue 13). The monthly definition starts on
the first day of that hour's month.
"""

import dagster as dg

from usagebox_pipelines.stages.events import FIRST_HOUR

daily = dg.DailyPartitionsDefinition(
    start_date=FIRST_HOUR.strftime("%Y-%m-%d"), timezone="UTC", end_offset=1
)
monthly = dg.MonthlyPartitionsDefinition(
    start_date=FIRST_HOUR.strftime("%Y-%m-01"), timezone="UTC", end_offset=1
)


def month_of(partition_key: str) -> str:
    """'2026-10-01' (a monthly partition key) -> '2026-10'."""
    return partition_key[:7]
