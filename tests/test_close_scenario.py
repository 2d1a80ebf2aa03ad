"""Month close end to end on real Delta tables: refusals, approval, gapless numbers, late events.

The scenario (built once per session, ~20 s: every close renders real PDFs) uses the project's
real `pricebooks/` (copied, so tests may tamper with the copy):

* October 2026: acct-001 (12.5 % discount, 100.00 minimum), acct-004 (prepaid credit),
  acct-006 (claude-sonnet-4-5 output, graduated at 100 M tokens: 110,023,456 tokens over two
  price versions), acct-007 (gpt-4o input); the four other committed accounts get minimum
  true-up invoices.
* October is closed (issued 2026-11-03). Then late October events arrive: acct-006 adds 50 M
  tokens dated early in the month (tier positions move), acct-001 adds usage (discount and
  minimum restate), acct-007 is corrected downwards (its adjustment exceeds its November
  invoice: a credit note). Plus November usage.
* November's drafts carry the adjustments; November is closed (issued 2026-12-03).

Stages are kept as pristine snapshots; a test that writes copies one (`home_at`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from pypdf import PdfReader

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import (
    EVENTS,
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    PERIOD_CLOSES,
)
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS, Settings
from usagebox_pipelines.errors import InvariantError
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.lines import rated_lines
from usagebox_pipelines.invoicing.numbering import parse_number
from usagebox_pipelines.invoicing.render import pdf_sha256
from usagebox_pipelines.invoicing.stamps import recorded_fingerprints
from usagebox_pipelines.rollups.aggregate import month_bounds
from usagebox_pipelines.stages.books import (
    all_invoices,
    all_lines,
    closed_periods,
    closes,
    issued_invoices,
    issued_lines,
    unfinished_periods,
)
from usagebox_pipelines.stages.close import close_month
from usagebox_pipelines.stages.drafts import pending_adjustments, refresh_drafts
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rating import build_rated_usage, rate_month
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.stages.verify import draft_lines_match_rated
from usagebox_pipelines.storage import DeltaStore, DocumentStore

D = Decimal
OCT, NOV = "2026-10", "2026-11"
OCT_ISSUED = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
NOV_ISSUED = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"


def ingest(store: DeltaStore, path: Path, rows: list[dict]) -> None:
    # small chunks: the JSONL reader asks for `chunk_rows` lines per chunk even past EOF
    ingest_files(store, [write_jsonl(path, rows)], chunk_rows=1000)
    update_events(store)


def build_month(store: DeltaStore, pricebooks: Path, month: str) -> None:
    """What the hourly and monthly jobs do for one month, plus the drafts."""
    start, end = month_bounds(month)
    build_usage_hourly(store, start, end)
    build_usage_monthly(store, month)
    build_rated_usage(store, pricebooks, month)


OCTOBER = [
    event("o-001-in", "acct-001", 1_000_000, "2026-10-02T10:05:00Z"),
    event("o-001-out", "acct-001", 200_000, "2026-10-20T10:05:00Z", meter="output_tokens"),
    event("o-004-in", "acct-004", 4_000_000, "2026-10-03T08:00:00Z", model_id=SONNET),
    event("o-006-a", "acct-006", 60_000_000, "2026-10-05T11:00:00Z", "output_tokens",
          model_id=SONNET),
    event("o-006-b", "acct-006", 50_023_456, "2026-10-18T11:00:00Z", "output_tokens",
          model_id=SONNET),
    event("o-007-in", "acct-007", 2_000_000, "2026-10-07T12:00:00Z"),
]  # fmt: skip
LATE_OCTOBER = [
    event("late-006", "acct-006", 50_000_000, "2026-10-03T09:00:00Z", "output_tokens",
          model_id=SONNET),
    event("late-001", "acct-001", 1_000_000, "2026-10-25T14:00:00Z"),
    event("fix-007", "acct-007", -1_000_000, "2026-11-04T08:00:00Z", correction_of="o-007-in"),
]  # fmt: skip
NOVEMBER = [
    event("n-001-in", "acct-001", 2_000_000, "2026-11-05T10:00:00Z"),
    event("n-006-out", "acct-006", 1_000_000, "2026-11-06T10:00:00Z", "output_tokens",
          model_id=SONNET),
]  # fmt: skip


# acct-006 was hard-stopped on its budget in October: the invoice must say so (ADR 0005)
HARD_STOP = pl.DataFrame(
    [
        {
            "decision_id": "dec-006-stop",
            "period": OCT,
            "account_id": "acct-006",
            "limit_id": "budget",
            "rule": "budget",
            "from_status": "hard_alert",
            "to_status": "hard_stop",
            "effective_at": datetime(2026, 10, 10, 12, tzinfo=UTC),
            "spend": D("1900.00"),
            "threshold": D("1875.00"),
            "currency": "USD",
            "decided_at": datetime(2026, 10, 10, 12, 5, tzinfo=UTC),
        }
    ]
)


@dataclass(frozen=True)
class Scenario:
    root: Path
    stages: dict[str, Path]

    def home_at(self, stage: str, dest: Path) -> tuple[DeltaStore, Settings]:
        """A private, writable copy of the home (and pricebooks) as it was at `stage`."""
        shutil.copytree(self.stages[stage], dest)
        return DeltaStore(str(dest / "home")), Settings(str(dest / "home"), dest / "pricebooks")

    def open(self, stage: str) -> tuple[DeltaStore, Settings]:
        """The pristine snapshot itself: read-only use."""
        base = self.stages[stage]
        return DeltaStore(str(base / "home")), Settings(str(base / "home"), base / "pricebooks")


@functools.cache
def scenario() -> Scenario:
    root = Path(tempfile.mkdtemp(prefix="usagebox-close-"))
    atexit.register(shutil.rmtree, root, True)
    work = root / "work"
    books = work / "pricebooks"
    shutil.copytree(DEFAULT_PRICEBOOKS, books)
    store, settings = DeltaStore(str(work / "home")), Settings(str(work / "home"), books)
    stages: dict[str, Path] = {}

    def snap(name: str) -> None:
        stages[name] = root / name
        shutil.copytree(work, stages[name])

    ingest(store, root / "in" / "october.jsonl", OCTOBER)
    build_month(store, books, OCT)
    store.append(GUARDRAIL_DECISIONS, HARD_STOP)
    refresh_drafts(store, books, OCT)
    snap("oct_built")
    close_month(store, settings, OCT, approve=True, now=OCT_ISSUED, approved_by="test")
    snap("oct_closed")
    ingest(store, root / "in" / "late.jsonl", LATE_OCTOBER)
    ingest(store, root / "in" / "november.jsonl", NOVEMBER)
    build_month(store, books, OCT)
    build_month(store, books, NOV)
    refresh_drafts(store, books, NOV)
    snap("nov_built")
    close_month(store, settings, NOV, approve=True, now=NOV_ISSUED, approved_by="test")
    snap("nov_closed")
    return Scenario(root, stages)


def issued(store: DeltaStore, period: str | None = None) -> pl.DataFrame:
    docs = issued_invoices(store)
    return docs.filter(pl.col("period") == period) if period else docs


# --------------------------------------------------------------------------- refusals


def test_close_without_approve_reports_control_totals_and_writes_nothing(tmp_path):
    store, settings = scenario().home_at("oct_built", tmp_path / "h")
    before = {table: store.version(table) for table in (INVOICES, INVOICE_LINES)}
    result = close_month(store, settings, OCT, approve=False)
    assert result.status == "needs_approval" and "--approve" in result.message
    totals = result.control_totals
    assert totals["events"]["counted"] == len(OCTOBER)
    assert totals["duplicates"] == 0 and totals["quarantined"] == 0 and totals["conflicts"] == 0
    assert D(totals["rollup"]["output_tokens"]["sum"]) == D(110_223_456)
    drafts = {i["account_id"]: i for i in result.invoices}
    assert {"acct-001", "acct-004", "acct-006", "acct-007"} <= set(drafts)
    assert D(totals["invoices"]["USD"]["total"]) == sum(D(i["total"]) for i in drafts.values())
    assert not store.exists(PERIOD_CLOSES)
    assert {table: store.version(table) for table in before} == before


def test_close_refuses_stale_rollups_then_unrated_usage_naming_why(tmp_path):
    store, settings = scenario().home_at("oct_built", tmp_path / "h")
    unknown = event("o-x", "acct-006", 5, "2026-10-09T09:00:00Z", model_id="gpt-unknown")
    ingest(store, tmp_path / "x.jsonl", [unknown])
    with pytest.raises(InvariantError, match="3_hourly_equals_events"):
        close_month(store, settings, OCT, approve=True)
    build_month(store, settings.pricebooks, OCT)
    with pytest.raises(InvariantError, match=r"unrated usage.*model 'gpt-unknown'"):
        close_month(store, settings, OCT, approve=True)
    assert not store.exists(PERIOD_CLOSES)
    assert issued(store).is_empty()


def test_close_refuses_when_a_pricebook_that_issued_was_edited(tmp_path):
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    book = settings.pricebooks / "standard-2025-01-01.yaml"
    book.write_text(book.read_text() + "\n# a comment changes no value: still frozen\n")
    close_month(store, settings, NOV, approve=False)  # not refused
    book.write_text(book.read_text().replace('unit_price: "12.50"', 'unit_price: "12.00"', 1))
    with pytest.raises(InvariantError, match="standard-2025-01-01.yaml.*edited after it issued"):
        close_month(store, settings, NOV, approve=True)


# --------------------------------------------------------------------------- issuing


def test_close_issues_gapless_numbers_and_pdfs_matching_their_hash():
    store, settings = scenario().open("oct_closed")
    docs = issued(store, OCT).sort("invoice_number")
    seqs = [parse_number(n)[2] for n in docs["invoice_number"]]
    assert seqs == list(range(1, docs.height + 1))
    assert all(n.startswith("UBX-2026-") for n in docs["invoice_number"])
    for row in docs.iter_rows(named=True):
        pdf = settings.documents_dir / row["pdf_path"]
        assert pdf.name == f"{row['invoice_number']}.pdf"
        assert pdf_sha256(pdf.read_bytes()) == row["pdf_sha256"]
        assert row["status"] == "issued" and row["issued_at"] == OCT_ISSUED
        assert row["events_table_version"] == scenario().open("oct_built")[0].version(EVENTS)
        assert row["template_version"] == TEMPLATE_VERSION and row["code_version"]
    stamps = recorded_fingerprints(docs)
    assert set(stamps) == {"standard@2025-01-01", "standard@2026-10-16"}
    lines = all_lines(store).filter(pl.col("period") == OCT)
    assert lines["invoice_number"].null_count() == 0  # drafts of October are gone
    assert all_invoices(store).filter(pl.col("status") == "draft").is_empty()
    closed = closed_periods(store)[OCT]
    assert closed["invoices"] == docs.height and closed["approved_by"] == "test"
    assert closed["last_number"] == docs["invoice_number"].max()


def test_hard_stops_are_noted_on_the_invoice_with_what_was_billed_after_them():
    """acct-006 stopped at 10-10 12:00 (after o-006-a, before o-006-b): the note states the
    usage billed after the stop (policy `bill`) and shows no internal decision id."""
    store, settings = scenario().open("oct_closed")
    docs = issued(store, OCT)
    noted = docs.filter(pl.col("notes").is_not_null())
    assert noted["account_id"].to_list() == ["acct-006"]
    lines = issued_lines(store, noted)
    usage = lines.filter(pl.col("kind") == "usage")["amount"].sum()
    after = usage - D("1125.00")  # o-006-a, before the stop: 60 M tokens at tier 1, 18.75/1M
    assert after > 0 and lines["amount"].sum() == noted["total"].item()
    note = noted["notes"].item()
    assert note == (
        "Hard budget limit of $1,875.00 reached on 2026-10-10 12:00 UTC; "
        f"usage after that time is billed: ${after:,}."
    )
    pdf = PdfReader(settings.documents_dir / noted["pdf_path"].item())
    text = " ".join(" ".join(page.extract_text().split()) for page in pdf.pages)
    assert f"usage after that time is billed: ${after:,}" in text
    assert "dec-" not in note and "dec-" not in text and "decision" not in text.lower()


def test_totals_are_the_sum_of_rounded_lines():
    store, _ = scenario().open("nov_closed")
    docs = issued(store)
    lines = issued_lines(store, docs)
    sums = lines.group_by("invoice_number").agg(pl.col("amount").sum().alias("lines"))
    joined = docs.join(sums, on="invoice_number")
    assert joined.height == docs.height
    assert (joined["total"] == joined["lines"]).all()


def test_closing_a_closed_month_is_a_no_op(tmp_path):
    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    versions = {n: store.version(n) for n in (INVOICES, INVOICE_LINES, PERIOD_CLOSES)}
    result = close_month(store, settings, OCT, approve=True)
    assert result.status == "already_closed" and "already closed" in result.message
    assert len(result.invoices) == issued(store, OCT).height
    assert {n: store.version(n) for n in versions} == versions
    assert refresh_drafts(store, settings.pricebooks, OCT)[0].is_empty()


# --------------------------------------------------------------------------- late events


def independent_adjustments(store: DeltaStore, pricebooks: Path) -> dict[str, Decimal]:
    """Per account: October re-rated now (rounded lines) minus what October's invoices billed."""
    now = rated_lines(rate_month(store, pricebooks, OCT).rated)
    now = now.filter(pl.col("kind") != "credit")
    billed = issued_lines(store, issued(store, OCT)).filter(pl.col("kind") != "credit")
    a = dict(now.group_by("account_id").agg(pl.col("amount").sum()).iter_rows())
    b = dict(billed.group_by("account_id").agg(pl.col("amount").sum()).iter_rows())
    out = {k: a.get(k, D(0)) - b.get(k, D(0)) for k in set(a) | set(b)}
    return {k: v for k, v in out.items() if v}


