"""The invariants of CONTRACT.md §5 as pure checks over (lazy) frames.

Each check returns an `InvariantResult` naming the invariant and up to a few offending rows,
so `usagebox verify` and the Dagster asset checks report the same thing in the same words.
Invariants 4 (draft lines = rated usage + adjustments) and 5 (issued invoices unchanged:
committed rows, lines and files, numbering, `period_closes` rows) are here too as pure parts;
stages/verify.py and stages/books.py read the tables and call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import cast

import polars as pl

from usagebox_pipelines.decimals import decimal_text, to_decimal
from usagebox_pipelines.invoicing.adjustments import billed_for_period
from usagebox_pipelines.invoicing.numbering import parse_number
from usagebox_pipelines.invoicing.stamps import json_or_none
from usagebox_pipelines.months import utc_days
from usagebox_pipelines.schemas import conform

SAMPLE = 5


@dataclass
class InvariantResult:
    name: str
    passed: bool
    detail: str = ""
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "invariant": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "examples": self.examples,
        }


def all_of(results: list[InvariantResult]) -> InvariantResult:
    """One result for an invariant checked over several slices (the month shards one run
    materialises): passed when every slice passed; the failing slices' details and examples."""
    failed = [r for r in results if not r.passed]
    shown = failed or results[:1]
    return InvariantResult(
        results[0].name,
        not failed,
        "; ".join(r.detail for r in shown if r.detail),
        [e for r in shown for e in r.examples][:SAMPLE],
    )


def _examples(frame: pl.DataFrame) -> list[dict]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.head(SAMPLE).to_dicts()]


def _plain(value: object) -> object:
    """JSON-friendly example values: decimals as plain text ('0', not '0E-12')."""
    if value is None or isinstance(value, int | bool):
        return value
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


COUNTED = ["raw", "raw_duplicates", "raw_conflicts", "legacy", "quarantined", "conflicted"]


def ingest_counts_add_up(ingest_log: pl.DataFrame, actual: pl.DataFrame) -> InvariantResult:
    """1. Per batch: rows = accepted + duplicates + conflicts + quarantined, from the tables.

    `actual`: per batch_id the rows really stored: `raw_events` arrivals by disposition (`raw`
    accepted, `raw_duplicates`, `raw_conflicts`), `quarantined`, `conflicted` (event_conflicts)
    and `legacy` (raw rows from before `disposition` existed, counted as accepted). Every input
    row is one stored row, so the tables alone must give `rows` = raw arrivals + quarantine
    rows, and each count in `ingest_log` must match its table. Legacy batches stored only
    accepted rows: for them the duplicate rows cannot be checked, only the per-table counts.
    """
    for name in COUNTED:
        if name not in actual.columns:
            actual = actual.with_columns(pl.lit(0, dtype=pl.Int64).alias(name))
    joined = ingest_log.join(actual, on="batch_id", how="left").with_columns(
        pl.col(COUNTED).fill_null(0)
    )
    modern = pl.col("legacy") == 0
    stored_rows = (
        pl.col("raw") + pl.col("raw_duplicates") + pl.col("raw_conflicts") + pl.col("quarantined")
    )
    bad = joined.filter(
        (
            pl.col("rows")
            != pl.col("accepted") + pl.col("duplicates") + pl.col("conflicts") + pl.col("rejected")
        )
        | (pl.col("raw") != pl.col("accepted"))
        | (pl.col("quarantined") != pl.col("rejected"))
        | (pl.col("conflicted") != pl.col("conflicts"))
        | (modern & (pl.col("raw_duplicates") != pl.col("duplicates")))
        | (modern & (pl.col("raw_conflicts") != pl.col("conflicts")))
        | (modern & (stored_rows != pl.col("rows")))
    )
    return InvariantResult(
        "1_ingest_rows_reconcile",
        bad.height == 0,
        f"{ingest_log.height} batches checked; {bad.height} do not add up",
        _examples(
            bad.select(
                "source_file",
                "rows",
                "accepted",
                "duplicates",
                "conflicts",
                "rejected",
                "raw",
                "raw_duplicates",
                "raw_conflicts",
                "quarantined",
                "conflicted",
            )
        ),
    )


