"""Issued invoices after the close: reproduced byte for byte, tampering detected, every line
explained, and exported with a formula-safe register (CONTRACT §5.5)."""

from __future__ import annotations

import csv
import hashlib
import json

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from tests.test_close_scenario import NOV, OCT, issued, scenario
from usagebox_pipelines.catalog import INVOICE_LINES
from usagebox_pipelines.cli_invoicing import close, explain, invoice_app, invoices
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.stages.books import all_lines
from usagebox_pipelines.stages.explain import explain_invoice
from usagebox_pipelines.stages.export import export_invoices
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.stages.verify import issued_intact


def number_of(store, period: str, account: str, doc: str = "invoice") -> str:
    row = issued(store, period).filter(
        (pl.col("account_id") == account) & (pl.col("document_type") == doc)
    )
    return row["invoice_number"].item()


# --------------------------------------------------------------------------- verify


def test_every_issued_invoice_reproduces_byte_identical():
    store, settings = scenario().open("nov_closed")
    assert issued_intact(store, settings).passed
    rendered = issued_intact(store, settings, OCT, render=True)  # the process pool
    assert rendered.passed, rendered.examples
    assert f"({issued(store, OCT).height} PDFs rendered)" in rendered.detail
    numbers = issued(store).sort("invoice_number")["invoice_number"].to_list()
    assert len(numbers) >= 14
    for number in numbers:
        report = verify_invoice(store, settings, number)
        assert report.reproduced, (number, report.differences)
        sha = report.pdf_sha256
        assert sha["stored"] == sha["rerendered"] == sha["file"]


