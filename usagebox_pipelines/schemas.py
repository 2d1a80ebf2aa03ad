"""Column schemas of every Delta table: the single definition readers and writers share.

Quantities and exact money are Decimal(38, 12); rounded invoice money is Decimal(18, 2);
times are microsecond UTC timestamps. Pure data, no I/O.
"""

from __future__ import annotations

import polars as pl

QTY = pl.Decimal(38, 12)
MONEY = pl.Decimal(38, 12)
MONEY2 = pl.Decimal(18, 2)
TS = pl.Datetime("us", "UTC")

# Canonical event fields (CONTRACT.md §2), in order. `dimensions` is canonical JSON with sorted
# keys ("{}" when absent) so equal dimension sets compare and group equal; `extra` keeps columns
# the contract does not name (JSON object or null): kept, never billed.
EVENT_FIELDS: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "account_id": pl.String(),
    "meter_id": pl.String(),
    "quantity": QTY,
    "timestamp": TS,
    "model_id": pl.String(),
    "product_id": pl.String(),
    "unit": pl.String(),
    "project_id": pl.String(),
    "dimensions": pl.String(),
    "correlation_id": pl.String(),
    "billable": pl.Boolean(),
    "reason_code": pl.String(),
    "schema_version": pl.String(),
    "correction_of": pl.String(),
    "extra": pl.String(),
}

# Every valid arrival (the landing log). `hour` is the UTC hour the event counts in (a
# correction counts in its original's); `event_date` (its day) partitions the table.
RAW_EVENTS = pl.Schema(
    {
        **EVENT_FIELDS,
        "hour": TS,
        "event_date": pl.Date(),
        "is_late": pl.Boolean(),
        "ingested_at": TS,
        "source": pl.String(),
        "source_file": pl.String(),
        "row_number": pl.Int64(),
        "batch_id": pl.String(),
        # accepted | duplicate | conflict (events/raw.py); last, so old tables evolve by append.
        "disposition": pl.String(),
    }
)

# `status`: ok | pending (correction whose original has not arrived) | rejected (correction that
# would drive its original's net quantity below zero once the original arrived).
EVENTS = pl.Schema(
    {
        **EVENT_FIELDS,
        "hour": TS,
        "event_date": pl.Date(),
        "is_late": pl.Boolean(),
        "status": pl.String(),
        "status_reason": pl.String(),
        "ingested_at": TS,
        "source_file": pl.String(),
        "batch_id": pl.String(),
    }
)

QUARANTINE = pl.Schema(
    {
        "source_file": pl.String(),
        "row_number": pl.Int64(),
        "payload": pl.String(),
        "reason": pl.String(),
        "ingested_at": TS,
        "batch_id": pl.String(),
    }
)

EVENT_CONFLICTS = pl.Schema(
    {
        "event_id": pl.String(),
        "account_id": pl.String(),
        "payload": pl.String(),
        "kept_payload": pl.String(),
        "source_file": pl.String(),
        "row_number": pl.Int64(),
        "ingested_at": TS,
        "batch_id": pl.String(),
    }
)

# One row per ingested file; written last, so a batch exists for readers only once logged here.
INGEST_LOG = pl.Schema(
    {
        "batch_id": pl.String(),
        "source": pl.String(),
        "source_file": pl.String(),
        "content_sha256": pl.String(),
        "rows": pl.Int64(),
        "accepted": pl.Int64(),
        "duplicates": pl.Int64(),
        "conflicts": pl.Int64(),
        "rejected": pl.Int64(),
        "late": pl.Int64(),
        "ingested_at": TS,
    }
)

ROLLUP_KEYS = ["account_id", "meter_id", "model_id", "product_id", "unit", "billable"]

USAGE_HOURLY = pl.Schema(
    {
        "account_id": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "product_id": pl.String(),
        "unit": pl.String(),
        "billable": pl.Boolean(),
        "dimensions": pl.String(),
        "hour": TS,
        "sum": QTY,
        "count": pl.Int64(),
    }
)

USAGE_MONTHLY = pl.Schema(
    {
        "account_id": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "product_id": pl.String(),
        "unit": pl.String(),
        "billable": pl.Boolean(),
        "month": pl.String(),
        "sum": QTY,
        "count": pl.Int64(),
    }
)

