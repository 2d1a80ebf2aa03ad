"""Demo vendor exports: real formats, and the reconciliation finds every planted discrepancy."""

from __future__ import annotations

import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from pypdf import PdfReader

from tests.fixtures.vendors.synth import rated_usage, usage_hourly
from usagebox_demo.vendor_exports import write_vendor_exports
from usagebox_pipelines.config import ASSETS_DIR, DEFAULT_PRICEBOOKS
from usagebox_pipelines.reconciliation.attribution import cost_attribution
from usagebox_pipelines.reconciliation.loaders import load_vendor_exports
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.reconcile import metered_daily, reconcile
from usagebox_pipelines.reconciliation.reports import render_reconciliation_reports

PERIOD = "2026-10"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    mapping = load_vendor_mapping(DEFAULT_PRICEBOOKS)
    usage = usage_hourly(PERIOD)
    out = tmp_path_factory.mktemp("exports")
    planted = write_vendor_exports(usage, out, PERIOD, mapping, seed=3)
    loads = {
        v: load_vendor_exports(v, [out / v], mapping) for v in ("openai", "anthropic", "focus")
    }
    costs = pl.concat([r.costs for r in loads.values()])
    recon = reconcile(metered_daily(usage, mapping), costs, mapping, PERIOD)
    return {
        "mapping": mapping,
        "usage": usage,
        "out": out,
        "planted": planted,
        "loads": loads,
        "costs": costs,
        "recon": recon,
    }


def _kinds(demo, kind: str) -> list[dict]:
    return [d for d in demo["planted"]["discrepancies"] if d["kind"] == kind]


def test_every_planted_kind_is_present(demo):
    kinds = {d["kind"] for d in demo["planted"]["discrepancies"]}
    assert kinds == {
        "unmetered_usage",
        "missed_rate_change",
        "credit",
        "tax",
        "correction",
        "restated_day",
    }
    assert all(not r.review.height for r in demo["loads"].values())  # everything maps


@pytest.mark.parametrize("kind", ["unmetered_usage", "missed_rate_change"])
def test_usage_discrepancies_are_found_with_their_amount(demo, kind):
    recon = demo["recon"]
    for d in _kinds(demo, kind):
        row = recon.filter(
            (pl.col("vendor") == d["vendor"])
            & (pl.col("date") == date.fromisoformat(d["date"]))
            & (pl.col("model_id") == d["model_id"])
            & (pl.col("meter_id") == d["meter_id"])
        ).row(0, named=True)
        assert row["status"] == d["expected_status"], (d, row)
        assert row["amount_variance"] == d["expected_amount"]


@pytest.mark.parametrize("kind", ["credit", "tax", "correction"])
def test_credit_tax_and_correction_lines_are_shown_separately(demo, kind):
    (d,) = _kinds(demo, kind)
    row = demo["recon"].filter(pl.col("charge_class") == kind).row(0, named=True)
    assert row["status"] == kind and row["vendor"] == "focus"
    assert row["billed_amount"] == d["expected_amount"]
    assert row["date"] == date.fromisoformat(d["date"])


def test_restated_day_supersedes_the_first_export(demo):
    (d,) = _kinds(demo, "restated_day")
    day = date.fromisoformat(d["date"])
    superseded = demo["loads"]["anthropic"].superseded
    assert set(superseded["date"]) == {day}
    assert superseded["superseded_by_file"].str.contains("20261105T060000Z").all()
    current = demo["costs"].filter(
        (pl.col("vendor") == "anthropic")
        & (pl.col("date") == day)
        & (pl.col("source_kind") == "costs")
    )
    assert current["amount"].sum() - superseded["amount"].sum() == d["expected_amount"] > 0
    recon = demo["recon"].filter((pl.col("vendor") == "anthropic") & (pl.col("date") == day))
    expected = {"matched"} | {
        p["expected_status"] for p in _kinds(demo, "missed_rate_change") if p["date"] == d["date"]
    }
    assert set(recon["status"]) <= expected


