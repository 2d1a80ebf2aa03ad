"""`usagebox invoices --out`: a closed month's issued PDFs and `register.csv`, checked first."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.invoicing.register import register_csv
from usagebox_pipelines.invoicing.render import pdf_sha256
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.stages.books import (
    closed_periods,
    issued_invoices,
    issued_lines,
)
from usagebox_pipelines.stages.results import InvoiceExport
from usagebox_pipelines.storage import DeltaStore, DocumentStore


def export_invoices(
    store: DeltaStore, settings: Settings, month: str, out_dir: Path
) -> InvoiceExport:
    """Copy a closed month's issued PDFs (invoices and credit notes) and write `register.csv`.

    Every stored file is checked against its recorded sha256 first: a changed file stops the
    export (InvariantError) instead of being handed to finance.
    """
    month_bounds(month)
    closed = closed_periods(store)
    if month not in closed:
        raise UsageboxError(f"{month} is not closed: nothing issued to export")
    docs = issued_invoices(store, closed).filter(pl.col("period") == month)
    docs = docs.sort("invoice_number")
    sources = _checked_sources(DocumentStore(settings.home), docs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for number, pdf in sources:
        target = out_dir / f"{number}.pdf"
        target.write_bytes(pdf)
        files.append(str(target))
    register = out_dir / "register.csv"
    lines = issued_lines(store, docs)
    register.write_bytes(register_csv(docs, load_accounts(settings.pricebooks), lines))
    return InvoiceExport(
        period=month,
        out=str(out_dir),
        documents=len(files),
        credit_notes=docs.filter(pl.col("document_type") == "credit_note").height,
        files=files,
        register=str(register),
    )


def _checked_sources(documents: DocumentStore, docs: pl.DataFrame) -> list[tuple[str, bytes]]:
    out, bad = [], []
    for row in docs.iter_rows(named=True):
        pdf = documents.get(row["pdf_path"]) if row["pdf_path"] else None
        if pdf is None or pdf_sha256(pdf) != row["pdf_sha256"]:
            bad.append(row["invoice_number"])
            continue
        out.append((row["invoice_number"], pdf))
    if bad:
        raise InvariantError(
            f"stored PDF missing or changed for {', '.join(bad)}; "
            "run `usagebox invoice verify` on them"
        )
    return out
