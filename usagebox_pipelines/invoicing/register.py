"""The finance register: one CSV row per invoice / credit note, safe to open in a spreadsheet.

Amounts stay numeric (negative credit notes included) so finance can sum the column; text
cells that a spreadsheet would run as a formula (an account named `=HYPERLINK(...)`) are
neutralised by documents.safe_csv_bytes.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from usagebox_pipelines.documents import safe_csv_bytes
from usagebox_pipelines.invoicing.lines import field, line_documents
from usagebox_pipelines.schemas import MONEY2

REGISTER_COLUMNS = [
    "invoice_number",
    "document_type",
    "status",
    "account_id",
    "account_name",
    "period",
    "currency",
    "subtotal",
    "tax",
    "credit_applied",
    "total",
    "issued_at",
    "due_date",
    "pdf_sha256",
]


def register_frame(
    invoices: pl.DataFrame, accounts: Any = None, lines: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Register rows in number order (drafts last); `account_name` when accounts are given;
    `tax` (tax lines and the tax of adjustments) and `credit_applied` when `lines` are, so
    subtotal + tax + adjustments + credit_applied = total can be checked row by row."""
    names = _names(invoices, accounts)
    frame = invoices.with_columns(
        account_name=pl.col("account_id").replace_strict(
            names, default=None, return_dtype=pl.String
        )
    )
    money = pl.col("tax", "credit_applied")
    frame = frame.join(
        _tax_and_credit(invoices, lines), on=_DOC, how="left", nulls_equal=True
    ).with_columns((money if lines is None else money.fill_null(0)).cast(MONEY2))
    ordered = frame.sort(
        pl.col("invoice_number").is_null(), "invoice_number", "account_id", "document_type"
    )
    return ordered.select(REGISTER_COLUMNS)


def register_csv(
    invoices: pl.DataFrame, accounts: Any = None, lines: pl.DataFrame | None = None
) -> bytes:
    """The register as CSV bytes (formula-injection safe)."""
    return safe_csv_bytes(register_frame(invoices, accounts, lines))


_DOC = ["account_id", "period", "document_type"]


def _tax_and_credit(invoices: pl.DataFrame, lines: pl.DataFrame | None) -> pl.DataFrame:
    """Per document: its tax (the tax line plus tax restated by its adjustments) and the
    prepaid credit it applied (negative)."""
    schema = {"account_id": pl.String, "period": pl.String, "document_type": pl.String}
    if lines is None:
        return pl.DataFrame(schema={**schema, "tax": MONEY2, "credit_applied": MONEY2})
    docs = line_documents(invoices, lines.filter(pl.col("period").is_not_null()))
    is_tax = (pl.col("kind") == "tax") | (
        (pl.col("kind") == "adjustment") & (pl.col("unit") == "tax")
    )
    return docs.group_by(_DOC).agg(
        tax=pl.col("amount").filter(is_tax).sum(),
        credit_applied=pl.col("amount").filter(pl.col("kind") == "credit").sum(),
    )


def _names(invoices: pl.DataFrame, accounts: Any) -> dict[str, str]:
    """account_id → name via pricing.accounts.Accounts, a mapping, or an iterable of accounts."""
    if accounts is None:
        return {}
    ids = invoices.get_column("account_id").unique().drop_nulls().to_list()
    if callable(getattr(accounts, "get", None)):
        found = {i: accounts.get(i) for i in ids}
    else:
        by_id = {field(a, "account_id"): a for a in accounts}
        found = {i: by_id.get(i) for i in ids}
    return {i: field(a, "name") for i, a in found.items() if a is not None}