def events_hold_accepted(accepted: pl.LazyFrame, events: pl.LazyFrame) -> InvariantResult:
    """1. Every accepted arrival of a folded batch is in `events`, and nothing else is: the
    (account_id, event_id) keys of the two are the same set (a correction dropped while it
    waited for its original is a row lost between the landing log and the billed events)."""
    keys = ["account_id", "event_id"]
    accepted, events = accepted.select(keys), events.select(keys)
    lost = accepted.join(events, on=keys, how="anti").collect(engine="streaming")
    extra = events.join(accepted, on=keys, how="anti").collect(engine="streaming")
    detail = f"{lost.height} accepted rows missing from events, {extra.height} not accepted"
    return InvariantResult(
        "1_events_hold_every_accepted_row",
        lost.height == 0 and extra.height == 0,
        detail,
        _examples(pl.concat([lost, extra])),
    )


def events_unique(events: pl.LazyFrame) -> InvariantResult:
    """2. `events` has no duplicate (account_id, event_id)."""
    dups = (
        events.group_by("account_id", "event_id")
        .agg(n=pl.len())
        .filter(pl.col("n") > 1)
        .collect(engine="streaming")
    )
    return InvariantResult(
        "2_events_unique", dups.height == 0, f"{dups.height} duplicated keys", _examples(dups)
    )


def month_events_unique(events: pl.LazyFrame, start: datetime, end: datetime) -> InvariantResult:
    """2, for the events counting in [start, end): none of their keys is stored twice, in the
    window or anywhere else (see `selected_events_unique`)."""
    return selected_events_unique(events, ((pl.col("hour") >= start) & (pl.col("hour") < end)))


def selected_events_unique(events: pl.LazyFrame, selected: pl.Expr) -> InvariantResult:
    """2, for the `selected` rows: none of their (account_id, event_id) keys is stored twice,
    among them or anywhere else.

    Keys are compared as 64-bit hashes first (8 bytes a row, not two strings), the rest of
    history streamed through a semi join: memory is bounded by the selection's hashes, not by
    all of history. Only the keys behind a repeated hash (a duplicate, or a rare collision)
    are then read and counted exactly, so a collision never fails the check."""
    keys = ["account_id", "event_id"]
    inside = selected.fill_null(False)
    key_hash = pl.struct(keys).hash().alias("_h")
    mine = (events.filter(inside).select(key_hash).group_by("_h").agg(n=pl.len())).collect(
        engine="streaming"
    )
    elsewhere = (
        events.filter(~inside)
        .select(key_hash)
        .join(mine.lazy().select("_h"), on="_h", how="semi")
        .group_by("_h")
        .agg(m=pl.len())
        .collect(engine="streaming")
    )
    repeated = (
        mine.join(elsewhere, on="_h", how="left")
        .filter(pl.col("n") + pl.col("m").fill_null(0) > 1)
        .get_column("_h")
    )
    if repeated.is_empty():  # the usual case: no second read of history
        return InvariantResult("2_events_unique", True, "0 duplicated keys", [])
    dups = (
        events.filter(key_hash.is_in(repeated.implode()))
        .select(*keys, _in=inside)
        .group_by(keys)
        .agg(n=pl.len().cast(pl.UInt32), _in=pl.col("_in").any())
        .filter((pl.col("n") > 1) & pl.col("_in"))
        .drop("_in")
        .sort(keys)
        .collect(engine="streaming")
    )
    return InvariantResult(
        "2_events_unique", dups.height == 0, f"{dups.height} duplicated keys", _examples(dups)
    )


