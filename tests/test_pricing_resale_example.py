"""The example pricebook `resale` (pricebooks/examples/resale) prices the demo month with every
model of docs/pricing.md, and the draft invoices show each line type."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from usagebox_demo import generate_usage
from usagebox_pipelines import schemas
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.pricing import load_accounts, load_pricebooks, rate_usage

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "pricebooks" / "examples" / "resale"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resale")
    for file in EXAMPLE.glob("*.yaml"):
        shutil.copy(file, out / file.name)
    shutil.copy(ROOT / "pricebooks" / "vendors.yaml", out / "vendors.yaml")
    return out


@pytest.fixture(scope="module")
def hourly() -> pl.DataFrame:
    """The demo month's events rolled up by hour, plus one month of platform seats."""
    events = generate_usage("2026-10", seed=7, n_events=20_000)
    seats = pl.DataFrame(
        {
            "account_id": ["acct-001"],
            "meter_id": ["seats"],
            "quantity": [D(3)],
            "timestamp": [datetime(2026, 10, 2, tzinfo=UTC)],
        }
    )
    rows = (
        pl.concat([events, seats], how="diagonal_relaxed")
        .with_columns(hour=pl.col("timestamp").dt.truncate("1h"), billable=pl.lit(True))
        .group_by(*schemas.ROLLUP_KEYS, "dimensions", "hour")
        .agg(sum=pl.col("quantity").sum(), count=pl.len())
    )
    return schemas.conform(rows, schemas.USAGE_HOURLY)


def test_every_model_prices_the_demo_month(folder: Path, hourly: pl.DataFrame) -> None:
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    result = rate_usage(hourly, "2026-10", books, accounts)
    assert result.unrated.is_empty()
    assert all(not dtype.is_float() for dtype in result.rated.dtypes)
    models = set(result.rated["price_model"].drop_nulls())
    assert models >= {
        "markup", "included", "per_unit", "graduated", "volume", "tier_flat", "package",
        "flat", "price_cap",
    }  # fmt: skip
    assert set(result.rated["price_version"].drop_nulls()) == {"2026-10-01", "2026-10-16"}
    invoices, lines = build_draft_invoices(result.rated, accounts, "2026-10")
    details = "\n".join(lines["description"].to_list())
    for text in (
        "vendor list price + markup",
        "included usage",
        "tier flat fee",
        "capped at 10.00 a month",
        "Spend cap (maximum",
        "Discount coupon welcome",
    ):
        assert text in details
    # the visible lines add up to each invoice total, and no price or account cap is exceeded
    totals = lines.group_by("account_id").agg(pl.col("amount").sum())
    joined = invoices.join(totals, on="account_id")
    assert (joined["total"] == joined["amount"]).all()
    caps = {"acct-001": D("60.00"), "acct-002": D("25.00")}
    for account_id, cap in caps.items():
        assert invoices.filter(pl.col("account_id") == account_id)["total"].item() <= cap
    opus = lines.filter(
        pl.col("model_id") == "claude-opus-4-1", pl.col("meter_id") == "output_tokens"
    )
    assert (opus.group_by("account_id").agg(pl.col("amount").sum())["amount"] <= D("10.00")).all()