def test_nothing_else_is_flagged(demo):
    flagged = demo["recon"].filter(
        (pl.col("charge_class") == "usage") & (pl.col("status") != "matched")
    )
    planted = [
        d
        for d in demo["planted"]["discrepancies"]
        if d["kind"] in ("unmetered_usage", "missed_rate_change")
        and d["expected_status"] != "matched"
    ]
    assert flagged.height == len(planted) >= 3


def test_exports_are_in_the_vendors_real_formats(demo):
    files = demo["planted"]["files"]
    pages = [json.loads(Path(p).read_text()) for p in files["openai"] if "costs_" in p]
    assert [p["has_more"] for p in pages] == [True] * (len(pages) - 1) + [False]
    assert all(p["object"] == "page" and p["next_page"] for p in pages[:-1])
    bucket = pages[0]["data"][0]
    assert bucket["end_time"] - bucket["start_time"] == 86400
    raw = Path(files["openai"][0]).read_text()
    assert '"value": "' not in raw and '"currency": "usd"' in raw  # dollars as JSON numbers
    report = json.loads(Path(files["anthropic"][0]).read_text())
    result = report["data"][0]["results"][0]
    assert isinstance(result["amount"], str) and result["currency"] == "USD"  # cents as text
    header = Path(files["focus"][0]).read_text().splitlines()[0].split(",")
    for col in ("BilledCost", "ChargeCategory", "ChargeClass", "ConsumedQuantity", "SkuMeter"):
        assert col in header


def test_same_seed_same_exports(demo, tmp_path):
    again = write_vendor_exports(demo["usage"], tmp_path, PERIOD, demo["mapping"], seed=3)
    assert again["discrepancies"] == demo["planted"]["discrepancies"]
    for vendor, paths in demo["planted"]["files"].items():
        for a, b in zip(paths, again["files"][vendor], strict=True):
            assert Path(a).read_bytes() == Path(b).read_bytes()


def test_reports_are_formula_safe_and_summary_comes_first(demo):
    recon = demo["recon"].with_columns(
        note=pl.when(pl.col("status") == "credit")
        .then(pl.lit('=HYPERLINK("http://evil.example","x")'))
        .otherwise("note")
    )
    attribution = cost_attribution(
        demo["usage"], demo["costs"], rated_usage(demo["usage"], PERIOD), demo["mapping"], PERIOD
    )
    files = render_reconciliation_reports(
        recon, attribution, changes=demo["loads"]["anthropic"].superseded
    )
    paths = {name: io.BytesIO(data) for name, (_, data) in files.items()}
    text = files["reconciliation_csv"][1].decode("utf-8")
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    (credit,) = _kinds(demo, "credit")
    assert f",{credit['expected_amount']:.12f}," in text  # numbers stay numbers, negatives too
    margin = pl.read_csv(paths["margin_csv"], infer_schema=False)
    accounts = margin.filter(pl.col("row_kind") == "account")
    pcts = [Decimal(x) for x in accounts["margin_pct"].drop_nulls()]
    assert pcts == sorted(pcts)  # worst margin first
    pages = [p.extract_text() for p in PdfReader(paths["reconciliation_pdf"]).pages]
    assert "Largest variances" in pages[0] and "under metered" in pages[0]
    assert "Every line not matched" not in pages[0]
    assert any("Restated vendor days" in p for p in pages[1:])
    margin_text = PdfReader(paths["margin_pdf"]).pages[0].extract_text()
    assert "Gross margin" in margin_text and "acct-00" in margin_text


def test_sample_exports_in_assets_load(demo):
    for vendor in ("openai", "anthropic", "focus"):
        folder = ASSETS_DIR / "sample_vendor_exports" / vendor
        assert load_vendor_exports(vendor, [folder], demo["mapping"]).costs.height
