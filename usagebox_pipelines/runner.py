"""Launch the Dagster jobs in-process against a persistent instance under `<home>/dagster`.

`usagebox run` and `usagebox demo` go through here, so they materialise the same assets, with
the same checks, that the schedules and sensors run; `dagster dev` shows their history. The
commands that write tables outside a job (`usagebox ingest`, `usagebox close`) report what they
materialised to the same instance (`report_ingest`, `report_close`), so the UI shows what the
tables hold however they were written.

Dagster's own log lines go to stderr, and only at WARNING with `verbose` (ERROR otherwise):
stdout belongs to the command's summary.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache

import dagster as dg

from usagebox_pipelines.config import Settings
from usagebox_pipelines.defs.jobs import (
    PARTITION_RANGE_END,
    PARTITION_RANGE_START,
    day_range_tags,
    month_range_tags,
)
from usagebox_pipelines.defs.metadata import events_metadata, issued_metadata, raw_events_metadata
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.shards import month_shard_count
from usagebox_pipelines.stages.events import EventsUpdate
from usagebox_pipelines.stages.ingest import IngestSummary
from usagebox_pipelines.stages.results import AlreadyClosed, Closed
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
    verbose: bool = False,
    on_step: StepCallback | None = None,
) -> RunOutcome:
    """Run one job to completion; failures (including blocking checks) are collected, not raised.

    Dagster's console log (stderr) shows warnings with `verbose`, only errors otherwise: the
    outcome's `failures` carry what a person needs."""
    run_config = {
        "resources": {
            "usagebox": {"config": {"home": settings.home, "pricebooks": str(settings.pricebooks)}}
        },
        "loggers": {"console": {"config": {"log_level": "INFO" if verbose else "ERROR"}}},
    }
    if ops_config:
        run_config["ops"] = ops_config
    job = _job(job_name)
    instance = instance or dagster_instance(settings)
    run_id = str(uuid.uuid4())
    with DeltaStore(settings.home).writer(f"run {job_name}"), _watch(instance, run_id, on_step):
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            partition_key=partition_key,
            tags=tags,
            raise_on_error=False,
            run_id=run_id,
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
    return RunOutcome(job_name, _span(partition_key, tags), result.success and not failures,
                      result.run_id, failures)  # fmt: skip


def _span(partition_key: str | None, tags: dict[str, str] | None) -> str:
    """The partitions a run took, as a person reads them: one key, or `first..last`."""
    if partition_key or not tags:
        return partition_key or ""
    first, last = tags.get(PARTITION_RANGE_START, ""), tags.get(PARTITION_RANGE_END, "")
    return first if first == last else f"{first}..{last}"


#: Called with `job_name: step_key` as each step of a run ends (success or failure).
StepCallback = Callable[[str], None]
_STEP_ENDS = (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)


