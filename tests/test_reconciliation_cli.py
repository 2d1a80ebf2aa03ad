"""`usagebox reconcile` on real exports: the summary adds up, incomplete exports say so,
re-pulls change nothing, review-only months get month-named reports, old tables are refused."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
from deltalake import write_deltalake

from tests.conftest import event, write_jsonl
from tests.fixtures.vendors.synth import usage_frame, usage_row
from usagebox_pipelines.catalog import (
    COST_ATTRIBUTION,
    RECONCILIATION,
    USAGE_HOURLY,
    VENDOR_COSTS,
    VENDOR_IGNORED,
    VENDOR_REVIEW,
)
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.storage import DeltaStore

REAL = Path(__file__).parent / "fixtures" / "vendors" / "real"


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    events = write_jsonl(tmp_path / "events.jsonl", [event("e1", ts="2024-09-18T10:00:00Z")])
    assert cli_main(["ingest", str(events), "--home", str(home)]) == 0
    return home


def _reconcile(capsys, home: Path, vendor: str, *paths: Path, month: str | None = None):
    capsys.readouterr()
    argv = ["reconcile", "--vendor", vendor, *map(str, paths), "--home", str(home)]
    code = cli_main(argv + (["--month", month] if month else []))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_focus_sample_summary_adds_up_and_a_re_pull_changes_nothing(tmp_path, capsys):
    home = _home(tmp_path)
    sample = REAL / "focus" / "focus_1.0_sample_slice.csv"
    code, out, err = _reconcile(capsys, home, "focus", sample)
    assert code == 0 and err == ""
    assert out["loaded"]["status"] == "complete"
    # One Oracle row charged on 2024-09-30 is billed in the 2024-10 billing period.
    assert [m["period"] for m in out["months"]] == ["2024-09", "2024-10"]
    summaries = [m["summary"]["focus"] for m in out["months"]]
    for summary in summaries:
        parts = sum(Decimal(summary[k]) for k in ("mapped", "review", "ignored"))
        assert Decimal(summary["billed"]) == parts
    assert sum(Decimal(s["billed"]) for s in summaries) == Decimal("2.38681455949")
    summary = summaries[0]
    assert summary["currencies"]["USD"]["lines"] == {"mapped": 3, "review": 102, "ignored": 17}
    reports = out["months"][0]["reports"]
    assert reports["reconciliation_csv"].endswith("reconciliation_2024-09.csv")  # not _unknown
    assert reports["vendor_review_csv"].endswith("vendor_review_2024-09.csv")
    store = DeltaStore(str(home))
    before = {t: store.read(t) for t in (VENDOR_COSTS, VENDOR_REVIEW, VENDOR_IGNORED)}
    gz = tmp_path / "focus_1.0_sample_slice.csv.gz"
    gz.write_bytes(gzip.compress(sample.read_bytes()))
    code, again, _ = _reconcile(capsys, home, "focus", gz)
    assert code == 0 and again["loaded"]["superseded"] == 0
    assert again["months"][0]["summary"]["focus"]["billed"] == summary["billed"]
    for table, frame in before.items():
        assert store.read(table).height == frame.height, table.name


def test_incomplete_export_warns_on_stderr_and_reports_partial(tmp_path, capsys):
    home = _home(tmp_path)
    code, out, err = _reconcile(capsys, home, "anthropic", REAL / "anthropic" / "cost_report.json")
    assert code == 0
    assert out["loaded"]["status"] == "partial" and out["months"][0]["status"] == "partial"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "has_more=true" in lines[0]
    summary = out["months"][0]["summary"]["anthropic"]
    assert summary["billed"] == summary["mapped"] == "1.237891200000"


def test_the_2026_spec_costs_example_is_reconciled_per_day_and_meter(tmp_path, capsys):
    # The example's only line is `"line_item": "input_tokens"`: a kind with no model.
    home = _home(tmp_path)
    code, out, _ = _reconcile(
        capsys, home, "openai", REAL / "openai" / "costs_object_2026-08.json", month="2024-11"
    )
    assert code == 0
    summary = out["months"][0]["summary"]["openai"]
    assert Decimal(summary["billed"]) == Decimal(summary["mapped"]) == Decimal("0.06")
    assert Decimal(summary["review"]) == 0
    assert summary["levels"] == {"day × line item: reconciled per day and meter, not per model": 1}
    recon = DeltaStore(str(home)).read(RECONCILIATION).filter(pl.col("vendor") == "openai")
    assert recon.select("model_id", "meter_id").rows() == [(None, "input_tokens")]


def test_review_only_month_is_summarised_with_its_money(tmp_path, capsys):
    example = json.loads((REAL / "openai" / "costs_object_2026-08.json").read_text())
    example["data"][0]["results"][0]["line_item"] = "moderation"  # no meter for it
    export = tmp_path / "costs_moderation.json"
    export.write_text(json.dumps(example))
    home = _home(tmp_path)
    code, out, _ = _reconcile(capsys, home, "openai", export, month="2024-11")
    assert code == 0
    month = out["months"][0]
    assert month["summary"]["openai"]["billed"] == month["summary"]["openai"]["review"]
    assert Decimal(month["summary"]["openai"]["billed"]) == Decimal("0.06")
    assert month["reports"]["reconciliation_csv"].endswith("reconciliation_2024-11.csv")
    review = DeltaStore(str(home)).read(VENDOR_REVIEW)
    assert review["reason"].to_list() == [
        "line_item 'moderation' is neither '<model>, <kind>' nor a kind"
    ]


def test_tables_from_before_line_identities_are_refused_with_what_to_do(tmp_path, capsys):
    home = _home(tmp_path)
    store = DeltaStore(str(home))
    old = pl.DataFrame({"vendor": ["openai"], "reason": ["unknown vendor model 'x'"]})
    write_deltalake(store.uri(VENDOR_REVIEW), old.to_arrow())  # as an older version wrote it
    code, out, err = _reconcile(capsys, home, "openai", REAL / "openai" / "costs_2024-12.json")
    assert code == 2 and out is None
    assert len(err.strip().splitlines()) == 1
    assert "older usagebox" in err and "load the vendor exports again" in err


def test_a_default_openai_costs_export_is_reconciled_and_allocated_per_day(tmp_path, capsys):
    # gpt-4o list: input $2.50/1M, output $10/1M -> acct-001 $2.50, acct-002 $1.00 metered
    home = _home(tmp_path)
    h = datetime(2026, 10, 1, 10, tzinfo=UTC)
    hourly = usage_frame(
        [
            usage_row("acct-001", "input_tokens", "gpt-4o", h, 1_000_000),
            usage_row("acct-002", "output_tokens", "gpt-4o", h, 100_000),
        ]
    )
    DeltaStore(str(home)).replace_partition(
        USAGE_HOURLY, hourly, hour=slice(h, h + timedelta(hours=1))
    )
    day = {
        "object": "bucket",
        "start_time": 1790812800,  # 2026-10-01T00:00:00Z
        "end_time": 1790899200,
        "results": [
            {
                "object": "organization.costs.result",
                "amount": {"value": 7.00, "currency": "usd"},
                "line_item": None,
                "project_id": None,
            }
        ],
    }
    export = tmp_path / "openai_costs.json"
    export.write_text(json.dumps({"object": "page", "data": [day], "has_more": False}))
    code, out, err = _reconcile(capsys, home, "openai", export, month="2026-10")
    assert code == 0 and err == ""
    summary = out["months"][0]["summary"]["openai"]
    parts = sum(Decimal(summary[k]) for k in ("mapped", "review", "ignored"))
    assert Decimal(summary["billed"]) == parts == Decimal(7) == Decimal(summary["mapped"])
    assert summary["levels"] == {"day total: reconciled per day, not per model": 1}
    assert Decimal(summary["expected"]) == Decimal("3.5")
    assert Decimal(summary["variance"]) == Decimal("3.5")
    store = DeltaStore(str(home))
    recon = store.read(RECONCILIATION).filter(pl.col("vendor") == "openai")
    assert recon.select("model_id", "meter_id", "status").rows() == [(None, None, "under_metered")]
    att = store.read(COST_ATTRIBUTION).filter(pl.col("row_kind") == "account")
    got = {r["account_id"]: r["allocated_cost"] for r in att.iter_rows(named=True)}
    assert got == {"acct-001": Decimal(5), "acct-002": Decimal(2)}  # 7 × 2.5/3.5, 7 × 1/3.5
