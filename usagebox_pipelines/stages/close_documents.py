"""Stage `close documents`: render the PDFs of a numbered close, one month shard at a time.

The second of a close's three steps (ADR 0019 §5): `issue.number_close` has written the
month's numbered, stamped rows (invisible until the marker), this renders the documents of one
month shard's accounts and rewrites their rows with the PDF path and hash, and
`issue.finish_close` checks every number has its document before it appends the marker.
Shards of one month render side by side (a pod each; the lease is shared), each replacing only
its accounts' issued rows. Rendering is a pure function of the stored rows, so a rerun of a
shard, or a shard run after another attempt renumbered the month, renders what is stored now;
rows that already have their document are kept, not rendered twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from usagebox_pipelines.catalog import INVOICE_LINES, INVOICES
from usagebox_pipelines.config import Settings
from usagebox_pipelines.invoicing.files import document_relpath
from usagebox_pipelines.invoicing.render import load_issuer, render_args, render_document
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard
from usagebox_pipelines.stages.books import (
    carried_meta,
    close_commits,
    closed_periods,
    issued_invoices,
    opening_credit,
)
from usagebox_pipelines.stages.month_shards import replace_shard_rows, writes_month_shard
from usagebox_pipelines.stages.pdfs import render_each
from usagebox_pipelines.storage import DeltaStore, DocumentStore

if TYPE_CHECKING:
    from usagebox_pipelines.pricing.accounts import Accounts
    from usagebox_pipelines.pricing.contract import CreditBalances

#: Called with (documents written, documents to write) as a close renders.
DocumentProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class RenderedShard:
    """What one shard's document step did: documents rendered now, and kept (rendered by an
    earlier attempt of the same step)."""

    period: str
    shard: MonthShard
    rendered: int
    kept: int


@writes_month_shard("close documents")
def render_documents(
    store: DeltaStore,
    settings: Settings,
    period: str,
    run_id: str,
    *,
    shard: MonthShard = WHOLE_MONTH,
    on_document: DocumentProgress | None = None,
) -> RenderedShard:
    """Render the numbered documents of `period` that belong to `shard`'s accounts and have no
    PDF yet; one commit replaces those accounts' issued rows with path and hash. A month
    already closed, or one no close has numbered, has nothing to render."""
    closed = closed_periods(store)
    if period in closed:
        return RenderedShard(period, shard, 0, 0)
    accounts = load_accounts(settings.pricebooks)
    numbered = _numbered_rows(store, period, shard, accounts)
    todo = numbered.filter(pl.col("pdf_sha256").is_null())
    kept = numbered.filter(pl.col("pdf_sha256").is_not_null())
    if todo.is_empty():
        return RenderedShard(period, shard, 0, kept.height)
    numbers = todo["invoice_number"]
    lines = (
        store.scan(INVOICE_LINES)
        .filter((pl.col("period") == period) & pl.col("invoice_number").is_in(numbers))
        .collect()
    )
    issued, opening = issued_invoices(store, closed), opening_credit(store, accounts, closed)
    documents = DocumentStore(settings.home)
    jobs = render_jobs(todo, lines, accounts, load_issuer(), issued, opening)
    rendered = write_documents(documents, todo, jobs, on_document)
    replace_shard_rows(
        store, INVOICES, pl.concat([kept, rendered]).sort("invoice_number"), shard=shard,
        root=accounts.root, written=numbered["account_id"].to_list(),
        metadata=carried_meta(close_commits(store, INVOICES).get(period, {}), period, run_id),
        period=period, status="issued",
    )  # fmt: skip
    return RenderedShard(period, shard, rendered.height, kept.height)


def _numbered_rows(
    store: DeltaStore, period: str, shard: MonthShard, accounts: Accounts
) -> pl.DataFrame:
    """The period's numbered rows (no marker yet) of the shard's accounts, by number."""
    rows = (
        store.scan(INVOICES)
        .filter((pl.col("period") == period) & (pl.col("status") == "issued"))
        .collect()
        .sort("invoice_number")
    )
    if shard.whole:
        return rows
    return rows.filter(pl.col("account_id").is_in(shard.owned(rows["account_id"], accounts.root)))


def write_documents(
    documents: DocumentStore,
    invoices: pl.DataFrame,
    jobs: Iterator[tuple],
    on_document: DocumentProgress | None = None,
) -> pl.DataFrame:
    """Render every document to `<documents>/invoices/<period>/<number>.pdf`, record its hash.

    In a process pool (stages.pdfs): each job is one document's row and lines; the PDFs come
    back in the invoices' order and are written here, so paths and hashes are those of a
    render one after another. A crash leaves only PDFs that no row names with a hash yet; a
    rerun renders them again (same bytes: a PDF is a pure function of its row and lines).
    """
    paths, hashes = [], []
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
