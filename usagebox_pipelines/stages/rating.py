"""Stage `rated_usage`: rate one month of `usage_hourly` with the pricebooks and accounts.

The month is rated in shards of whole accounts (`shards`): each shard reads only its accounts'
hourly rows, so memory is bounded by a shard, not by the month, and the rows equal one call
over every account (rating is per account). The shards stream into one commit per table.
Given a month shard (ADR 0019), only that shard's accounts are rated and replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import polars as pl

from usagebox_pipelines.catalog import (
    GUARDRAIL_DECISIONS,
    RATED_USAGE,
    UNRATED_USAGE,
    USAGE_HOURLY,
)
from usagebox_pipelines.invoicing.hard_stop import apply_waivers
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing import Accounts, PricebookSet
from usagebox_pipelines.pricing.accounts import check_grant_scopes, load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard, account_shards, in_shard
from usagebox_pipelines.stages.books import (
    opening_credit,
)
from usagebox_pipelines.stages.month_shards import replace_shard_rows, writes_month_shard
from usagebox_pipelines.stages.per_event import month_events
from usagebox_pipelines.storage import DeltaStore


@dataclass
class RatedMonth:
    rated: pl.DataFrame
    unrated: pl.DataFrame


@dataclass
class RatedSummary:
    """What `build_rated_usage` wrote (the rows themselves went to the tables shard by shard)."""

    rows: int = 0
    price_versions: set[str] = field(default_factory=set)
    unrated: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=UNRATED_USAGE.schema))


@dataclass(frozen=True)
class MonthInputs:
    """Everything but the hourly rows that rating (or drafting) a month reads: small, loaded
    once per step and shared by its shards."""

    month: str
    books: PricebookSet
    accounts: Accounts
    opening: dict[str, dict[str, Decimal]]
    decisions: pl.DataFrame

    @classmethod
    def load(
        cls,
        store: DeltaStore,
        pricebooks_dir: Path,
        month: str,
        closed: dict[str, dict] | None = None,
    ) -> MonthInputs:
        """Credit as it stands now (issued invoices of `closed`, read when None) and the
        guardrail decisions recorded so far."""
        accounts = load_accounts(pricebooks_dir)
        opening = opening_credit(store, accounts, closed)
        books = load_pricebooks(pricebooks_dir)
        check_grant_scopes(accounts, books)
        return cls(month, books, accounts, opening, store.read(GUARDRAIL_DECISIONS))

    def with_waivers(
        self, rated: pl.DataFrame, hourly: pl.DataFrame | pl.LazyFrame, ids: list[str]
    ) -> pl.DataFrame:
        """`rated` of the shard `ids` with its hard-stop waivers (invoicing.hard_stop)."""
        decisions = self.decisions.filter(pl.col("account_id").is_in(ids))
        return apply_waivers(
            rated, hourly, decisions, self.month, self.books, self.accounts, self.opening
        )


def month_hourly(store: DeltaStore, month: str, accounts: Accounts | None = None) -> pl.LazyFrame:
    """The month's `usage_hourly` rows, lazily (filters pushed into the scan): with `accounts`
    the hours of every account's month (`Accounts.span`, ADR 0017; rating keeps each
    account's own), else the UTC month."""
    start, end = month_bounds(month)
    if accounts is not None:
        span = accounts.span(month)
        start, end = span.start, span.end
    return store.scan(USAGE_HOURLY).filter((pl.col("hour") >= start) & (pl.col("hour") < end))


def month_weights(store: DeltaStore, month: str, accounts: Accounts | None = None) -> pl.DataFrame:
    """`account_id`, `w`: each account's hourly rows in the month (what a shard is cut by)."""
    weight = month_hourly(store, month, accounts).group_by("account_id").agg(w=pl.len())
    return weight.collect(engine="streaming")


def month_shards(
    store: DeltaStore,
    month: str,
    also: set[str],
    accounts: Accounts,
    shard: MonthShard = WHOLE_MONTH,
) -> list[list[str]]:
    """The month's accounts (plus `also`) of the month shard `shard`, in shards weighed by
    their hourly rows."""
    weight = month_weights(store, month, accounts)
    if not shard.whole:
        mine = shard.owned([*weight.get_column("account_id"), *also], accounts.root)
        weight = weight.filter(pl.col("account_id").is_in(mine))
        also = also & set(mine)
    return account_shards(weight, also)


