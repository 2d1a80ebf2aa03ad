"""The books (issue 11): dry-run cost, prepaid credit drawn only by issued invoices, hard-stop
notes, and verify catching consistent tampering. Reuses the close scenario's snapshots."""

from __future__ import annotations

from decimal import Decimal as D

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import event
from tests.test_close_audit import cli_app
from tests.test_close_scenario import NOV, OCT, OCT_ISSUED, SONNET, build_month, ingest, scenario
from usagebox_pipelines.catalog import (
    CREDIT_LEDGER,
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    PERIOD_CLOSES,
)
from usagebox_pipelines.cli import app as main_app
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.invoicing import summaries as summaries_module
from usagebox_pipelines.invoicing.render import pdf_sha256
from usagebox_pipelines.invoicing.summaries import draft_summaries
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.stages import close as close_stage
from usagebox_pipelines.stages import verify as verify_stage
from usagebox_pipelines.stages.books import (
    all_invoices,
    all_lines,
    books_problems,
    closed_periods,
    decisions_at,
    issued_invoices,
    issued_lines,
    rating_inputs_key,
    unfinished_periods,
)
from usagebox_pipelines.stages.close import close_month, plan_close
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.stages.verify import issued_intact


def _forge(store, table, rows: pl.DataFrame, number: str) -> None:
    """Tamper with one issued document's rows in place (what `verify` must catch)."""
    store.delete_where(table, invoice_number=number)
    store.append(table, rows)


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_dry_run_close_follows_the_approved_plan_and_summarises_in_one_pass(tmp_path, monkeypatch):
    """The dry run is the approved close's plan plus aggregates: one rollup of the month (the
    plan's), and the per-document summaries from ONE pass over the lines (was one join over
    all lines per document: quadratic, 222 s on 1 M events)."""
    store, settings = scenario().home_at("oct_built", tmp_path / "h")
    rollups = _count_calls(monkeypatch, close_stage, "hourly_at")
    passes = _count_calls(monkeypatch, summaries_module, "line_documents")
    dry = close_month(store, settings, OCT, approve=False)
    assert dry.status == "needs_approval"
    assert rollups == [1] and passes[0] <= 2  # _invoice_totals + _draft_summaries
    assert len(dry.invoices) > 4
    plan = plan_close(store, settings.pricebooks, OCT, {})
    many = pl.concat(
        [plan.invoices.with_columns(account_id=pl.col("account_id") + f"-{i}") for i in range(30)]
    )
    lines = pl.concat(
        [plan.lines.with_columns(account_id=pl.col("account_id") + f"-{i}") for i in range(30)]
    )
    passes[0] = 0
    summaries = draft_summaries(many, lines)
    assert passes == [1] and len(summaries) == many.height
    by_doc = {(s["account_id"], s["document_type"]): s for s in dry.invoices}
    for s in summaries[: plan.invoices.height]:
        base = by_doc[(s["account_id"].rsplit("-", 1)[0], s["document_type"])]
        assert s | {"account_id": base["account_id"]} == base


# --------------------------------------------------------------------------- verify tampering


def _one(store, period: str, account: str) -> dict:
    docs = issued_invoices(store).filter(
        (pl.col("period") == period) & (pl.col("account_id") == account)
    )
    return docs.row(0, named=True)


def test_verify_catches_a_line_changed_together_with_its_total(tmp_path):
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    doc = _one(store, OCT, "acct-007")
    number = doc["invoice_number"]
    lines = all_lines(store).filter(pl.col("invoice_number") == number)
    bump = pl.when(pl.col("line_no") == 1).then(pl.col("amount") + D("1.00"))
    lines = lines.with_columns(amount=bump.otherwise(pl.col("amount")))
    _forge(store, INVOICE_LINES, lines, number)
    invoice = all_invoices(store).filter(pl.col("invoice_number") == number)
    invoice = invoice.with_columns(pl.col("subtotal", "total") + D("1.00"))
    _forge(store, INVOICES, invoice, number)
    result = issued_intact(store, settings, OCT)  # the cheap sums agree: a full rebuild
    assert not result.passed
    per_doc = [e for e in result.examples if "invoice_number" in e]
    assert {e["invoice_number"] for e in per_doc} == {number}  # no false positive
    assert {e["problem"] for e in per_doc} == {
        "does not reproduce from its stamps",  # rebuilt from the stamps
        "invoice row changed since its close: subtotal, total",  # committed by the close
        "lines changed since its close",
    }
    books = [e["problem"] for e in result.examples if "invoice_number" not in e]
    assert len(books) == 1 and "period_closes.totals" in books[0]  # the close row's totals
    report = verify_invoice(store, settings, number)
    assert not report.reproduced
    assert {d["what"] for d in report.differences} >= {"line", "invoice"}


