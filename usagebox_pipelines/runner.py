"""Launch the Dagster jobs in-process against a persistent instance under `<home>/dagster`.

`usagebox run` and `usagebox demo` go through here, so they materialise the same assets, with
the same checks, that the schedules and sensors run; `dagster dev` shows their history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache

import dagster as dg

from usagebox_pipelines.config import Settings
from usagebox_pipelines.defs.jobs import day_range_tags
from usagebox_pipelines.defs.reconciliation import NIGHTLY_RECONCILIATION
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.storage import DeltaStore

_INSTANCE_YAML = "telemetry:\n  enabled: false\n"


@dataclass
class RunOutcome:
    job: str
    partitions: str
    success: bool
    run_id: str
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The instance `dagster dev` also uses when DAGSTER_HOME points at `<home>/dagster`."""
    path = settings.local_home / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(_INSTANCE_YAML)
    return dg.DagsterInstance.from_config(str(path))


def execute_job(
    settings: Settings,
    job_name: str,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    ops_config: dict | None = None,
    instance: dg.DagsterInstance | None = None,
) -> RunOutcome:
    """Run one job to completion; failures (including blocking checks) are collected, not raised."""
    run_config = {
        "resources": {
            "usagebox": {"config": {"home": settings.home, "pricebooks": str(settings.pricebooks)}}
        },
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    if ops_config:
        run_config["ops"] = ops_config
    job = _job(job_name)
    with DeltaStore(settings.home).writer(f"run {job_name}"):
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance or dagster_instance(settings),
            partition_key=partition_key,
            tags=tags,
            raise_on_error=False,
        )
    failures = [
        f"{ev.step_key}: {ev.event_specific_data.error.message.strip().splitlines()[0]}"
        for ev in result.all_events
        if ev.is_step_failure and ev.event_specific_data and ev.event_specific_data.error
    ]
    failures += [
        f"check {ev.asset_check_evaluation_data.check_name} failed on "
        f"{ev.asset_check_evaluation_data.asset_key.to_user_string()}"
        for ev in result.all_events
        if ev.event_type_value == "ASSET_CHECK_EVALUATION"
        and not ev.asset_check_evaluation_data.passed
    ]
    span = partition_key or (f"{tags[next(iter(tags))]}..{list(tags.values())[-1]}" if tags else "")
    return RunOutcome(job_name, span, result.success and not failures, result.run_id, failures)


@cache
def _job(job_name: str) -> dg.JobDefinition:
    """Definitions are imported and each job resolved once per process (resolving builds the
    asset graph; `run --month` launches two jobs and `demo` many)."""
    from usagebox_pipelines.definitions import defs

    return defs.resolve_job_def(job_name)


def run_day(settings: Settings, day: date) -> list[RunOutcome]:
    """Yesterday-style run: the day's partition (24 hours), then its month to date (like the
    schedules: reconciliation without its PDF reports)."""
    instance = dagster_instance(settings)
    hours = execute_job(
        settings, "daily_job", partition_key=day.strftime("%Y-%m-%d"), instance=instance
    )
    if not hours.success:
        return [hours]
    month = execute_job(
        settings,
        "monthly_job",
        partition_key=day.strftime("%Y-%m-01"),
        ops_config=NIGHTLY_RECONCILIATION,
        instance=instance,
    )
    return [hours, month]


def run_month(settings: Settings, month: str) -> list[RunOutcome]:
    """Every day of the month in one run (a single-run backfill of 28-31 daily partitions),
    then the monthly stages."""
    instance = dagster_instance(settings)
    start, end = month_bounds(month)
    last_day = end - timedelta(days=1)
    hours = execute_job(
        settings,
        "daily_job",
        tags=day_range_tags(start.strftime("%Y-%m-%d"), last_day.strftime("%Y-%m-%d")),
        instance=instance,
    )
    if not hours.success:
        return [hours]
    return [
        hours,
        execute_job(settings, "monthly_job", partition_key=f"{month}-01", instance=instance),
    ]


def run_ingest(settings: Settings, files: list[str], source: str | None = None) -> RunOutcome:
    """The inbox path: raw_events then events, as the sensor launches it."""
    config = {"raw_events": {"config": {"files": files, "source": source}}}
    return execute_job(settings, "ingest_job", ops_config=config)