class RatedShards(NamedTuple):
    """A month (or month shard) to rate: its inputs, its shards' account ids, and the shards
    rated lazily, one at a time (ids, rows)."""

    inputs: MonthInputs
    shards: list[list[str]]
    parts: Iterator[tuple[list[str], RatedMonth]]


def rated_shards(
    store: DeltaStore, pricebooks_dir: Path, month: str, shard: MonthShard = WHOLE_MONTH
) -> RatedShards:
    """The month (or the month shard `shard`) rated shard by shard, nothing written: the
    inputs, the shards' account ids, and lazily each shard's ids with their usage and contract
    lines (every account with usage, terms or credit of `shard` is in one shard).

    Prepaid credit is what the month WOULD apply if issued now: the grant minus what issued
    invoices have drawn (invoicing.credit); a draft or an open month never draws. Usage after
    a hard stop of an `after_hard_stop: waive` account is waived (invoicing.hard_stop), with
    the decisions recorded so far.
    """
    inputs = MonthInputs.load(store, pricebooks_dir, month)
    billed = set(inputs.accounts.ids()) | set(inputs.opening)  # terms or credit: rows anyway
    shards = month_shards(store, month, billed, inputs.accounts, shard)
    # Tables are read before the first shard is taken, not in a generator: a streamed write
    # takes shards inside delta-rs, where opening a table would start a runtime in its runtime.
    hourly = month_hourly(store, month, inputs.accounts)
    events = month_events(store, month, inputs.books, inputs.accounts)
    return RatedShards(
        inputs,
        shards,
        (
            (
                ids,
                _rate_shard(
                    hourly.filter(in_shard(ids)).collect(),
                    events.filter(in_shard(ids)).collect(),
                    ids,
                    inputs,
                ),
            )
            for ids in shards
        ),
    )


def _rate_shard(
    hourly: pl.DataFrame, events: pl.DataFrame, ids: list[str], inputs: MonthInputs
) -> RatedMonth:
    result = rate_usage(
        hourly, inputs.month, inputs.books, inputs.accounts, inputs.opening, scope=ids,
        events=events,
    )  # fmt: skip
    return RatedMonth(inputs.with_waivers(result.rated, hourly, ids), result.unrated)


def rate_month(
    store: DeltaStore, pricebooks_dir: Path, month: str, shard: MonthShard = WHOLE_MONTH
) -> RatedMonth:
    """Rate one month of `usage_hourly` (nothing written), all shards of the month (or of its
    month shard `shard`) together: for callers that compare a whole month (restatements of
    closed months, verify)."""
    parts = [part for _, part in rated_shards(store, pricebooks_dir, month, shard).parts]
    return RatedMonth(pl.concat([p.rated for p in parts]), pl.concat([p.unrated for p in parts]))


@writes_month_shard("rated_usage")
def build_rated_usage(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    run_id: str = "cli",
    *,
    shard: MonthShard = WHOLE_MONTH,
) -> RatedSummary:
    """Replace the month's (or its shard's) `rated_usage` and `unrated_usage` rows (never
    `credit_ledger`: only a close draws credit, see invoicing.credit); rated rows stream in
    shard by shard."""
    summary = RatedSummary()
    unrated: list[pl.DataFrame] = []
    inputs, shards, parts = rated_shards(store, pricebooks_dir, month, shard)

    def rated_rows() -> Iterator[pl.DataFrame]:
        for _, part in parts:
            summary.rows += part.rated.height
            summary.price_versions |= set(part.rated["price_version"].drop_nulls().to_list())
            unrated.append(part.unrated)
            yield part.rated

    meta = {"run_id": run_id, "stage": "rated_usage", "period": month}
    if not shard.whole:
        meta["month_shard"] = f"{shard.index}/{shard.count}"
    root, written = inputs.accounts.root, [a for ids in shards for a in ids]
    replace_shard_rows(
        store, RATED_USAGE, rated_rows(), shard=shard, root=root, written=written,
        metadata=meta, period=month,
    )  # fmt: skip
    summary.unrated = pl.concat([summary.unrated, *unrated])
    replace_shard_rows(
        store, UNRATED_USAGE, summary.unrated, shard=shard, root=root, written=written,
        metadata=meta, period=month,
    )  # fmt: skip
    return summary