def test_verify_catches_a_pdf_replaced_together_with_its_hash(tmp_path, monkeypatch):
    """Plain verify renders nothing and still fails: the hash October's close committed (Delta
    time travel) names the original file. `invoice verify N` re-renders and fails too."""
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    doc = _one(store, OCT, "acct-007")
    other = _one(store, OCT, "acct-001")
    forged = (settings.documents_dir / other["pdf_path"]).read_bytes()
    (settings.documents_dir / doc["pdf_path"]).write_bytes(forged)
    invoice = all_invoices(store).filter(pl.col("invoice_number") == doc["invoice_number"])
    forged_row = invoice.with_columns(pdf_sha256=pl.lit(pdf_sha256(forged)))
    _forge(store, INVOICES, forged_row, doc["invoice_number"])
    renders = _count_calls(monkeypatch, verify_stage, "render_document")
    plain = issued_intact(store, settings)
    assert not plain.passed and renders == [0]
    hits = [e for e in plain.examples if e.get("invoice_number") == doc["invoice_number"]]
    assert {e["problem"] for e in hits} == {
        "invoice row changed since its close: pdf_sha256",
        "stored PDF file differs from the hash its close committed",
    }
    assert len(plain.examples) == len(hits)  # no other document is blamed
    opts = ["--home", settings.home, "--pricebooks", str(settings.pricebooks)]
    verified = CliRunner().invoke(main_app, ["verify", *opts])
    assert verified.exit_code == 1 or isinstance(verified.exception, InvariantError)
    assert "changed since its close" in verified.output
    bad = CliRunner().invoke(cli_app(), ["invoice", "verify", doc["invoice_number"], *opts])
    assert bad.exit_code == 1 and "re-rendered PDF differs from the stored sha256" in bad.output


def test_deleted_period_closes_row_fails_verify_and_close_refuses_to_reissue(tmp_path):
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    pdfs = {p: p.read_bytes() for p in (settings.documents_dir / "invoices" / OCT).glob("*.pdf")}
    store.delete_where(PERIOD_CLOSES, period=OCT)
    problems = books_problems(store)
    assert any("period_closes row of 2026-10 was deleted" in p["problem"] for p in problems)
    opts = ["--home", settings.home, "--pricebooks", str(settings.pricebooks)]
    verified = CliRunner().invoke(main_app, ["verify", *opts])
    assert verified.exit_code == 1 or isinstance(verified.exception, InvariantError)
    assert "was deleted" in verified.output
    with pytest.raises(InvariantError, match="2026-10 was deleted.*never re-issued"):
        close_month(store, settings, OCT, approve=True)
    assert {p: p.read_bytes() for p in pdfs} == pdfs  # nothing re-rendered
    assert unfinished_periods(store) == [OCT]


def test_a_comment_edit_of_an_issued_pricebook_passes_verify_a_value_edit_fails(tmp_path):
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    number = _one(store, OCT, "acct-007")["invoice_number"]
    book = settings.pricebooks / "standard-2025-01-01.yaml"
    book.write_text("# reviewed, no change\n" + book.read_text() + "\n\n")
    assert verify_invoice(store, settings, number).reproduced
    book.write_text(book.read_text().replace('unit_price: "3.125"', 'unit_price: "3.00"', 1))
    report = verify_invoice(store, settings, number)
    assert not report.reproduced
    assert any(d["what"] == "pricebook" for d in report.differences)


# --------------------------------------------------------------------------- prepaid credit


def test_an_open_month_never_draws_credit_and_blocks_a_later_close_unless_forced(tmp_path):
    """September (never closed) has 26.25 of acct-004 usage: its draft shows credit but draws
    none, so October (15.00 of usage) applies 15.00 of the 30.00 grant (was 3.75)."""
    store, settings = scenario().home_at("oct_built", tmp_path / "h")
    sept = event("s-004", "acct-004", 7_000_000, "2026-09-20T08:00:00Z", model_id=SONNET)
    ingest(store, tmp_path / "sept.jsonl", [sept])
    build_month(store, settings.pricebooks, "2026-09")
    build_month(store, settings.pricebooks, OCT)
    ledger = store.read(CREDIT_LEDGER)
    for _ in range(2):
        refresh_drafts(store, settings.pricebooks, "2026-09")
        assert store.read(CREDIT_LEDGER).equals(ledger)  # drafts never draw
    sept_credit = _draft_credit(store, "2026-09")
    assert sept_credit == D("-26.25")
    with pytest.raises(UsageboxError, match=r"2026-09 still open.*close it first.*--force"):
        close_month(store, settings, OCT, approve=True)
    close_month(store, settings, OCT, approve=True, force=True, now=OCT_ISSUED)
    oct_credit = issued_lines(store).filter(
        (pl.col("account_id") == "acct-004") & (pl.col("kind") == "credit")
    )["amount"]
    assert oct_credit.to_list() == [D("-15.00")]
    rows = store.read(CREDIT_LEDGER).filter(pl.col("account_id") == "acct-004")
    assert rows.select("period", "opening", "drawn", "closing").rows() == [
        (OCT, D(30), D(15), D(15))
    ]
    refresh_drafts(store, settings.pricebooks, "2026-09")
    assert _draft_credit(store, "2026-09") == D("-15.00")  # what is left, never beyond the grant


