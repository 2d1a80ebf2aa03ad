"""Memory is bounded by a partition, not by the month (issue 13): a regression test, not a timer.

One generated month (`bench/generate.py`, the benchmark's own generator: 2,000-account Zipf
sizes, retries, conflicts, corrections, late events) and its first week alone, so both have the
same events per day (the same partition sizes) and the month has ~4x the events. Each is
ingested and run with `usagebox run --month` as a user types it, in its own subprocess, with
small ingest chunks so both files span several chunks. Bounded by a partition (a day, a
chunk, an account shard), both peaks are about equal; a step that held the month (its events or
its hourly rows, and the working memory around them) would grow by more than the extra events'
own size plus the largest account's (a shard cannot be smaller than one account's month),
which is the budget. Peak RSS is the child's own high-water mark (`VmHWM`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
MONTH = "2026-10"
EVENTS = 400_000
CHUNK_ROWS = "25000"
SHARD_ROWS = "20000"  # account shards well below a week's hourly rows, as chunks are
ACCOUNTS = 2000

pytestmark = pytest.mark.slow


def _peak_rss(argv: list[str], logs: Path, env: dict[str, str]) -> int:
    """Run `argv` to completion (exit 0 required); its peak RSS in bytes.

    Read from the child's own `VmHWM` (the high-water mark of its address space, monotonic)
    while it runs, not from `wait4`: Linux carries the parent's high-water mark into a child's
    `ru_maxrss` across fork and exec, so a big pytest process would hide the child's figure.
    """
    err = logs.with_suffix(".err")
    peak = 0
    with logs.open("wb") as out, err.open("wb") as errors:
        proc = subprocess.Popen(argv, stdout=out, stderr=errors, cwd=ROOT, env=env)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
                peak = max(peak, int(line.split()[1]) * 1024)
            except (OSError, StopIteration):  # exiting: the last reading stands
                pass
            time.sleep(0.05)
    assert proc.returncode == 0, err.read_text()[-2000:]
    return peak


def _generate(work: Path) -> tuple[Path, Path]:
    """The month's events and pricebooks under `work`."""
    py = sys.executable
    subprocess.run(
        [py, "bench/generate.py", "--events", str(EVENTS), "--accounts", str(ACCOUNTS),
         "--month", MONTH, "--out", str(work / "input")],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [py, "bench/pricebooks.py", "--out", str(work / "pricebooks"), "--accounts",
         str(ACCOUNTS), "--month", MONTH],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return work / "input/events.parquet", work / "pricebooks"


def _first_week(events: Path, out: Path) -> Path:
    """The same file cut to events before the 8th (late events of the month before included)."""
    cut = datetime(2026, 10, 8, tzinfo=UTC)
    pl.scan_parquet(events).filter(pl.col("timestamp") < cut).sink_parquet(out)
    return out


def _usagebox(*args: str) -> list[str]:
    return [sys.executable, "-m", "usagebox_pipelines.cli", *args]


@pytest.fixture(scope="module")
def peaks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Peak RSS of `ingest` and `run --month` for the week and the month; plus the budget."""
    tmp_path = tmp_path_factory.mktemp("memory")
    month, books = _generate(tmp_path)
    files = {"week": _first_week(month, tmp_path / "week.parquet"), "month": month}
    env = os.environ | {
        "USAGEBOX_CHUNK_ROWS": CHUNK_ROWS,
        "USAGEBOX_SHARD_ROWS": SHARD_ROWS,
        # guardrail shards in this process: the peak measured is this process's own
        "USAGEBOX_GUARDRAIL_WORKERS": "0",
    }
    out = {}
    for label, events in files.items():
        opts = ["--home", str(tmp_path / label), "--pricebooks", str(books)]
        for command, args in (("ingest", [str(events)]), ("run", ["--month", MONTH])):
            argv = _usagebox(command, *args, *opts)
            out[f"{command} {label}"] = _peak_rss(argv, tmp_path / f"{command}-{label}.out", env)
    frames = {k: pl.read_parquet(v) for k, v in files.items()}
    largest = frames["month"].group_by("account_id").len().sort("len").get_column("account_id")[-1]
    sizes = {k: f.estimated_size() for k, f in frames.items()}
    own = {k: f.filter(pl.col("account_id") == largest).estimated_size() for k, f in frames.items()}
    # the extra events, plus once more the largest account's: an account's month is the one
    # unit no step can split (tiers and prefixes are per account, ADR 0002), so its shard
    # grows with the month however small shards are
    out["budget"] = sizes["month"] - sizes["week"] + own["month"] - own["week"]
    return out


def _assert_flat(peaks: dict[str, int], command: str, factor: int = 1) -> None:
    growth = peaks[f"{command} month"] - peaks[f"{command} week"]
    budget = peaks["budget"] * factor
    assert growth < budget, (
        f"{command}: peak RSS grew by {growth / 2**20:.0f} MiB from a week to a month at the "
        f"same events per day (budget {budget / 2**20:.0f} MiB, {factor}x the extra events' "
        "size and the largest account's): a step holds the month in memory. Peaks: "
        + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in peaks.items() if k != "budget")
    )


def test_ingest_peak_memory_does_not_grow_with_the_file(peaks: dict[str, int]) -> None:
    """Twice the extra events' size: by design (ADR 0010) ingest looks a whole file's keys up
    once, so it holds 8-16 bytes of hashes per row of the file, plus the rows a later chunk
    refers to; collecting the file's rows would cost several times their size."""
    _assert_flat(peaks, "ingest", factor=2)


def test_run_month_peak_memory_does_not_grow_with_the_month(peaks: dict[str, int]) -> None:
    """Twice the budget, as for ingest: the working memory around each account shard
    (Polars' buffers, the writer, Dagster's events) also grows with the largest account, and
    a run measures 42-56 MiB of growth against the 51 MiB budget, too close to hold on a
    loaded CI machine. A step that holds the month grows by 180 MiB here (before issue 13's
    row groups and per-day commits), which this fails on."""
    _assert_flat(peaks, "run", factor=2)
