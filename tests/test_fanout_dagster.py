"""Fan-out by partition: four Dagster runs of `hourly_job`, one UTC day each, launched at once
with the multiprocess executor (`dagster job execute`, each step in its own process) against a
moto S3 home, build the same `usage_hourly` as a sequential in-process run on another home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import HOUR_BUILDS, USAGE_HOURLY
from usagebox_pipelines.config import Settings
from usagebox_pipelines.runner import execute_job
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # four Dagster runs in subprocesses against moto S3

DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]


def _events_file(tmp_path: Path) -> Path:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    rows = [
        event(
            f"e{n}",
            account=f"acct-00{n % 5 + 1}",
            qty=n % 17 + 1,
            ts=(start + timedelta(minutes=37 * n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            meter=("input_tokens", "output_tokens")[n % 2],
        )
        for n in range(4 * 24 * 60 // 37)
    ]
    return write_jsonl(tmp_path / "events.jsonl", rows)


def _loaded(home: str, path: Path) -> DeltaStore:
    store = DeltaStore(home)
    ingest_files(store, [path])
    update_events(store)
    return store


def _launch(home: str, day: str, dagster_home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "usagebox_pipelines.definitions"]
        + ["-j", "hourly_job", "--tags", json.dumps({"dagster/partition": day})],
        env=os.environ | {"USAGEBOX_HOME": home, "DAGSTER_HOME": str(dagster_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns)


def test_four_day_partitions_built_concurrently_equal_a_sequential_build(
    tmp_path: Path, s3_home: str
) -> None:
    path = _events_file(tmp_path)
    parallel, sequential = _loaded(s3_home, path), _loaded("s3://billing/sequential", path)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()  # its SQLite schema, made once

    runs = [_launch(s3_home, day, dagster_home) for day in DAYS]
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-2000:]

    for day in DAYS:
        outcome = execute_job(
            Settings.resolve(sequential.home),
            "hourly_job",
            partition_key=day,
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert outcome.success, outcome.failures

    built = _sorted(parallel.read(USAGE_HOURLY))
    assert built.height > 0 and built["hour"].dt.date().n_unique() == len(DAYS)
    assert built.equals(_sorted(sequential.read(USAGE_HOURLY)))
    assert parallel.read(HOUR_BUILDS).height == sequential.read(HOUR_BUILDS).height == 24 * 4

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records()
        assert len(records) == len(DAYS) and all(r.dagster_run.is_success for r in records)
        spans = sorted((r.start_time, r.end_time) for r in records)
        assert spans[1][0] < spans[0][1], spans  # runs overlapped: they did not queue
        for record in records:
            logs = instance.all_logs(record.dagster_run.run_id)
            assert any("multiprocess" in (e.message or "") for e in logs)
