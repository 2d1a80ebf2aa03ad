"""`usagebox maintain`: catalog metadata onto older tables, compaction, and a vacuum that keeps
what issued invoices were rated from."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENTS, INVOICES, QUARANTINE
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.schemas import conform
from usagebox_pipelines.stages.maintenance import maintain
from usagebox_pipelines.storage import DeltaStore


def test_a_table_written_without_metadata_gets_the_catalogs(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "home"))
    rows = conform(pl.DataFrame(schema=QUARANTINE.schema), QUARANTINE.schema).to_arrow()
    write_deltalake(store.uri(QUARANTINE), rows)  # as an older release (or another tool) did
    assert DeltaTable(store.uri(QUARANTINE)).metadata().description is None
    report = maintain(store)
    dt = DeltaTable(store.uri(QUARANTINE))
    assert (dt.metadata().name, dt.metadata().description) == ("quarantine", QUARANTINE.description)
    comments = {f.name: f.metadata.get("comment") for f in dt.schema().fields}
    assert comments["reason"] == QUARANTINE.comments["reason"]
    assert report["quarantine"]["metadata_commits"] == 2 + len(QUARANTINE.comments)
    assert maintain(store)["quarantine"]["metadata_commits"] == 0  # idempotent


def test_vacuum_keeps_the_stamped_events_version_and_drops_the_rest(tmp_path: Path, capsys) -> None:
    home = tmp_path / "home"
    for n in range(3):  # three ingests: `events` gets a version (and files) per batch
        path = write_jsonl(tmp_path / f"{n}.jsonl", [event(f"e{n}")])
        assert cli_main(["ingest", str(path), "--home", str(home)]) == 0
    store = DeltaStore(str(home))
    stamped = 0
    invoices = pl.DataFrame({"events_table_version": [stamped]})
    store.append(INVOICES, invoices)  # an issued invoice rated from version 0
    capsys.readouterr()
    argv = ["maintain", "--vacuum", "--retention-hours", "0", "--json", "--home", str(home)]
    assert cli_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"]["files_compacted"] >= 2 and report["events"]["files_vacuumed"] >= 1
    assert store.read(EVENTS).height == 3  # the table itself is unchanged
    assert store.read(EVENTS, version=stamped).height == 1  # the stamped version still reads
    with pytest.raises(Exception, match="(?i)not found|no such file"):
        store.read(EVENTS, version=1)  # an unstamped old version: its files are gone


@pytest.mark.slow  # a real Dagster run
def test_the_weekly_maintenance_job_runs_in_dagster(tmp_path: Path) -> None:
    from usagebox_pipelines.config import Settings
    from usagebox_pipelines.definitions import defs
    from usagebox_pipelines.runner import execute_job

    assert defs.resolve_schedule_def("weekly_maintenance").job_name == "maintenance_job"
    home = tmp_path / "home"
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1")])
    assert cli_main(["ingest", str(path), "--home", str(home)]) == 0
    ops = {"maintain_tables": {"config": {"retention_hours": 0}}}
    outcome = execute_job(Settings.resolve(str(home)), "maintenance_job", ops_config=ops)
    assert outcome.success, outcome.failures
    assert DeltaStore(str(home)).read(EVENTS).height == 1
