"""Issue an approved close in three steps: number and stamp, render PDFs, append the marker.

`number_close` writes the numbered, stamped invoices and lines (no PDFs yet), the documents
step renders them (stages.close_documents, per month shard in a deployment), and
`finish_close` appends the `period_closes` row LAST: that row is the commit marker. Until it is
written no reader sees the month's issued rows; a crash before it means the close did not
happen, the next close deletes the leftovers and derives numbers only from closed periods, so
no number is skipped. The marker goes in only once every number the close gave is stored with
its document, gapless after the closed periods' numbers (ADR 0019 §5).
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING

import polars as pl

from usagebox_pipelines import __version__
from usagebox_pipelines import invariants as inv
from usagebox_pipelines.catalog import INVOICE_LINES, INVOICES, PERIOD_CLOSES
from usagebox_pipelines.config import SOURCE_ROOT, Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.files import period_folder
from usagebox_pipelines.invoicing.hard_stop import hard_stop_notes
from usagebox_pipelines.invoicing.numbering import issue_documents, last_sequence
from usagebox_pipelines.invoicing.render import NOTE_SEP, load_issuer
from usagebox_pipelines.invoicing.stamps import credit_stamp, dump_json
from usagebox_pipelines.invoicing.summaries import issued_summary
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.shards import MonthShard, month_shard_count
from usagebox_pipelines.stages.books import (
    APPROVED_BY_KEY,
    DECISIONS_VERSION_KEY,
    DOCUMENTS_KEY,
    EVENTS_VERSION_KEY,
    FIRST_NUMBER_KEY,
    HOURLY_VERSION_KEY,
    INPUTS_KEY,
    ISSUED_AT_KEY,
    all_invoices,
    carried_meta,
    close_commits,
    closed_periods,
    issued_invoices,
    opening_credit,
    recorded_version,
    unfinished_periods,
    write_ledger,
)
from usagebox_pipelines.stages.close_documents import DocumentProgress, render_documents
from usagebox_pipelines.stages.results import Closed, Numbered
from usagebox_pipelines.storage import NOT_NULL, DeltaStore, DocumentStore, writes_tables

if TYPE_CHECKING:
    from usagebox_pipelines.stages.close import ClosePlan


def issue_close(
    store: DeltaStore,
    settings: Settings,
    plan: ClosePlan,
    now: datetime | None,
    approved_by: str | None,
    run_id: str,
    on_document: DocumentProgress | None = None,
) -> Closed:
    """The whole close in this process: number, render every document, mark. A deployment
    runs the same three steps as Dagster runs, the documents one per month shard (ADR 0019
    §5). `on_document(done, total)` is called as each PDF is written (a progress bar)."""
    number_close(store, settings, plan, now, approved_by, run_id)
    render_documents(store, settings, plan.period, run_id, on_document=on_document)
    return finish_close(store, settings, plan.period, run_id)


def number_close(
    store: DeltaStore,
    settings: Settings,
    plan: ClosePlan,
    now: datetime | None,
    approved_by: str | None,
    run_id: str,
) -> Numbered:
    """Remove unfinished closes, then number and stamp the plan's documents and write them,
    without PDFs, in two commits (lines, then invoices replacing the period's drafts). Until
    `finish_close` appends the marker no reader sees them; the numbering commit records what
    the close read, how many documents it numbered and who approved (default: the user
    running it), which the last step checks and records."""
    issued_at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    documents = DocumentStore(settings.home)
    remove_unfinished_closes(store, documents)
    _clear_documents(documents, plan.period)
    prefix = load_issuer()["invoice_prefix"]
    invoices, lines = issue_documents(
        plan.invoices,
        plan.lines,
        last_seq=last_sequence(plan.issued["invoice_number"].to_list(), prefix),
        prefix=prefix,
        issued_at=issued_at,
        payment_terms_days=_terms(plan),
    )
    invoices = _stamp(store, plan, invoices, lines)
    numbers = sorted(invoices["invoice_number"].to_list())
    meta = _close_meta(plan, run_id) | {
        DOCUMENTS_KEY: str(len(numbers)),
        FIRST_NUMBER_KEY: numbers[0] if numbers else "",
        ISSUED_AT_KEY: issued_at.isoformat(),
        APPROVED_BY_KEY: approved_by or _whoami(),
    }
    store.replace_partition(INVOICE_LINES, lines, period=plan.period, metadata=meta)
    store.replace_partition(INVOICES, invoices, period=plan.period, metadata=meta)
    return Numbered(
        period=plan.period,
        issued_at=issued_at.isoformat(),
        events_table_version=plan.events_version,
        documents=len(numbers),
        first_number=numbers[0] if numbers else None,
        last_number=numbers[-1] if numbers else None,
    )


@writes_tables("close")
def finish_close(store: DeltaStore, settings: Settings, period: str, run_id: str) -> Closed:
    """Append the `period_closes` marker once every number the close gave is stored, gapless
    after the closed periods' numbers, with its document; then the credit ledger.

    Raises InvariantError naming what is missing (e.g. the shards whose documents did not
    render: rerun those, or the whole close) and UsageboxError when no close numbered the
    period. Leftover drafts of the period (a monthly run between the steps) go first."""
    numbering = close_commits(store, INVOICES).get(period)
    if numbering is None or numbering.get(ISSUED_AT_KEY) is None:
        raise UsageboxError(
            f"close {period} cannot finish: it was not numbered; "
            f"run `usagebox close {period} --approve` (or its close_job) first"
        )
    closed = closed_periods(store)
    accounts = load_accounts(settings.pricebooks)
    invoices = all_invoices(store).filter(pl.col("period") == period)
    issued = invoices.filter(pl.col("status") == "issued")
    before = issued_invoices(store, closed)["invoice_number"].to_list()
    problems = _unfinished(store, settings, period, issued, numbering, before, accounts.root)
    if problems:
        raise InvariantError(f"close {period} cannot finish: " + "; ".join(problems))
    if issued.height < invoices.height:
        store.delete_where(INVOICES, period=period, status="draft")
        store.delete_where(INVOICE_LINES, period=period, invoice_number=None)
    opening = opening_credit(store, accounts, closed)
    events_version = recorded_version(numbering.get(EVENTS_VERSION_KEY))
    approved_by = str(numbering.get(APPROVED_BY_KEY) or _whoami())
    close_row = _close_row(period, events_version, issued, opening, approved_by, run_id)
    marker = pl.DataFrame([close_row], schema=PERIOD_CLOSES.schema)
    store.append(PERIOD_CLOSES, marker, metadata=carried_meta(numbering, period, run_id))
    write_ledger(store, accounts, period, run_id)  # from issued draws; after the marker
    return Closed(
        period=period,
        closed_at=close_row["closed_at"].isoformat(),
        issued_at=str(numbering[ISSUED_AT_KEY]),
        events_table_version=events_version,
        invoices=issued_summary(issued, DocumentStore(settings.home).root),
    )


def _unfinished(
    store: DeltaStore,
    settings: Settings,
    period: str,
    issued: pl.DataFrame,
    numbering: dict,
    before: list[str],
    root: Callable[[str], str],
) -> list[str]:
    """Why the numbered rows of `period` are not yet a close: numbers missing or not following
    the closed periods' (`before`) gaplessly, documents not rendered or not stored, lines of
    no row."""
    problems = []
    planned, first = int(numbering[DOCUMENTS_KEY]), numbering.get(FIRST_NUMBER_KEY) or None
    numbers = sorted(issued["invoice_number"].to_list())
    if len(numbers) != planned or (numbers[:1] or [None])[0] != first:
        problems.append(
            f"{len(numbers)} numbered document(s) stored, the close numbered {planned} from "
            f"{first}; number the month again (`usagebox close {period} --approve`)"
        )
    problems += [p["problem"] for p in inv.numbering_problems(before + numbers)]
    unrendered = issued.filter(pl.col("pdf_sha256").is_null() | pl.col("pdf_path").is_null())
    if unrendered.height:
        count = month_shard_count()
        ids = set(unrendered["account_id"].to_list())
        shards = sorted({MonthShard.of_root(root(a), count).index for a in ids})
        problems.append(
            f"{unrendered.height} document(s) not rendered (e.g. "
            f"{unrendered['invoice_number'][0]}), month shard(s) {shards} of {count}: "
            "rerun their invoice_documents partitions"
        )
    stored = set(DocumentStore(settings.home).listdir(period_folder(period), ".pdf"))
    absent = sorted(set(issued["pdf_path"].drop_nulls().to_list()) - stored)
    if absent:
        problems.append(f"{len(absent)} document file(s) missing, e.g. {absent[0]}")
    lines = store.scan(INVOICE_LINES).filter(
        (pl.col("period") == period) & pl.col("invoice_number").is_not_null()
    )
    orphans = lines.select("invoice_number").unique().collect()["invoice_number"]
    stray = sorted(set(orphans.to_list()) - set(numbers))
    if stray:
        problems.append(f"lines numbered {stray[0]} have no document row")
    return problems


def remove_unfinished_closes(store: DeltaStore, documents: DocumentStore) -> list[str]:
    """Delete issued rows (and their PDFs) of periods whose close never wrote its marker.

    Such rows are invisible to every reader; removing them before numbering keeps the
    sequence gapless, since the next numbers derive from closed periods only.
    """
    periods = unfinished_periods(store)
    if not periods:
        return []
    stale = all_invoices(store).filter(
        (pl.col("status") == "issued") & pl.col("period").is_in(periods)
    )
    for period in periods:
        store.delete_where(INVOICES, period=period, status="issued")
        store.delete_where(INVOICE_LINES, period=period, invoice_number=NOT_NULL)
    for rel in stale["pdf_path"].drop_nulls().to_list():
        documents.delete(rel)
    return periods


def _clear_documents(documents: DocumentStore, period: str) -> None:
    """PDFs left in an open period's folder by a crash before any row was written: no issued
    row names them, and their numbers will be reissued, so they go before rendering."""
    for stale in documents.listdir(period_folder(period), ".pdf"):
        documents.delete(stale)


def _terms(plan: ClosePlan) -> dict[str, int]:
    ids = plan.invoices["account_id"].unique().to_list()
    return {a: plan.accounts.get(a).payment_terms_days for a in ids}


def _stamp(
    store: DeltaStore, plan: ClosePlan, invoices: pl.DataFrame, lines: pl.DataFrame
) -> pl.DataFrame:
    """What every issued document records to be reproduced: events version, the content
    hashes of the pricebook versions its lines used, code and template version, notes."""
    fingerprints = plan.books.fingerprints()
    versions = dict(
        lines.group_by("invoice_number")
        .agg(pl.col("price_version").drop_nulls().unique())
        .iter_rows()
    )  # one pass over the lines, not one filter per document
    stopped = set(_hard_stops(plan)["account_id"].to_list())
    rows = []
    for row in invoices.iter_rows(named=True):
        account = plan.accounts.get(row["account_id"])
        keys = {f"{account.pricebook}@{v}" for v in versions.get(row["invoice_number"], [])}
        used = {k: fingerprints[k] for k in sorted(keys) if k in fingerprints}
        rows.append(
            row
            | {
                "events_table_version": plan.events_version,
                "pricebook_versions": dump_json(used),
                "code_version": code_version(),
                "template_version": TEMPLATE_VERSION,
                "notes": _notes(row, plan, row["account_id"] in stopped),
            }
        )
    return pl.DataFrame(rows, schema=INVOICES.schema)


def _hard_stops(plan: ClosePlan) -> pl.DataFrame:
    """The period's hard-stop decisions: the only accounts whose notes need their usage."""
    return plan.decisions.filter(
        (pl.col("period") == plan.period) & (pl.col("to_status") == "hard_stop")
    )


def _notes(row: dict, plan: ClosePlan, stopped: bool) -> str | None:
    """The draft's note plus one note per guardrail hard stop (invoices only), one per line:
    what was billed after the stop (invoicing.hard_stop), no internal decision ids."""
    notes = [row["notes"]] if row["notes"] else []
    if row["document_type"] == "invoice" and stopped:
        notes += hard_stop_notes(
            plan.decisions, plan.hourly, row["account_id"], plan.period, plan.books, plan.accounts
        )
    return NOTE_SEP.join(notes) if notes else None


def _close_meta(plan: ClosePlan, run_id: str) -> dict[str, str]:
    """What a close's commits record: the `guardrail_decisions` version it read (hard-stop
    waivers and notes; "none": no table yet), so verify rebuilds from the same decisions; the
    `events` version it rated at; and the `usage_hourly` version and rating-inputs
    fingerprint, so a later close re-rates this month only if something changed since
    (books.restated_months)."""
    meta = {
        "run_id": run_id,
        "stage": "close",
        "period": plan.period,
        DECISIONS_VERSION_KEY: _version_text(plan.decisions_version),
        EVENTS_VERSION_KEY: _version_text(plan.events_version),
    }
    if plan.inputs_key is not None:
        meta[HOURLY_VERSION_KEY] = _version_text(plan.hourly_version)
        meta[INPUTS_KEY] = plan.inputs_key
    return meta


def _close_row(
    period: str,
    events_version: int | None,
    invoices: pl.DataFrame,
    opening: dict[str, dict[str, Decimal]],
    approved_by: str,
    run_id: str,
) -> dict:
    numbers = sorted(invoices["invoice_number"].to_list())
    totals = {str(c): str(part["total"].sum()) for (c,), part in invoices.group_by("currency")}
    return {
        "period": period,
        "closed_at": datetime.now(UTC),
        "events_table_version": events_version,
        "invoices": invoices.height,
        "first_number": numbers[0] if numbers else None,
        "last_number": numbers[-1] if numbers else None,
        "totals": dump_json(totals),
        "opening_credit": credit_stamp(opening),
        "approved_by": approved_by,
        "code_version": code_version(),
        "run_id": run_id,
    }


def _version_text(version: int | None) -> str:
    return "none" if version is None else str(version)


def _whoami() -> str:
    try:
        return os.environ.get("USAGEBOX_APPROVER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version, plus `git describe` when the code runs from a checkout."""
    if SOURCE_ROOT is None:
        return __version__
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=SOURCE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    described = out.stdout.strip()
    return f"{__version__}+{described}" if out.returncode == 0 and described else __version__
