"""The table catalog: every table a flow writes is declared there, created from its entry
(schema, partitioning, description and column comments in the Delta metadata), and
`replace_partition` rewrites exactly the slice it names."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from tests.conftest import event, write_jsonl
from usagebox_demo.vendor_exports import write_vendor_exports
from usagebox_pipelines import catalog
from usagebox_pipelines.catalog import (
    EVENTS,
    INVOICE_LINES,
    TABLES,
    USAGE_HOURLY,
    USAGE_MONTHLY,
    Table,
)
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS, Settings
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.stages.close import close_month
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.guardrails import raise_alerts, refresh_guardrails
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rating import build_rated_usage
from usagebox_pipelines.stages.reconciliation import load_exports, reconcile_month
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.storage import NOT_NULL, DeltaStore, predicate

OCT = "2026-10"
NOW = datetime(2026, 10, 31, 23, tzinfo=UTC)
ROWS = [
    event("e-1", "acct-001", 1_000_000, "2026-10-02T10:05:00Z"),
    event("e-1", "acct-001", 1_000_000, "2026-10-02T10:05:00Z"),  # duplicate
    event("e-1", "acct-001", 5, "2026-10-02T10:05:00Z"),  # conflict
    event("e-2", "acct-014", 900_000_000, "2026-10-03T08:00:00Z"),  # passes its budget
    event("e-3", "acct-004", 4_000_000, "2026-10-20T12:00:00Z", meter="output_tokens"),
    "{not json",  # quarantined
]


@functools.cache
def flow() -> tuple[DeltaStore, Settings]:
    """One month through every stage: ingest, rollups, rating, guardrails, vendors, close."""
    root = Path(tempfile.mkdtemp(prefix="usagebox-catalog-"))
    atexit.register(shutil.rmtree, root, True)
    books = root / "pricebooks"
    shutil.copytree(DEFAULT_PRICEBOOKS, books)
    settings = Settings(str(root / "home"), books)
    store = DeltaStore(settings.home)
    ingest_files(store, [write_jsonl(root / "in" / "a.jsonl", ROWS)])
    update_events(store)
    start, end = month_bounds(OCT)
    build_usage_hourly(store, start, end)
    build_usage_monthly(store, OCT)
    build_rated_usage(store, books, OCT)
    refresh_guardrails(store, books, OCT, NOW)
    raise_alerts(store, NOW)
    hourly = store.read(USAGE_HOURLY)
    exports = root / "exports"
    write_vendor_exports(hourly, exports, OCT, load_vendor_mapping(books), seed=3)
    for vendor in ("openai", "anthropic", "focus"):
        load_exports(store, settings, vendor, [exports / vendor])
    _restated_export(store, settings, root / "restated")
    reconcile_month(store, settings, OCT)
    close_month(store, settings, OCT, approve=True, now=NOW, approved_by="test")
    return store, settings


def _restated_export(store: DeltaStore, settings: Settings, out: Path) -> None:
    """The same OpenAI cost export pulled twice, the second restating a day."""
    fixture = Path(__file__).parent / "fixtures" / "vendors" / "openai" / "costs"
    for n, stamp in enumerate(("20261102T060000Z", "20261103T060000Z")):
        folder = out / stamp
        folder.mkdir(parents=True)
        for f in sorted(fixture.glob("*.json")):
            text = f.read_text().replace("0.13080438", "0.2") if n else f.read_text()
            (folder / f.name.replace("20261102T060000Z", stamp)).write_text(text)
        load_exports(store, settings, "openai", [folder])


def _written(store: DeltaStore) -> set[str]:
    root = Path(store.home) / "tables"
    return {p.name for p in root.iterdir() if (p / "_delta_log").is_dir()}


def test_every_written_table_is_declared_in_the_catalog() -> None:
    store, _ = flow()
    written = _written(store)
    assert written - set(TABLES) == set(), "tables written without a catalog entry"
    assert set(TABLES) - written == set(), "the flow should reach every catalog table"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_written_schema_equals_the_catalog_schema(name: str) -> None:
    store, _ = flow()
    assert store.read(TABLES[name]).schema == TABLES[name].schema


@pytest.mark.parametrize("name", sorted(TABLES))
def test_created_tables_carry_description_and_column_comments(name: str) -> None:
    store, _ = flow()
    entry = TABLES[name]
    dt = DeltaTable(store.uri(entry))
    meta = dt.metadata()
    assert (meta.name, meta.description) == (entry.name, entry.description)
    assert list(meta.partition_columns) == list(entry.partition_by)
    comments = {f.name: f.metadata.get("comment") for f in dt.schema().fields}
    assert {c: comments[c] for c in entry.comments} == dict(entry.comments)


def test_every_entry_is_documented_and_money_columns_keep_their_decimal_types() -> None:
    for entry in TABLES.values():
        assert entry.description.endswith(".") and entry.comments, entry.name
        for column, dtype in entry.schema.items():
            if column in ("amount", "total", "subtotal", "unit_price", "revenue", "margin"):
                assert isinstance(dtype, pl.Decimal) and dtype.scale in (2, 12), (entry, column)
    assert catalog.table("usage_hourly") is USAGE_HOURLY
    with pytest.raises(KeyError, match="no table 'nope'"):
        catalog.table("nope")


def test_an_entry_cannot_name_columns_its_schema_lacks() -> None:
    with pytest.raises(ValueError, match="no column"):
        Table("t", pl.Schema({"a": pl.String()}), ("b",), "A table.", {})


def _month_rows(month: str, total: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"account_id": ["a"], "meter_id": ["m"], "month": [month], "sum": [Decimal(total)]}
    )


def test_replace_partition_replaces_only_that_partition(store: DeltaStore) -> None:
    store.replace_partition(USAGE_MONTHLY, _month_rows("2026-09", 1), month="2026-09")
    store.replace_partition(USAGE_MONTHLY, _month_rows("2026-10", 2), month="2026-10")
    store.replace_partition(USAGE_MONTHLY, _month_rows("2026-10", 3), month="2026-10")
    rows = store.read(USAGE_MONTHLY).sort("month")
    assert rows.select("month", "sum").rows() == [("2026-09", Decimal(1)), ("2026-10", Decimal(3))]
    assert rows.schema == USAGE_MONTHLY.schema


def test_replace_partition_of_hours_is_half_open(store: DeltaStore) -> None:
    hours = [datetime(2026, 10, 1, h, tzinfo=UTC) for h in range(4)]
    rows = pl.DataFrame({"account_id": "a", "hour": hours, "sum": [Decimal(1)] * 4})
    store.append(USAGE_HOURLY, rows)
    store.replace_partition(USAGE_HOURLY, rows.slice(1, 2), hour=slice(hours[1], hours[3]))
    assert store.read(USAGE_HOURLY).height == 4
    store.replace_partition(USAGE_HOURLY, rows.slice(1, 0), hour=slice(hours[1], hours[3]))
    assert store.read(USAGE_HOURLY).sort("hour")["hour"].to_list() == [hours[0], hours[3]]


def test_replace_partition_refuses_other_columns_and_rows_outside_the_slice(
    store: DeltaStore,
) -> None:
    with pytest.raises(ValueError, match="not a key column"):
        store.replace_partition(USAGE_MONTHLY, _month_rows("2026-10", 1), unit="tokens")
    with pytest.raises(ValueError, match="partition key is required"):
        store.replace_partition(USAGE_MONTHLY, _month_rows("2026-10", 1))
    store.replace_partition(USAGE_MONTHLY, _month_rows("2026-10", 1), month="2026-10")
    with pytest.raises(Exception, match="validation"):
        store.replace_partition(USAGE_MONTHLY, _month_rows("2026-11", 1), month="2026-10")


def test_predicates_are_built_from_typed_keys() -> None:
    day = date(2026, 10, 1)
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)
    assert predicate(EVENTS, ["event_date"], {"event_date": day}) == "event_date = '2026-10-01'"
    assert predicate(EVENTS, ["hour"], {"hour": slice(start, end)}) == (
        "hour >= '2026-10-01T00:00:00.000000Z' AND hour < '2026-10-02T00:00:00.000000Z'"
    )
    assert predicate(EVENTS, ["batch_id"], {"batch_id": ["b", "a'x"]}) == (
        "batch_id IN ('a''x', 'b')"
    )


def test_none_and_not_null_keys_are_null_tests() -> None:
    assert (
        predicate(
            INVOICE_LINES,
            ["period", "invoice_number"],
            {"period": "2026-10", "invoice_number": None},
        )
        == "period = '2026-10' AND invoice_number IS NULL"
    )
    assert predicate(INVOICE_LINES, ["invoice_number"], {"invoice_number": NOT_NULL}) == (
        "invoice_number IS NOT NULL"
    )