# Rated usage (monthly partitions by `period`): one row per account × meter × model × dimensions
# × price version × tier, plus contract rows (line_kind minimum/discount/credit). `amount` is exact
# (not rounded); rounding happens once per invoice line (pricing.money.round_money).
RATED_USAGE = pl.Schema(
    {
        "period": pl.String(),
        "account_id": pl.String(),
        "line_kind": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "product_id": pl.String(),
        "unit": pl.String(),
        "dimensions": pl.String(),
        "pricebook": pl.String(),
        "price_version": pl.String(),
        "rate_id": pl.String(),
        "price_model": pl.String(),
        "tier": pl.Int32(),
        "quantity": QTY,
        "per": QTY,
        "unit_price": MONEY,
        "amount": MONEY,
        "currency": pl.String(),
        "first_hour": TS,
        "last_hour": TS,
    }
)

# Usage no rate matched: reported, blocks the close, never billed as free.
UNRATED_USAGE = pl.Schema(
    {
        "period": pl.String(),
        "account_id": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "dimensions": pl.String(),
        "quantity": QTY,
        "first_hour": TS,
        "reason": pl.String(),
    }
)

INVOICES = pl.Schema(
    {
        "invoice_number": pl.String(),
        "account_id": pl.String(),
        "period": pl.String(),
        "document_type": pl.String(),
        "currency": pl.String(),
        "subtotal": MONEY2,
        "total": MONEY2,
        "status": pl.String(),
        "issued_at": TS,
        "due_date": pl.Date(),
        "events_table_version": pl.Int64(),
        "pricebook_versions": pl.String(),
        "code_version": pl.String(),
        "template_version": pl.String(),
        "pdf_path": pl.String(),
        "pdf_sha256": pl.String(),
        "notes": pl.String(),
    }
)

INVOICE_LINES = pl.Schema(
    {
        "invoice_number": pl.String(),
        "line_no": pl.Int32(),
        "account_id": pl.String(),
        "period": pl.String(),
        "kind": pl.String(),
        "description": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "quantity": QTY,
        "unit": pl.String(),
        "unit_price": MONEY,
        "per": QTY,
        "amount": MONEY2,
        "exact_amount": MONEY,
        "price_version": pl.String(),
        "tier": pl.Int32(),
        "adjusts_period": pl.String(),
    }
)

#: One row per closed month. `events_table_version` is the `events` version the month was rated
#: from; `opening_credit` (JSON {account: decimal string}) the prepaid balances it drew from, so
#: `usagebox invoice verify` can re-rate it exactly; `totals` is JSON {currency: total}.
PERIOD_CLOSES = pl.Schema(
    {
        "period": pl.String(),
        "closed_at": TS,
        "events_table_version": pl.Int64(),
        "invoices": pl.Int64(),
        "first_number": pl.String(),
        "last_number": pl.String(),
        "totals": pl.String(),
        "opening_credit": pl.String(),
        "approved_by": pl.String(),
        "code_version": pl.String(),
        "run_id": pl.String(),
    }
)

# Prepaid credit carried across months: closing of one period opens the next.
CREDIT_LEDGER = pl.Schema(
    {
        "account_id": pl.String(),
        "period": pl.String(),
        "opening": MONEY,
        "drawn": MONEY,
        "closing": MONEY,
    }
)

# Credit grants, append-only: one row per grant recorded, per draw by an issued invoice and per
# expiry (ADR 0016). `amount` is the signed change of the grant's balance; `balance_after` the
# balance once it applied.
CREDIT_GRANT_LEDGER = pl.Schema(
    {
        "account_id": pl.String(),
        "grant_id": pl.String(),
        "period": pl.String(),
        "invoice_number": pl.String(),
        "kind": pl.String(),
        "amount": MONEY,
        "balance_after": MONEY,
        "recorded_at": TS,
        "run_id": pl.String(),
    }
)

# Which hours have a built rollup and when: `is_late` and `--source auto` read it.
HOUR_BUILDS = pl.Schema({"hour": TS, "built_at": TS, "run_id": pl.String()})

# Ingest batches already folded into `events` (written after the fold, so a crash redoes it).
EVENTS_BUILDS = pl.Schema({"batch_id": pl.String(), "built_at": TS})

# The exactly-once lookup index: per accepted `raw_events` row, a 64-bit hash of its key (and,
# for a correction, one of the key it corrects) with the row's `event_date` partition and batch,
# so a lookup reads 8 bytes per event of history, then only the partitions that can match.
EVENT_KEYS = pl.Schema({"key": pl.Int64(), "event_date": pl.Date(), "batch_id": pl.String()})


def empty(schema: pl.Schema) -> pl.DataFrame:
    """An empty frame with exactly this schema."""
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Select and cast `df` to `schema` (missing columns become nulls), so writes never drift."""
    cols = [
        (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema.items()
    ]
    return df.select(cols)
