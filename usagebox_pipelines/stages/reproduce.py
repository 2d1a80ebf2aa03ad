"""Rebuild issued documents from their stamps, and `usagebox invoice verify N` over one.

Only issued documents of closed periods are ever looked at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from usagebox_pipelines.catalog import (
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.invoicing.adjustments import adjustments_for
from usagebox_pipelines.invoicing.compare import (
    fingerprint_differences,
    line_differences,
    pdf_differences,
    total_differences,
)
from usagebox_pipelines.invoicing.hard_stop import apply_waivers
from usagebox_pipelines.invoicing.lines import (
    build_draft_invoices,
    line_documents,
)
from usagebox_pipelines.invoicing.numbering import NUMBER_RE
from usagebox_pipelines.invoicing.render import (
    load_issuer,
    pdf_sha256,
    render_args,
    render_document,
)
from usagebox_pipelines.invoicing.stamps import (
    credit_map,
    json_or_none,
)
from usagebox_pipelines.pricing.accounts import Account, Accounts, load_accounts
from usagebox_pipelines.pricing.pricebook import PricebookSet, load_pricebooks
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.schemas import conform
from usagebox_pipelines.stages.books import (
    DECISIONS_VERSION_KEY,
    all_lines,
    close_commits,
    closed_periods,
    decisions_at,
    hourly_at,
    issued_invoices,
    issued_lines,
)
from usagebox_pipelines.stages.per_event import month_events
from usagebox_pipelines.stages.results import InvoiceVerification
from usagebox_pipelines.storage import DeltaStore, DocumentStore


@dataclass
class IssuedDocument:
    """One issued document with what is needed to rebuild it as it was issued."""

    invoice: dict
    lines: pl.DataFrame
    closed: dict[str, dict]
    books: PricebookSet
    accounts: Accounts

    @property
    def period(self) -> str:
        return self.invoice["period"]

    @property
    def version(self) -> int | None:
        return self.invoice["events_table_version"]

    @property
    def account(self) -> Account:
        return self.accounts.get(self.invoice["account_id"])

    def closed_before(self) -> dict[str, dict]:
        """Closes committed before this document's close: what it was compared against."""
        mine = self.closed[self.period]["closed_at"]
        return {p: r for p, r in self.closed.items() if r["closed_at"] < mine}


def load_issued(store: DeltaStore, settings: Settings, number: str) -> IssuedDocument:
    """An issued document of a closed period by number, or a UsageboxError naming it."""
    if not NUMBER_RE.match(number or ""):
        raise UsageboxError(f"{number!r} is not an invoice number (like UBX-2026-000001)")
    closed = closed_periods(store)
    docs = issued_invoices(store, closed).filter(pl.col("invoice_number") == number)
    if docs.height == 0:
        raise UsageboxError(f"invoice {number} not found: no issued invoice has that number")
    if docs.height > 1:
        raise InvariantError(f"invoice {number} is stored {docs.height} times")
    lines = all_lines(store).filter(pl.col("invoice_number") == number).sort("line_no")
    return IssuedDocument(
        docs.row(0, named=True),
        lines,
        closed,
        load_pricebooks(settings.pricebooks),
        load_accounts(settings.pricebooks),
    )


def rate_as_issued(store: DeltaStore, doc: IssuedDocument) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(hourly, rated) of the document's account and period at its stamped events version,
    with the hard-stop waivers of the decisions its close read."""
    account_id = doc.invoice["account_id"]
    hourly = hourly_at(store, doc.period, doc.version, account_id, doc.accounts)
    opening = credit_map(doc.closed[doc.period]["opening_credit"])
    events = month_events(
        store, doc.period, doc.books, doc.accounts, version=doc.version, account_id=account_id
    )
    rated = rate_usage(hourly, doc.period, doc.books, doc.accounts, opening, events=events).rated
    decisions = decisions_of_close(store, doc.period)
    rated = apply_waivers(rated, hourly, decisions, doc.period, doc.books, doc.accounts, opening)
    return hourly, rated.filter(pl.col("account_id") == account_id)


def decisions_of_close(
    store: DeltaStore, period: str, commits: Mapping[str, dict] | None = None
) -> pl.DataFrame:
    """The `guardrail_decisions` rows the close of `period` read (the version its commits
    record); a close from before that was recorded gets every decision (append-only)."""
    commits = close_commits(store, INVOICES) if commits is None else commits
    raw = (commits.get(period) or {}).get(DECISIONS_VERSION_KEY)
    if raw is None:
        return store.read(GUARDRAIL_DECISIONS)
    return decisions_at(store, None if raw == "none" else int(raw))


def rebuild_period(
    store: DeltaStore,
    period: str,
    version: int | None,
    closed: dict[str, dict],
    books: PricebookSet,
    accounts: Accounts,
    decisions: pl.DataFrame,
    account_id: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The documents of a closed period (of one account, or all) rebuilt from time-travelled
    events, the pricebooks, the decisions its close read and the issued history, as drafts
    (INVOICES, INVOICE_LINES with `document_type`). Rating is per account, so rebuilding all
    accounts at once gives each the same documents as alone (one pass per period in verify).

    Adjustment lines are recomputed as at the close: earlier closed months re-rated at the
    same events version, compared with what had been issued before this close.
    """
    mine = pl.lit(True) if account_id is None else pl.col("account_id") == account_id
    hourly = hourly_at(store, period, version, account_id, accounts)
    opening = credit_map(closed[period]["opening_credit"])
    events = month_events(store, period, books, accounts, version=version, account_id=account_id)
    rated = rate_usage(hourly, period, books, accounts, opening, events=events).rated
    rated = apply_waivers(rated, hourly, decisions, period, books, accounts, opening)
    before = {p: r for p, r in closed.items() if r["closed_at"] < closed[period]["closed_at"]}
    issued_before = issued_lines(store, issued_invoices(store, before)).filter(mine)
    rerated = {}
    for q in sorted(p for p in before if p < period):
        q_hourly = hourly_at(store, q, version, account_id, accounts)
        q_events = month_events(store, q, books, accounts, version=version, account_id=account_id)
        q_rated = rate_usage(q_hourly, q, books, accounts, events=q_events).rated
        q_rated = apply_waivers(q_rated, q_hourly, decisions, q, books, accounts)
        rerated[q] = q_rated.filter(mine)
    adjustments = adjustments_for(issued_before, rerated).filter(mine)
    invoices, lines = build_draft_invoices(rated.filter(mine), accounts, period, adjustments)
    return invoices, line_documents(invoices, lines)


