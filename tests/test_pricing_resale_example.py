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


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


#: Per-event usage (ADR 0018): card payments of acct-001 and of acct-003 (New York: its
#: 1 Oct 02:00Z payment is September there, so its 3 Oct payment is its first, free), and
#: search calls resold at each call's own cost.
PER_EVENT = [
    ("pay-1", "acct-001", "payments", "10.00", "2026-10-02T09:00:00Z", "{}"),
    ("pay-2", "acct-001", "payments", "1.00", "2026-10-03T09:00:00Z", "{}"),
    ("pay-3", "acct-001", "payments", "20.00", "2026-10-20T09:00:00Z", "{}"),
    ("pay-4", "acct-001", "payments", "500.00", "2026-10-21T09:00:00Z", "{}"),
    ("ny-1", "acct-003", "payments", "100.00", "2026-10-01T02:00:00Z", "{}"),
    ("ny-2", "acct-003", "payments", "100.00", "2026-10-03T09:00:00Z", "{}"),
    ("ny-3", "acct-003", "payments", "40.00", "2026-10-04T09:00:00Z", "{}"),
    ("s-1", "acct-002", "search_calls", "1", "2026-10-05T09:00:00Z", '{"cost":"0.0132"}'),
    ("s-2", "acct-002", "search_calls", "1", "2026-10-06T09:00:00Z", '{"cost":"0.25"}'),
]


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    """`events` rows of the per-event usage (what the stage reads for per-event rates)."""
    frame = pl.DataFrame(
        {
            "event_id": [e[0] for e in PER_EVENT],
            "account_id": [e[1] for e in PER_EVENT],
            "meter_id": [e[2] for e in PER_EVENT],
            "quantity": [D(e[3]) for e in PER_EVENT],
            "timestamp": [_at(e[4]) for e in PER_EVENT],
            "dimensions": [e[5] for e in PER_EVENT],
        }
    ).with_columns(
        hour=pl.col("timestamp").dt.truncate("1h"),
        billable=pl.lit(True),
        status=pl.lit("ok"),
        event_date=pl.col("timestamp").dt.date(),
    )
    return schemas.conform(frame, schemas.EVENTS)


@pytest.fixture(scope="module")
def hourly(events: pl.DataFrame) -> pl.DataFrame:
    """The demo month's events rolled up by hour, plus one month of platform seats and the
    per-event usage."""
    demo = generate_usage("2026-10", seed=7, n_events=20_000)
    seats = pl.DataFrame(
        {
            "account_id": ["acct-001"],
            "meter_id": ["seats"],
            "quantity": [D(3)],
            "timestamp": [datetime(2026, 10, 2, tzinfo=UTC)],
        }
    )
    per_event = events.select(demo.columns)
    rows = (
        pl.concat([demo, seats, per_event], how="diagonal_relaxed")
        .with_columns(hour=pl.col("timestamp").dt.truncate("1h"), billable=pl.lit(True))
        .group_by(*schemas.ROLLUP_KEYS, "dimensions", "hour")
        .agg(sum=pl.col("quantity").sum(), count=pl.len())
    )
    return schemas.conform(rows, schemas.USAGE_HOURLY)


def test_per_event_rates_price_the_transactions_in_each_accounts_month(
    folder: Path, hourly: pl.DataFrame, events: pl.DataFrame
) -> None:
    """acct-001: 10.00 free (first), 1.00 → min 0.50, 20.00 → 0.58 + 0.30, 500.00 → max 5.00
    = 6.38. acct-003 (New York): 100.00 free, 40.00 → 1.16 + 0.30 = 1.46. acct-002: its
    searches at their own 0.0132 + 0.25."""
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    rated = rate_usage(hourly, "2026-10", books, accounts, events=events).rated
    per_event = rated.filter(pl.col("rate_id").is_in(["card-payments", "search-resale"]))
    totals = per_event.group_by("account_id").agg(pl.col("amount").sum()).sort("account_id")
    assert totals.rows() == [
        ("acct-001", D("6.38")),
        ("acct-002", D("0.2632")),
        ("acct-003", D("1.46")),
    ]
    assert set(per_event["price_version"]) == {"2026-10-01", "2026-10-16"}


def test_every_model_prices_the_demo_month(
    folder: Path, hourly: pl.DataFrame, events: pl.DataFrame
) -> None:
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    result = rate_usage(hourly, "2026-10", books, accounts, events=events)
    assert result.unrated.is_empty()
    assert all(not dtype.is_float() for dtype in result.rated.dtypes)
    models = set(result.rated["price_model"].drop_nulls())
    assert models >= {
        "markup", "included", "per_unit", "graduated", "volume", "tier_flat", "package",
        "flat", "price_cap", "percentage", "transaction_fee", "transaction_min",
        "transaction_max", "dynamic",
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
        "transaction(s) × fixed fee 0.30",
        "transaction(s) at the minimum of 0.50 per transaction",
        "transaction(s) at the maximum of 5.00 per transaction",
        "each event's own price",
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
