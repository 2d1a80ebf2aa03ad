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
from collections.abc import Iterable

import polars as pl

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
