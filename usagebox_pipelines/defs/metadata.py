"""What the Dagster UI shows about every asset: who owns it, what it is made with, the columns
of the table behind it (from the catalog, so the UI and the Delta metadata say the same), and
per materialisation the rows of *that* partition, the table's URI and its Delta version.

Definition metadata (`table_metadata`) is fixed when the code location loads; materialisation
metadata (`materialized`) is computed after the write, from the table itself, so the numbers
on an asset page are the ones an analyst's query returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

from usagebox_pipelines.catalog import EVENTS, INVOICES, RAW_EVENTS, Table
from usagebox_pipelines.shards import MonthShard
from usagebox_pipelines.storage import DeltaStore

if TYPE_CHECKING:  # types only: `usagebox ingest` and `close` report without loading the stages
    from usagebox_pipelines.stages.events import EventsUpdate
    from usagebox_pipelines.stages.ingest import IngestSummary
    from usagebox_pipelines.stages.results import AlreadyClosed, Closed, Numbered

#: Owner of every asset and check (the billing data team runs the pipeline end to end).
OWNERS = ["team:billing-data"]
KINDS = {"deltalake", "polars"}


def table_metadata(table: Table) -> dict[str, object]:
    """Definition metadata of the asset writing `table`: its name and column schema, with the
    catalog's comment on each column."""
    return {
        "dagster/table_name": table.name,
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name, str(dtype), description=table.comments.get(name))
                for name, dtype in table.schema.items()
            ]
        ),
    }


def materialized(
    store: DeltaStore, table: Table, where: pl.Expr | None = None
) -> dict[str, object]:
    """`dagster/row_count` of the slice `where` selects (the whole table when None), the
    table's `dagster/uri` and the Delta version the materialisation left it at."""
    return {"dagster/row_count": row_count(store, table, where)} | _location(store, table)


def counted(store: DeltaStore, table: Table, rows: int) -> dict[str, object]:
    """`materialized` of a slice whose `rows` the caller has already counted (no scan)."""
    return {"dagster/row_count": rows} | _location(store, table)


def materialized_by_shard(
    store: DeltaStore,
    table: Table,
    keys: Sequence[tuple[str, str, MonthShard]],
    month_slice: Callable[[str], pl.Expr],
    root: Callable[[str], str],
) -> dict[str, dict[str, object]]:
    """`materialized` of each month × shard partition a run took (`keys`: partition key,
    month, month shard), the row count being that of its own accounts in the month's slice
    (`month_slice(month)`): one scan per month, however many of its shards the run took."""
    shared = _location(store, table)
    out: dict[str, dict[str, object]] = {}
    for month in sorted({m for _, m, _ in keys}):
        mine = [(key, shard) for key, m, shard in keys if m == month]
        rows = _rows_by_shard(store, table, month_slice(month), mine[0][1].count, root)
        out |= {key: {"dagster/row_count": rows.get(s.index, 0)} | shared for key, s in mine}
    return out


def _rows_by_shard(
    store: DeltaStore, table: Table, where: pl.Expr, count: int, root: Callable[[str], str]
) -> dict[int, int]:
    """Rows of the slice `where` per month shard index of `count` (counted per account)."""
    if count == 1:
        return {0: row_count(store, table, where)}
    per_account = store.scan(table).filter(where).group_by("account_id").len().collect()
    rows: dict[int, int] = {}
    for account, n in per_account.iter_rows():
        index = MonthShard.of_root(root(account), count).index
        rows[index] = rows.get(index, 0) + n
    return rows


def _location(store: DeltaStore, table: Table) -> dict[str, object]:
    """The table's `dagster/uri` and the Delta version a materialisation left it at."""
    return {"dagster/uri": store.uri(table), "delta_version": store.version(table) or 0}


