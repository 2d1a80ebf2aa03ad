"""Table maintenance: catalog metadata on old tables, compaction and vacuum (`usagebox maintain`).

Why it exists: every partition replace leaves the replaced Parquet files in the table folder
(Delta removes them from the log, not from disk), so a plain Parquet reader of a folder counts
rows that are no longer in the table (27,962 files' rows against 21,234 real ones in one demo
home). Delta readers are required; compaction and vacuum keep the folders small.

Vacuum never takes away what an issued invoice is reproduced from: `events` keeps the files of
every version stamped on an invoice or a close marker. Tables whose old versions or commit
history the pipeline reads (`invoices`, `invoice_lines`, `period_closes`,
`guardrail_decisions`, and `ingest_log` / `event_keys`, whose markers are found in their last
commits) are neither compacted nor vacuumed: both add commits (and vacuum deletes versions).
Time travel (`usagebox sql --as-of`) to other versions older than the
retention stops working once vacuumed.
"""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.catalog import (
    EVENT_KEYS,
    EVENTS,
    GUARDRAIL_DECISIONS,
    INGEST_LOG,
    INVOICE_LINES,
    INVOICES,
    PERIOD_CLOSES,
    TABLES,
)
from usagebox_pipelines.storage import DeltaStore, writes_tables

#: Tables whose old versions or last commits are read: never compacted or vacuumed.
HISTORY_TABLES = frozenset(
    t.name
    for t in (INVOICES, INVOICE_LINES, PERIOD_CLOSES, GUARDRAIL_DECISIONS, INGEST_LOG, EVENT_KEYS)
)
DEFAULT_RETENTION_HOURS = 168


def stamped_event_versions(store: DeltaStore) -> list[int]:
    """Versions of `events` that issued invoices and close markers were rated from."""
    versions: set[int] = set()
    for table in (INVOICES, PERIOD_CLOSES):
        column = store.scan(table).select(pl.col("events_table_version").drop_nulls().unique())
        versions |= {int(v) for v in column.collect().to_series()}
    return sorted(versions)


@writes_tables("maintain")
def maintain(
    store: DeltaStore, vacuum: bool = False, retention_hours: int = DEFAULT_RETENTION_HOURS
) -> dict[str, dict[str, int]]:
    """Per existing table: metadata commits made, files compacted away, files vacuumed."""
    keep = stamped_event_versions(store) if vacuum else []
    report: dict[str, dict[str, int]] = {}
    for name, table in TABLES.items():
        if not store.exists(table):
            continue
        entry = {"metadata_commits": store.describe(table)}
        if name in HISTORY_TABLES:
            report[name] = entry
            continue
        metrics = store.compact(table)
        entry["files_compacted"] = int(metrics.get("numFilesRemoved", 0))
        if vacuum:
            versions = keep if table is EVENTS else []
            entry["files_vacuumed"] = store.vacuum(table, retention_hours, versions)
        report[name] = entry
    return report
