"""Stage `draft_invoices`: the draft invoices and lines of an OPEN month.

Drafts are rebuilt from `rated_usage` plus the adjustments every earlier closed month now owes
(re-rated with all events known, but only the months whose inputs changed since a close last
restated them: books.restated_months); only draft rows are replaced, issued rows never change.
Given a month shard (ADR 0019), only that shard's accounts are drafted and replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import (
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    RATED_USAGE,
)
from usagebox_pipelines.invoicing.adjustments import adjustments_for
from usagebox_pipelines.invoicing.credit import with_current_credit
from usagebox_pipelines.invoicing.lines import build_draft_invoices, rated_lines
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Accounts, load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard, account_shards, in_shard
from usagebox_pipelines.stages.books import (
    closed_periods,
    decisions_at,
    issued_invoices,
    issued_lines,
    rating_inputs_key,
    restated_months,
)
from usagebox_pipelines.stages.month_shards import replace_shard_rows, writes_month_shard
from usagebox_pipelines.stages.rating import (
    MonthInputs,
    month_hourly,
    rate_month,
    rated_shards,
)
from usagebox_pipelines.storage import DeltaStore


@writes_month_shard("drafts")
def refresh_drafts(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    run_id: str = "cli",
    *,
    shard: MonthShard = WHOLE_MONTH,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rebuild the draft invoices (and lines) of an OPEN month; a closed month is left alone.

    Drafts = the month's `rated_usage` + adjustment lines for every earlier closed month whose
    re-rating differs from what was billed for it (its invoice plus adjustments issued since),
    so each restatement is carried exactly once. Only rows with status `draft` (lines without
    a number) of this period are replaced: issued rows never change. Accounts are drafted in
    shards (`shards`), each reading only its own rated rows; returns the invoices and lines.
    """
    month_bounds(month)
    closed = closed_periods(store)
    if month in closed:
        return pl.DataFrame(schema=INVOICES.schema), pl.DataFrame(schema=INVOICE_LINES.schema)
    # credit and decisions as they stand now: since `rated_usage` was built, a close may
    # have drawn credit and guardrails may have recorded stops
    rating = MonthInputs.load(store, pricebooks_dir, month, closed)
    adjustments = pending_adjustments(store, pricebooks_dir, month, closed, shard)
    inputs = _DraftInputs(rating, adjustments, month_hourly(store, month, rating.accounts), shard)
    drafted: list[tuple[pl.DataFrame, pl.DataFrame]] = []
    written: list[str] = []
    for ids, rated in _rated_shards(store, pricebooks_dir, inputs):  # one shard's rows at a time
        drafted.append(_draft_shard(rated, ids, inputs))
        written += ids
    invoices = pl.concat([d[0] for d in drafted])
    lines = pl.concat([d[1] for d in drafted])
    _write_drafts(store, inputs, invoices, lines, written, run_id)
    return invoices, lines


@dataclass(frozen=True)
class _DraftInputs:
    """What drafting a month reads besides its rated rows (small, loaded once)."""

    rating: MonthInputs
    adjustments: pl.DataFrame
    hourly: pl.LazyFrame
    shard: MonthShard


def _rated_shards(
    store: DeltaStore, pricebooks_dir: Path, inputs: _DraftInputs
) -> Iterator[tuple[list[str], pl.DataFrame]]:
    """(account ids, their rated rows) per shard, every account with rows or adjustments once.

    Rows are the stored `rated_usage`, or rated on the fly when the table has nothing for the
    month (a rated month always has rows once built: contract lines for committed accounts;
    so no rows means "not built yet", not "no usage").
    """
    month, shard = inputs.rating.month, inputs.shard
    owed = set(inputs.adjustments.get_column("account_id").to_list())
    rows = store.scan(RATED_USAGE).filter(pl.col("period") == month)
    weight = rows.group_by("account_id").agg(w=pl.len()).collect(engine="streaming")
    if not weight.is_empty():
        mine = shard.owned(weight.get_column("account_id"), inputs.rating.accounts.root)
        for ids in account_shards(weight.filter(pl.col("account_id").is_in(mine)), owed):
            yield ids, rows.filter(in_shard(ids)).collect()
        return
    for ids, part in rated_shards(store, pricebooks_dir, month, shard).parts:
        owed -= set(ids)
        yield ids, part.rated
    if owed:
        yield sorted(owed), pl.DataFrame(schema=RATED_USAGE.schema)