def test_late_events_become_adjustments_on_the_next_draft():
    store, settings = scenario().open("nov_built")
    drafts = all_lines(store).filter((pl.col("period") == NOV) & pl.col("invoice_number").is_null())
    adj = drafts.filter(pl.col("kind") == "adjustment")
    assert set(adj["adjusts_period"]) == {OCT}
    per_account = dict(adj.group_by("account_id").agg(pl.col("amount").sum()).iter_rows())
    per_account = {k: v for k, v in per_account.items() if v}
    assert per_account == independent_adjustments(store, settings.pricebooks)
    # by hand: 50 M more tokens on top of 110 M are all tier 2 (17.50/1M) ...
    assert per_account["acct-006"] == D("875.00")
    # ... but they came first in hour order, so tiers and price versions move between lines
    moved = adj.filter(pl.col("account_id") == "acct-006").sort("tier", "price_version")
    assert moved.select("price_version", "tier", "amount").rows() == [
        ("2025-01-01", 1, D("750.00")),
        ("2026-10-16", 1, D("-750.00")),
        ("2025-01-01", 2, D("175.00")),
        ("2026-10-16", 2, D("700.00")),
    ]
    # 1 M input tokens corrected away: 3.125 → 3.13 billed instead of 6.25
    assert per_account["acct-007"] == D("-3.12")
    # more usage lowers the minimum true-up by as much (after discount): nets to zero
    acct1 = adj.filter(pl.col("account_id") == "acct-001")
    assert set(acct1["kind"]) == {"adjustment"} and set(acct1["unit"]) >= {"discount", "minimum"}
    assert "acct-001" not in per_account
    check = draft_lines_match_rated(store, settings.pricebooks, NOV)
    assert check.passed, check.examples


