"""Gapless document numbers `PREFIX-YYYY-NNNNNN`, assigned at issue, never reused or reset.

NNNNNN is one global sequence per prefix that never resets (not monthly, not yearly); YYYY is
the issue year, for humans only. So UBX-2026-000041 may be followed by UBX-2027-000042, and
the sequence alone orders and identifies documents. Invoices and credit notes share the series
(the PDF title and `document_type` tell them apart), so there is one counter to keep gapless.
The caller derives `last_seq` from every number ever issued (`last_sequence`) inside the same
transaction that writes the new ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing.lines import line_documents
from usagebox_pipelines.schemas import INVOICE_LINES, TS

PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{1,9}$")
NUMBER_RE = re.compile(r"^(?P<prefix>[A-Z][A-Z0-9]{1,9})-(?P<year>\d{4})-(?P<seq>\d{6})$")
MAX_SEQ = 999_999
DOC_ORDER = {"invoice": 0, "credit_note": 1}


def format_number(prefix: str, year: int, seq: int) -> str:
    """`UBX-2026-000042`; refuses prefixes that would make numbers ambiguous."""
    if not PREFIX_RE.match(prefix):
        raise UsageboxError(f"invoice prefix {prefix!r}: use 2-10 capital letters/digits")
    if not 1 <= seq <= MAX_SEQ:
        raise UsageboxError(f"invoice sequence {seq} outside 1..{MAX_SEQ}")
    return f"{prefix}-{year:04d}-{seq:06d}"


def parse_number(number: str) -> tuple[str, int, int]:
    """(prefix, year, seq) of a document number."""
    match = NUMBER_RE.match(number)
    if match is None:
        raise UsageboxError(f"not a document number: {number!r}")
    return match["prefix"], int(match["year"]), int(match["seq"])


def last_sequence(numbers: Iterable[str | None], prefix: str) -> int:
    """Highest sequence ever issued under `prefix` (0 when none): the next is this + 1."""
    seqs = [parse_number(n)[2] for n in numbers if n and n.startswith(f"{prefix}-")]
    return max(seqs, default=0)


def assign_numbers(invoices: pl.DataFrame, last_seq: int, prefix: str, year: int) -> pl.DataFrame:
    """Number every row without one, last_seq+1, +2, … in a deterministic order.

    Order: period, account_id, invoice before credit note. Rows that already carry a number
    keep it; one at or above last_seq+1 means `last_seq` is stale, which would reuse a number.
    """
    if last_seq < 0:
        raise UsageboxError(f"last_seq must be >= 0, got {last_seq}")
    taken = last_sequence(invoices.get_column("invoice_number").to_list(), prefix)
    if taken > last_seq:
        raise UsageboxError(f"last_seq {last_seq} is stale: {prefix} sequence {taken} exists")
    todo = invoices.with_row_index("_row").filter(pl.col("invoice_number").is_null())
    todo = todo.sort(
        "period",
        "account_id",
        pl.col("document_type").replace_strict(DOC_ORDER, default=9, return_dtype=pl.Int32),
    )
    numbers = [format_number(prefix, year, last_seq + i) for i in range(1, todo.height + 1)]
    mapping = todo.select("_row").with_columns(_number=pl.Series(numbers, dtype=pl.String))
    out = invoices.with_row_index("_row").join(mapping, on="_row", how="left")
    out = out.with_columns(invoice_number=pl.coalesce("invoice_number", "_number"))
    return out.sort("_row").drop("_row", "_number")


def issue_documents(
    invoices: pl.DataFrame,
    lines: pl.DataFrame,
    *,
    last_seq: int,
    prefix: str,
    issued_at: datetime,
    payment_terms_days: int | Mapping[str, int] = 30,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Draft invoices + lines → issued: numbered, `issued_at`, `due_date`, numbers on lines.

    `payment_terms_days` is one number or per account_id. Only rows without a number change.
    """
    issued_at = issued_at.astimezone(UTC)
    numbered = assign_numbers(invoices, last_seq, prefix, issued_at.year)
    was_draft = pl.col("status") == "draft"
    numbered = numbered.with_columns(
        status=pl.when(was_draft).then(pl.lit("issued")).otherwise("status"),
        issued_at=pl.when(was_draft).then(pl.lit(issued_at, dtype=TS)).otherwise("issued_at"),
        due_date=pl.when(was_draft & (pl.col("document_type") != "credit_note"))
        .then(_due_dates(numbered, issued_at, payment_terms_days))
        .otherwise("due_date"),
    )
    return numbered, _number_lines(numbered, lines)


def _due_dates(
    invoices: pl.DataFrame, issued_at: datetime, terms: int | Mapping[str, int]
) -> pl.Series:
    day = issued_at.date()
    per_account = terms if isinstance(terms, Mapping) else {}
    default = terms if isinstance(terms, int) else 30
    dates = [
        day + timedelta(days=int(per_account.get(a, default)))
        for a in invoices.get_column("account_id").to_list()
    ]
    return pl.Series("due_date", dates, dtype=pl.Date)


def _number_lines(invoices: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    """Copy each document's number onto its lines (credit-note lines to the credit note)."""
    docs = invoices.select(
        "account_id", "period", "document_type", pl.col("invoice_number").alias("_number")
    )
    tagged = line_documents(invoices, lines)
    joined = tagged.join(docs, on=["account_id", "period", "document_type"], how="left")
    joined = joined.with_columns(invoice_number=pl.coalesce("invoice_number", "_number"))
    return joined.select(INVOICE_LINES.names()).cast(dict(INVOICE_LINES))