class _watch:
    """While a run executes in this thread, report its finished steps from the instance's
    event log (polled from a second thread: `execute_in_process` does not stream events)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, on_step: StepCallback | None):
        self._instance, self._run_id, self._on_step = instance, run_id, on_step
        self._done = threading.Event()
        self._seen: set[int] = set()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> None:
        if self._on_step is not None:
            self._thread.start()

    def __exit__(self, *_exc: object) -> None:
        if self._on_step is not None:
            self._done.set()
            self._thread.join()
            self._report()  # the steps that ended after the last poll

    def _poll(self) -> None:
        while not self._done.wait(0.5):
            self._report()

    def _report(self) -> None:
        for event_type in _STEP_ENDS:
            records = self._instance.get_records_for_run(self._run_id, of_type=event_type).records
            for record in records:
                if record.storage_id not in self._seen and self._on_step is not None:
                    self._seen.add(record.storage_id)
                    entry = record.event_log_entry
                    self._on_step(f"{entry.job_name}: {entry.step_key}")


def job_steps(job_name: str) -> int:
    """Steps a run of the job executes (one per asset or multi-asset): a progress total."""
    return len(_job(job_name).nodes_in_topological_order)


@cache
def _job(job_name: str) -> dg.JobDefinition:
    """Definitions are imported and each job resolved once per process (resolving builds the
    asset graph; `run --month` launches two jobs and `demo` many)."""
    from usagebox_pipelines.definitions import defs

    return defs.resolve_job_def(job_name)


def run_day(
    settings: Settings, day: date, verbose: bool = False, on_step: StepCallback | None = None
) -> list[RunOutcome]:
    """Yesterday-style run: the day's partition (24 hours), then its month to date (like the
    schedules)."""
    opts = {"instance": dagster_instance(settings), "verbose": verbose, "on_step": on_step}
    hours = execute_job(settings, "daily_job", partition_key=day.strftime("%Y-%m-%d"), **opts)
    if not hours.success:
        return [hours]
    return [hours, *run_monthly(settings, day.strftime("%Y-%m"), opts)]


def run_month(
    settings: Settings, month: str, verbose: bool = False, on_step: StepCallback | None = None
) -> list[RunOutcome]:
    """Every day of the month in one run (a single-run backfill of 28-31 daily partitions),
    then the monthly stages. With accounts in time zones (ADR 0017) the days are those of
    every account's month (`Accounts.span`): New York's October ends on 1 November UTC."""
    opts = {"instance": dagster_instance(settings), "verbose": verbose, "on_step": on_step}
    start, end = month_bounds(month)
    accounts = load_accounts(settings.pricebooks)
    if accounts.zoned:
        from usagebox_pipelines.defs.partitions import START  # the first daily partition

        span = accounts.span(month)
        start, end = max(span.start, START), span.end
    last_day = end - timedelta(microseconds=1)  # the day of the last hour
    days = day_range_tags(start.strftime("%Y-%m-%d"), last_day.strftime("%Y-%m-%d"))
    hours = execute_job(settings, "daily_job", tags=days, **opts)
    if not hours.success:
        return [hours]
    return [hours, *run_monthly(settings, month, opts)]


def run_monthly(settings: Settings, month: str, opts: dict) -> list[RunOutcome]:
    """The month's `monthly_job`, every month shard in one run (ADR 0019), then, if it
    succeeded, its `reconcile_job` (what the `reconcile_after_month` sensor does)."""
    shards = execute_job(settings, "monthly_job", tags=month_range_tags(month), **opts)
    if not shards.success:
        return [shards]
    return [shards, execute_job(settings, "reconcile_job", partition_key=f"{month}-01", **opts)]


#: Jobs `run_day` / `run_month` launch, in order (for a progress total).
RUN_JOBS = ("daily_job", "monthly_job", "reconcile_job")


def run_ingest(settings: Settings, files: list[str], source: str | None = None) -> RunOutcome:
    """The inbox path: raw_events then events, as the sensor launches it."""
    config = {"raw_events": {"config": {"files": files, "source": source}}}
    return execute_job(settings, "ingest_job", ops_config=config)


def report_ingest(
    settings: Settings,
    summary: IngestSummary,
    update: EventsUpdate,
    instance: Future[dg.DagsterInstance] | None = None,
    seconds: tuple[float, float] | None = None,
) -> str | None:
    """Record an ingest made outside Dagster (`usagebox ingest`) as materialisations of
    `raw_events` and `events`, with the metadata the assets record. A warning (None if
    recorded): the tables are committed either way. `instance`: one being opened meanwhile
    (`open_instance_meanwhile`). `seconds`: how long the load and the fold took; a Dagster
    run has step times for that, a runless report only this (`bench/month.py` reads it)."""
    store = DeltaStore(settings.home)
    load, fold = seconds or (None, None)
    events = [
        dg.AssetMaterialization(
            "raw_events", metadata=raw_events_metadata(store, summary) | _took(load)
        ),
        dg.AssetMaterialization("events", metadata=events_metadata(store, update) | _took(fold)),
    ]
    return _report(settings, events, instance)


def _took(seconds: float | None) -> dict[str, object]:
    return {} if seconds is None else {"seconds": dg.MetadataValue.float(round(seconds, 3))}


def report_close(settings: Settings, result: Closed | AlreadyClosed) -> str | None:
    """Record a close made outside Dagster (`usagebox close --approve`) as the month's three
    close materialisations (`issued_invoices`, every shard of `invoice_documents`,
    `period_closes`), so the UI shows the month closed; a warning as `report_ingest`."""
    store = DeltaStore(settings.home)
    month = f"{result.period}-01"
    meta = issued_metadata(store, result)
    shards = [f"{month}|{k}" for k in range(month_shard_count())]
    events = [dg.AssetMaterialization("issued_invoices", partition=month, metadata=meta)]
    events += [dg.AssetMaterialization("invoice_documents", partition=key) for key in shards]
    events += [dg.AssetMaterialization("period_closes", partition=month, metadata=meta)]
    return _report(settings, events)


def _report(
    settings: Settings,
    events: list[dg.AssetMaterialization],
    pending: Future[dg.DagsterInstance] | None = None,
) -> str | None:
    try:
        instance = pending.result() if pending is not None else dagster_instance(settings)
        for event in events:
            instance.report_runless_asset_event(event)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail a committed write
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"warning: not recorded in the Dagster instance ({first})"
    return None
