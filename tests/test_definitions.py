"""The Dagster code location loads, the graph is what we expect, and real runs materialise."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENTS, RATED_USAGE, USAGE_HOURLY, USAGE_MONTHLY
from usagebox_pipelines.config import Settings
from usagebox_pipelines.definitions import defs
from usagebox_pipelines.defs.jobs import PARTITION_RANGE_END as RANGE_END
from usagebox_pipelines.defs.jobs import PARTITION_RANGE_START as RANGE_START
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.defs.schedules import nightly_monthly, nightly_usage
from usagebox_pipelines.defs.sensors import (
    TOUCHED_DAYS_TAG,
    affected_day_spans,
    inbox_sensor,
    month_after_touched_days,
)
from usagebox_pipelines.runner import execute_job, run_day, run_ingest, run_month
from usagebox_pipelines.storage import DeltaStore, DocumentStore

pytestmark = pytest.mark.slow  # real Dagster runs


def test_definitions_load_and_every_job_resolves() -> None:
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "raw_events",
        "events",
        "usage_hourly",
        "usage_monthly",
        "rated_usage",
        "reconciliation",
        "cost_attribution",
        "spend_state",
    } <= keys
    for job in ("ingest_job", "daily_job", "monthly_job", "reconcile_job", "close_job"):
        assert defs.resolve_job_def(job) is not None
    daily = graph.get(dg.AssetKey("usage_hourly")).partitions_def
    assert isinstance(daily, dg.DailyPartitionsDefinition) and daily.timezone == "UTC"
    by_shard = graph.get(dg.AssetKey("usage_monthly")).partitions_def
    assert isinstance(by_shard, dg.MultiPartitionsDefinition)  # month × month shard (ADR 0019)
    assert isinstance(
        by_shard.get_partitions_def_for_dimension("month"), dg.MonthlyPartitionsDefinition
    )
    monthly = graph.get(dg.AssetKey("reconciliation")).partitions_def
    assert isinstance(monthly, dg.MonthlyPartitionsDefinition)
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert {"2_events_unique", "3_hourly_equals_events", "3_monthly_equals_hourly"} <= checks
    assert {s.name for s in defs.schedules} >= {"nightly_usage", "nightly_monthly"}
    assert {s.name for s in defs.sensors} >= {
        "inbox_sensor",
        "rebuild_touched_days",
        "month_after_touched_days",
        "reconcile_after_month",
    }


def test_nightly_schedules_target_yesterday() -> None:
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 3, 2, tzinfo=UTC))
    assert nightly_usage(ctx).partition_key == "2026-11-02"
    assert [r.partition_key for r in nightly_monthly(ctx)] == ["2026-11-01|0"]


def test_month_materialises_through_dagster(tmp_path: Path) -> None:
    settings = Settings.resolve(str(tmp_path / "home"))
    rows = [
        event(f"e{i}", qty=100 * i, ts=f"2026-10-0{1 + i % 3}T1{i % 10}:00:00Z")
        for i in range(1, 30)
    ]
    ingest = run_ingest(settings, [str(write_jsonl(tmp_path / "in" / "a.jsonl", rows))])
    assert ingest.success, ingest.failures
    outcomes = run_month(settings, "2026-10")
    assert all(o.success for o in outcomes), [o.failures for o in outcomes]
    store = DeltaStore(settings.home)
    assert store.read(USAGE_HOURLY)["sum"].sum() == store.read(EVENTS)["quantity"].sum()
    assert store.read(USAGE_MONTHLY)["month"].unique().to_list() == ["2026-10"]
    assert store.read(RATED_USAGE).filter(pl.col("line_kind") == "usage").height > 0
    # the run history is in the persistent instance `dagster dev` reads
    assert (Path(settings.local_home) / "dagster" / "dagster.yaml").exists()
    # a run of an open month writes the reconciliation CSVs, not the PDFs (the close renders
    # them), and removes PDFs its new numbers would contradict
    reports = DocumentStore(settings.home)
    folder = "reconciliation/2026-10"
    pdf, csv = f"{folder}/reconciliation_2026-10.pdf", f"{folder}/reconciliation_2026-10.csv"
    assert reports.exists(csv) and not reports.exists(pdf)
    reports.put(pdf, b"stale")
    before = reports.get(csv)
    assert all(o.success for o in run_day(settings, date(2026, 10, 2)))
    assert not reports.exists(pdf)
    assert reports.get(csv) == before  # same usage, same numbers


def test_blocking_check_fails_the_run_when_a_table_is_tampered(tmp_path: Path) -> None:
    settings = Settings.resolve(str(tmp_path / "home"))
    run_ingest(settings, [str(write_jsonl(tmp_path / "a.jsonl", [event("e1")]))])
    run_month(settings, "2026-10")
    store = DeltaStore(settings.home)
    store.append(EVENTS, store.read(EVENTS))  # every event now appears twice
    outcome = execute_job(settings, "daily_job", partition_key="2026-10-01")
    assert not outcome.success
    assert any("2_events_unique" in f for f in outcome.failures)


def test_inbox_sensor_requests_ingest_for_new_files_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_jsonl(home / "inbox" / "a.jsonl", [event("e1")])
    resource = UsageboxResource(home=str(home))
    with dg.build_sensor_context(resources={"usagebox": resource}) as ctx:
        req = inbox_sensor(ctx)
        files = req.run_config["ops"]["raw_events"]["config"]["files"]
        assert [Path(f).name for f in files] == ["a.jsonl"]
        cursor = ctx.cursor
    with dg.build_sensor_context(cursor=cursor, resources={"usagebox": resource}) as ctx:
        assert isinstance(inbox_sensor(ctx), dg.SkipReason)
    assert json.loads(cursor)


def test_affected_hours_become_spans_of_daily_partition_keys() -> None:
    hours = [
        "2026-10-01T10:00:00+00:00",
        "2026-10-01T10:00:00+00:00",
        "2026-10-02T00:00:00+00:00",
        "2026-10-31T23:00:00+00:00",
        "2026-11-01T03:00:00+00:00",
        "2026-11-05T03:00:00+00:00",
    ]
    assert affected_day_spans(hours) == [
        ("2026-10-01", "2026-10-02"),
        ("2026-10-31", "2026-11-01"),
        ("2026-11-05", "2026-11-05"),
    ]


def test_after_ingest_only_the_touched_days_are_rebuilt(tmp_path: Path) -> None:
    from usagebox_pipelines.defs.sensors import rebuild_touched_days, reconcile_after_month
    from usagebox_pipelines.runner import dagster_instance

    settings = Settings.resolve(str(tmp_path / "home"))
    instance = dagster_instance(settings)
    rows = [event("e1", ts="2026-10-01T10:15:00Z"), event("e2", ts="2026-10-03T23:59:59Z")]
    outcome = execute_job(
        settings,
        "ingest_job",
        ops_config={
            "raw_events": {"config": {"files": [str(write_jsonl(tmp_path / "a.jsonl", rows))]}}
        },
        instance=instance,
    )
    run = instance.get_run_by_id(outcome.run_id)
    requests = list(rebuild_touched_days(_success_context(instance, run, "rebuild_touched_days")))
    # one shared-lease day run per touched day, none exclusive: they may run side by side
    assert sorted((r.job_name, r.partition_key) for r in requests) == [
        ("hourly_job", "2026-10-01"),
        ("hourly_job", "2026-10-03"),
    ]
    assert defs.resolve_job_def("hourly_job").tags["usagebox/lease"] == "shared"
    assert all(r.tags[TOUCHED_DAYS_TAG] == "2" for r in requests)

    # real runs of those requests; the month follows only once both days have succeeded
    runs = []
    for request in requests:
        day = execute_job(
            settings,
            "hourly_job",
            partition_key=request.partition_key,
            tags=request.tags,
            instance=instance,
        )
        assert day.success, day.failures
        runs.append(instance.get_run_by_id(day.run_id))
        month = month_after_touched_days(
            _success_context(instance, runs[-1], "month_after_touched_days")
        )
        if len(runs) == 1:
            assert isinstance(month, dg.SkipReason) and "1 of 2" in (month.skip_message or "")
    assert [(r.partition_key, r.run_key) for r in month] == [
        ("2026-10-01|0", f"{outcome.run_id}-2026-10")  # month × the one month shard
    ]
    store = DeltaStore(settings.home)
    assert store.read(USAGE_HOURLY)["hour"].dt.date().unique().sort().to_list() == [
        date(2026, 10, 1),
        date(2026, 10, 3),
    ]

    # the month's run, then its reconciliation once no monthly_job run of the month is left
    monthly = execute_job(
        settings, "monthly_job", partition_key=month[0].partition_key, instance=instance
    )
    assert monthly.success, monthly.failures
    context = _success_context(
        instance, instance.get_run_by_id(monthly.run_id), "reconcile_after_month"
    )
    reconcile = reconcile_after_month(context)
    assert isinstance(reconcile, dg.RunRequest)
    assert (reconcile.job_name, reconcile.partition_key) == ("reconcile_job", "2026-10-01")


def _success_context(instance: dg.DagsterInstance, run: dg.DagsterRun, sensor: str):
    """The context a run-status sensor named `sensor` gets for `run`'s success."""
    return dg.build_run_status_sensor_context(
        sensor_name=sensor,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=next(
            e
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_SUCCESS"
        ).dagster_event,
    )


def test_events_check_covers_the_days_the_run_covers() -> None:
    """Invariant 2 on the `events` asset is checked for the run's days (and the days it
    rewrote), so its memory is bounded by them; the tamper test above still fails the run."""
    from usagebox_pipelines.defs.metering import _run_days

    span = {RANGE_START: "2026-10-30", RANGE_END: "2026-11-01"}
    assert _run_days(span) == [date(2026, 10, 30), date(2026, 10, 31), date(2026, 11, 1)]
    assert _run_days({"dagster/partition": "2026-10-05"}) == [date(2026, 10, 5)]
    assert _run_days({}) == []  # an ingest run: only the days it rewrote
