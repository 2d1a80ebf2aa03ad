"""Reconciliation: each status triggered by a small fixture; UTC days; tolerances."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from tests.fixtures.vendors.synth import usage_frame, usage_row
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.reconcile import (
    metered_daily,
    reconcile,
    reconciliation_summary,
)
from usagebox_pipelines.reconciliation.reports import reconciliation_context
from usagebox_pipelines.reconciliation.schemas import METERED_DAILY, RECONCILIATION, VENDOR_COSTS
from usagebox_pipelines.schemas import conform

D1, D2 = date(2026, 10, 1), date(2026, 10, 2)
M = Decimal(1_000_000)


@pytest.fixture(scope="module")
def mapping():
    return load_vendor_mapping(DEFAULT_PRICEBOOKS)


def vc(vendor, day, model, meter, *, qty=None, amount=None, kind=None, cls="usage", period=None):
    """One vendor_costs row (usage rows carry qty, costs rows carry amount, FOCUS both)."""
    if kind is None:
        kind = "focus" if vendor == "focus" else ("costs" if amount is not None else "usage")
    return {
        "vendor": vendor,
        "provider": vendor,
        "source_kind": kind,
        "billing_period": period or day.strftime("%Y-%m"),
        "date": day,
        "model_id": model,
        "meter_id": meter,
        "quantity": None if qty is None else Decimal(qty),
        "amount": None if amount is None else Decimal(amount),
        "currency": "USD",
        "charge_class": cls,
    }


def costs_frame(rows: list[dict]) -> pl.DataFrame:
    return conform(pl.DataFrame(rows, infer_schema_length=None), VENDOR_COSTS)


def metered(rows: list[tuple]) -> pl.DataFrame:
    frame = pl.DataFrame(
        rows, schema=["vendor", "date", "model_id", "meter_id", "quantity"], orient="row"
    )
    return conform(frame, METERED_DAILY)


def both(vendor, day, model, meter, qty, amount) -> list[dict]:
    """A vendor usage line and its cost line for the same grain."""
    return [vc(vendor, day, model, meter, qty=qty), vc(vendor, day, model, meter, amount=amount)]


def _row(recon: pl.DataFrame, **eq) -> dict:
    rows = recon.filter(pl.all_horizontal([pl.col(k) == v for k, v in eq.items()]))
    assert rows.height == 1, rows
    return rows.row(0, named=True)


def status_of(recon: pl.DataFrame, **eq) -> str:
    return _row(recon, **eq)["status"]


@pytest.fixture(scope="module")
def recon(mapping):
    """One fixture that triggers every status (gpt-4o output: $10/1M; input: $2.50/1M)."""
    ours = metered(
        [
            ("openai", D1, "gpt-4o", "output_tokens", Decimal(1_000_000)),  # matched
            ("openai", D1, "gpt-4o", "input_tokens", Decimal(1_000_000)),  # under
            ("openai", D2, "gpt-4o", "output_tokens", Decimal(1_000_000)),  # over
            ("openai", D2, "gpt-4o", "input_tokens", Decimal(2_000_000)),  # rate
            ("anthropic", D1, "claude-opus-4-1", "input_tokens", Decimal(500)),  # meter_only
        ]
    )
    vendor = costs_frame(
        both("openai", D1, "gpt-4o", "output_tokens", 1_000_000, "10.00")
        + both("openai", D1, "gpt-4o", "input_tokens", 1_200_000, "3.00")
        + both("openai", D2, "gpt-4o", "output_tokens", 900_000, "9.00")
        + both("openai", D2, "gpt-4o", "input_tokens", 2_000_000, "5.60")
        + both("openai", D2, "gpt-4o-mini", "output_tokens", 1_000_000, "0.60")  # vendor_only
        + [
            vc("focus", D1, None, None, amount="-25", cls="credit"),
            vc("focus", D1, None, None, amount="1.75", cls="tax"),
            vc(
                "focus",
                date(2026, 9, 30),
                "claude-3-5-haiku",
                "output_tokens",
                qty=-10000,
                amount="-0.04",
                cls="correction",
                period="2026-10",
            ),
            vc("openai", date(2026, 11, 1), "gpt-4o", "output_tokens", qty=5, amount="1"),
        ]
    )
    return reconcile(ours, vendor, mapping, "2026-10")


def test_schema_and_period(recon):
    assert recon.schema == RECONCILIATION
    assert set(recon["period"]) == {"2026-10"}
    assert recon["date"].max() < date(2026, 11, 1)  # November usage is not this month's


def test_matched(recon):
    row = _row(recon, date=D1, model_id="gpt-4o", meter_id="output_tokens")
    assert row["status"] == "matched"
    assert row["expected_amount"] == Decimal(10) == row["billed_amount"]
    assert row["quantity_variance"] == 0 and row["amount_variance"] == 0


def test_under_metered_is_unbilled_usage(recon):
    row = _row(recon, date=D1, model_id="gpt-4o", meter_id="input_tokens")
    assert row["status"] == "under_metered"
    assert row["quantity_variance"] == 200_000
    assert row["amount_variance"] == Decimal("0.5")  # 200k unmetered tokens × $2.50/1M
    assert row["quantity_variance_pct"] == Decimal("16.666666666667")  # of the vendor qty


def test_over_metered(recon):
    assert status_of(recon, date=D2, model_id="gpt-4o", meter_id="output_tokens") == "over_metered"


def test_rate_mismatch_when_quantities_agree_but_money_does_not(recon):
    row = _row(recon, date=D2, model_id="gpt-4o", meter_id="input_tokens")
    assert row["status"] == "rate_mismatch"
    assert row["amount_variance"] == Decimal("0.6")  # billed 5.60 vs 2M × $2.50/1M
    assert "list 2.5/1M" in row["note"]


def test_vendor_only_and_meter_only(recon):
    assert status_of(recon, model_id="gpt-4o-mini") == "vendor_only"
    only = recon.filter(pl.col("model_id") == "claude-opus-4-1").row(0, named=True)
    assert only["status"] == "meter_only" and only["vendor_quantity"] is None
    assert only["expected_amount"] == Decimal(500) * 15 / M


def test_credits_tax_and_corrections_are_their_own_rows(recon):
    other = recon.filter(pl.col("charge_class") != "usage").sort("charge_class")
    assert other["status"].to_list() == ["correction", "credit", "tax"]
    assert other["billed_amount"].to_list() == [Decimal("-0.04"), Decimal(-25), Decimal("1.75")]
    assert other.filter(pl.col("status") == "correction")["date"][0] == date(2026, 9, 30)


def test_summary_separates_usage_from_other_charges(recon):
    summary = reconciliation_summary(recon)
    assert Decimal(summary["openai"]["billed"]) == Decimal("28.20")
    assert summary["openai"]["statuses"]["under_metered"] == 1
    assert summary["focus"]["other_charges"] == {
        "correction": "-0.040000000000",
        "credit": "-25.000000000000",
        "tax": "1.750000000000",
    }


def test_tolerances_are_configurable(mapping):
    ours = metered([("openai", D1, "gpt-4o", "output_tokens", Decimal(996_000))])
    vendor = costs_frame(both("openai", D1, "gpt-4o", "output_tokens", 1_000_000, "10.00"))
    default = reconcile(ours, vendor, mapping, "2026-10")  # 0.4% off: inside the 0.5% default
    strict = reconcile(ours, vendor, mapping, "2026-10", qty_tolerance_pct=Decimal("0.1"))
    assert default["status"].to_list() == ["matched"]
    assert strict["status"].to_list() == ["under_metered"]
    assert strict["qty_tolerance_pct"][0] == Decimal("0.1")
    off_by_2c = costs_frame(both("openai", D1, "gpt-4o", "output_tokens", 996_000, "9.98"))
    assert reconcile(ours, off_by_2c, mapping, "2026-10")["status"][0] == "rate_mismatch"
    loose = reconcile(ours, off_by_2c, mapping, "2026-10", amount_tolerance=Decimal("0.05"))
    assert loose["status"][0] == "matched"


def test_costs_only_vendor_quantity_is_implied_from_the_amount(mapping):
    ours = metered([("anthropic", D1, "claude-sonnet-4-5", "output_tokens", Decimal(100_000))])
    vendor = costs_frame([vc("anthropic", D1, "claude-sonnet-4-5", "output_tokens", amount="3")])
    row = reconcile(ours, vendor, mapping, "2026-10").row(0, named=True)
    assert row["vendor_quantity_source"] == "implied_from_amount"
    assert row["vendor_quantity"] == 200_000 and row["status"] == "under_metered"


def test_zero_on_both_sides_is_matched(mapping):
    vendor = costs_frame([vc("anthropic", D1, "claude-sonnet-4-5", "cache_write_1h_tokens", qty=0)])
    row = reconcile(metered([]), vendor, mapping, "2026-10").row(0, named=True)
    assert row["status"] == "matched"


def test_metered_daily_routes_by_model_and_cuts_days_at_utc_midnight(mapping):
    late = datetime(2026, 10, 1, 23, tzinfo=UTC)  # 01:00 on Oct 2 in Berlin: still Oct 1 UTC
    usage = usage_frame(
        [
            usage_row("acct-001", "input_tokens", "gpt-4o", late, 100),
            usage_row("acct-002", "input_tokens", "gpt-4o", late, 50, billable=False),
            usage_row("acct-001", "input_tokens", "gpt-4o", datetime(2026, 10, 2, tzinfo=UTC), 7),
            usage_row("acct-001", "output_tokens", "claude-3-5-haiku", late, 9),
            usage_row("acct-001", "output_tokens", "claude-haiku-4-5", late, 4),
            usage_row("acct-001", "gpu_seconds", None, late, 3600),
            usage_row("acct-001", "tool_calls", "gpt-4o", late, 2),
        ]
    )
    daily = metered_daily(usage.lazy(), mapping)
    assert daily.schema == METERED_DAILY
    got = {
        (r["vendor"], r["date"].day, r["model_id"], r["meter_id"]): r["quantity"]
        for r in daily.iter_rows(named=True)
    }
    assert got == {
        ("openai", 1, "gpt-4o", "input_tokens"): 150,  # non-billable usage still cost us
        ("openai", 2, "gpt-4o", "input_tokens"): 7,
        ("focus", 1, "claude-3-5-haiku", "output_tokens"): 9,
        ("anthropic", 1, "claude-haiku-4-5", "output_tokens"): 4,
    }


def test_vendor_filter(recon, mapping):
    ours = metered([("openai", D1, "gpt-4o", "output_tokens", Decimal(1))])
    only = reconcile(
        ours,
        costs_frame([vc("focus", D1, None, None, amount="1", cls="tax")]),
        mapping,
        "2026-10",
        vendors=["focus"],
    )
    assert set(only["vendor"]) == {"focus"}


def test_batch_and_long_context_lines_are_checked_at_their_own_rates(mapping):
    ours = metered([("anthropic", D1, "claude-sonnet-4-5", "input_tokens", Decimal(2_000_000))])
    rows = [
        vc("anthropic", D1, "claude-sonnet-4-5", "input_tokens", qty=1_000_000, kind="usage")
        | {"service_tier": "batch"},
        vc("anthropic", D1, "claude-sonnet-4-5", "input_tokens", qty=1_000_000, kind="usage")
        | {"context_window": "200k-1M"},
        vc("anthropic", D1, "claude-sonnet-4-5", "input_tokens", amount="7.50", kind="costs"),
    ]
    row = reconcile(ours, costs_frame(rows), mapping, "2026-10").row(0, named=True)
    assert row["vendor_list_amount"] == Decimal("7.5")  # 1M at batch $1.50 + 1M at long $6
    assert row["status"] == "matched"


def test_a_day_billed_only_in_total_is_reconciled_at_day_level_and_says_so(mapping):
    ours = metered(
        [
            ("openai", D1, "gpt-4o", "input_tokens", Decimal(1_000_000)),
            ("openai", D1, "gpt-4o", "output_tokens", Decimal(100_000)),
        ]
    )
    total = [vc("openai", D1, None, None, amount="3.50", kind="costs")]  # no group_by
    recon = reconcile(ours, costs_frame(total), mapping, "2026-10")
    assert recon.height == 1  # the metered rows are compared in the day's row, not meter_only
    row = recon.row(0, named=True)
    assert row["status"] == "matched" and row["expected_amount"] == Decimal("3.5")
    assert row["model_id"] is None and "reconciled per day, not per model" in row["note"]


def test_a_day_line_item_naming_only_a_meter_is_reconciled_per_day_and_meter(mapping):
    ours = metered(
        [
            ("openai", D1, "gpt-4o", "input_tokens", Decimal(1_000_000)),  # $2.50 at list
            ("openai", D1, "gpt-4o", "output_tokens", Decimal(100_000)),  # $1.00
            ("openai", D1, "gpt-4o-mini", "output_tokens", Decimal(1_000_000)),  # $0.60
        ]
    )
    line = [vc("openai", D1, None, "output_tokens", amount="2.00", kind="costs")]  # "output"
    recon = reconcile(ours, costs_frame(line), mapping, "2026-10")
    day = recon.filter(pl.col("vendor_quantity_source") == "day_total").row(0, named=True)
    assert day["meter_id"] == "output_tokens" and day["model_id"] is None
    assert day["expected_amount"] == Decimal("1.6") and day["amount_variance"] == Decimal("0.4")
    assert day["status"] == "under_metered"
    assert "per day and meter, not per model" in day["note"]
    # input was not billed at all: it stays meter_only; output is compared in the day row
    rest = recon.filter(pl.col("vendor_quantity_source").ne_missing("day_total"))
    assert rest.select("meter_id", "status").rows() == [("input_tokens", "meter_only")]
    levels = reconciliation_summary(recon)["openai"]["levels"]
    assert levels == {
        "day × line item: reconciled per day and meter, not per model": 1,
        "day × model × meter": 1,
    }


def test_the_summary_says_a_day_total_is_reconciled_per_day(mapping):
    ours = metered([("openai", D1, "gpt-4o", "output_tokens", Decimal(100_000))])
    total = [vc("openai", D1, None, None, amount="1.00", kind="costs")]
    summary = reconciliation_summary(reconcile(ours, costs_frame(total), mapping, "2026-10"))
    assert summary["openai"]["levels"] == {"day total: reconciled per day, not per model": 1}
    assert Decimal(summary["openai"]["variance"]) == 0


def test_the_report_names_the_day_total_level(mapping):
    ours = metered([("openai", D1, "gpt-4o", "output_tokens", Decimal(100_000))])
    total = [vc("openai", D1, None, None, amount="1.00", kind="costs")]
    ctx = reconciliation_context(reconcile(ours, costs_frame(total), mapping, "2026-10"))
    [vendor] = ctx["vendors"]
    assert vendor["levels"] == [{"level": "day total: reconciled per day, not per model", "len": 1}]