def test_credit_note_when_adjustments_exceed_the_invoice():
    store, _ = scenario().open("nov_closed")
    notes = issued(store, NOV).filter(pl.col("document_type") == "credit_note")
    assert notes["account_id"].to_list() == ["acct-007"]
    assert notes["total"].to_list() == [D("-3.12")]


def test_next_close_continues_the_numbers_and_carries_adjustments_once():
    store, settings = scenario().open("nov_closed")
    seqs = sorted(parse_number(n)[2] for n in issued(store)["invoice_number"])
    assert seqs == list(range(1, len(seqs) + 1))
    oct_last = max(parse_number(n)[2] for n in issued(store, OCT)["invoice_number"])
    nov_first = min(parse_number(n)[2] for n in issued(store, NOV)["invoice_number"])
    assert nov_first == oct_last + 1
    carried = issued_lines(store).filter(pl.col("kind") == "adjustment")
    before_close, _ = scenario().open("nov_built")
    owed = independent_adjustments(before_close, settings.pricebooks)
    assert carried["amount"].sum() == sum(owed.values())
    # once carried, nothing more is owed for October
    assert pending_adjustments(store, settings.pricebooks, "2026-12").is_empty()


def test_drafts_replace_only_draft_rows(tmp_path):
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    issued_before = all_lines(store).filter(pl.col("invoice_number").is_not_null())
    refresh_drafts(store, settings.pricebooks, NOV)
    refresh_drafts(store, settings.pricebooks, NOV)
    lines = all_lines(store)
    assert (
        lines.filter(pl.col("invoice_number").is_not_null())
        .sort("invoice_number", "line_no")
        .equals(issued_before.sort("invoice_number", "line_no"))
    )
    drafts = all_invoices(store).filter(pl.col("status") == "draft")
    assert drafts.filter(pl.col("period") == NOV).height == drafts.height
    assert drafts.select("account_id", "document_type").is_duplicated().sum() == 0


