"""What the Dagster UI shows: descriptions, owners, column schemas, per-partition row counts,
where partitions start, and materialisations recorded by `usagebox ingest` / `close`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import USAGE_HOURLY
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.config import Settings
from usagebox_pipelines.definitions import defs
from usagebox_pipelines.defs import partitions
from usagebox_pipelines.runner import dagster_instance, run_month
from usagebox_pipelines.storage import DeltaStore


def test_every_asset_and_check_has_a_description_an_owner_and_a_schema() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.description, f"{name} has no description"
        assert node.owners, f"{name} has no owner"
        assert {"deltalake", "polars"} <= set(node.kinds), name
        schema = node.metadata.get("dagster/column_schema")
        assert schema is not None and schema.columns, f"{name} has no column schema"
        assert any(c.description for c in schema.columns), f"{name}: no column comments"
    checks = list(graph.asset_check_keys)
    assert len(checks) >= 7
    for check in checks:
        spec = graph.get(check)
        assert spec.description, f"check {check.name} has no description"


def test_the_resource_reads_the_home_from_the_environment() -> None:
    resource = defs.resources["usagebox"]
    assert isinstance(resource.home, dg.EnvVar) and resource.home.env_var_name == "USAGEBOX_HOME"


def test_partitions_start_at_the_configured_or_the_first_event_month(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("USAGEBOX_PARTITION_START", raising=False)
    monkeypatch.delenv("USAGEBOX_HOME", raising=False)
    assert partitions.partition_start() == datetime(2024, 1, 1, tzinfo=UTC)  # no home: the floor
    home = tmp_path / "home"
    monkeypatch.setenv("USAGEBOX_HOME", str(home))
    assert partitions.partition_start() == datetime(2024, 1, 1, tzinfo=UTC)  # empty home
    files = [write_jsonl(tmp_path / "a.jsonl", [event("e1", ts="2026-09-17T03:00:00Z")])]
    assert cli_main(["ingest", str(files[0]), "--home", str(home)]) == 0
    assert partitions.partition_start() == datetime(2026, 9, 1, tzinfo=UTC)
    monkeypatch.setenv("USAGEBOX_PARTITION_START", "2025-03-14")
    assert partitions.partition_start() == datetime(2025, 3, 1, tzinfo=UTC)


@pytest.mark.slow  # real Dagster runs
def test_each_day_partition_records_its_own_row_count_and_cli_writes_show_in_dagster(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    rows = [
        event(f"e{i}", qty=i, ts=f"2026-10-0{1 + i % 3}T{i % 24:02d}:00:00Z") for i in range(40)
    ]
    assert (
        cli_main(["ingest", str(write_jsonl(tmp_path / "a.jsonl", rows)), "--home", str(home)]) == 0
    )
    settings = Settings.resolve(str(home))
    instance = dagster_instance(settings)
    ingested = instance.get_latest_materialization_event(dg.AssetKey("raw_events"))
    assert ingested is not None and ingested.run_id == ""  # reported by the CLI, runless
    assert ingested.asset_materialization.metadata["dagster/row_count"].value == 40
    folded = instance.get_latest_materialization_event(dg.AssetKey("events"))
    assert folded is not None
    for entry in (ingested, folded):  # how long the load and the fold took (no step times)
        assert 0 < entry.asset_materialization.metadata["seconds"].value < 60

    assert all(o.success for o in run_month(settings, "2026-10"))
    hourly = DeltaStore(settings.home).read(USAGE_HOURLY)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("usage_hourly")), limit=100
    ).records
    by_day = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert len(by_day) == 31
    for day in ("2026-10-01", "2026-10-02", "2026-10-03", "2026-10-20"):
        expected = hourly.filter(pl.col("hour").dt.strftime("%Y-%m-%d") == day).height
        assert by_day[day]["dagster/row_count"].value == expected, day
    assert by_day["2026-10-01"]["dagster/row_count"].value > 0
    assert by_day["2026-10-20"]["dagster/row_count"].value == 0
    meta = by_day["2026-10-01"]
    assert meta["dagster/uri"].value.endswith("/tables/usage_hourly")
    assert meta["delta_version"].value == DeltaStore(settings.home).version(USAGE_HOURLY)

    assert cli_main(["close", "2026-10", "--approve", "--home", str(home)]) == 0
    issued = instance.get_latest_materialization_event(dg.AssetKey("issued_invoices"))
    assert issued is not None and issued.asset_materialization.partition == "2026-10-01"
    assert issued.asset_materialization.metadata["dagster/row_count"].value >= 1
