"""`bench/workers.py` runs end to end at a tiny size and prints its one JSON result line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # a generated month and a Dagster run in subprocesses


def test_workers_bench_reports_wall_speedup_and_commit_latency(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/workers.py"), "--events", "2000", "--accounts", "20"]
        + ["--days", "1", "--workers", "1", "--shards", "2", "--stores", "local"]
        + ["--workdir", str(tmp_path)],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "workers" and result["days"] == 1
    (row,) = result["stores"]["local"]["hourly"]
    assert row["workers"] == 1 and row["speedup"] == 1.0 and row["wall_s"] > 0
    assert row["commits"]["usage_hourly"]["commits"] == 1
    # the whole month in one run, then its two month shards one run each
    whole, sharded = result["stores"]["local"]["monthly"]
    assert (whole["runs"], sharded["runs"], result["shards"]) == (1, 2, 2)
    assert whole["commits"]["rated_usage"]["commits"] == 1
    assert sharded["commits"]["rated_usage"]["commits"] == 2