# --------------------------------------------------------------------------- crash


def test_crash_before_the_marker_is_cleaned_and_redone_gapless(tmp_path):
    """Issued rows and PDFs without a `period_closes` row = the close never happened."""
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    done = issued(scenario().open("nov_closed")[0], NOV).sort("invoice_number")
    real_append = DeltaStore.append

    def crash_at_marker(self, table, *args, **kwargs):
        if table is PERIOD_CLOSES:
            raise OSError("killed before the marker")
        return real_append(self, table, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeltaStore, "append", crash_at_marker)
        with pytest.raises(OSError, match="killed"):
            close_month(store, settings, NOV, approve=True, now=NOV_ISSUED)
    assert unfinished_periods(store) == [NOV]
    assert issued(store, NOV).is_empty()  # invisible to every reader
    stray = settings.documents_dir / "invoices" / NOV / "UBX-2026-000099.pdf"
    stray.write_bytes(b"%PDF- from a crash before any row was written")
    result = close_month(store, settings, NOV, approve=True, now=NOV_ISSUED)
    assert result.status == "closed"
    again = issued(store, NOV).sort("invoice_number")
    assert again["invoice_number"].to_list() == done["invoice_number"].to_list()
    assert again["pdf_sha256"].to_list() == done["pdf_sha256"].to_list()
    assert not stray.exists()
    every = all_invoices(store)
    assert every["invoice_number"].drop_nulls().is_duplicated().sum() == 0
    lines = all_lines(store).filter(pl.col("period") == NOV)
    assert lines.select("invoice_number", "line_no").is_duplicated().sum() == 0