def hourly_matches_events(
    events: pl.LazyFrame, hourly: pl.LazyFrame, start: datetime | None, end: datetime | None
) -> InvariantResult:
    """3a. Per account × meter × hour, the sum of counted events equals `usage_hourly`.

    A bounded window is compared one UTC day at a time (the groups of an hour never cross a
    day): memory is bounded by a day's groups, not by the month a backfill checks."""
    if start is None or end is None:
        diff = _hourly_diff(events, hourly, start, end)
    else:
        days = list(utc_days(start, end)) or [(start, end)]
        diff = pl.concat([_hourly_diff(events, hourly, a, b) for a, b in days])
    return InvariantResult(
        "3_hourly_equals_events",
        diff.height == 0,
        f"{diff.height} account × meter × hour groups differ"
        + ("; rebuild those hours with `usagebox run`" if diff.height else ""),
        _examples(diff),
    )


def _hourly_diff(
    events: pl.LazyFrame, hourly: pl.LazyFrame, start: datetime | None, end: datetime | None
) -> pl.DataFrame:
    keys = ["account_id", "meter_id", "hour"]
    ev = _window(events.filter(pl.col("status") == "ok"), "hour", start, end)
    ev = ev.group_by(keys).agg(events_sum=pl.col("quantity").sum())
    hr = _window(hourly, "hour", start, end).group_by(keys).agg(hourly_sum=pl.col("sum").sum())
    return _mismatch(ev, hr, keys, "events_sum", "hourly_sum")


def monthly_matches_hourly(
    hourly: pl.LazyFrame, monthly: pl.LazyFrame, months: list[str]
) -> InvariantResult:
    """3b. Per account × meter × month, `usage_monthly` equals the sum of its hours."""
    keys = ["account_id", "meter_id", "month"]
    hr = (
        hourly.with_columns(month=pl.col("hour").dt.strftime("%Y-%m"))
        .filter(pl.col("month").is_in(months))
        .group_by(keys)
        .agg(hourly_sum=pl.col("sum").sum())
    )
    mo = (
        monthly.filter(pl.col("month").is_in(months))
        .group_by(keys)
        .agg(monthly_sum=pl.col("sum").sum())
    )
    diff = _mismatch(hr, mo, keys, "hourly_sum", "monthly_sum")
    return InvariantResult(
        "3_monthly_equals_hourly",
        diff.height == 0,
        f"{len(months)} months checked; {diff.height} groups differ",
        _examples(diff),
    )


def events_inside_partitions(events: pl.LazyFrame, first_hour: datetime) -> InvariantResult:
    """Every counted event falls in some hourly partition (none before the first one)."""
    outside = (
        events.filter(pl.col("hour") < first_hour)
        .select("account_id", "event_id", "timestamp")
        .collect()
    )
    return InvariantResult(
        "events_inside_partitions",
        outside.height == 0,
        f"{outside.height} events before the first hourly partition {first_hour.isoformat()}",
        _examples(outside),
    )


def _window(frame: pl.LazyFrame, col: str, start, end) -> pl.LazyFrame:
    if start is not None:
        frame = frame.filter(pl.col(col) >= start)
    if end is not None:
        frame = frame.filter(pl.col(col) < end)
    return frame


def _mismatch(left: pl.LazyFrame, right: pl.LazyFrame, keys, a: str, b: str) -> pl.DataFrame:
    joined = left.join(right, on=keys, how="full", coalesce=True, nulls_equal=True)
    zero = pl.lit(0).cast(pl.Decimal(38, 12))
    return (
        joined.with_columns(pl.col(a).fill_null(zero), pl.col(b).fill_null(zero))
        .filter(pl.col(a) != pl.col(b))
        .sort(keys)
        .collect(engine="streaming")
    )


# --------------------------------------------------------------------------- invariant 4

INVARIANT_4 = "4_invoice_lines_equal_rated_usage"