def rebuilt_document(
    invoice: dict, invoices: pl.DataFrame, lines: pl.DataFrame
) -> tuple[dict | None, pl.DataFrame]:
    """The stored document `invoice` as `rebuild_period` rebuilt it: priced header fields
    from the rebuild, the rest (number, dates, notes, stamps) from the stored row."""
    kind = invoice["document_type"]
    which = (pl.col("account_id") == invoice["account_id"]) & (pl.col("document_type") == kind)
    match = invoices.filter(which)
    if match.height != 1:
        return None, pl.DataFrame(schema=INVOICE_LINES.schema)
    own = lines.filter(which).with_columns(invoice_number=pl.lit(invoice["invoice_number"]))
    priced = match.row(0, named=True)
    header = {k: priced[k] for k in ("currency", "subtotal", "total", "document_type")}
    return invoice | header, conform(own, INVOICE_LINES.schema)


def rebuild_document(store: DeltaStore, doc: IssuedDocument) -> tuple[dict | None, pl.DataFrame]:
    """One issued document rebuilt from its stamps (rebuild_period for its account)."""
    invoices, lines = rebuild_period(
        store,
        doc.period,
        doc.version,
        doc.closed,
        doc.books,
        doc.accounts,
        decisions_of_close(store, doc.period),
        doc.invoice["account_id"],
    )
    return rebuilt_document(doc.invoice, invoices, lines)


def verify_invoice(
    store: DeltaStore, settings: Settings, invoice_number: str
) -> InvoiceVerification:
    """Rebuild an issued document from its stamps and compare lines, totals and PDF bytes.

    `reproduced` is true only when the pricebook versions are unchanged, every line and total
    equals the rebuilt one, and the re-rendered PDF has the stored sha256 (and so does the
    stored file). Byte-identical PDFs also need the same accounts.yaml details, issuer,
    template, WeasyPrint and fonts as at issue (ADR 0003).
    """
    doc = load_issued(store, settings, invoice_number)
    differences = fingerprint_differences(doc.invoice, doc.books)
    rebuilt, lines = rebuild_document(store, doc)
    rerendered = None
    if rebuilt is None:
        differences.append({"what": "document", "detail": "re-rating gives no such document"})
    else:
        differences += line_differences(doc.lines, lines)
        differences += total_differences(doc.invoice, doc.lines, rebuilt)
        opening = credit_map(doc.closed[doc.period]["opening_credit"])
        issued = issued_invoices(store, doc.closed)
        args = render_args(issued, rebuilt, lines, doc.account, load_issuer(), opening)
        pdf = render_document(*args)
        rerendered = pdf_sha256(pdf)
    rel = doc.invoice["pdf_path"]
    stored_file = DocumentStore(settings.home).sha256(rel) if rel else None
    differences += pdf_differences(doc.invoice["pdf_sha256"], rerendered, stored_file)
    return InvoiceVerification(
        invoice_number=invoice_number,
        reproduced=not differences,
        period=doc.period,
        account_id=doc.invoice["account_id"],
        events_table_version=doc.version,
        pricebook_versions=json_or_none(doc.invoice["pricebook_versions"]),
        lines=doc.lines.height,
        total=str(doc.invoice["total"]),
        pdf_sha256={
            "stored": doc.invoice["pdf_sha256"],
            "rerendered": rerendered,
            "file": stored_file,
        },
        differences=differences,
    )
