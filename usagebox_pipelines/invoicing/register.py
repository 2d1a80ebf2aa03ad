"""The finance register: one CSV row per invoice / credit note, safe to open in a spreadsheet.

Amounts stay numeric (negative credit notes included) so finance can sum the column; text
cells that a spreadsheet would run as a formula (an account named `=HYPERLINK(...)`) are
neutralised by documents.safe_csv_bytes.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from usagebox_pipelines.documents import safe_csv_bytes
from usagebox_pipelines.invoicing.lines import field

REGISTER_COLUMNS = [
    "invoice_number",
    "document_type",
    "status",
    "account_id",
    "account_name",
    "period",
    "currency",
    "subtotal",
    "total",
    "issued_at",
    "due_date",
    "pdf_sha256",
]


def register_frame(invoices: pl.DataFrame, accounts: Any = None) -> pl.DataFrame:
    """Register rows in number order (drafts last); `account_name` when accounts are given."""
    names = _names(invoices, accounts)
    frame = invoices.with_columns(
        account_name=pl.col("account_id").replace_strict(
            names, default=None, return_dtype=pl.String
        )
    )
    ordered = frame.sort(
        pl.col("invoice_number").is_null(), "invoice_number", "account_id", "document_type"
    )
    return ordered.select(REGISTER_COLUMNS)


def register_csv(invoices: pl.DataFrame, accounts: Any = None) -> bytes:
    """The register as CSV bytes (formula-injection safe)."""
    return safe_csv_bytes(register_frame(invoices, accounts))


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