def _draft_shard(
    rated: pl.DataFrame, ids: list[str], inputs: _DraftInputs
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Draft invoices and lines of one shard's accounts (drafting is per account)."""
    month, accounts = inputs.rating.month, inputs.rating.accounts
    mine = in_shard(ids)
    rated = with_current_credit(rated, accounts, month, inputs.rating.opening, scope=ids)
    rated = inputs.rating.with_waivers(rated, inputs.hourly.filter(mine), ids)
    return build_draft_invoices(rated, accounts, month, inputs.adjustments.filter(mine))


def pending_adjustments(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    closed: dict[str, dict] | None = None,
    shard: MonthShard = WHOLE_MONTH,
) -> pl.DataFrame:
    """Adjustment lines the next invoice after the closed months before `month` must carry
    (for the accounts of the month shard `shard`: only they are re-rated).

    A closed month whose inputs changed since the last close that restated it is re-rated from
    the current `usage_hourly` (rate_month) and compared with everything issued for it so far
    (adjustments.compute_adjustments); any other closed month owes nothing (restated_months
    says why), so a refresh costs O(months with late data), not O(closed months).
    """
    closed = closed_periods(store) if closed is None else closed
    issued = issued_lines(store, issued_invoices(store, closed))
    accounts = load_accounts(pricebooks_dir)
    earlier = months_to_restate(store, pricebooks_dir, month, closed, accounts)
    rerated = {q: rate_month(store, pricebooks_dir, q, shard).rated for q in earlier}
    if not shard.whole:  # what was issued to the other shards' accounts is not re-rated here
        mine = shard.owned(issued.get_column("account_id"), accounts.root)
        issued = issued.filter(pl.col("account_id").is_in(mine))
    return adjustments_for(issued, rerated)


def months_to_restate(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    closed: dict[str, dict],
    accounts: Accounts,
) -> list[str]:
    """The closed months before `month` whose rating inputs changed since the close that last
    restated them (books.restated_months, at the current decisions): the only ones a draft
    of `month` may owe adjustments for, and the only ones invariant 4 re-rates."""
    key = rating_inputs_key(load_pricebooks(pricebooks_dir), accounts)
    decisions = decisions_at(store, store.version(GUARDRAIL_DECISIONS))
    return restated_months(store, closed, month, key, decisions, accounts)


def month_rated_lines(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    shard: MonthShard = WHOLE_MONTH,
    root: Callable[[str], str] = str,
) -> pl.DataFrame:
    """`rated_lines` of the month's stored `rated_usage` (of the accounts of the month shard
    `shard`, `root` giving an account's root), made shard by shard (lines are per account, so
    memory is bounded by a shard, not the month's rated rows); rated on the fly when the
    table has nothing for the month.

    A rated month always has rows once built (contract lines for committed accounts), so no
    rows means "not built yet", not "no usage".
    """
    rows = store.scan(RATED_USAGE).filter(pl.col("period") == month)
    weight = rows.group_by("account_id").agg(w=pl.len()).collect(engine="streaming")
    if weight.is_empty():
        return rated_lines(rate_month(store, pricebooks_dir, month, shard).rated)
    mine = shard.owned(weight.get_column("account_id"), root)
    weight = weight.filter(pl.col("account_id").is_in(mine))
    return pl.concat(
        [rated_lines(rows.filter(in_shard(ids)).collect()) for ids in account_shards(weight)]
    )


def _write_drafts(
    store: DeltaStore,
    inputs: _DraftInputs,
    invoices: pl.DataFrame,
    lines: pl.DataFrame,
    written: list[str],
    run_id: str,
) -> None:
    """Replace exactly the draft rows of the month, or of its shard's accounts (lines of
    drafts have no number yet)."""
    month, shard, root = inputs.rating.month, inputs.shard, inputs.rating.accounts.root
    meta = {"run_id": run_id, "stage": "draft_invoices", "period": month}
    replace_shard_rows(
        store, INVOICES, invoices, shard=shard, root=root, written=written, metadata=meta,
        period=month, status="draft",
    )  # fmt: skip
    replace_shard_rows(
        store, INVOICE_LINES, lines, shard=shard, root=root, written=written, metadata=meta,
        period=month, invoice_number=None,
    )  # fmt: skip
