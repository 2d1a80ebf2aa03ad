"""The demo month shows all four guardrail scenarios: a soft cap (acct-014), a hard stop
(acct-021), a team over its allocation (acct-003, planted) and a token surge (acct-009,
planted); and the planted file is ordinary, ingestible input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from usagebox_demo import generate_usage
from usagebox_demo.guardrail_scenarios import plant_guardrail_scenarios, surge_hour
from usagebox_pipelines import schemas
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.guardrails.anomalies import detect_anomalies
from usagebox_pipelines.guardrails.budgets import build_budget_tree
from usagebox_pipelines.guardrails.state import evaluate_spend
from usagebox_pipelines.pricing import load_accounts, load_pricebooks
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.storage import DeltaStore

MONTH = "2026-10"
MONTH_END = datetime(2026, 11, 1, tzinfo=UTC)


def planted(tmp_path: Path) -> pl.DataFrame:
    (path,) = plant_guardrail_scenarios(tmp_path, MONTH)
    return pl.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


def test_planted_file_is_canonical_and_deterministic(tmp_path: Path) -> None:
    rows = planted(tmp_path)
    assert rows.height == 744 + 40 and rows["event_id"].n_unique() == rows.height
    assert set(rows.columns) >= {"event_id", "account_id", "meter_id", "quantity", "timestamp"}
    again = planted(tmp_path / "again")
    assert again.equals(rows)
    by_account = rows.group_by("account_id").agg(pl.col("quantity").sum()).sort("account_id")
    assert by_account.rows() == [("acct-003", 744 * 21_600), ("acct-009", 40 * 60_000)]


def test_planted_file_ingests_cleanly_and_only_once(tmp_path: Path, store: DeltaStore) -> None:
    paths = plant_guardrail_scenarios(tmp_path, MONTH)
    first = ingest_files(store, paths, "guardrail-demo")
    assert (first.accepted, first.rejected, first.duplicates) == (784, 0, 0)
    assert ingest_files(store, paths, "guardrail-demo").accepted == 0


def demo_usage(tmp_path: Path) -> pl.DataFrame:
    """The default demo month (seed 7, 20,000 events) plus the planted file, rolled up."""
    extra = planted(tmp_path).with_columns(
        quantity=pl.col("quantity").cast(schemas.QTY),
        timestamp=pl.col("timestamp").str.to_datetime(time_zone="UTC").cast(schemas.TS),
        dimensions=pl.col("dimensions").map_elements(
            lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")), return_dtype=pl.String
        ),
    )
    events = pl.concat([generate_usage(MONTH, 7, 20_000), extra], how="diagonal_relaxed")
    rolled = (
        events.with_columns(hour=pl.col("timestamp").dt.truncate("1h"), billable=pl.lit(True))
        .group_by(*schemas.ROLLUP_KEYS, "dimensions", "hour")
        .agg(sum=pl.col("quantity").sum(), count=pl.len())
    )
    return schemas.conform(rolled, schemas.USAGE_HOURLY).with_columns(at=pl.col("hour"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, pl.DataFrame]:
    usage = demo_usage(tmp_path_factory.mktemp("demo"))
    books, accounts = load_pricebooks(DEFAULT_PRICEBOOKS), load_accounts(DEFAULT_PRICEBOOKS)
    tree = build_budget_tree(accounts, usage.get_column("account_id").unique().to_list())
    result = evaluate_spend(usage, tree, MONTH, MONTH_END, books, accounts)
    anomalies = detect_anomalies(result.hourly, MONTH, MONTH_END, accounts)
    return result.state, anomalies


def budget_row(state: pl.DataFrame, account: str) -> dict:
    return state.filter((pl.col("account_id") == account) & (pl.col("limit_id") == "budget")).row(
        0, named=True
    )


def test_demo_soft_cap_and_hard_stop(demo: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    state, _ = demo
    soft, hard = budget_row(state, "acct-014"), budget_row(state, "acct-021")
    assert soft["status"] == "soft_alert" and D(80) <= soft["pct_of_budget"] < D(100)
    assert hard["status"] == "hard_stop" and hard["pct_of_budget"] >= D(100)
    assert hard["enforcement"] == "HARD" and hard["hard_crossed_at"] is not None


def test_demo_team_over_allocation_while_org_has_room(
    demo: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    state, _ = demo
    team, org = budget_row(state, "acct-003"), budget_row(state, "acct-001")
    assert team["status"] == "hard_alert" and team["spend"] > team["budget"]
    assert team["limited_by"] == "acct-003" and team["parent_id"] == "acct-001"
    assert org["effective_remaining"] > 0 and org["status"] in ("ok", "soft_alert")
    assert team["parent_remaining"] == org["effective_remaining"]


def test_demo_token_surge_is_the_only_anomaly(demo: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, anomalies = demo
    assert anomalies.select("account_id", "model_id", "hour", "kind").sort("kind").rows() == [
        ("acct-009", "gpt-4o", surge_hour(MONTH), "spend_spike"),
        ("acct-009", "gpt-4o", surge_hour(MONTH), "token_surge"),
    ]
