"""Two things at once on one home, as real processes: nothing lost, nothing counted twice.

Each case starts real `usagebox` processes at the same moment on one home and afterwards checks
the invariants of CONTRACT §5 from the tables alone. The home's writer lease (`lease.py`)
serialises the writers; these tests prove the outcome a user sees, whatever the interleaving.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import INGEST_LOG, INVOICES, PERIOD_CLOSES
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.lease import LOCK_FILE, holds_lease, writer_lease
from usagebox_pipelines.stages.events import events_frame, update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rating import build_rated_usage
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.stages.verify import verify
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # concurrent usagebox subprocesses

ROWS_PER_FILE = 20_000
CHUNK_ENV = {"USAGEBOX_CHUNK_ROWS": "2000"}  # many commits per file: the writers overlap


def _usagebox(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "usagebox_pipelines.cli", *args],
        env=os.environ | CHUNK_ENV | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, json.loads(out) if out.strip() else {}, err


def _events_file(path: Path, prefix: str, rows: int = ROWS_PER_FILE) -> Path:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    return write_jsonl(
        path,
        [
            event(f"{prefix}-{i:06d}", f"acct-{i % 7:03d}", qty=i % 50 + 1,
                  ts=(start + timedelta(seconds=97 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for i in range(rows)
        ],
    )  # fmt: skip


def _wait_for_commits(table: Path, commits: int, proc: subprocess.Popen) -> None:
    log = table / "_delta_log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(list(log.glob("*.json"))) >= commits:
            return
        time.sleep(0.01)
    raise AssertionError("the first ingest finished before the second started; use more rows")


def _assert_ingest_invariants(store: DeltaStore) -> None:
    results = {r.name: r for r in verify(store)}
    for name in ("1_ingest_rows_reconcile", "2_events_unique"):
        assert results[name].passed, results[name].as_dict()


def test_two_ingests_of_different_files_both_land(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = _events_file(tmp_path / "a.jsonl", "a")
    b = _events_file(tmp_path / "b.jsonl", "b")
    first = _usagebox("ingest", str(a), "--home", str(home))
    _wait_for_commits(home / "tables" / "raw_events", 2, first)  # mid-batch: its rows are
    second = _usagebox("ingest", str(b), "--home", str(home))  # not yet committed to ingest_log
    outcomes = [_finish(p) for p in (first, second)]
    assert [code for code, _, _ in outcomes] == [0, 0]
    assert sum(summary["accepted"] for _, summary, _ in outcomes) == 2 * ROWS_PER_FILE
    store = DeltaStore(str(home))
    assert events_frame(store).select(pl.len()).collect().item() == 2 * ROWS_PER_FILE
    _assert_ingest_invariants(store)


def test_the_same_file_twice_at_once_loads_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = _events_file(tmp_path / "a.jsonl", "a")
    procs = [_usagebox("ingest", str(a), "--home", str(home)) for _ in range(2)]
    outcomes = [_finish(p) for p in procs]
    assert [code for code, _, _ in outcomes] == [0, 0]
    accepted = sorted(summary["accepted"] for _, summary, _ in outcomes)
    duplicates = sorted(summary["duplicates"] for _, summary, _ in outcomes)
    assert accepted == [0, ROWS_PER_FILE]
    assert duplicates == [0, ROWS_PER_FILE]
    store = DeltaStore(str(home))
    assert store.read(INGEST_LOG).height == 1
    assert events_frame(store).select(pl.len()).collect().item() == ROWS_PER_FILE
    _assert_ingest_invariants(store)


def test_ingest_during_run_month_is_safe(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _events_file(tmp_path / "a.jsonl", "a", rows=5_000)
    assert _finish(_usagebox("ingest", str(first), "--home", str(home)))[0] == 0
    late = _events_file(tmp_path / "b.jsonl", "b", rows=5_000)
    run = _usagebox("run", "--month", "2026-10", "--json", "--home", str(home))
    time.sleep(1.0)  # the run has taken the lease (Dagster start-up alone takes longer)
    ingest = _usagebox("ingest", str(late), "--home", str(home))
    run_code, _, run_err = _finish(run, timeout=600)
    ingest_code, summary, _ = _finish(ingest, timeout=600)
    assert (run_code, ingest_code) == (0, 0), run_err
    assert summary["accepted"] == 5_000
    store = DeltaStore(str(home))
    assert events_frame(store).select(pl.len()).collect().item() == 10_000
    # the second run picks up what arrived during the first: hourly = events again
    assert (
        _finish(_usagebox("run", "--month", "2026-10", "--json", "--home", str(home)), 600)[0] == 0
    )
    results = {r.name: r for r in verify(store)}
    for name in ("1_ingest_rows_reconcile", "2_events_unique", "3_hourly_equals_events"):
        assert results[name].passed, results[name].as_dict()


def test_two_approvals_of_one_month_issue_each_number_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    books = tmp_path / "pricebooks"
    shutil.copytree(DEFAULT_PRICEBOOKS, books)
    store = DeltaStore(str(home))
    rows = [
        event("o-001", "acct-001", 1_000_000, "2026-10-02T10:05:00Z"),
        event("o-007", "acct-007", 2_000_000, "2026-10-07T12:00:00Z"),
    ]
    ingest_files(store, [write_jsonl(tmp_path / "oct.jsonl", rows)])
    update_events(store)
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    build_usage_hourly(store, start, end)
    build_usage_monthly(store, "2026-10")
    build_rated_usage(store, books, "2026-10")

    args = ("close", "2026-10", "--approve", "--home", str(home), "--pricebooks", str(books))
    outcomes = [_finish(p, timeout=600) for p in [_usagebox(*args), _usagebox(*args)]]
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    invoices = store.read(INVOICES).filter(pl.col("status") == "issued")
    assert invoices["invoice_number"].is_unique().all()
    assert store.read(PERIOD_CLOSES).height == 1
    numbers = sorted(invoices["invoice_number"].to_list())
    assert numbers == [f"UBX-2026-{i:06d}" for i in range(1, len(numbers) + 1)]
    assert len({inv["issued_at"] for inv in invoices.to_dicts()}) == 1


def test_a_busy_home_fails_in_one_line_naming_the_holder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEASE, str(home)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        a = _events_file(tmp_path / "a.jsonl", "a", rows=10)
        code, _, err = _finish(
            _usagebox("ingest", str(a), "--home", str(home), env={"USAGEBOX_LEASE_WAIT": "0.5"})
        )
        assert code == 2
        assert err.count("\n") == 1 and f"pid {holder.pid}" in err and "busy" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_frees_the_home_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEASE, str(home)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    began = time.monotonic()
    with writer_lease(str(home), "test", wait=5):
        assert holds_lease(str(home))
    assert time.monotonic() - began < 2
    assert (home / LOCK_FILE).exists()


def test_the_lease_is_reentrant_within_a_process_and_exclusive_across_threads(
    tmp_path: Path,
) -> None:
    home = str(tmp_path / "home")
    entered = threading.Event()
    with writer_lease(home, "outer"):
        with writer_lease(home, "inner"):
            assert holds_lease(home)

        def other() -> None:
            with writer_lease(home, "thread", wait=30):
                entered.set()

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        assert not entered.is_set()  # another thread waits for the holder
    thread.join(timeout=10)
    assert entered.is_set()
    assert not holds_lease(home)


def test_waiting_is_bounded_and_says_so(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LEASE, home], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageboxError, match="busy"):
            with writer_lease(home, "test", wait=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()


_HOLD_LEASE = """
import sys, time
from usagebox_pipelines.lease import writer_lease
with writer_lease(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(600)
"""
