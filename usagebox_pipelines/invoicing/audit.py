"""The numbering books: `period_closes` against the issued invoices, and its Delta history.

A `period_closes` row is the commit marker of a close (invoicing.tables). Issued rows without
one are normally the leftovers of a close that crashed before its marker, which the next close
deletes and re-issues. That must never happen to a month that WAS closed: so a marker whose
append is in the table's history but whose row is gone, or leftovers numbered below a closed
period's numbers (only the latest close can have crashed), are tampering. `close` refuses to
re-issue such a month; `verify` fails. Checked too: numbers gapless and unique over all closed
periods, and every row lists exactly its invoices (count, first/last number, totals).
"""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.invoicing import tables as t
from usagebox_pipelines.invoicing.numbering import parse_number
from usagebox_pipelines.storage import DeltaStore


def marker_history(store: DeltaStore) -> dict[str, int]:
    """period → the `period_closes` version whose commit appended its marker (stage `close`)."""
    table = store.table(t.PERIOD_CLOSES_TABLE)
    if table is None:
        return {}
    out: dict[str, int] = {}
    for commit in table.history():
        if commit.get("stage") == "close" and commit.get("period"):
            out.setdefault(str(commit["period"]), int(commit.get("version", -1)))
    return out


def close_commits(store: DeltaStore, name: str) -> dict[str, dict]:
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
    closed = t.closed_periods(store) if closed is None else closed
    unfinished = t.unfinished_periods(store)
    if not unfinished:
        return []
    history = marker_history(store)
    docs = t.all_invoices(store).filter(pl.col("status") == "issued")
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
    closed = t.closed_periods(store)
    problems = tampered_periods(store, closed)
    docs = t.issued_invoices(store, closed)
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
    listed = t.json_or_none(row["totals"]) or {}
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
    if {k: _dec(v) for k, v in listed.items()} != {k: _dec(v) for k, v in totals.items()}:
        out.append(
            {"period": period, "problem": f"period_closes.totals {listed} != issued {totals}"}
        )
    return out


def _dec(value: object):
    from decimal import Decimal

    return Decimal(str(value))


def _max_seq(numbers: pl.Series) -> int | None:
    seqs = [parse_number(n)[2] for n in numbers.drop_nulls().to_list()]
    return max(seqs) if seqs else None


def _min_seq(numbers: pl.Series) -> int | None:
    seqs = [parse_number(n)[2] for n in numbers.drop_nulls().to_list()]
    return min(seqs) if seqs else None
