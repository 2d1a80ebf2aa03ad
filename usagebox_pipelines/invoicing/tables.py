"""The month close's own table (`period_closes`) and the reads every close stage shares.

A row in `period_closes` is the commit marker of a close: it is written LAST, after the issued
invoices and their lines. So "issued" means: `status = 'issued'` AND the period has a
`period_closes` row. Issued rows of a period without one are leftovers of a close that crashed
half-way; every reader here ignores them, and the next close of that period deletes them and
issues again (so document numbers stay gapless). Ingest reads `period_closes.period` to mark
events of closed months late.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl

from usagebox_pipelines.schemas import INVOICE_LINES, INVOICES, TS, USAGE_HOURLY
from usagebox_pipelines.storage import DeltaStore

PERIOD_CLOSES_TABLE = "period_closes"
INVOICES_TABLE = "invoices"
INVOICE_LINES_TABLE = "invoice_lines"

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


def closes(store: DeltaStore) -> pl.DataFrame:
    """Every `period_closes` row, oldest close first."""
    return store.read(PERIOD_CLOSES_TABLE, PERIOD_CLOSES).sort("closed_at", "period")


def closed_periods(store: DeltaStore) -> dict[str, dict]:
    """period → its `period_closes` row (as a dict), for every month whose close committed."""
    return {row["period"]: row for row in closes(store).iter_rows(named=True)}


def all_invoices(store: DeltaStore) -> pl.DataFrame:
    return store.read(INVOICES_TABLE, INVOICES)


def all_lines(store: DeltaStore) -> pl.DataFrame:
    return store.read(INVOICE_LINES_TABLE, INVOICE_LINES)


def issued_invoices(store: DeltaStore, closed: dict[str, dict] | None = None) -> pl.DataFrame:
    """Issued documents of closed periods only (crashed closes are invisible)."""
    closed = closed_periods(store) if closed is None else closed
    return all_invoices(store).filter(
        (pl.col("status") == "issued") & pl.col("period").is_in(list(closed))
    )


def issued_lines(store: DeltaStore, invoices: pl.DataFrame | None = None) -> pl.DataFrame:
    """Lines of the issued documents of closed periods."""
    invoices = issued_invoices(store) if invoices is None else invoices
    numbers = invoices.get_column("invoice_number").to_list()
    return all_lines(store).filter(pl.col("invoice_number").is_in(numbers))


def unfinished_periods(store: DeltaStore) -> list[str]:
    """Periods holding issued rows (or numbered lines) but no `period_closes` row: crashed."""
    closed = list(closed_periods(store))
    inv = all_invoices(store).filter(pl.col("status") == "issued")
    lines = all_lines(store).filter(pl.col("invoice_number").is_not_null())
    periods = set(inv["period"].to_list()) | set(lines["period"].to_list())
    return sorted(p for p in periods if p is not None and p not in closed)


def recorded_fingerprints(invoices: pl.DataFrame) -> dict[str, str]:
    """Union of the `pricebook_versions` JSON stamped on issued invoices: {version key: sha}.

    Drafts carry a plain `a@v,b@w` list, not JSON; those (and empty stamps) are skipped.
    """
    out: dict[str, str] = {}
    for text in invoices.get_column("pricebook_versions").drop_nulls().to_list():
        try:
            stamp = json.loads(text)
        except ValueError:
            continue
        if isinstance(stamp, dict):
            out.update({str(k): str(v) for k, v in stamp.items()})
    return out


def decimal_map(text: str | None) -> dict[str, Decimal] | None:
    """Parse a JSON {key: decimal string} stamp (None stays None)."""
    if text is None:
        return None
    return {k: Decimal(v) for k, v in json.loads(text).items()}


def dump_json(value: object) -> str:
    """Compact, key-sorted JSON: the same value always stamps the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def json_or_none(text: str | None) -> object:
    """A stored JSON stamp parsed for output (non-JSON text is returned as is)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def open_months_before(store: DeltaStore, month: str, closed: dict[str, dict]) -> list[str]:
    """Months before `month` with billable usage in `usage_hourly` and no `period_closes` row.

    Closing past one of them would draw prepaid credit (and take numbers) out of issue order.
    """
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    months = (
        store.scan("usage_hourly", USAGE_HOURLY)
        .filter((pl.col("hour") < start) & pl.col("billable").fill_null(False))
        .group_by(pl.col("hour").dt.strftime("%Y-%m").alias("month"), "account_id", "meter_id")
        .agg(pl.col("sum").sum())
        .filter(pl.col("sum") != 0)
        .select("month")
        .unique()
        .collect()["month"]
        .to_list()
    )
    return sorted(m for m in months if m not in closed)
