"""Read-only SQL for analysts: every Delta table under `<home>/tables` as a Polars SQL table."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.storage import DeltaStore

_READ_ONLY = re.compile(r"^\s*(\(?\s*select|with|show|describe|explain)\b", re.IGNORECASE)


def table_names(store: DeltaStore) -> list[str]:
    """Tables present under the home (local folders or object-store prefixes)."""
    if store.storage_options is None:
        root = Path(store.home) / "tables"
        if not root.exists():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir())
    return [name for name in KNOWN_TABLES if store.exists(name)]


KNOWN_TABLES = [
    "raw_events",
    "quarantine",
    "events",
    "event_conflicts",
    "ingest_log",
    "events_builds",
    "usage_hourly",
    "usage_monthly",
    "hour_builds",
    "rated_usage",
    "unrated_usage",
    "invoice_lines",
    "invoices",
    "vendor_costs",
    "reconciliation",
    "cost_attribution",
]


def run_sql(store: DeltaStore, query: str) -> pl.DataFrame:
    """Run one read-only statement; writes are refused before anything executes."""
    if not _READ_ONLY.match(query) or ";" in query.strip().rstrip(";"):
        raise UsageboxError("sql: only a single read-only SELECT/WITH statement is allowed")
    frames = {name: store.scan(name) for name in table_names(store)}
    try:
        with pl.SQLContext(frames=frames, eager=False) as ctx:
            return ctx.execute(query).collect()
    except (
        pl.exceptions.SQLInterfaceError,
        pl.exceptions.SQLSyntaxError,
        pl.exceptions.ColumnNotFoundError,
        pl.exceptions.ComputeError,
        pl.exceptions.InvalidOperationError,
    ) as exc:
        known = ", ".join(frames) or "none yet"
        first = str(exc).strip().splitlines()[0]
        raise UsageboxError(f"sql: {first} (tables: {known})") from None
