"""Restatement of vendor lines: which export's lines stand, whatever order they arrive in.

Vendors rewrite recent days for weeks, and people re-pull the same export (other bytes: a
re-serialized JSON, the `.gz` of a CSV). One rule covers the three vendor tables
(`vendor_costs`, `vendor_review`, `vendor_ignored`), so a line ends in exactly one of them:

- The unit of replacement is RESTATEMENT_KEY: vendor, provider, source kind, billing period,
  UTC day and scope (`vendor_scope`: the project / workspace / account columns). An export of
  another scope adds to a day; an export of the same scope restates it.
- Within a unit, the generation (`exported_at`) whose content is the latest stands; of the
  generations with exactly that content the earliest stands, so a re-pull that restates nothing
  changes nothing. An older export loaded after a newer one is ignored.
- A line is identified by `line_id` (its content and scope, see `loaders`), never by the file's
  bytes: the same line read from two files of one generation is one line. The same line read
  again under another mapping (an alias was added) takes the new disposition.

Rows that stood and are replaced go to the change log (`vendor_cost_changes`) with what
replaced them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import polars as pl

from usagebox_pipelines.reconciliation.schemas import (
    RESTATEMENT_KEY,
    VENDOR_COST_CHANGES,
    VENDOR_COSTS,
    VENDOR_IGNORED,
    VENDOR_REVIEW,
)
from usagebox_pipelines.schemas import TS, conform, empty

COSTS, REVIEW, IGNORED = "vendor_costs", "vendor_review", "vendor_ignored"
TABLE_SCHEMAS = {COSTS: VENDOR_COSTS, REVIEW: VENDOR_REVIEW, IGNORED: VENDOR_IGNORED}
# How summaries name the three tables.
TABLE_NAMES = {COSTS: "mapped", REVIEW: "review", IGNORED: "ignored"}
# Every vendor line, whichever table it lands in (review and ignored add reason and payload).
LINES = pl.Schema({**VENDOR_COSTS, "reason": pl.String(), "payload": pl.String()})
_GENERATION = [*RESTATEMENT_KEY, "exported_at"]
# What the mapping made of a line: a change of any of these is a new disposition.
_DISPOSITION = ["_table", "model_id", "meter_id", "service_tier", "context_window", "reason"]


def tag_lines(frame: pl.DataFrame, table: str) -> pl.DataFrame:
    """Rows of one vendor table as LINES, tagged with the table they stand in."""
    return conform(frame, LINES).with_columns(_table=pl.lit(table))


def resolve_lines(
    old: pl.DataFrame, fresh: pl.DataFrame, at: datetime
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """(rows per vendor table after loading `fresh` over `old`, change log of replaced rows).

    `old` and `fresh` are tagged LINES (`tag_lines`); `old` is what the tables held.
    """
    rows = _one_row_per_line(
        old.with_columns(_old=pl.lit(True)), fresh.with_columns(_old=pl.lit(False))
    )
    if rows.is_empty():
        return {t: empty(s) for t, s in TABLE_SCHEMAS.items()}, empty(VENDOR_COST_CHANGES)
    current = rows.filter(~pl.col("_remapped"))
    tagged = current.join(_winners(current), on=RESTATEMENT_KEY, how="left", nulls_equal=True)
    keep = pl.col("exported_at") == pl.col("_win_exported_at")
    older = pl.col("exported_at") < pl.col("_win_exported_at")
    # Log rows that stood (old) or lost to a newer export of the same batch; an old export
    # re-loaded after a newer one never stood, so it is not a change.
    logged = older & (pl.col("_old") | ~pl.col("_win_old"))
    order = [*RESTATEMENT_KEY, "source_file", "source_row", "line_id"]
    standing = tagged.filter(keep).sort(order, nulls_last=True)
    state = {
        table: conform(standing.filter(pl.col("_table") == table), schema)
        for table, schema in TABLE_SCHEMAS.items()
    }
    replaced = tagged.filter(~keep & logged).with_columns(
        superseded_by_sha256=pl.col("_win_sha"), superseded_by_file=pl.col("_win_file")
    )
    changes = pl.concat([replaced, _remapped(rows)], how="diagonal_relaxed").with_columns(
        from_table=pl.col("_table"), superseded_at=pl.lit(at).cast(TS)
    )
    return state, conform(changes, VENDOR_COST_CHANGES).sort(order, nulls_last=True)


def _one_row_per_line(old: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """One row per line and generation: a line seen again keeps its first arrival (and its
    `loaded_at`), unless the mapping now says something else about it: then the fresh row
    stands and the old one is marked `_remapped` (logged, no longer standing)."""
    key = [*_GENERATION, "line_id"]
    disposition = pl.concat_str([pl.col(c).fill_null("\x00") for c in _DISPOSITION], separator="|")
    old = old.with_columns(_disp=disposition)
    fresh = fresh.unique(key, keep="first", maintain_order=True).with_columns(_disp=disposition)
    arrivals = fresh.select(*key, _fresh_disp="_disp")
    old = (
        old.join(arrivals, on=key, how="left", nulls_equal=True)
        .with_columns(
            _remapped=pl.col("_fresh_disp").is_not_null()
            & (pl.col("_fresh_disp") != pl.col("_disp"))
        )
        .drop("_fresh_disp")
    )
    standing = old.filter(~pl.col("_remapped")).select(key)
    fresh = fresh.join(standing, on=key, how="anti", nulls_equal=True)
    return pl.concat([old, fresh.with_columns(_remapped=pl.lit(False))])


def _remapped(rows: pl.DataFrame) -> pl.DataFrame:
    """Old rows a reload under a changed mapping replaced (same line, new disposition)."""
    return (
        rows.filter(pl.col("_remapped"))
        .with_columns(
            superseded_by_sha256=pl.col("export_sha256"), superseded_by_file=pl.col("source_file")
        )
        .drop("_remapped")
    )


def _winners(rows: pl.DataFrame) -> pl.DataFrame:
    """Per restatement unit: the generation (exported_at) that stands, and its files.

    The content of the latest generation wins; of the generations with exactly that content
    the earliest stands, so a newer export that restates nothing changes nothing.
    """
    gens = rows.group_by(_GENERATION).agg(
        fp=pl.concat_str("line_id", "_disp", separator="|").sort().str.join("\x1e"),
        has_old=pl.col("_old").any(),
        sha=pl.col("export_sha256").unique().sort().str.join(","),
        file=pl.col("source_file").unique().sort().str.join(","),
    )
    latest = gens.sort("exported_at").group_by(RESTATEMENT_KEY).agg(_latest_fp=pl.col("fp").last())
    return (
        gens.join(latest, on=RESTATEMENT_KEY, nulls_equal=True)
        .filter(pl.col("fp") == pl.col("_latest_fp"))
        .sort("exported_at")
        .group_by(RESTATEMENT_KEY)
        .agg(
            _win_exported_at=pl.col("exported_at").first(),
            _win_sha=pl.col("sha").first(),
            _win_file=pl.col("file").first(),
            _win_old=pl.col("has_old").first(),
        )
    )


def money_by_table(lines: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per currency: money and line counts of tagged lines, billed = mapped + review + ignored
    (decimal strings; `lines` counts per table)."""
    out: dict[str, dict[str, Any]] = {}
    grouped = lines.group_by("currency", "_table").agg(amount=pl.col("amount").sum(), n=pl.len())
    for row in grouped.sort("currency", "_table", nulls_last=True).iter_rows(named=True):
        cur = out.setdefault(
            row["currency"] or "unknown",
            {"billed": Decimal(0), **{k: Decimal(0) for k in TABLE_NAMES.values()}, "lines": {}},
        )
        name = TABLE_NAMES[row["_table"]]
        cur[name] += row["amount"] or 0
        cur["billed"] += row["amount"] or 0
        cur["lines"][name] = row["n"]
    return {
        ccy: {k: (v if k == "lines" else str(v)) for k, v in totals.items()}
        for ccy, totals in out.items()
    }
