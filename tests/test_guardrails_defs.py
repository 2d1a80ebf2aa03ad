"""Dagster wiring: the guardrail assets sit on monthly partitions after usage_monthly, run in
the monthly job, and the alert sensor alerts once per decision."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.test_guardrails_fixtures import hourly_rows, steady, write_books
from usagebox_pipelines.catalog import SPEND_STATE, USAGE_HOURLY
from usagebox_pipelines.defs.guardrails import guardrail_alerts, guardrail_assets, guardrail_sensors
from usagebox_pipelines.defs.jobs import daily_job, ingest_job, monthly_job
from usagebox_pipelines.defs.metering import metering_assets
from usagebox_pipelines.defs.partitions import month_shards
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # real Dagster runs

GUARDRAIL_KEYS = ["guardrail_decisions", "spend_state", "usage_anomalies"]


def definitions(resource: UsageboxResource | None = None) -> dg.Definitions:
    """What definitions.py holds once the guardrail lists are merged in."""
    return dg.Definitions(
        assets=[*metering_assets, *guardrail_assets],
        jobs=[ingest_job, daily_job, monthly_job],
        sensors=[*guardrail_sensors],
        resources={"usagebox": resource or UsageboxResource()},
    )


def test_asset_graph() -> None:
    graph = definitions().resolve_asset_graph()
    for key in GUARDRAIL_KEYS:
        node = graph.get(dg.AssetKey(key))
        assert node.partitions_def == month_shards  # month × month shard (ADR 0019)
        assert node.group_name == "guardrails"
    parents = {k: graph.get(dg.AssetKey(k)).parent_keys for k in GUARDRAIL_KEYS}
    assert parents["spend_state"] == {dg.AssetKey("usage_monthly")}
    assert parents["usage_anomalies"] == {dg.AssetKey("usage_monthly")}
    assert parents["guardrail_decisions"] == {
        dg.AssetKey("spend_state"),
        dg.AssetKey("usage_anomalies"),
    }
    job = definitions().resolve_job_def("monthly_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys >= {"usage_monthly", *GUARDRAIL_KEYS}
    assert guardrail_alerts.default_status == dg.DefaultSensorStatus.RUNNING


@pytest.fixture
def prepared(tmp_path: Path, store: DeltaStore) -> UsageboxResource:
    books = write_books(tmp_path / "pricebooks")
    store.append(USAGE_HOURLY, hourly_rows(steady("solo", 10, 12)))
    return UsageboxResource(home=store.home, pricebooks=str(books))


def test_monthly_job_materializes_guardrails_and_the_sensor_alerts_once(
    prepared: UsageboxResource,
) -> None:
    defs = definitions(prepared)
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("monthly_job").execute_in_process(
        partition_key="2026-10-01|0", instance=instance
    )
    assert result.success
    materialized = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert set(materialized) >= set(GUARDRAIL_KEYS)
    assert materialized["spend_state"]["by_status"].value == {"hard_stop": 1, "ok": 8}
    assert materialized["guardrail_decisions"]["new_decisions"].value == 2
    spend = prepared.store.read(SPEND_STATE).filter(pl.col("account_id") == "solo")
    assert spend.filter(pl.col("limit_id") == "budget")["status"].item() == "hard_stop"

    # the resource is a generator (it holds the writer lease): open the context as a manager
    with dg.build_sensor_context(instance=instance, resources={"usagebox": prepared}) as context:
        first = guardrail_alerts.evaluate_tick(context)
    assert [e.metadata["status"].value for e in first.asset_events] == ["soft_alert", "hard_stop"]
    with dg.build_sensor_context(instance=instance, resources={"usagebox": prepared}) as context:
        second = guardrail_alerts.evaluate_tick(context)
    assert not second.asset_events and second.skip_message