def materialized_by_day(
    store: DeltaStore, table: Table, column: str, days: Mapping[str, datetime]
) -> dict[str, dict[str, object]]:
    """`materialized` of each UTC day (partition key -> its start) of `table`'s `column`, in
    one scan: a month run records 31 partitions, and a scan plus a Delta log read apiece was
    a second or two of every `run --month`."""
    if not days:
        return {}
    first, last = min(days.values()), max(days.values()) + timedelta(days=1)
    counts = dict(
        store.scan(table)
        .filter(pl.col(column).is_between(first, last, closed="left"))
        .group_by(pl.col(column).dt.truncate("1d").alias("day"))
        .len()
        .collect()
        .iter_rows()
    )
    shared = _location(store, table)
    return {
        key: {"dagster/row_count": int(counts.get(start, 0))} | shared | {"from": start.isoformat()}
        for key, start in days.items()
    }


def row_count(store: DeltaStore, table: Table, where: pl.Expr | None = None) -> int:
    """Rows of the table (from the Delta log's file statistics) or of a slice (scanned)."""
    if where is None:
        files = store.files(table)
        return int(files["num_records"].sum()) if files.height else 0
    return int(store.scan(table).filter(where).select(pl.len()).collect().item())


def check_spec(
    name: str, asset: str, description: str, *, blocking: bool = True
) -> dg.AssetCheckSpec:
    """An asset check with the description the UI shows (blocking unless said otherwise)."""
    return dg.AssetCheckSpec(name, asset=asset, description=description, blocking=blocking)


def spec(key: str, table: Table, description: str, deps: list, group: str) -> dg.AssetSpec:
    """An AssetSpec for a multi-asset output: owners, kinds and the table's schema set."""
    return dg.AssetSpec(
        key,
        deps=deps,
        group_name=group,
        kinds=KINDS,
        owners=OWNERS,
        description=description,
        metadata=table_metadata(table),
    )


def per_partition(
    context: dg.AssetExecutionContext, counts: Mapping[str, dict[str, object]], asset: str
) -> None:
    """Attach each partition's own metadata (its row count) to that partition's
    materialisation, when one run materialises a range of partitions."""
    for key, meta in counts.items():
        context.add_asset_metadata(meta, asset_key=asset, partition_key=key)


def raw_events_metadata(store: DeltaStore, summary: IngestSummary) -> dict[str, object]:
    """What a `raw_events` materialisation records: the ingest summary and the table's size;
    the same whether the asset ran or `usagebox ingest` reported it (runner.report_ingest)."""
    counts = {k: v for k, v in summary.__dict__.items() if k != "errors"}
    return (
        counts | {"errors": dg.MetadataValue.json(summary.errors)} | materialized(store, RAW_EVENTS)
    )


def events_metadata(store: DeltaStore, update: EventsUpdate) -> dict[str, object]:
    """What an `events` materialisation records (asset run or `usagebox ingest`)."""
    return {
        "new_batches": len(update.batches),
        "days_rewritten": [d.isoformat() for d in update.days],
        "affected_hours": dg.MetadataValue.json([h.isoformat() for h in update.hours]),
    } | materialized(store, EVENTS)


def numbered_metadata(store: DeltaStore, result: Numbered) -> dict[str, object]:
    """What close step 1 (`issued_invoices` in `close_job`) records: the numbers it gave."""
    return {
        "status": result.status,
        "documents": result.documents,
        "first_number": result.first_number or "",
        "last_number": result.last_number or "",
        "events_table_version": result.events_table_version,
    } | _issued_rows(store, result.period)


def issued_metadata(store: DeltaStore, result: Closed | AlreadyClosed) -> dict[str, object]:
    """What an `issued_invoices` materialisation records, whether the close job ran it or
    `usagebox close --approve` reported it (runner.report_close)."""
    return {
        "status": result.status,
        "documents": len(result.invoices),
        "numbers": dg.MetadataValue.json([i["invoice_number"] for i in result.invoices]),
        "events_table_version": result.events_table_version,
    } | _issued_rows(store, result.period)


def _issued_rows(store: DeltaStore, period: str) -> dict[str, object]:
    """`materialized` of the period's issued (or, before the marker, numbered) invoices."""
    where = (pl.col("period") == period) & (pl.col("status") == "issued")
    return materialized(store, INVOICES, where)
