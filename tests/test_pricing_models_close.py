"""The new price models through a real close: issued invoices show each line type, every line is
explained (rule, tier, list cost and markup earned, account term), and the invoice reproduces."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tests.conftest import event
from tests.test_close_scenario import OCT, build_month, ingest, issued
from usagebox_pipelines.config import Settings
from usagebox_pipelines.stages.books import all_lines
from usagebox_pipelines.stages.close import close_month
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.explain import explain_invoice
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.storage import DeltaStore

ROOT = Path(__file__).parent.parent
GPU = {"dimensions": {"gpu": "h100"}, "model_id": None}
EVENTS = [
    event("in", "acct-001", 20_000_000, "2026-10-02T10:00:00Z", model_id="gpt-4.1"),
    event("out", "acct-001", 150_000, "2026-10-20T10:00:00Z", "output_tokens", model_id="gpt-4.1"),
    event("gpu", "acct-001", 7_200, "2026-10-05T10:00:00Z", "gpu_seconds", **GPU),
    event("seats", "acct-001", 3, "2026-10-01T00:00:00Z", "seats", model_id=None),
    event("opus", "acct-005", 200_000, "2026-10-03T10:00:00Z", "output_tokens",
          model_id="claude-opus-4-1"),
]  # fmt: skip


def test_new_models_are_issued_explained_and_reproduced(tmp_path: Path) -> None:
    books = tmp_path / "pricebooks"
    shutil.copytree(ROOT / "pricebooks" / "examples" / "resale", books)
    shutil.copy(ROOT / "pricebooks" / "vendors.yaml", books / "vendors.yaml")
    store, settings = DeltaStore(str(tmp_path / "home")), Settings(str(tmp_path / "home"), books)
    ingest(store, tmp_path / "in" / "october.jsonl", EVENTS)
    build_month(store, books, OCT)
    refresh_drafts(store, books, OCT)
    close_month(store, settings, OCT, approve=True, now=datetime(2026, 11, 3, tzinfo=UTC))
    numbers = dict(issued(store, OCT).select("account_id", "invoice_number").iter_rows())
    lines = all_lines(store).filter(pl.col("invoice_number") == numbers["acct-001"])
    # output on 2026-10-20 is priced by resale@2026-10-16: 8.00 list + 30 % = 10.40 / 1 M
    assert lines.select("description", pl.col("amount").cast(pl.String)).rows() == [
        ("gpt-4.1 · Input tokens — vendor list price + markup", "50.00"),
        ("gpt-4.1 · Output tokens — included usage", "0.00"),
        ("gpt-4.1 · Output tokens — vendor list price + markup", "0.52"),
        ("GPU time — tier 1", "3.19"),
        ("GPU time — tier 1, tier flat fee", "5.00"),
        ("GPU time — tier 2", "2.79"),
        ("GPU time — tier 2, tier flat fee", "10.00"),
        ("Seats — flat fee", "49.00"),
        ("Discount (12.5% of usage)", "-15.06"),  # 12.5 % of 120.50
        ("Spend cap (maximum 60.00 USD a month)", "-45.44"),  # 105.44 → 60.00
    ]
    report = explain_invoice(store, settings, numbers["acct-001"])
    by_line = {line["description"]: line for line in report.lines}
    markup = by_line["gpt-4.1 · Input tokens — vendor list price + markup"]
    assert markup["rule"]["markup"]["list_price"] == "2"
    assert markup["markup"] == {
        "list_cost": "40",
        "markup_earned": "10",
        "text": "20,000,000 × list 2.00/1M = 40; + 25% markup = 50 (earned 10)",
    }
    assert by_line["gpt-4.1 · Output tokens — included usage"]["arithmetic"].startswith(
        "100,000 included (free_units 100,000)"
    )
    assert "tier 2 flat fee 10" in by_line["GPU time — tier 2, tier flat fee"]["arithmetic"]
    cap = by_line["Spend cap (maximum 60.00 USD a month)"]
    assert cap["rule"]["maximum_spend"] == "60.00" and cap["arithmetic"].endswith("-45.44")
    opus = all_lines(store).filter(pl.col("invoice_number") == numbers["acct-005"])
    assert opus.select("description", pl.col("amount").cast(pl.String)).rows() == [
        ("claude-opus-4-1 · Output tokens", "18.00"),
        ("claude-opus-4-1 · Output tokens — capped at 10.00 a month", "-8.00"),
    ]
    capped = explain_invoice(store, settings, numbers["acct-005"], line_no=2).lines[0]
    assert capped["rule"]["maximum"] == "10.00"
    for number in numbers.values():
        assert verify_invoice(store, settings, number).reproduced