def test_a_crash_half_way_through_rendering_is_redone_with_the_same_numbers_and_bytes(tmp_path):
    """The PDFs render in a process pool (stages.pdfs) and are written as they come back: a
    crash after a few leaves files no issued row names; the rerun removes them and issues the
    same documents, numbers and hashes as a close that never crashed."""
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    done = issued(scenario().open("nov_closed")[0], NOV).sort("invoice_number")
    assert done.height >= 4  # enough documents for the process pool
    real_put = DocumentStore.put
    written: list[str] = []

    def crash_after_two(self, relpath, data):
        if len(written) == 2:
            raise OSError("killed while rendering")
        written.append(relpath)
        return real_put(self, relpath, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DocumentStore, "put", crash_after_two)
        with pytest.raises(OSError, match="killed while rendering"):
            close_month(store, settings, NOV, approve=True, now=NOV_ISSUED)
    assert issued(store, NOV).is_empty() and closed_periods(store).keys() == {OCT}
    assert all((settings.documents_dir / rel).exists() for rel in written)
    result = close_month(store, settings, NOV, approve=True, now=NOV_ISSUED)
    assert result.status == "closed"
    again = issued(store, NOV).sort("invoice_number")
    for column in ("invoice_number", "account_id", "document_type", "total", "pdf_sha256"):
        assert again[column].to_list() == done[column].to_list()
    files = sorted(p.name for p in (settings.documents_dir / "invoices" / NOV).glob("*.pdf"))
    assert files == sorted(f"{n}.pdf" for n in done["invoice_number"].to_list())


def test_schemas_of_written_tables():
    store, _ = scenario().open("nov_closed")
    assert all_invoices(store).schema == INVOICES.schema
    assert all_lines(store).schema == INVOICE_LINES.schema
    assert closes(store).schema == PERIOD_CLOSES.schema