def test_tampered_line_amount_is_detected(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    number = number_of(store, NOV, "acct-006")
    lines = all_lines(store)
    hit = (pl.col("invoice_number") == number) & (pl.col("line_no") == 1)
    forged = lines.with_columns(
        amount=pl.when(hit).then(pl.col("amount") - 1).otherwise("amount").cast(pl.Decimal(18, 2))
    )
    store.overwrite(INVOICE_LINES, forged)
    intact = issued_intact(store, settings)
    assert not intact.passed and intact.examples[0]["invoice_number"] == number
    report = verify_invoice(store, settings, number)
    assert not report.reproduced
    assert {"what": "line", "line_no": 1, "column": "amount"}.items() <= report.differences[
        0
    ].items()
    assert any("not the sum of its lines" in d.get("detail", "") for d in report.differences)


def test_edited_pricebook_is_detected(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    book = settings.pricebooks / "standard-2026-10-16.yaml"
    tier_one = '{up_to: 100000000, unit_price: "18.75"}'
    text = book.read_text()
    assert text.count(tier_one) == 1  # claude-sonnet-4-5 output, first tier
    book.write_text(text.replace(tier_one, tier_one.replace("18.75", "19.00")))
    report = verify_invoice(store, settings, number_of(store, OCT, "acct-006"))
    assert not report.reproduced
    what = {(d["what"], d.get("column")) for d in report.differences}
    assert ("pricebook", None) in what and ("line", "amount") in what
    edited = next(d for d in report.differences if d["what"] == "pricebook")
    assert edited["file"] == "standard-2026-10-16.yaml"
    assert "edited after it issued" in issued_intact(store, settings).examples[0]["problem"]


def test_changed_pdf_file_is_detected_and_blocks_export(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    number = number_of(store, OCT, "acct-001")
    pdf = settings.documents_dir / "invoices" / OCT / f"{number}.pdf"
    pdf.write_bytes(pdf.read_bytes() + b"%")
    assert issued_intact(store, settings, NOV).passed  # only October's file changed
    assert not issued_intact(store, settings, OCT).passed
    report = verify_invoice(store, settings, number)
    assert not report.reproduced
    assert [d["what"] for d in report.differences] == ["pdf_file"]
    with pytest.raises(InvariantError, match=number):
        export_invoices(store, settings, OCT, tmp_path / "out")


# --------------------------------------------------------------------------- explain


def test_explain_covers_every_line_of_every_issued_invoice():
    store, settings = scenario().open("nov_closed")
    for number in issued(store)["invoice_number"].to_list():
        report = explain_invoice(store, settings, number, with_events=True)
        stored = all_lines(store).filter(pl.col("invoice_number") == number)
        assert [line["line_no"] for line in report.lines] == sorted(stored["line_no"])
        for line in report.lines:
            where = (number, line["line_no"])
            if line["kind"] == "usage":
                rule = line["rule"]
                assert rule["file"].endswith(".yaml") and rule["rate_id"], where
                assert rule["version"] == line["price_version"], where
                assert line["rollup"]["rows"] and line["events"]["ids"], where
                assert line["events"]["count"] == line["rollup"]["events"], where
                assert line["line_arithmetic"].endswith(f"→ {line['amount']}"), where
            elif line["kind"] == "adjustment":
                assert line["late_events"]["count"] >= 1, where
                assert line["late_events"]["since_close_of"] == OCT, where
            else:
                assert line["rule"]["source"] == "accounts.yaml", where
                assert line["arithmetic"].endswith(line["amount"]), where


def test_explain_shows_tier_arithmetic_rollup_and_events():
    store, settings = scenario().open("nov_closed")
    number = number_of(store, OCT, "acct-006")
    report = explain_invoice(store, settings, number, line_no=3, with_events=True)
    (line,) = report.lines
    assert line["tier"] == 2 and line["amount"] == "175.41"
    assert line["rule"]["price_model"] == "graduated"
    assert line["rule"]["tiers"] == [
        {"up_to": "100000000", "unit_price": "18.75"},
        {"up_to": None, "unit_price": "17.50"},
    ]
    assert line["arithmetic"] == (
        "first 60,000,000 × 18.75/1M (tier 1, prices from 2025-01-01) = 1,125.00; "
        "next 40,000,000 × 18.75/1M (tier 1, prices from 2026-10-16) = 750.00; "
        "next 10,023,456 × 17.50/1M (tier 2, prices from 2026-10-16) = 175.41"
    )
    assert [r["hour"] for r in line["rollup"]["rows"]] == ["2026-10-18T11:00:00+00:00"]
    # issued from the events known at the close: the late event is not behind it
    assert line["events"]["ids"] == ["o-006-b"]


def test_explain_adjustment_lists_the_late_events_behind_it():
    store, settings = scenario().open("nov_closed")
    note = number_of(store, NOV, "acct-007", "credit_note")
    (line,) = explain_invoice(store, settings, note).lines
    assert line["adjusts_period"] == OCT and line["amount"] == "-3.12"
    late = line["late_events"]
    assert [e["event_id"] for e in late["events"]] == ["fix-007"]
    assert late["events"][0]["correction_of"] == "o-007-in" and late["quantity"] == "-1000000"


def test_explain_names_an_unknown_invoice_or_line():
    store, settings = scenario().open("oct_closed")
    with pytest.raises(UsageboxError, match="UBX-2026-000999 not found"):
        explain_invoice(store, settings, "UBX-2026-000999")
    with pytest.raises(UsageboxError, match="not an invoice number"):
        explain_invoice(store, settings, "../../etc/passwd")
    number = number_of(store, OCT, "acct-001")
    with pytest.raises(UsageboxError, match=f"{number} has no line 99"):
        explain_invoice(store, settings, number, line_no=99)


# --------------------------------------------------------------------------- export


def test_export_writes_pdfs_and_a_formula_safe_register(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    accounts = settings.pricebooks / "accounts.yaml"
    hostile = '=HYPERLINK("http://evil.example","pay here")'
    text = accounts.read_text().replace('"Brightpath Learning Co."', f"'{hostile}'")
    accounts.write_text(text)
    out = tmp_path / "export"
    result = export_invoices(store, settings, NOV, out)
    docs = issued(store, NOV)
    assert result.documents == docs.height and result.credit_notes == 1
    for row in docs.iter_rows(named=True):
        copy = out / f"{row['invoice_number']}.pdf"
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == row["pdf_sha256"]
    with open(out / "register.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["invoice_number"] for r in rows] == sorted(docs["invoice_number"])
    name = next(r["account_name"] for r in rows if r["account_id"] == "acct-006")
    assert name.startswith("'=HYPERLINK")
    note = next(r for r in rows if r["document_type"] == "credit_note")
    assert note["total"] == "-3.12"  # numbers stay numbers


def test_export_of_an_open_month_is_refused(tmp_path):
    store, settings = scenario().open("nov_built")
    with pytest.raises(UsageboxError, match=f"{NOV} is not closed"):
        export_invoices(store, settings, NOV, tmp_path / "out")


# --------------------------------------------------------------------------- CLI


def cli_app() -> typer.Typer:
    """Mounted exactly as cli.py mounts them."""
    app = typer.Typer()
    app.command()(close)
    app.command()(explain)
    app.command()(invoices)
    app.add_typer(invoice_app, name="invoice")
    return app


def test_cli_close_explain_verify(tmp_path):
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    opts = ["--home", settings.home, "--pricebooks", str(settings.pricebooks)]
    runner = CliRunner()
    app = cli_app()
    done = runner.invoke(app, ["close", OCT, "--approve", *opts])
    assert done.exit_code == 0, done.output
    assert '"status": "already_closed"' in done.output
    assert list(json.loads(done.output)) == [
        "status", "period", "closed_at", "message", "events_table_version", "invoices"
    ]  # fmt: skip
    number = number_of(store, OCT, "acct-001")
    shown = runner.invoke(app, ["explain", number, "--line", "1", "--events", *opts])
    assert shown.exit_code == 0 and '"ids": ["o-001-in"]' in shown.output
    assert list(json.loads(shown.output)) == [
        "invoice_number", "document_type", "account_id", "period", "currency", "subtotal",
        "total", "issued_at", "events_table_version", "pricebook_versions", "code_version",
        "template_version", "lines",
    ]  # fmt: skip
    ok = runner.invoke(app, ["invoice", "verify", number, *opts])
    assert ok.exit_code == 0 and '"reproduced": true' in ok.output
    assert list(json.loads(ok.output)) == [
        "invoice_number", "reproduced", "period", "account_id", "events_table_version",
        "pricebook_versions", "lines", "total", "pdf_sha256", "differences",
    ]  # fmt: skip
    pdf = settings.documents_dir / "invoices" / OCT / f"{number}.pdf"
    pdf.unlink()
    bad = runner.invoke(app, ["invoice", "verify", number, *opts])
    assert bad.exit_code == 1 and "stored PDF file is missing" in bad.output
    wrong = runner.invoke(app, ["close", "2026-13", *opts])
    assert isinstance(wrong.exception, UsageboxError)


def test_cli_close_review_is_tables_for_the_approver_and_json_on_request(tmp_path):
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    opts = ["--home", settings.home, "--pricebooks", str(settings.pricebooks), "--force"]
    runner = CliRunner()
    review = runner.invoke(cli_app(), ["close", NOV, *opts])
    assert review.exit_code == 0, review.output
    lines = review.output.splitlines()
    assert lines[0].startswith(f"Close {NOV} · review")
    for title in ("Control totals", "Usage by meter", "Invoices", "Documents ("):
        assert any(line.startswith(title) for line in lines), title
    header = next(line for line in lines if line.lstrip().startswith("currency"))
    assert header.split() == [
        "currency", "documents", "credit", "notes", "net", "tax", "adjustments", "credit", "total"
    ]  # fmt: skip
    assert "rerun with --approve" in lines[-1]
    assert max(len(line) for line in lines[:-1]) <= 110  # a terminal, not one JSON line
    scripted = runner.invoke(cli_app(), ["close", NOV, "--json", *opts])
    data = json.loads(scripted.output)
    assert data["status"] == "needs_approval"
    totals = data["control_totals"]["invoices"]["USD"]
    row = next(line for line in lines if line.lstrip().startswith("USD")).split()
    assert row[-1] == totals["total"] and row[3] == totals["subtotal"]
