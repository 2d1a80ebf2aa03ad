"""Invariant: the monthly steps give the same rows whether the month is one shard or many.

Rating, guardrails and drafts process a month in shards of whole accounts (whole hierarchies
for guardrails) so memory is bounded by a shard (`usagebox_pipelines.shards`). Each step is
run twice over copies of one home, once with every account in one shard and once with shards
of a few rows (every account alone, hierarchies kept together), and every table it writes
must hold the same rows. The month is the benchmark's generator at small size: Zipf account
sizes, hierarchies, discounts, prepaid credit, HARD budgets with `after_hard_stop: waive` (so
waivers and hard-stop decisions occur), and a committed account without usage.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from usagebox_pipelines import shards
from usagebox_pipelines.catalog import (
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    RATED_USAGE,
    SPEND_STATE,
    UNRATED_USAGE,
    USAGE_ANOMALIES,
    Table,
)
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.contract import WAIVER_RATE
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.guardrails import (
    POOL_FROM_SHARDS,
    guardrail_workers,
    refresh_guardrails,
)
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rating import build_rated_usage
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.storage import DeltaStore

ROOT = Path(__file__).resolve().parents[1]
MONTH = "2026-10"
NOW = datetime(2026, 10, 21, 7, 30, tzinfo=UTC)
SOFT = 'budget: {monthly: "500.00", enforcement: SOFT}'
HARD = 'budget: {monthly: "3.00", enforcement: HARD}, after_hard_stop: waive'

# listed, committed, and without a single event: its minimum line must come exactly once
IDLE = '  acct-idle: {name: "Idle Co", email: ap@idle.example.com, minimum_commit: "40.00"}\n'

pytestmark = pytest.mark.slow

#: Every table the monthly steps after `usage_monthly` write.
MONTHLY_TABLES: list[Table] = [
    RATED_USAGE, UNRATED_USAGE, SPEND_STATE, USAGE_ANOMALIES, GUARDRAIL_DECISIONS,
    INVOICES, INVOICE_LINES,
]  # fmt: skip


@pytest.fixture(scope="module")
def month_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A home with the month ingested and rolled up (nothing rated yet), and its pricebooks."""
    work = tmp_path_factory.mktemp("shards")
    py = sys.executable
    subprocess.run(
        [py, "bench/generate.py", "--events", "15000", "--accounts", "60", "--month", MONTH,
         "--out", str(work / "input")],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    books = work / "pricebooks"
    subprocess.run(
        [py, "bench/pricebooks.py", "--out", str(books), "--accounts", "60", "--month", MONTH],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    accounts = books / "accounts.yaml"
    text = accounts.read_text()
    assert SOFT in text
    accounts.write_text(text.replace(SOFT, HARD) + IDLE)
    store = DeltaStore(str(work / "home"))
    ingest_files(store, [work / "input/events.parquet"])
    update_events(store)
    build_usage_hourly(store, *month_bounds(MONTH))
    build_usage_monthly(store, MONTH)
    return work / "home", books


def _run_month(home: Path, books: Path) -> dict[str, pl.DataFrame]:
    """Every table the monthly steps write, after rating, guardrails, rating again (waivers
    use the decisions) and drafts."""
    store = DeltaStore(str(home))
    build_rated_usage(store, books, MONTH)
    refresh_guardrails(store, books, MONTH, NOW, run_id="shards")
    build_rated_usage(store, books, MONTH)
    refresh_drafts(store, books, MONTH, run_id="shards")
    return {t.name: _canonical(store.read(t)) for t in MONTHLY_TABLES}


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows in a total order (row order is not part of a table), volatile ids left out."""
    frame = frame.drop([c for c in ("decided_at", "run_id", "created_at") if c in frame.columns])
    return frame.sort(frame.columns, nulls_last=True)


def test_sharded_month_equals_one_shard(
    month_home: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, books = month_home
    whole_home, sharded_home = tmp_path / "whole", tmp_path / "sharded"
    shutil.copytree(home, whole_home)
    shutil.copytree(home, sharded_home)
    monkeypatch.setattr(shards, "SHARD_ROWS", 10**9)
    monkeypatch.setenv("USAGEBOX_GUARDRAIL_WORKERS", "0")
    whole = _run_month(whole_home, books)
    monkeypatch.setattr(shards, "SHARD_ROWS", 3)
    # and the guardrail shards evaluated by two worker processes, not this one
    monkeypatch.setenv("USAGEBOX_GUARDRAIL_WORKERS", "2")
    assert guardrail_workers(POOL_FROM_SHARDS) == 2
    sharded = _run_month(sharded_home, books)
    for name, rows in whole.items():
        assert sharded[name].equals(rows), name
    # the scenario exercises what sharding could break: contract lines of an account without
    # usage, hierarchies, waivers after hard stops, decisions
    rated = whole["rated_usage"]
    idle = rated.filter(pl.col("account_id") == "acct-idle")
    assert idle.get_column("line_kind").to_list() == ["minimum"]
    assert rated.filter(pl.col("rate_id") == WAIVER_RATE).height > 0
    assert whole["guardrail_decisions"].filter(pl.col("to_status") == "hard_stop").height > 0
    assert whole["invoices"].height == 61  # the 60 generated accounts and acct-idle


def test_shards_cover_every_account_once() -> None:
    """Invariant: every account is in exactly one shard, in id order; a shard starts where the
    running weight passes a multiple of the bound; accounts without weight are placed too."""
    weight = pl.DataFrame({"account_id": ["b", "a", "d", "c"], "w": [5, 1, 9, 2]})
    cut = shards.account_shards(weight, also=["e", "a"], max_rows=4)
    assert [a for shard in cut for a in shard] == ["a", "b", "c", "d", "e"]
    assert cut == [["a", "b"], ["c"], ["d"], ["e"]]
    assert shards.account_shards(weight.clear(), max_rows=4) == [[]]
