"""One month shard's slice of a derived table (ADR 0019): how sharded monthly stages write.

A monthly stage given a `MonthShard` reads and writes only the accounts of that shard, so
runs of different shards of one month can go at once (pods of their own). Its replace is one
commit whose predicate lists the shard's accounts, `period = M AND account_id IN (...)`: the
accounts it wrote now, plus every account of the shard the table still holds rows for (an
account whose usage went away, or that moved here when `USAGEBOX_MONTH_SHARDS` or a parent
changed), so no stale row survives. The whole month (one shard, the default) replaces the
period as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import polars as pl

from usagebox_pipelines.catalog import Table
from usagebox_pipelines.lease import EXCLUSIVE, SHARED
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard, in_shard
from usagebox_pipelines.storage import DeltaStore, Key

F = TypeVar("F", bound=Callable[..., Any])


def writes_month_shard(purpose: str) -> Callable[[F], F]:
    """Mark a monthly stage (first argument: the store; keyword `shard`) as a writer: the whole
    month holds the home's lease exclusively, as `writes_tables`; one shard of a sharded month
    holds it shared (ADR 0012), so the other shards' runs write beside it, each commit only
    its own accounts' rows and retried on conflict, and never beside an ingest."""

    def decorate(stage: F) -> F:
        @functools.wraps(stage)
        def under_lease(store: DeltaStore, *args: Any, **kwargs: Any) -> Any:
            shard = cast(MonthShard, kwargs.get("shard", WHOLE_MONTH))
            with store.writer(purpose, EXCLUSIVE if shard.whole else SHARED):
                return stage(store, *args, **kwargs)

        return cast(F, under_lease)

    return decorate


def replace_shard_rows(
    store: DeltaStore,
    table: Table,
    rows: pl.DataFrame | Iterable[pl.DataFrame],
    *,
    shard: MonthShard,
    root: Callable[[str], str],
    written: Iterable[str],
    metadata: dict[str, str],
    **month_key: Key,
) -> None:
    """Replace the slice `month_key` of `table` (e.g. `period="2026-10"`) with `rows`, all of
    which belong to `shard`'s accounts `written` (`root`: an account's hierarchy root).

    The whole month replaces the slice; a shard replaces its accounts within it (see the
    module docstring). A shard with no account, written or stored, has nothing to replace."""
    if shard.whole:
        store.replace_partition(table, rows, metadata=metadata, **month_key)
        return
    ids = set(written) | set(shard.owned(_stored_accounts(store, table, month_key), root))
    if not ids:
        return
    store.replace_partition(table, rows, metadata=metadata, account_id=sorted(ids), **month_key)


def _stored_accounts(store: DeltaStore, table: Table, month_key: dict[str, Key]) -> list[str]:
    """Accounts with rows in the slice (one column read, filters pushed into the scan)."""
    if not store.exists(table):
        return []
    where = pl.all_horizontal(
        pl.col(c).is_null() if v is None else pl.col(c) == v for c, v in month_key.items()
    )
    found = store.scan(table).filter(where).select("account_id").unique().collect()
    return found.get_column("account_id").to_list()


def shard_rows(
    frames: Iterable[pl.LazyFrame], shard: MonthShard, root: Callable[[str], str]
) -> pl.Expr:
    """A filter for the rows of `shard`'s accounts: those among the `account_id`s of `frames`
    (each already cut to the month) whose root belongs to the shard. For checks that must see
    only the shard a run wrote, not the other shards' rows, which may be older or newer."""
    if shard.whole:
        return pl.lit(True)
    ids = pl.concat([f.select("account_id") for f in frames]).unique().collect(engine="streaming")
    return in_shard(shard.owned(ids.get_column("account_id"), root))
