"""Control totals and document summaries of a close, from frames: pure, no I/O."""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.invoicing.lines import line_documents


def rollup_totals(hourly: pl.DataFrame) -> dict:
    """Per meter: every event's quantity, the billable part, and rows/events counted."""
    billable = pl.col("billable").fill_null(False)
    per_meter = hourly.group_by("meter_id").agg(
        sum=pl.col("sum").sum(),
        billable_sum=pl.col("sum").filter(billable).sum(),
        rows=pl.len(),
        events=pl.col("count").sum(),
    )
    return {
        r["meter_id"]: {
            "sum": str(r["sum"]),
            "billable_sum": str(r["billable_sum"] or 0),
            "rows": r["rows"],
            "events": r["events"],
        }
        for r in per_meter.sort("meter_id", nulls_last=True).iter_rows(named=True)
    }


def invoice_totals(invoices: pl.DataFrame, lines: pl.DataFrame) -> dict:
    """Per currency: documents, period charges (subtotal), adjustments, credit and total."""
    docs = line_documents(invoices, lines).join(
        invoices.select("account_id", "document_type", "currency"),
        on=["account_id", "document_type"],
    )
    out = {}
    for (currency,), part in sorted(invoices.group_by("currency"), key=lambda kv: str(kv[0])):
        own = docs.filter(pl.col("currency") == currency)
        out[currency] = {
            "documents": part.height,
            "credit_notes": part.filter(pl.col("document_type") == "credit_note").height,
            "subtotal": str(part["subtotal"].sum()),
            "tax": str(own.filter(pl.col("kind") == "tax")["amount"].sum()),
            "adjustments": str(own.filter(pl.col("kind") == "adjustment")["amount"].sum()),
            "credit": str(own.filter(pl.col("kind") == "credit")["amount"].sum()),
            "total": str(part["total"].sum()),
        }
    return out


def draft_summaries(invoices: pl.DataFrame, lines: pl.DataFrame) -> list[dict]:
    """One summary per draft document, from ONE pass over the lines (grouped by account and
    document type): a per-document join over all lines was quadratic (ADR 0003 note)."""
    keys = ["account_id", "document_type"]
    per_doc = (
        line_documents(invoices, lines)
        .group_by(keys)
        .agg(
            lines=pl.len(),
            adjusts_periods=pl.col("adjusts_period").drop_nulls().unique().sort(),
        )
    )
    joined = invoices.join(per_doc, on=keys, how="left", nulls_equal=True, maintain_order="left")
    return [
        {
            "account_id": row["account_id"],
            "document_type": row["document_type"],
            "currency": row["currency"],
            "subtotal": str(row["subtotal"]),
            "total": str(row["total"]),
            "lines": row["lines"] or 0,
            "adjusts_periods": list(row["adjusts_periods"] or []),
        }
        for row in joined.iter_rows(named=True)
    ]


def issued_summary(invoices: pl.DataFrame, documents_root: str) -> list[dict]:
    """One summary per document; `pdf` is where it is stored (`<home>/documents/...`)."""
    return [
        {
            "invoice_number": r["invoice_number"],
            "document_type": r["document_type"],
            "account_id": r["account_id"],
            "total": str(r["total"]),
            "currency": r["currency"],
            "pdf": f"{documents_root}/{r['pdf_path']}" if r["pdf_path"] else None,
            "pdf_sha256": r["pdf_sha256"],
        }
        for r in invoices.sort("invoice_number").iter_rows(named=True)
    ]
