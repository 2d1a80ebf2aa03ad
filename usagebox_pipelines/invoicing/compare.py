"""Stored against rebuilt documents: the differences `verify` reports, pure."""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from usagebox_pipelines.decimals import plain_text
from usagebox_pipelines.invoicing.stamps import recorded_fingerprints
from usagebox_pipelines.pricing.pricebook import PricebookSet
from usagebox_pipelines.schemas import INVOICE_LINES, INVOICES, conform

_ZERO = Decimal(0)


def fingerprint_differences(invoice: dict, books: PricebookSet) -> list[dict]:
    """Pricebook versions the invoice stamped that are gone or were edited since."""
    recorded = recorded_fingerprints(pl.DataFrame([invoice], schema=INVOICES))
    now = books.fingerprints()
    out = []
    for key, sha in sorted(recorded.items()):
        if key not in now:
            out.append({"what": "pricebook", "version": key, "detail": "version file is gone"})
        elif not books.get(key).unchanged_since(sha):
            out.append(
                {
                    "what": "pricebook",
                    "version": key,
                    "file": books.get(key).file.name,
                    "detail": "file edited after it issued this invoice",
                    "stored": sha,
                    "now": now[key],
                }
            )
    return out


def line_differences(stored: pl.DataFrame, rebuilt: pl.DataFrame) -> list[dict]:
    """Column by column, per line_no; missing or extra lines are named too."""
    a = {r["line_no"]: r for r in conform(stored, INVOICE_LINES).iter_rows(named=True)}
    b = {r["line_no"]: r for r in conform(rebuilt, INVOICE_LINES).iter_rows(named=True)}
    out: list[dict] = []
    for no in sorted(set(a) | set(b), key=lambda n: (n is None, n or 0)):
        if no not in b:
            out.append({"what": "line", "line_no": no, "detail": "stored line not reproduced"})
        elif no not in a:
            out.append({"what": "line", "line_no": no, "detail": "rebuilt line is not stored"})
        else:
            out += [
                {
                    "what": "line",
                    "line_no": no,
                    "column": col,
                    "stored": plain_text(a[no][col]),
                    "rebuilt": plain_text(b[no][col]),
                }
                for col in INVOICE_LINES.names()
                if a[no][col] != b[no][col]
            ]
    return out


def total_differences(stored: dict, stored_lines: pl.DataFrame, rebuilt: dict) -> list[dict]:
    out = [
        {
            "what": "invoice",
            "column": col,
            "stored": plain_text(stored[col]),
            "rebuilt": plain_text(rebuilt[col]),
        }
        for col in ("currency", "subtotal", "total", "document_type")
        if stored[col] != rebuilt[col]
    ]
    line_sum = stored_lines["amount"].sum() if stored_lines.height else _ZERO
    if stored["total"] != line_sum:
        out.append(
            {
                "what": "invoice",
                "column": "total",
                "detail": f"stored total {stored['total']} is not the sum of its lines {line_sum}",
            }
        )
    return out


def pdf_differences(stored: str | None, rerendered: str | None, file: str | None) -> list[dict]:
    out = []
    if rerendered is not None and rerendered != stored:
        out.append(
            {
                "what": "pdf",
                "detail": "re-rendered PDF differs from the stored sha256",
                "stored": stored,
                "rerendered": rerendered,
            }
        )
    if file != stored:
        detail = "stored PDF file is missing" if file is None else "stored PDF file was changed"
        out.append({"what": "pdf_file", "detail": detail, "stored": stored, "file": file})
    return out
