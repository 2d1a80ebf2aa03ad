"""Issue an approved close: number gaplessly, stamp, render PDFs, commit; the marker goes last.

Invoices and lines are written first, the `period_closes` row LAST: that row is the commit
marker. A crash before it means the close did not happen; the next close deletes the leftovers
and derives numbers only from closed periods, so no number is skipped.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

import polars as pl

from usagebox_pipelines import __version__
from usagebox_pipelines.catalog import (
    INVOICE_LINES,
    INVOICES,
    PERIOD_CLOSES,
)
from usagebox_pipelines.config import SOURCE_ROOT, Settings
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.files import document_relpath, period_folder
from usagebox_pipelines.invoicing.hard_stop import hard_stop_notes
from usagebox_pipelines.invoicing.numbering import issue_documents, last_sequence
from usagebox_pipelines.invoicing.render import (
    NOTE_SEP,
    load_issuer,
    render_args,
    render_document,
)
from usagebox_pipelines.invoicing.stamps import credit_stamp, dump_json
from usagebox_pipelines.invoicing.summaries import (
    issued_summary,
)
from usagebox_pipelines.stages.books import (
    DECISIONS_VERSION_KEY,
    HOURLY_VERSION_KEY,
    INPUTS_KEY,
    all_invoices,
    unfinished_periods,
    write_ledger,
)
from usagebox_pipelines.stages.pdfs import render_each
from usagebox_pipelines.stages.results import Closed
from usagebox_pipelines.storage import NOT_NULL, DeltaStore, DocumentStore

#: Called with (documents written, documents to write) as a close renders.
DocumentProgress = Callable[[int, int], None]

if TYPE_CHECKING:
    from usagebox_pipelines.pricing.accounts import Accounts
    from usagebox_pipelines.pricing.contract import CreditBalances
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
    """Number, stamp, render and write; the `period_closes` row goes last (commit marker).
    `on_document(done, total)` is called as each PDF is written (a progress bar)."""
    issued_at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    documents = DocumentStore(settings.home)
    remove_unfinished_closes(store, documents)
    _clear_documents(documents, plan.period)
    issuer = load_issuer()
    invoices, lines = issue_documents(
        plan.invoices,
        plan.lines,
        last_seq=last_sequence(plan.issued["invoice_number"].to_list(), issuer["invoice_prefix"]),
        prefix=issuer["invoice_prefix"],
        issued_at=issued_at,
        payment_terms_days=_terms(plan),
    )
    invoices = _stamp(store, plan, invoices, lines)
    invoices = _render_all(documents, plan, invoices, lines, issuer, on_document)
    close_row = _close_row(plan, invoices, approved_by, run_id)
    _commit(store, plan.period, invoices, lines, close_row, run_id, plan.decisions_version, plan)
    write_ledger(store, plan.accounts, plan.period, run_id)  # from issued draws; after the marker
    return Closed(
        period=plan.period,
        closed_at=close_row["closed_at"].isoformat(),
        issued_at=issued_at.isoformat(),
        events_table_version=plan.events_version,
        invoices=issued_summary(invoices, documents.root),
    )


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


def _render_all(
    documents: DocumentStore,
    plan: ClosePlan,
    invoices: pl.DataFrame,
    lines: pl.DataFrame,
    issuer: dict,
    on_document: DocumentProgress | None = None,
) -> pl.DataFrame:
    """Render every document to `<documents>/invoices/<period>/<number>.pdf`, record its hash.

    In a process pool (stages.pdfs): each job is one document's row and lines; the PDFs come
    back in the invoices' order and are written here, so paths and hashes are those of a
    render one after another. A crash leaves only PDFs that no issued row names yet; the
    rerun deletes them (`_clear_documents`) before rendering again.
    """
    paths, hashes = [], []
    jobs = render_jobs(invoices, lines, plan.accounts, issuer, plan.issued, plan.opening)
    for row, pdf in zip(
        invoices.iter_rows(named=True), render_each(render_job, jobs, invoices.height), strict=True
    ):
        rel = document_relpath(row["period"], row["invoice_number"])
        paths.append(rel)
        hashes.append(documents.put(rel, pdf))
        if on_document is not None:
            on_document(len(paths), invoices.height)
    return invoices.with_columns(
        pdf_path=pl.Series(paths, dtype=pl.String), pdf_sha256=pl.Series(hashes, dtype=pl.String)
    )


def render_jobs(
    invoices: pl.DataFrame,
    lines: pl.DataFrame,
    accounts: Accounts,
    issuer: dict,
    issued: pl.DataFrame,
    opening: CreditBalances | None = None,
) -> Iterator[tuple]:
    """`render_document`'s arguments per document, in the invoices' order: its own lines only
    (the lines are split once, not filtered per document); `opening` the prepaid balances
    the close drew from (stamped as `period_closes.opening_credit`)."""
    own = lines.partition_by("invoice_number", as_dict=True, maintain_order=True)
    empty = lines.clear()
    for row in invoices.iter_rows(named=True):
        mine = own.get((row["invoice_number"],), empty)
        yield render_args(issued, row, mine, accounts.get(row["account_id"]), issuer, opening)


def render_job(job: tuple) -> bytes:
    """One document's PDF (module level: the process pool pickles it)."""
    return render_document(*job)


def _close_row(
    plan: ClosePlan, invoices: pl.DataFrame, approved_by: str | None, run_id: str
) -> dict:
    numbers = sorted(invoices["invoice_number"].to_list())
    totals = {str(c): str(part["total"].sum()) for (c,), part in invoices.group_by("currency")}
    opening = None if plan.opening is None else credit_stamp(plan.opening)
    return {
        "period": plan.period,
        "closed_at": datetime.now(UTC),
        "events_table_version": plan.events_version,
        "invoices": invoices.height,
        "first_number": numbers[0] if numbers else None,
        "last_number": numbers[-1] if numbers else None,
        "totals": dump_json(totals),
        "opening_credit": opening,
        "approved_by": approved_by or _whoami(),
        "code_version": code_version(),
        "run_id": run_id,
    }


def _commit(
    store: DeltaStore,
    period: str,
    invoices: pl.DataFrame,
    lines: pl.DataFrame,
    close_row: dict,
    run_id: str,
    decisions_version: int | None = None,
    plan: ClosePlan | None = None,
) -> None:
    """Three commits: lines, invoices (each replacing the period's drafts), then the marker.
    Each records the `guardrail_decisions` version the close read (hard-stop waivers and
    notes; "none": no table yet), so verify rebuilds from the same decisions, and the
    `usage_hourly` version and rating-inputs fingerprint, so a later close re-rates this
    month only if something changed since (books.restated_months)."""
    meta = {
        "run_id": run_id,
        "stage": "close",
        "period": period,
        DECISIONS_VERSION_KEY: _version_text(decisions_version),
    }
    if plan is not None and plan.inputs_key is not None:
        meta |= {
            HOURLY_VERSION_KEY: _version_text(plan.hourly_version),
            INPUTS_KEY: plan.inputs_key,
        }
    store.replace_partition(INVOICE_LINES, lines, period=period, metadata=meta)
    store.replace_partition(INVOICES, invoices, period=period, metadata=meta)
    marker = pl.DataFrame([close_row], schema=PERIOD_CLOSES.schema)
    store.append(PERIOD_CLOSES, marker, metadata=meta)


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
