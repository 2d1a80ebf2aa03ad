"""generate_usage: exact, deterministic, realistic clean events (shape, skew, agent runs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest

from usagebox_demo import USAGE_COLUMNS, generate_usage, iter_usage

MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def usage() -> pl.DataFrame:
    return generate_usage("2026-10", seed=7, n_events=20_000)


def test_schema_and_exact_count(usage):
    assert usage.columns == list(USAGE_COLUMNS)
    assert usage.height == 20_000
    assert usage.schema["quantity"] == pl.Decimal(38, 12)
    assert usage.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert not any(dtype.is_float() for dtype in usage.schema.values())
    assert usage["event_id"].n_unique() == usage.height
    assert usage["event_id"].str.contains(r"^evt_[0-9a-f]{16}$").all()
    required = usage.select("event_id", "account_id", "meter_id", "quantity", "timestamp")
    assert required.null_count().sum_horizontal().item() == 0


def test_deterministic_per_seed(usage):
    assert generate_usage("2026-10", seed=7, n_events=20_000).equals(usage)
    other = generate_usage("2026-10", seed=8, n_events=20_000)
    assert not other["event_id"].equals(usage["event_id"])


def test_streaming_equals_whole_frame():
    whole = generate_usage("2026-02", seed=1, n_events=3_000)
    parts = list(iter_usage("2026-02", seed=1, n_events=3_000))
    assert len(parts) == 28
    assert pl.concat(parts).equals(whole)


def test_timestamps_in_month_sorted_with_daily_and_weekly_rhythm(usage):
    ts = usage["timestamp"]
    assert ts.min() >= MONTH_START and ts.max() < MONTH_END
    assert ts.is_sorted()
    by_hour = usage.group_by(pl.col("timestamp").dt.hour().alias("h")).len()
    count = dict(zip(by_hour["h"], by_hour["len"], strict=True))
    assert count[15] > 3 * count[3]
    by_dow = usage.group_by(pl.col("timestamp").dt.weekday().alias("d")).len()
    dow = dict(zip(by_dow["d"], by_dow["len"], strict=True))
    assert max(dow[6], dow[7]) < min(dow[d] for d in range(1, 6))


def test_account_skew(usage):
    tokens = usage.filter(pl.col("unit") == "tokens")
    per = tokens.group_by("account_id").agg(pl.col("quantity").sum()).sort("quantity")
    share = {r["account_id"]: r["quantity"] for r in per.iter_rows(named=True)}
    total = sum(share.values())
    top5 = sum(share[f"acct-00{i}"] for i in range(1, 6))
    assert top5 / total > Decimal("0.5")
    assert usage["account_id"].n_unique() == 50
    assert share["acct-050"] / total < Decimal("0.01")


def test_meters_models_products_units(usage):
    combos = usage.select("meter_id", "product_id", "unit").unique()
    assert set(combos.iter_rows()) == {
        ("input_tokens", "llm-api", "tokens"),
        ("output_tokens", "llm-api", "tokens"),
        ("cached_input_tokens", "llm-api", "tokens"),
        ("gpu_seconds", "gpu-cloud", "seconds"),
        ("tool_calls", "agent-tools", "calls"),
    }
    llm = pl.col("unit") == "tokens"
    assert usage.filter(llm)["model_id"].null_count() == 0
    assert usage.filter(~llm)["model_id"].null_count() == usage.filter(~llm).height
    models = set(usage["model_id"].drop_nulls())
    assert any(m.startswith("gpt-") for m in models) and any(
        m.startswith("claude-") for m in models
    )


def test_quantities(usage):
    whole = usage.filter(pl.col("meter_id") != "gpu_seconds")["quantity"]
    assert (whole.cast(pl.Int64).cast(pl.Decimal(38, 12)) == whole).all()
    assert (usage["quantity"] > 0).all()
    gpu = usage.filter(pl.col("meter_id") == "gpu_seconds")["quantity"]
    assert (gpu.cast(pl.Int64).cast(pl.Decimal(38, 12)) != gpu).any(), "some fractional seconds"
    assert ((gpu * 10).cast(pl.Int64).cast(pl.Decimal(38, 12)) == gpu * 10).all()


def test_dimensions_are_canonical_json(usage):
    for text in usage["dimensions"].unique():
        assert json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) == text
    gpu = usage.filter(pl.col("meter_id") == "gpu_seconds")["dimensions"]
    assert gpu.str.contains(r'^\{"gpu":"(h100|a100|l4)"\}$').all()
    tools = usage.filter(pl.col("meter_id") == "tool_calls")["dimensions"]
    assert tools.str.contains('"tool":"').all()
    features = usage.filter(pl.col("unit") == "tokens")["dimensions"].str.json_path_match(
        "$.feature"
    )
    assert {"chat", "search", "summarize", "code-review"} <= set(features)
    agents = usage.with_columns(agent=pl.col("dimensions").str.json_path_match("$.agent_id"))
    per_account = agents.group_by("account_id").agg(pl.col("agent").drop_nulls().n_unique())
    assert per_account["agent"].max() <= 5


def test_agent_runs_tie_tool_and_llm_calls_of_one_account(usage):
    runs = (
        usage.filter(pl.col("correlation_id").is_not_null())
        .group_by("correlation_id")
        .agg(
            accounts=pl.col("account_id").n_unique(),
            tools=(pl.col("meter_id") == "tool_calls").sum(),
            llm=(pl.col("unit") == "tokens").sum(),
            gpu=(pl.col("meter_id") == "gpu_seconds").sum(),
            span=pl.col("timestamp").max() - pl.col("timestamp").min(),
            agents=pl.col("dimensions").str.json_path_match("$.agent_id").n_unique(),
        )
    )
    assert runs.height > 50
    assert (runs["accounts"] == 1).all() and (runs["agents"] == 1).all()
    assert (runs["tools"] >= 1).all() and (runs["llm"] >= 2).all() and (runs["gpu"] == 0).all()
    assert runs["span"].max().total_seconds() < 15 * 60
    assert usage["correlation_id"].null_count() > 0, "standalone calls have no correlation id"


def test_many_accounts_continue_numbering():
    df = generate_usage("2026-10", seed=3, n_events=30_000, n_accounts=2_000)
    numbers = df["account_id"].str.strip_prefix("acct-").cast(pl.Int64)
    assert numbers.max() > 999 and numbers.max() <= 2_000
    assert df["account_id"].str.contains(r"^acct-\d{3,4}$").all()
    assert df.filter(pl.col("account_id") == "acct-001").height > df.height / 10


def test_tiny_and_empty():
    assert generate_usage("2026-10", seed=1, n_events=0).columns == list(USAGE_COLUMNS)
    assert generate_usage("2026-10", seed=1, n_events=1).height == 1
    assert generate_usage("2026-10", seed=1, n_events=37).height == 37
    for month, n in (("2026-13", 5), ("2026-1", 5), ("2026-10", -1)):
        with pytest.raises(ValueError):
            generate_usage(month, seed=1, n_events=n)
