"""Stage `draft_invoices`: the draft invoices and lines of an OPEN month.

Drafts are rebuilt from `rated_usage` plus the adjustments every earlier closed month now owes
(re-rated with all events known, but only the months whose inputs changed since a close last
restated them: books.restated_months); only draft rows are replaced, issued rows never change.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import (
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    RATED_USAGE,
    USAGE_HOURLY,
)
from usagebox_pipelines.invoicing.adjustments import adjustments_for
from usagebox_pipelines.invoicing.credit import with_current_credit
from usagebox_pipelines.invoicing.hard_stop import apply_waivers
from usagebox_pipelines.invoicing.lines import (
    build_draft_invoices,
)
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.stages.books import (
    closed_periods,
    decisions_at,
    issued_invoices,
    issued_lines,
    opening_credit,
    rating_inputs_key,
    restated_months,
)
from usagebox_pipelines.stages.rating import rate_month
from usagebox_pipelines.storage import DeltaStore, writes_tables


@writes_tables("drafts")
def refresh_drafts(
    store: DeltaStore, pricebooks_dir: Path, month: str, run_id: str = "cli"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rebuild the draft invoices (and lines) of an OPEN month; a closed month is left alone.

    Drafts = the month's `rated_usage` + adjustment lines for every earlier closed month whose
    re-rating differs from what was billed for it (its invoice plus adjustments issued since),
    so each restatement is carried exactly once. Only rows with status `draft` (lines without
    a number) of this period are replaced: issued rows never change.
    """
    month_bounds(month)
    closed = closed_periods(store)
    if month in closed:
        return pl.DataFrame(schema=INVOICES.schema), pl.DataFrame(schema=INVOICE_LINES.schema)
    accounts = load_accounts(pricebooks_dir)
    rated = rated_of_month(store, pricebooks_dir, month)
    # credit as it stands now: a close since `rated_usage` was built may have drawn some
    opening = opening_credit(store, accounts, closed)
    rated = with_current_credit(rated, accounts, month, opening)
    rated = apply_waivers(  # decisions recorded since `rated_usage` was built count too
        rated,
        store.scan(USAGE_HOURLY).filter(
            pl.col("hour").is_between(*month_bounds(month), closed="left")
        ),
        store.read(GUARDRAIL_DECISIONS),
        month,
        load_pricebooks(pricebooks_dir),
        accounts,
        opening,
    )
    adjustments = pending_adjustments(store, pricebooks_dir, month, closed)
    invoices, lines = build_draft_invoices(rated, accounts, month, adjustments)
    _write_drafts(store, month, invoices, lines, run_id)
    return invoices, lines


def pending_adjustments(
    store: DeltaStore, pricebooks_dir: Path, month: str, closed: dict[str, dict] | None = None
) -> pl.DataFrame:
    """Adjustment lines the next invoice after the closed months before `month` must carry.

    A closed month whose inputs changed since the last close that restated it is re-rated from
    the current `usage_hourly` (rate_month) and compared with everything issued for it so far
    (adjustments.compute_adjustments); any other closed month owes nothing (restated_months
    says why), so a refresh costs O(months with late data), not O(closed months).
    """
    closed = closed_periods(store) if closed is None else closed
    issued = issued_lines(store, issued_invoices(store, closed))
    key = rating_inputs_key(load_pricebooks(pricebooks_dir), load_accounts(pricebooks_dir))
    decisions = decisions_at(store, store.version(GUARDRAIL_DECISIONS))
    earlier = restated_months(store, closed, month, key, decisions)
    rerated = {q: rate_month(store, pricebooks_dir, q).rated for q in earlier}
    return adjustments_for(issued, rerated)


def rated_of_month(store: DeltaStore, pricebooks_dir: Path, month: str) -> pl.DataFrame:
    """The month's stored `rated_usage`; rated on the fly when the table has nothing for it.

    A rated month always has rows once built (contract lines for committed accounts), so no
    rows means "not built yet", not "no usage".
    """
    if store.exists(RATED_USAGE):
        rows = store.scan(RATED_USAGE).filter(pl.col("period") == month).collect()
        if rows.height:
            return rows
    return rate_month(store, pricebooks_dir, month).rated


def _write_drafts(
    store: DeltaStore, month: str, invoices: pl.DataFrame, lines: pl.DataFrame, run_id: str
) -> None:
    """Replace exactly the draft rows of `month` (lines of drafts have no number yet)."""
    meta = {"run_id": run_id, "stage": "draft_invoices", "period": month}
    store.replace_partition(INVOICES, invoices, period=month, status="draft", metadata=meta)
    store.replace_partition(INVOICE_LINES, lines, period=month, invoice_number=None, metadata=meta)
