"""End to end with the real rater: usage_hourly → rated_usage → drafts → restatement."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from usagebox_pipelines.invoicing.adjustments import billed_for_period, compute_adjustments
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.schemas import USAGE_HOURLY, conform

D = Decimal
BOOKS = Path(__file__).parent / "fixtures" / "pricebooks" / "rating"
PERIOD = "2026-10"


def hourly(rows: list[tuple]) -> pl.DataFrame:
    keys = ["account_id", "meter_id", "model_id", "dimensions", "day", "sum"]
    dicts = []
    for row in rows:
        r = dict(zip(keys, row, strict=True))
        r["hour"] = datetime(2026, 10, r.pop("day"), tzinfo=UTC)
        dicts.append({**r, "sum": D(r["sum"]), "count": 1, "billable": True})
    return conform(pl.DataFrame(dicts), USAGE_HOURLY)


@pytest.fixture(scope="module")
def pricing():
    return load_pricebooks(BOOKS), load_accounts(BOOKS)


MONTH = [
    ("a-all", "output_tokens", "m1", "{}", 1, 3000),
    ("a-all", "input_tokens", "m1", "{}", 1, 2_500_000),
    ("a-all", "gpu_seconds", None, '{"gpu":"h100"}', 2, 7200),
    ("a-all", "gpu_seconds", None, '{"gpu":"h100","region":"eu"}', 2, 3600),
    ("a-all", "tool_calls", None, '{"tool":"web_search"}', 3, 1500),
    ("a-yen", "input_tokens", "m1", "{}", 4, 1_234_567),
]


def test_real_rating_gives_drafts_whose_totals_are_their_lines(pricing):
    books, accounts = pricing
    rated = rate_usage(hourly(MONTH), PERIOD, books, accounts).rated
    invoices, lines = build_draft_invoices(rated, accounts, PERIOD)
    for inv in invoices.iter_rows(named=True):
        own = lines.filter(pl.col("account_id") == inv["account_id"])
        assert inv["total"] == sum(own["amount"].to_list(), D(0))
    by_account = dict(invoices.select("account_id", "currency").iter_rows())
    assert by_account == {"a-all": "USD", "a-min": "USD", "a-yen": "JPY"}
    yen = lines.filter(pl.col("account_id") == "a-yen")["amount"].item()
    assert yen == D(185)  # 185.18505 JPY rounded to whole yen
    desc = lines.filter(pl.col("account_id") == "a-all")["description"].to_list()
    assert "GPU time · h100" in desc and "GPU time · h100, eu" in desc
    kinds = lines.filter(pl.col("account_id") == "a-all")["kind"].to_list()
    assert kinds[-3:] == ["discount", "minimum", "credit"]


def test_late_hours_restate_the_month_to_the_cent(pricing):
    books, accounts = pricing
    first = rate_usage(hourly(MONTH), PERIOD, books, accounts).rated
    _, issued = build_draft_invoices(first, accounts, PERIOD)
    late = [
        ("a-all", "output_tokens", "m1", "{}", 20, 9000),
        ("a-all", "tool_calls", None, '{"tool":"web_search"}', 21, 700),
        ("a-all", "input_tokens", "m1", "{}", 22, 40_000_000),
    ]
    rerated = rate_usage(hourly(MONTH + late), PERIOD, books, accounts).rated
    adj = compute_adjustments(rerated, issued, PERIOD)
    assert not adj.is_empty() and set(adj["account_id"]) == {"a-all"}
    _, now = build_draft_invoices(rerated, accounts, PERIOD)
    carried = adj.with_columns(period=pl.lit("2026-11"))
    billed = billed_for_period(pl.concat([issued, carried]), PERIOD)

    def no_credit(df: pl.DataFrame) -> Decimal:
        return sum(df.filter(pl.col("kind") != "credit")["amount"].to_list(), D(0))

    assert no_credit(billed) == no_credit(now)