def usage_quantity_mismatch(
    monthly: pl.DataFrame, unrated: pl.DataFrame, drafts: pl.DataFrame
) -> pl.DataFrame:
    """4a. Per account × meter × model: draft usage quantity = billable `usage_monthly` of the
    month (`monthly`, already filtered) − its unrated usage (`unrated`)."""
    keys = ["account_id", "meter_id", "model_id"]
    expected = pl.concat(
        [monthly.select(*keys, q=pl.col("sum")), unrated.select(*keys, q=-pl.col("quantity"))]
    )
    billed = drafts.filter(pl.col("kind") == "usage").select(*keys, q=pl.col("quantity"))
    return group_sums_differ(expected, billed, keys, "q", "usage quantity")


def usage_amount_mismatch(rated_lines: pl.DataFrame, drafts: pl.DataFrame) -> pl.DataFrame:
    """4b. Per account: draft usage amounts = the month's rated usage rounded per line."""
    expected = rated_lines.filter(pl.col("kind") == "usage").select("account_id", "amount")
    billed = drafts.filter(pl.col("kind") == "usage").select("account_id", "amount")
    return group_sums_differ(expected, billed, ["account_id"], "amount", "usage amount")


def restatement_mismatch(
    period: str, rerated_lines: pl.DataFrame, issued: pl.DataFrame, drafts: pl.DataFrame
) -> pl.DataFrame:
    """4c. Per account, for closed month `period`: what was billed for it (`issued` lines) +
    the draft adjustments for it = its rounded lines re-rated now (credit is not restated)."""
    expected = rerated_lines.filter(pl.col("kind") != "credit").select("account_id", "amount")
    before = billed_for_period(issued, period).filter(pl.col("kind") != "credit")
    carried = drafts.filter((pl.col("kind") == "adjustment") & (pl.col("adjusts_period") == period))
    billed = pl.concat([before, carried]).select("account_id", "amount")
    return group_sums_differ(expected, billed, ["account_id"], "amount", f"restatement of {period}")


def unowed_adjustments(period: str, drafts: pl.DataFrame) -> pl.DataFrame:
    """4c, for closed month `period` whose inputs did not change since the close that last
    restated it (books.restated_months): re-rated now it equals what was billed for it, so it
    owes nothing and the drafts carry no adjustment line for it. Per account, the adjustment
    lines for `period` they carry anyway (any line, even ones netting to zero)."""
    carried = drafts.filter((pl.col("kind") == "adjustment") & (pl.col("adjusts_period") == period))
    return (
        carried.group_by("account_id")
        .agg(actual=pl.col("amount").sum().cast(pl.Decimal(38, 12)), lines=pl.len())
        .with_columns(
            expected=pl.lit(0).cast(pl.Decimal(38, 12)),
            check=pl.lit(f"adjustment for {period}, which owes nothing (inputs unchanged)"),
        )
    )


def draft_lines_equal_rated(
    month: str, drafts: pl.DataFrame, mismatches: Sequence[pl.DataFrame]
) -> InvariantResult:
    """4. The verdict over the mismatch frames of 4a–4c for the draft lines of `month`; the
    detail names what differs (`check` of the frames)."""
    bad = pl.concat(list(mismatches), how="diagonal_relaxed")
    what = f": {', '.join(sorted(set(bad.get_column('check'))))}" if bad.height else ""
    return InvariantResult(
        INVARIANT_4,
        bad.height == 0,
        f"{drafts.height} draft lines of {month} checked; {bad.height} groups differ{what}",
        [{k: None if v is None else str(v) for k, v in r.items()} for r in bad.head(5).to_dicts()],
    )


def month_closed(month: str) -> InvariantResult:
    """4 holds trivially for a closed month: its lines are issued, never drafts."""
    return InvariantResult(INVARIANT_4, True, f"{month} is closed: issued invoices never change")


