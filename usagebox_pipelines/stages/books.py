"""The invoicing tables every close stage reads: `period_closes`, issued documents, credit.

A row in `period_closes` is the commit marker of a close: it is written LAST, after the issued
invoices and their lines. So "issued" means: `status = 'issued'` AND the period has a
`period_closes` row. Issued rows of a period without one are leftovers of a close that crashed
half-way; every reader here ignores them, and the next close of that period deletes them and
issues again (so document numbers stay gapless). Ingest reads `period_closes.period` to mark
events of closed months late.

The numbering books (`books_problems`, `tampered_periods`) compare `period_closes` with the
issued invoices and its Delta history: a marker whose append is in the history but whose row is
gone, or leftovers numbered below a closed period's numbers (only the latest close can have
crashed), are tampering. `close` refuses to re-issue such a month; `verify` fails. Checked
too: numbers gapless and unique over all closed periods, and every row lists exactly its
invoices (count, first/last number, totals).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import cast

import polars as pl

from usagebox_pipelines.catalog import (
    CREDIT_LEDGER,
    EVENTS,
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    PERIOD_CLOSES,
    USAGE_HOURLY,
    Table,
)
from usagebox_pipelines.decimals import to_decimal
from usagebox_pipelines.invoicing.credit import balances, grants, ledger
from usagebox_pipelines.invoicing.numbering import parse_number
from usagebox_pipelines.invoicing.stamps import (
    json_or_none,
)
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.rollups.aggregate import rollup_hourly
from usagebox_pipelines.storage import DeltaStore, writes_tables

#: Commit metadata of a close: the `guardrail_decisions` version it read.
DECISIONS_VERSION_KEY = "guardrail_decisions_version"


def closes(store: DeltaStore) -> pl.DataFrame:
    """Every `period_closes` row, oldest close first."""
    return store.read(PERIOD_CLOSES).sort("closed_at", "period")


def closed_periods(store: DeltaStore) -> dict[str, dict]:
    """period → its `period_closes` row (as a dict), for every month whose close committed."""
    return {row["period"]: row for row in closes(store).iter_rows(named=True)}


def all_invoices(store: DeltaStore) -> pl.DataFrame:
    return store.read(INVOICES)


def all_lines(store: DeltaStore) -> pl.DataFrame:
    return store.read(INVOICE_LINES)


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


def open_months_before(store: DeltaStore, month: str, closed: dict[str, dict]) -> list[str]:
    """Months before `month` with billable usage in `usage_hourly` and no `period_closes` row.

    Closing past one of them would draw prepaid credit (and take numbers) out of issue order.
    """
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    months = (
        store.scan(USAGE_HOURLY)
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


def hourly_at(
    store: DeltaStore, period: str, version: int | None, account_id: str | None = None
) -> pl.DataFrame:
    """`usage_hourly` of `period` rebuilt from `events` as of `version` (the stamped one)."""
    start, end = month_bounds(period)
    events = store.scan(EVENTS, version=version)
    if account_id is not None:
        events = events.filter(pl.col("account_id") == account_id)
    return rollup_hourly(events, start, end)


def decisions_at(store: DeltaStore, version: int | None) -> pl.DataFrame:
    """`guardrail_decisions` as of `version` (none when the table did not exist)."""
    if version is None:
        return pl.DataFrame(schema=GUARDRAIL_DECISIONS.schema)
    return store.read(GUARDRAIL_DECISIONS, version=version)


def marker_history(store: DeltaStore) -> dict[str, int]:
    """period → the `period_closes` version whose commit appended its marker (stage `close`)."""
    table = store.table(PERIOD_CLOSES)
    if table is None:
        return {}
    out: dict[str, int] = {}
    for commit in table.history():
        if commit.get("stage") == "close" and commit.get("period"):
            out.setdefault(str(commit["period"]), int(commit.get("version", -1)))
    return out


def close_commits(store: DeltaStore, name: Table) -> dict[str, dict]:
    """period → the newest commit of table `name` written by a close of it (stage `close`):
    its `version`, `timestamp` and the close's metadata (e.g. the decisions version read)."""
    table = store.table(name)
    if table is None:
        return {}
    out: dict[str, dict] = {}
    for commit in table.history():  # newest first
        if commit.get("stage") == "close" and commit.get("period"):
            out.setdefault(str(commit["period"]), commit)
    return out


