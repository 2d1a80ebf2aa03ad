"""`usagebox invoices --out`: a closed month's issued PDFs and `register.csv`, checked first."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.invoicing.files import (
    document_file,
    file_sha,
)
from usagebox_pipelines.invoicing.register import write_register
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.rating import period_bounds
from usagebox_pipelines.stages.books import (
    closed_periods,
    issued_invoices,
)
from usagebox_pipelines.stages.results import InvoiceExport
from usagebox_pipelines.storage import DeltaStore


def export_invoices(
    store: DeltaStore, settings: Settings, month: str, out_dir: Path
) -> InvoiceExport:
    """Copy a closed month's issued PDFs (invoices and credit notes) and write `register.csv`.

    Every stored file is checked against its recorded sha256 first: a changed file stops the
    export (InvariantError) instead of being handed to finance.
    """
    period_bounds(month)
    closed = closed_periods(store)
    if month not in closed:
        raise UsageboxError(f"{month} is not closed: nothing issued to export")
    docs = issued_invoices(store, closed).filter(pl.col("period") == month)
    docs = docs.sort("invoice_number")
    sources = _checked_sources(settings.documents_dir, docs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for number, source in sources:
        target = out_dir / f"{number}.pdf"
        shutil.copyfile(source, target)
        files.append(str(target))
    register = write_register(docs, out_dir / "register.csv", load_accounts(settings.pricebooks))
    return InvoiceExport(
        period=month,
        out=str(out_dir),
        documents=len(files),
        credit_notes=docs.filter(pl.col("document_type") == "credit_note").height,
        files=files,
        register=str(register),
    )


def _checked_sources(documents_dir: Path, docs: pl.DataFrame) -> list[tuple[str, Path]]:
    out, bad = [], []
    for row in docs.iter_rows(named=True):
        sha = file_sha(documents_dir, row["pdf_path"])
        if sha is None or sha != row["pdf_sha256"]:
            bad.append(row["invoice_number"])
            continue
        path = document_file(documents_dir, row["pdf_path"])
        assert path is not None  # its sha was just read from it
        out.append((row["invoice_number"], path))
    if bad:
        raise InvariantError(
            f"stored PDF missing or changed for {', '.join(bad)}; "
            "run `usagebox invoice verify` on them"
        )
    return out
