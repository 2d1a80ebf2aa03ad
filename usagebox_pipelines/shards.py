"""Whole-account shards: how the monthly steps keep memory bounded by a shard, not the month.

Every monthly computation is per account (tier positions, packages, discounts, minimums,
credit, waivers and guardrail prefixes are all per account, ADR 0002), so a month can be
processed as consecutive groups of whole accounts and give exactly the rows one call over all
accounts gives. A shard holds accounts up to `SHARD_ROWS` rows of weight (usually their
`usage_hourly` rows of the month); one account heavier than that is a shard of its own, the
only unit that cannot be split.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import polars as pl

from usagebox_pipelines.errors import UsageboxError

#: Rows of weight (hourly usage rows) per shard: ~100 MiB of working memory in rating at the
#: default; `USAGEBOX_SHARD_ROWS` sets it (smaller: less memory, more scans of the month).
SHARD_ROWS = int(os.environ.get("USAGEBOX_SHARD_ROWS", "250000"))


def account_shards(
    weight: pl.DataFrame, also: Iterable[str] = (), max_rows: int | None = None
) -> list[list[str]]:
    """Account ids in consecutive shards (sorted by id) of about `max_rows` weight each.

    A shard starts where the running weight passes a multiple of `max_rows`, so it holds at
    most `max_rows` plus the weight of its last account. `weight`: `account_id`, `w` (the rows
    each account brings); `also`: accounts that must be in some shard although they bring no
    rows (e.g. a minimum commitment with no usage). Every account is in exactly one shard;
    there is always at least one shard.
    """
    limit = max(SHARD_ROWS if max_rows is None else max_rows, 1)
    extra = pl.DataFrame({"account_id": sorted(set(also))}, schema={"account_id": pl.String})
    ids = pl.concat([weight.select("account_id"), extra]).unique().sort("account_id")
    ranked = ids.join(weight.select("account_id", "w"), on="account_id", how="left")
    ranked = ranked.sort("account_id").with_columns(pl.col("w").fill_null(0).cast(pl.Int64))
    shard = (pl.col("w").cum_sum() - pl.col("w")) // limit
    ranked = ranked.with_columns(shard=shard)
    shards = [
        part.get_column("account_id").to_list()
        for _, part in ranked.group_by("shard", maintain_order=True)
    ]
    return shards or [[]]


def in_shard(ids: list[str]) -> pl.Expr:
    """Rows of the shard's accounts, as a filter a scan can prune with: the id range first
    (row-group min/max statistics skip groups outside it; tables are written sorted by
    account), then the exact membership."""
    if not ids:
        return pl.lit(False)
    col = pl.col("account_id")
    return (col >= min(ids)) & (col <= max(ids)) & col.is_in(ids)


MONTH_SHARDS_ENV = "USAGEBOX_MONTH_SHARDS"
#: Upper bound on month shards: each is a Dagster partition per month, and a predicate lists
#: its accounts, so thousands of tiny shards cost more than they spread.
MAX_MONTH_SHARDS = 256


def month_shard_count() -> int:
    """`USAGEBOX_MONTH_SHARDS`: how many month shards the monthly stages fan out to (1 = the
    month in one unit, the default). Read once, where the Dagster partitions are defined."""
    text = os.environ.get(MONTH_SHARDS_ENV, "").strip() or "1"
    if not text.isdigit() or not 1 <= int(text) <= MAX_MONTH_SHARDS:
        raise UsageboxError(
            f"{MONTH_SHARDS_ENV}={text!r}: expected a whole number from 1 to {MAX_MONTH_SHARDS}"
        )
    return int(text)


@dataclass(frozen=True)
class MonthShard:
    """Month shard `index` of `count`: the accounts whose hierarchy root hashes to `index`.

    The fan-out unit of the monthly stages (ADR 0019): a Dagster partition (month × shard)
    that a pod of its own can run. The hash is CRC-32 of the root account id, a pure function
    of the id (stable across runs, processes and machines, unlike Python's or Polars' hash),
    and whole hierarchies share a shard because a parent's budget covers its subtree. Inside a
    month shard, `account_shards` still cuts the work by weight to bound memory.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"month shard {self.index} of {self.count}")

    @classmethod
    def of_root(cls, root: str, count: int) -> MonthShard:
        """The month shard of `count` that the hierarchy rooted at `root` belongs to."""
        return cls(zlib.crc32(root.encode()) % count, count)

    @property
    def whole(self) -> bool:
        """The one shard of an unsharded month: it owns every account."""
        return self.count == 1

    def owned(self, ids: Iterable[str], root: Callable[[str], str]) -> list[str]:
        """The ids (sorted, unique) whose root (`root(id)`) belongs to this shard."""
        unique = set(ids)
        if self.whole:
            return sorted(unique)
        return sorted(i for i in unique if MonthShard.of_root(root(i), self.count) == self)

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


WHOLE_MONTH = MonthShard()
