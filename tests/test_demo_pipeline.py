"""The demo month through ingest and rollups equals the generator's independent reference."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from usagebox_demo import write_demo_inputs
from usagebox_pipelines.catalog import QUARANTINE, USAGE_HOURLY
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.stages.verify import verify
from usagebox_pipelines.storage import DeltaStore

KEYS = ["account_id", "meter_id", "model_id", "billable", "hour"]


def test_demo_rollups_match_the_generator_reference(tmp_path: Path) -> None:
    manifest = write_demo_inputs(tmp_path / "in", "2026-10", seed=11, n_events=3000)
    store = DeltaStore(str(tmp_path / "home"))
    summary = ingest_files(store, list(manifest.main_files))
    expected = manifest.expected_ingest()
    assert {k: getattr(summary, k) for k in expected} == expected
    reasons = set(store.read(QUARANTINE)["reason"].to_list())
    assert len(reasons) >= 6  # every kind of planted dirt has its own actionable reason
    update_events(store)
    build_usage_hourly(store, datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    for month in ("2026-09", "2026-10"):
        build_usage_monthly(store, month)
    got = (
        store.read(USAGE_HOURLY)
        .group_by(KEYS)
        .agg(pl.col("sum").sum())
        .filter(pl.col("sum") != 0)
        .sort(KEYS, nulls_last=True)
    )
    want = (
        manifest.expected_usage.group_by(KEYS)
        .agg(pl.col("sum").sum().cast(pl.Decimal(38, 12)))
        .filter(pl.col("sum") != 0)
        .sort(KEYS, nulls_last=True)
    )
    assert got.equals(want.select(got.columns))
    assert all(r.passed for r in verify(store))