def tampered_periods(store: DeltaStore, closed: dict[str, dict] | None = None) -> list[dict]:
    """Periods with issued invoices but no marker that are NOT a crashed close's leftovers."""
    closed = closed_periods(store) if closed is None else closed
    unfinished = unfinished_periods(store)
    if not unfinished:
        return []
    history = marker_history(store)
    docs = all_invoices(store).filter(pl.col("status") == "issued")
    top = _max_seq(docs.filter(pl.col("period").is_in(list(closed)))["invoice_number"])
    out = []
    for period in unfinished:
        if period in history:
            out.append(
                {
                    "period": period,
                    "problem": f"period_closes row of {period} was deleted (appended at "
                    f"version {history[period]}) but its issued invoices remain",
                }
            )
            continue
        numbers = docs.filter(pl.col("period") == period)["invoice_number"]
        low = _min_seq(numbers)
        if low is not None and top is not None and low <= top:
            out.append(
                {
                    "period": period,
                    "problem": f"{period} has issued invoices numbered below closed periods' "
                    "numbers but no period_closes row: not a crashed close",
                }
            )
    return out


def books_problems(store: DeltaStore) -> list[dict]:
    """Every inconsistency between `period_closes` and the issued invoices (empty = sound)."""
    closed = closed_periods(store)
    problems = tampered_periods(store, closed)
    docs = issued_invoices(store, closed)
    numbers = [n for n in docs["invoice_number"].to_list() if n]
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    if dupes:
        problems.append({"problem": f"invoice numbers issued twice: {', '.join(dupes[:5])}"})
    by_prefix: dict[str, list[int]] = {}
    for n in set(numbers):
        prefix, _, seq = parse_number(n)
        by_prefix.setdefault(prefix, []).append(seq)
    for prefix, seqs in sorted(by_prefix.items()):
        missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
        if missing:
            problems.append(
                {"problem": f"{prefix} numbers have gaps: sequence {missing[:5]} missing"}
            )
    for period, row in sorted(closed.items()):
        problems += _row_problems(period, row, docs.filter(pl.col("period") == period))
    return problems


def _row_problems(period: str, row: dict, docs: pl.DataFrame) -> list[dict]:
    """A `period_closes` row lists exactly its invoices: count, first/last number, totals."""
    numbers = sorted(docs["invoice_number"].to_list())
    totals = {str(c): str(p["total"].sum()) for (c,), p in docs.group_by("currency")}
    listed = cast(dict, json_or_none(row["totals"]) or {})
    found = {
        "invoices": len(numbers),
        "first_number": numbers[0] if numbers else None,
        "last_number": numbers[-1] if numbers else None,
    }
    out = [
        {"period": period, "problem": f"period_closes.{k} is {row[k]!r}, issued: {v!r}"}
        for k, v in found.items()
        if row[k] != v
    ]
    if {k: to_decimal(v) for k, v in listed.items()} != {
        k: to_decimal(v) for k, v in totals.items()
    }:
        out.append(
            {"period": period, "problem": f"period_closes.totals {listed} != issued {totals}"}
        )
    return out


def _max_seq(numbers: pl.Series) -> int | None:
    seqs = [parse_number(n)[2] for n in numbers.drop_nulls().to_list()]
    return max(seqs) if seqs else None


def _min_seq(numbers: pl.Series) -> int | None:
    seqs = [parse_number(n)[2] for n in numbers.drop_nulls().to_list()]
    return min(seqs) if seqs else None


# --------------------------------------------------------------------------- credit


def opening_credit(
    store: DeltaStore, accounts: object, closed: dict[str, dict] | None = None
) -> dict[str, Decimal]:
    """Balances the next close (and every draft) applies: grant − drawn by issued invoices."""
    return balances(grants(accounts), issued_lines(store, issued_invoices(store, closed)))


@writes_tables("credit_ledger")
def write_ledger(store: DeltaStore, accounts: object, run_id: str = "cli") -> pl.DataFrame:
    """Rewrite `credit_ledger` from the issued invoices of closed periods (after a close)."""
    closed = closed_periods(store)  # oldest close first
    rows = ledger(grants(accounts), list(closed), issued_lines(store, issued_invoices(store)))
    store.overwrite(CREDIT_LEDGER, rows, metadata={"run_id": run_id, "stage": "credit_ledger"})
    return rows
