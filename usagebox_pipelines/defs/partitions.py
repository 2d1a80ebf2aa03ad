"""UTC daily and monthly partitions, starting at the first month this home has usage for.

The start is decided once, when the code location loads (`partition_start`):
`USAGEBOX_PARTITION_START` (`YYYY-MM` or `YYYY-MM-DD`, truncated to its month) if set; else the
month of the earliest `events` partition of `$USAGEBOX_HOME`; else, for an empty or unset home,
the month of the first accepted event hour (`USAGEBOX_MIN_EVENT_TIME`, events/window.py), so
every event ingest can accept has a partition. A home therefore shows its own months, not every
month since 2024. Events older than the start that arrive later get their partitions when the
code location is reloaded (every `dagster dev` start, or "Reload" in the UI).

`usage_hourly` keeps its hourly grain in the table but is partitioned by UTC day in Dagster: a
month is 31 partitions, not 744 (issue 13).

The per-account monthly assets (`usage_monthly`, `rated_usage`, `guardrails`,
`draft_invoices`) are partitioned by month × month shard (`month_shards`, ADR 0019):
`USAGEBOX_MONTH_SHARDS` shards (1 by default), read when the code location loads. A run may
take one partition (a deployment's pod per shard) or every shard of a month at once
(`jobs.month_range_tags`: what `usagebox run` and the schedules launch, one run a month).
"""

import os
from datetime import UTC, datetime

import dagster as dg

from usagebox_pipelines.catalog import EVENTS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.shards import MonthShard, month_shard_count
from usagebox_pipelines.stages.events import FIRST_HOUR
from usagebox_pipelines.storage import DeltaStore

START_ENV = "USAGEBOX_PARTITION_START"
HOME_ENV = "USAGEBOX_HOME"


def partition_start() -> datetime:
    """First day (UTC) of the first daily and monthly partition (see the module docstring)."""
    text = os.environ.get(START_ENV, "").strip()
    if text:
        try:
            day = datetime.strptime(text[:7], "%Y-%m")
        except ValueError:
            raise UsageboxError(f"{START_ENV}={text!r}: expected YYYY-MM or YYYY-MM-DD") from None
        return day.replace(tzinfo=UTC)
    home = os.environ.get(HOME_ENV, "").strip()
    first = _first_event_day(home) if home else None
    start = first or FIRST_HOUR
    return start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _first_event_day(home: str) -> datetime | None:
    """The earliest `event_date` partition of the home's `events` (Delta log only, no data)."""
    files = DeltaStore(home).files(EVENTS)
    column = "partition.event_date"
    if files.is_empty() or column not in files.columns:
        return None
    first = files[column].min()
    if first is None:
        return None
    return datetime.fromisoformat(str(first)[:10]).replace(tzinfo=UTC)


START = partition_start()
daily = dg.DailyPartitionsDefinition(
    start_date=START.strftime("%Y-%m-%d"), timezone="UTC", end_offset=1
)
monthly = dg.MonthlyPartitionsDefinition(
    start_date=START.strftime("%Y-%m-01"), timezone="UTC", end_offset=1
)


MONTH_SHARDS = month_shard_count()
month_shards = dg.MultiPartitionsDefinition(
    {
        "month": monthly,
        "shard": dg.StaticPartitionsDefinition([str(i) for i in range(MONTH_SHARDS)]),
    }
)

#: A month × shard partition depends on every partition of its month upstream (days of
#: `usage_hourly`, all shards of the month, the month itself), and a monthly one on every
#: shard of its month.
BY_MONTH = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="month")


def month_of(partition_key: str) -> str:
    """'2026-10-01' (a monthly partition key) -> '2026-10'."""
    return partition_key[:7]


def month_shard_keys(context: dg.AssetExecutionContext) -> list[tuple[str, str, MonthShard]]:
    """(partition key, month, month shard) of every `month_shards` partition the run
    materialises: one in a partition's own run, every shard of a month in a month's run."""
    keys = []
    for key in context.partition_keys:
        dims = month_shards.get_partition_key_from_str(key).keys_by_dimension
        keys.append((key, month_of(dims["month"]), MonthShard(int(dims["shard"]), MONTH_SHARDS)))
    return keys