def _draft_credit(store, period: str) -> D:
    lines = all_lines(store).filter(
        (pl.col("period") == period)
        & pl.col("invoice_number").is_null()
        & (pl.col("account_id") == "acct-004")
        & (pl.col("kind") == "credit")
    )
    return lines["amount"].sum()


# --------------------------------------------------------------------------- after_hard_stop: waive

_ACCT_006 = '    address: ["88 Pine Street", "New York, NY 10005", "United States"]\n'


def test_waive_policy_takes_the_usage_after_the_stop_off_the_bill_before_contract_terms(
    tmp_path, monkeypatch
):
    """acct-006 (stopped 10-10 12:00) under `waive`, with a 10 % discount, a 1,100.00 minimum
    and 50.00 of prepaid credit: the waiver line is −(billed after the stop) = what the `bill`
    note states; discount, minimum and credit then apply to the 1,125.00 left."""
    store, settings = scenario().home_at("oct_built", tmp_path / "h")
    book = settings.pricebooks / "accounts.yaml"
    terms = "    after_hard_stop: waive\n    discount_pct: '10'\n"
    terms += "    minimum_commit: '1100.00'\n    prepaid_credit: '50.00'\n"
    assert book.read_text().count(_ACCT_006) == 1
    book.write_text(book.read_text().replace(_ACCT_006, _ACCT_006 + terms))
    close_month(store, settings, OCT, approve=True, now=OCT_ISSUED, approved_by="test")
    doc = _one(store, OCT, "acct-006")
    lines = issued_lines(store).filter(pl.col("invoice_number") == doc["invoice_number"])
    usage = lines.filter(pl.col("kind") == "usage")["amount"].sum()
    after = usage - D("1125.00")  # the same amount the `bill` note states (test_close_scenario)
    contract = lines.filter(pl.col("kind") != "usage").select("kind", "description", "amount")
    assert contract.rows() == [
        ("discount", "Usage after the hard budget stop on 2026-10-10 12:00 UTC waived", -after),
        ("discount", "Discount (10% of usage)", D("-112.50")),  # 10 % of 1,125.00, not of usage
        ("minimum", "Minimum commitment true-up (commitment 1,100.00 USD)", D("87.50")),
        ("credit", "Prepaid credit applied", D("-50.00")),
    ]
    assert lines["amount"].sum() == doc["total"] == D("1050.00")
    assert doc["subtotal"] == D("1100.00")  # usage − waiver − discount + true-up
    assert doc["notes"] == (
        "Hard budget limit of $1,875.00 reached on 2026-10-10 12:00 UTC; "
        f"usage after that time is waived: ${after:,}."
    )
    text = _pdf_text(settings.documents_dir / doc["pdf_path"])
    assert "Usage after the hard budget stop on 2026-10-10 12:00 UTC waived" in text
    assert f"usage after that time is waived: ${after:,}" in text
    assert "dec-" not in text and "decision" not in text.lower()

    # reproducible from the stamps: a decision appended after the close changes nothing
    store.append(GUARDRAIL_DECISIONS, _late_stop())
    renders = _count_calls(monkeypatch, verify_stage, "render_document")
    intact = issued_intact(store, settings, OCT)
    assert intact.passed, intact.examples
    assert renders == [0]  # plain verify renders nothing
    report = verify_invoice(store, settings, doc["invoice_number"])
    assert report.reproduced, report.differences

    # the waiver line changed together with the total: rebuilt and committed both disagree
    number = doc["invoice_number"]
    waiver = pl.col("description").str.starts_with("Usage after")
    assert lines.filter(waiver).height == 1
    forged = lines.with_columns(
        amount=pl.when(waiver).then(pl.col("amount") + D("10.00")).otherwise(pl.col("amount"))
    )
    _forge(store, INVOICE_LINES, forged, number)
    invoice = all_invoices(store).filter(pl.col("invoice_number") == number)
    invoice = invoice.with_columns(pl.col("subtotal", "total") + D("10.00"))
    _forge(store, INVOICES, invoice, number)
    result = issued_intact(store, settings, OCT)
    assert not result.passed
    problems = {e["problem"] for e in result.examples if e.get("invoice_number") == number}
    assert "does not reproduce from its stamps" in problems
    assert "lines changed since its close" in problems
    assert not verify_invoice(store, settings, number).reproduced


