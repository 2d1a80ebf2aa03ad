"""A kill -9 in the middle of an ingest leaves nothing visible; the rerun finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import QUARANTINE, RAW_EVENTS
from usagebox_pipelines.stages.events import committed_raw_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.verify import verify_ingest
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # real SIGKILLs of subprocesses

COMPARE = ["account_id", "event_id", "quantity", "timestamp", "dimensions", "row_number"]


def _commits(table: Path) -> int:
    log = table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.exists() else 0


def _snapshot(store: DeltaStore) -> pl.DataFrame:
    return store.read(RAW_EVENTS).select(COMPARE).sort("event_id")


def test_kill_mid_ingest_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    rows = [event(f"e{i:05d}", qty=i % 97 + 1) for i in range(6000)] + ["{broken"]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    crashed_home = tmp_path / "crashed"
    env = os.environ | {"USAGEBOX_CHUNK_ROWS": "500"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "usagebox_pipelines.cli",
            "ingest",
            str(path),
            "--home",
            str(crashed_home),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    raw_table = crashed_home / "tables" / "raw_events"
    deadline = time.time() + 120
    while _commits(raw_table) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "ingest finished before it could be killed; use more rows"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    crashed = DeltaStore(str(crashed_home))
    assert committed_raw_events(crashed).collect().height == 0  # a partial batch is invisible
    summary = ingest_files(crashed, [path])
    assert summary.accepted == 6000 and summary.rejected == 1

    clean = DeltaStore(str(tmp_path / "clean"))
    ingest_files(clean, [path])
    assert _snapshot(crashed).equals(_snapshot(clean))
    assert crashed.read(QUARANTINE).height == 1
    assert verify_ingest(crashed).passed