def group_sums_differ(
    expected: pl.DataFrame, actual: pl.DataFrame, keys: list[str], col: str, what: str
) -> pl.DataFrame:
    """Groups where Σ expected[col] ≠ Σ actual[col], with `check` naming what differs."""
    a = expected.group_by(keys).agg(expected=pl.col(col).sum().cast(pl.Decimal(38, 12)))
    b = actual.group_by(keys).agg(actual=pl.col(col).sum().cast(pl.Decimal(38, 12)))
    zero = pl.lit(0).cast(pl.Decimal(38, 12))
    joined = a.join(b, on=keys, how="full", coalesce=True, nulls_equal=True)
    return (
        joined.with_columns(pl.col("expected").fill_null(zero), pl.col("actual").fill_null(zero))
        .filter(pl.col("expected") != pl.col("actual"))
        .with_columns(check=pl.lit(what))
    )


# --------------------------------------------------------------------------- invariant 5


def issued_unchanged(
    documents: int, render: bool, rendered: int, problems: list[dict]
) -> InvariantResult:
    """5. The verdict over every problem found with the issued documents and their books."""
    what = "rebuilt and re-rendered" if render else "rebuilt and checked against their close"
    return InvariantResult(
        "5_issued_invoices_unchanged",
        not problems,
        f"{documents} issued documents {what} ({rendered} PDFs rendered); {len(problems)} problems",
        problems[:SAMPLE],
    )


def numbering_problems(numbers: list[str]) -> list[dict]:
    """Issued numbers (of closed periods) unique and gapless per prefix."""
    problems = []
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
    return problems


def close_row_problems(period: str, row: dict, docs: pl.DataFrame) -> list[dict]:
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


def committed_row_problems(
    number: str, row: dict, committed: dict | None, columns: Sequence[str]
) -> list[dict]:
    """An issued invoice row against the row its close committed, column by column."""
    if committed is None:
        return [{"invoice_number": number, "problem": "not issued by its period's close"}]
    changed = [k for k in columns if row[k] != committed[k]]
    if not changed:
        return []
    return [
        {
            "invoice_number": number,
            "problem": f"invoice row changed since its close: {', '.join(changed)}",
            "stored": {k: _as_text(row[k]) for k in changed},
            "committed": {k: _as_text(committed[k]) for k in changed},
        }
    ]


def committed_lines_problems(
    number: str, lines: pl.DataFrame, committed: pl.DataFrame, schema: pl.Schema
) -> list[dict]:
    """An issued document's lines against the lines its close committed (both conformed to
    `schema`, in line order)."""
    if same_rows(lines, committed, schema):
        return []
    return [{"invoice_number": number, "problem": "lines changed since its close"}]


def same_rows(a: pl.DataFrame, b: pl.DataFrame, schema: pl.Schema) -> bool:
    """Equal rows, column by column, once both are conformed to `schema` and line-ordered."""
    a, b = conform(a, schema).sort("line_no"), conform(b, schema).sort("line_no")
    return a.height == b.height and a.equals(b)


def file_problems(
    number: str, file: str | None, stored: str | None, committed: str | None
) -> list[dict]:
    """The stored PDF's sha256 (`file`, None when missing) against the stored and the
    committed hash: a PDF replaced together with its stored hash still fails."""
    if file is not None and file == stored and file == committed:
        return []
    return [
        {
            "invoice_number": number,
            "problem": "stored PDF file is missing" if file is None else
            "stored PDF file differs from the hash its close committed",
            "file": file,
            "stored": stored,
            "committed": committed,
        }
    ]  # fmt: skip


def unreproduced(number: str, diffs: list[dict]) -> dict:
    """A document whose rebuild from its stamps differs from what is stored."""
    return {
        "invoice_number": number,
        "problem": "does not reproduce from its stamps",
        "differences": diffs[:3],
    }


def _as_text(value: object) -> str | None:
    return None if value is None else str(value)
