"""Partition-scoped commits from concurrent processes, with no writer lease (issue 14).

Real processes (`tests/partition_writer.py`) start at the same instant and commit one UTC day
of `hour_builds` again and again, on a local home and on a moto S3 home (conditional puts, no
unsafe rename). Afterwards the table alone shows the outcome: every commit in `history()`,
exact row counts, and a partition written by two writers holds one writer's whole day.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from tests.partition_writer import day_rows
from usagebox_pipelines.catalog import HOUR_BUILDS
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # concurrent writer subprocesses (and a moto server)

REPEATS = 5
DAYS = [date(2026, 10, d) for d in (1, 2, 3, 4)]


@pytest.fixture(params=["local", "s3"])
def any_home(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "home")
    return request.getfixturevalue("s3_home")


def _writers(home: str, mode: str, days: list[date], repeats: int = REPEATS) -> list[str]:
    """Run one writer per day (`w0`, `w1`, ...) at once; their logs (conflict retries)."""
    start = time.time() + 4  # every writer has imported everything by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.partition_writer", home, f"w{i}", day.isoformat()]
            + ["--mode", mode, "--repeats", str(repeats), "--start", str(start)],
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, day in enumerate(days)
    ]
    logs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        logs.append(err)
    return logs


def _commits_by_writer(store: DeltaStore) -> Counter[str]:
    """Commits in `history()` per writer; every commit of the table is some writer's."""
    dt = store.table(HOUR_BUILDS)
    assert dt is not None
    history = dt.history()
    assert len(history) == dt.version() + 1  # nothing but the writers' commits
    return Counter(c.get("writer", "?") for c in history)


def _rows_per_day(store: DeltaStore) -> dict[date, int]:
    frame = store.read(HOUR_BUILDS).group_by(day=pl.col("hour").dt.date()).len()
    return dict(zip(frame["day"], frame["len"], strict=True))


def test_four_processes_replace_distinct_days_concurrently(any_home: str) -> None:
    _writers(any_home, "replace", DAYS)
    store = DeltaStore(any_home)
    assert _commits_by_writer(store) == {f"w{i}": REPEATS for i in range(len(DAYS))}
    assert _rows_per_day(store) == dict.fromkeys(DAYS, 24)
    last = store.read(HOUR_BUILDS).group_by("run_id").len()
    assert sorted(last["run_id"]) == [f"w{i}:{REPEATS - 1}" for i in range(len(DAYS))]


def test_four_processes_append_to_distinct_days_concurrently(any_home: str) -> None:
    _writers(any_home, "append", DAYS)
    store = DeltaStore(any_home)
    assert _commits_by_writer(store) == {f"w{i}": REPEATS for i in range(len(DAYS))}
    assert _rows_per_day(store) == dict.fromkeys(DAYS, 24 * REPEATS)


def test_two_writers_on_one_day_retry_the_conflict_and_leave_one_whole_day(
    any_home: str,
) -> None:
    logs = _writers(any_home, "replace", [DAYS[0], DAYS[0]], repeats=8)
    store = DeltaStore(any_home)
    assert _commits_by_writer(store) == {"w0": 8, "w1": 8}  # every overwrite landed
    assert any("commit conflict, retrying" in log for log in logs), logs
    final = store.read(HOUR_BUILDS)
    assert final.height == 24  # one day, never both writers' rows
    assert final["run_id"].n_unique() == 1  # one writer's whole day, never a mix
    assert final["run_id"].item(0) in ("w0:7", "w1:7")


def test_an_append_with_an_app_transaction_is_committed_once(tmp_path: Path) -> None:
    """A retried (or rerun) append of the same (app_id, version) is skipped, never doubled."""
    store = DeltaStore(str(tmp_path / "home"))
    rows = day_rows(DAYS[0], "once")
    store.append(HOUR_BUILDS, rows, txn=("ingest-b-1", 0))
    version = store.version(HOUR_BUILDS)
    assert store.append(HOUR_BUILDS, rows, txn=("ingest-b-1", 0)) == version
    assert store.read(HOUR_BUILDS).height == 24
    store.append(HOUR_BUILDS, rows, txn=("ingest-b-1", 1))
    store.append(HOUR_BUILDS, rows, txn=("ingest-b-2", 0))  # another attempt: its own app id
    assert store.read(HOUR_BUILDS).height == 72
    dt = store.table(HOUR_BUILDS)
    assert dt is not None and dt.transaction_version("ingest-b-1") == 1
