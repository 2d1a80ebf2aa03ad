"""Weekly table upkeep (`maintenance_job`): the same work as `usagebox maintain --vacuum`.

On by default: every partition replace leaves replaced files in the table folders, and a home
nobody compacts grows without bound. Vacuum keeps every `events` version an issued invoice was
rated from, and leaves the audit tables alone (stages/maintenance.py), so invoices still
reproduce; time travel (`usagebox sql --as-of`) reaches back `retention_hours`.
"""

import dagster as dg

from usagebox_pipelines.defs.jobs import EXCLUSIVE_RUN
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.stages.maintenance import DEFAULT_RETENTION_HOURS, maintain


class MaintenanceConfig(dg.Config):
    """`vacuum`: also delete unreferenced files older than `retention_hours`."""

    vacuum: bool = True
    retention_hours: int = DEFAULT_RETENTION_HOURS


@dg.op(
    description="Catalog metadata onto older tables, compaction, and vacuum of files no "
    "recent version (nor any invoice-stamped `events` version) reads."
)
def maintain_tables(config: MaintenanceConfig, usagebox: UsageboxResource) -> dg.Output[dict]:
    """Run `stages.maintenance.maintain`; its per-table report is the op's output metadata."""
    report = maintain(usagebox.store, config.vacuum, config.retention_hours)
    return dg.Output(report, metadata={"tables": dg.MetadataValue.json(report)})


@dg.job(
    description="Compact (and vacuum) every table of the home.",
    tags=EXCLUSIVE_RUN,
)
def maintenance_job() -> None:
    maintain_tables()


weekly_maintenance = dg.ScheduleDefinition(
    name="weekly_maintenance",
    job=maintenance_job,
    cron_schedule="0 4 * * 0",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Sundays 04:00 UTC: `maintenance_job` (on by default, see defs/maintenance.py).",
)