def _late_stop() -> pl.DataFrame:
    """A cap stop of acct-006 recorded after October's close (e.g. a guardrails rerun),
    effective before all its usage: counted, it would waive everything."""
    from datetime import UTC, datetime

    from tests.test_close_scenario import HARD_STOP

    return HARD_STOP.with_columns(
        decision_id=pl.lit("dec-006-late"),
        limit_id=pl.lit("cap:output_tokens"),
        meter_id=pl.lit("output_tokens"),
        effective_at=pl.lit(datetime(2026, 10, 1, tzinfo=UTC)),
    )


def _pdf_text(path) -> str:
    from pypdf import PdfReader

    pages = PdfReader(path).pages
    return " ".join(" ".join(page.extract_text().split()) for page in pages)


# --------------------------------------------------------------------------- restatement cost

DEC = "2026-12"


def _full_restatement(store, closed, month, *_):
    """What every close did before: re-rate every closed month before `month`."""
    return sorted(q for q in closed if q < month)


def _plans_agree(store, settings, month, monkeypatch) -> list[str]:
    """The months the close re-rates; its plan equals the one that re-rates them all."""
    closed = closed_periods(store)
    restated = close_stage.restated_months(
        store, closed, month, rating_inputs_key(*_books(settings)), _decisions(store)
    )
    plan = plan_close(store, settings.pricebooks, month, closed)
    with monkeypatch.context() as mp:
        mp.setattr(close_stage, "restated_months", _full_restatement)
        full = plan_close(store, settings.pricebooks, month, closed)
    assert plan.invoices.equals(full.invoices)
    assert plan.lines.equals(full.lines)
    return restated


def _books(settings):
    return load_pricebooks(settings.pricebooks), load_accounts(settings.pricebooks)


def _decisions(store):
    return decisions_at(store, store.version(GUARDRAIL_DECISIONS))


def test_a_close_re_rates_only_the_closed_months_whose_inputs_changed(tmp_path, monkeypatch):
    """Closing December re-rates no closed month when nothing reached them since November's
    close restated October; a late October event makes October (only) re-rated; an edit of
    the accounts makes every closed month re-rated. The plan is always the one that re-rates
    every closed month (issue 13: close cost does not grow with history)."""
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    december = [event("d-001-in", "acct-001", 3_000_000, "2026-12-04T10:00:00Z")]
    ingest(store, tmp_path / "dec.jsonl", december)
    build_month(store, settings.pricebooks, DEC)
    rollups = _count_calls(monkeypatch, close_stage, "hourly_at")
    assert _plans_agree(store, settings, DEC, monkeypatch) == []
    assert rollups == [1 + 3]  # December alone; the full plan: December, October, November

    late = [event("late-oct-2", "acct-007", 500_000, "2026-10-28T10:00:00Z")]
    ingest(store, tmp_path / "late.jsonl", late)
    build_month(store, settings.pricebooks, OCT)
    assert _plans_agree(store, settings, DEC, monkeypatch) == [OCT]
    plan = plan_close(store, settings.pricebooks, DEC, closed_periods(store))
    adjusts = plan.lines.filter(pl.col("kind") == "adjustment")
    assert adjusts["adjusts_period"].unique().to_list() == [OCT]
    assert adjusts["account_id"].unique().to_list() == ["acct-007"]

    accounts_yaml = settings.pricebooks / "accounts.yaml"
    accounts_yaml.write_text(
        accounts_yaml.read_text().replace('discount_pct: "12.5"', 'discount_pct: "15"'),
        encoding="utf-8",
    )
    assert _plans_agree(store, settings, DEC, monkeypatch) == [OCT, NOV]


def test_a_month_closed_before_the_inputs_were_recorded_is_always_re_rated(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    closed = closed_periods(store)
    key = rating_inputs_key(*_books(settings))
    assert close_stage.restated_months(store, closed, DEC, key, _decisions(store)) == []
    assert close_stage.restated_months(store, closed, DEC, "other", _decisions(store)) == [
        OCT,
        NOV,
    ]
