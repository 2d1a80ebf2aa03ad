"""Restated totals of closed months, re-rated only when an input of their rating changed.

Every draft carries adjustments for the earlier closed months (invoicing.adjustments): each is
re-rated from the current `usage_hourly` and compared with what was billed for it. Re-rating
every closed month on every draft refresh made a month's drafts cost O(months closed).

The re-rating of closed month Q (`stages.rating.rate_month`) is a function of: Q's
`usage_hourly` rows, the pricebook files, the accounts file, Q's guardrail decisions (hard-stop
waivers) and the code. Prepaid credit drawn since changes only credit lines, which a
restatement leaves out. `Restatements` keeps Q's `restated_totals` in the `restated_totals`
table with its `basis`: a sha256 of those inputs, where Q's usage is the set of Delta data files
that can hold Q's hours (files are immutable: any rewrite is a new file, so an unchanged set is
unchanged rows). Q is re-rated only when its basis differs from the stored one. What was billed
is compared afresh every time, so the adjustments are exactly those of re-rating every month.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import GUARDRAIL_DECISIONS, RESTATED_TOTALS, USAGE_HOURLY
from usagebox_pipelines.invoicing.adjustments import restated_totals
from usagebox_pipelines.invoicing.lines import COMPARABLE_KEY
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.schemas import conform
from usagebox_pipelines.stages.issue import code_version
from usagebox_pipelines.stages.rating import rate_month
from usagebox_pipelines.storage import DeltaStore, writes_tables

#: Bump when what a restatement depends on changes in a way the basis does not see.
BASIS_VERSION = "restated-totals-1"
_TOTALS = [*COMPARABLE_KEY, "quantity", "amount", "description"]


class Restatements:
    """The restated totals of closed `months`, from the stored ones where still valid.

    `totals(q)` gives one month at a time (memory: one month); `remember()` stores the months
    that had to be re-rated, in one commit.
    """

    def __init__(self, store: DeltaStore, pricebooks_dir: Path, months: list[str]) -> None:
        self.store = store
        self.pricebooks_dir = Path(pricebooks_dir)
        self.months = sorted(months)
        self.basis = _bases(store, self.pricebooks_dir, self.months) if self.months else {}
        self.stored = _stored_bases(store, self.months)
        self.fresh: dict[str, pl.DataFrame] = {}

    def totals(self, month: str) -> pl.DataFrame:
        """`invoicing.adjustments.restated_totals` of closed `month` (re-rated if needed)."""
        if self.stored.get(month) == self.basis[month]:
            lines = self.store.scan(RESTATED_TOTALS).filter(
                (pl.col("period") == month) & (pl.col("row_kind") == "line")
            )
            return lines.select(_TOTALS).collect()
        totals = restated_totals(rate_month(self.store, self.pricebooks_dir, month).rated, month)
        self.fresh[month] = totals
        return totals

    @property
    def rerated(self) -> list[str]:
        """Months re-rated so far (their inputs changed, or nothing was stored yet)."""
        return sorted(self.fresh)

    def remember(self, run_id: str = "cli") -> None:
        """Store the re-rated months' totals with their basis (one commit; no-op if none)."""
        if self.fresh:
            _remember(self.store, self.fresh, self.basis, run_id)


@writes_tables("restated_totals")
def _remember(
    store: DeltaStore, fresh: dict[str, pl.DataFrame], basis: dict[str, str], run_id: str
) -> None:
    rows = []
    for month, totals in sorted(fresh.items()):
        head = {"period": month, "basis": basis[month]}
        rows.append(pl.DataFrame([{**head, "row_kind": "basis"}]))
        rows.append(
            totals.with_columns(**{k: pl.lit(v) for k, v in head.items()}, row_kind=pl.lit("line"))
        )
    frame = conform(pl.concat(rows, how="diagonal_relaxed"), RESTATED_TOTALS.schema)
    meta = {"run_id": run_id, "stage": "restated_totals", "periods": ",".join(sorted(fresh))}
    store.replace_partition(RESTATED_TOTALS, frame, period=sorted(fresh), metadata=meta)


def _stored_bases(store: DeltaStore, months: list[str]) -> dict[str, str]:
    """month → the basis its stored totals were computed from."""
    if not months or not store.exists(RESTATED_TOTALS):
        return {}
    rows = (
        store.scan(RESTATED_TOTALS)
        .filter((pl.col("row_kind") == "basis") & pl.col("period").is_in(months))
        .select("period", "basis")
        .unique()
        .collect()
    )
    counts = rows.group_by("period").len()
    single = set(counts.filter(pl.col("len") == 1)["period"].to_list())
    return {p: b for p, b in rows.iter_rows() if p in single}


def _bases(store: DeltaStore, pricebooks_dir: Path, months: list[str]) -> dict[str, str]:
    """month → sha256 of every input its re-rating reads (see the module docstring)."""
    books = load_pricebooks(pricebooks_dir)
    accounts = load_accounts(pricebooks_dir)
    config = [BASIS_VERSION, code_version()]
    config += sorted(
        f"pricebook {v.pricebook}@{v.version} {v.effective_from.isoformat()} {v.file_sha256}"
        for v in books.versions
    )
    file = getattr(accounts, "file", None)
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else "-"
    config.append(f"accounts {digest}")
    files = store.files(USAGE_HOURLY)
    decisions = (
        store.scan(GUARDRAIL_DECISIONS)
        .filter(pl.col("period").is_in(months))
        .select("period", "decision_id")
        .collect()
    )
    out = {}
    for month in months:
        parts = [*config, f"period {month}"]
        parts += [f"file {f}" for f in _files_of(files, month)]
        ids = decisions.filter(pl.col("period") == month)["decision_id"].to_list()
        parts += [f"decision {d}" for d in sorted(str(i) for i in ids)]
        out[month] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return out


def _files_of(files: pl.DataFrame, month: str) -> list[str]:
    """Every data file of `usage_hourly` that can hold an hour of `month` (all files without
    hour statistics), as `path size mtime [deletion vector]` text, sorted."""
    if files.is_empty():
        return []
    start, end = month_bounds(month)
    frame = files
    if {"min.hour", "max.hour"} <= set(files.columns):
        lo, hi = pl.col("min.hour"), pl.col("max.hour")
        frame = files.filter(lo.is_null() | hi.is_null() | ((lo < end) & (hi >= start)))
    cols = ["path", "size_bytes", "modification_time"]
    cols += sorted(c for c in frame.columns if c.lower().startswith("deletionvector"))
    text = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in cols], separator=" ")
    return sorted(frame.select(text.alias("f"))["f"].to_list())
