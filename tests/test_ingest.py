"""Ingestion: every shape and alias, nothing lost, exactly once, clear reasons for bad rows."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENT_CONFLICTS, QUARANTINE, RAW_EVENTS
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.verify import verify_ingest


def _reasons(store) -> dict[int, str]:
    q = store.read(QUARANTINE)
    return dict(zip(q["row_number"].to_list(), q["reason"].to_list(), strict=True))


def test_every_row_lands_in_exactly_one_place(tmp_path: Path, store) -> None:
    rows = [
        event("e1"),
        event("e1"),  # exact retry
        event("e1", qty=11),  # conflicting re-send
        event("e2", qty="abc"),
        "{broken json",
        event("e3", qty=-5),
        event("e4", ts="2026-10-01 10:00:00"),
        {
            "event_id": "e5",
            "meter_id": "input_tokens",
            "quantity": 1,
            "timestamp": "2026-10-01T10:00:00Z",
        },
        event("e6", dimensions={f"k{i}": i for i in range(17)}),
        event("e7", billable=False),
        event("e8", billable=False, reason_code="internal-test"),
    ]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    summary = ingest_files(store, [path])
    assert summary.rows == 11
    assert (summary.accepted, summary.duplicates, summary.conflicts) == (2, 1, 1)
    assert summary.rejected == 7
    assert (
        summary.rows == summary.accepted + summary.duplicates + summary.conflicts + summary.rejected
    )
    reasons = _reasons(store)
    assert reasons[4] == "quantity is not a number"
    assert reasons[5].startswith("invalid JSON line")
    assert "negative quantity without correction_of" in reasons[6]
    assert "RFC 3339" in reasons[7]
    assert reasons[8].startswith("missing account_id")
    assert "17 keys" in reasons[9]
    assert "reason_code" in reasons[10]
    conflicts = store.read(EVENT_CONFLICTS)
    assert conflicts["event_id"].to_list() == ["e1"]
    assert '"quantity":"10.000000000000"' in conflicts["kept_payload"][0]
    assert verify_ingest(store).passed


def test_all_four_shapes_and_aliases_normalise_to_the_same_event(tmp_path: Path, store) -> None:
    canonical = event("x1", dimensions={"feature": "chat"})
    stigg = {
        "idempotencyKey": "x2",
        "customerId": "acct-001",
        "eventName": "input_tokens",
        "timestamp": "2026-10-01T12:15:00+02:00",
        "metadata": {"model": "gpt-4o", "feature": "chat"},
    }
    write_jsonl(tmp_path / "1.jsonl", [canonical])
    with gzip.open(tmp_path / "2.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(stigg) + "\n")
    (tmp_path / "3.csv").write_text(
        "idempotency_key,customer_id,event_name,value,ts,model,dimensions\n"
        'x3,acct-001,input_tokens,10,2026-10-01T10:15:00Z,gpt-4o,"{""feature"": ""chat""}"\n'
    )
    pl.DataFrame(
        {
            "transaction_id": ["x4"],
            "customer_id": ["acct-001"],
            "meter": ["input_tokens"],
            "value": ["10"],
            "model": ["gpt-4o"],
            "dimensions": ['{"feature":"chat"}'],
            "time": pl.Series(["2026-10-01T10:15:00"])
            .str.to_datetime()
            .dt.replace_time_zone("UTC"),
            "campaign": ["spring"],
        }
    ).write_parquet(tmp_path / "4.parquet")
    summary = ingest_files(store, sorted(tmp_path.iterdir()))
    assert summary.accepted == 4 and summary.rejected == 0, _reasons(store)
    raw = store.read(RAW_EVENTS).sort("event_id")
    assert raw["timestamp"].dt.to_string("%Y-%m-%dT%H:%M").unique().to_list() == [
        "2026-10-01T10:15"
    ]
    assert raw["dimensions"].unique().to_list() == ['{"feature":"chat"}']
    assert raw["model_id"].unique().to_list() == ["gpt-4o"]
    assert raw.filter(pl.col("event_id") == "x2")["quantity"].item() == Decimal(
        1
    )  # no quantity = 1
    assert raw.filter(pl.col("event_id") == "x3")["quantity"].item() == Decimal(10)
    assert raw.filter(pl.col("event_id") == "x4")["extra"].item() == '{"campaign":"spring"}'
    assert raw.schema["quantity"] == pl.Decimal(38, 12)


def test_quantities_stay_exact_decimals(tmp_path: Path, store) -> None:
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            event("q1", qty=0.1),
            event("q2", qty="12345678901234.123456789012"),
            event("q3", qty="1.0000000000001"),
        ],
    )
    summary = ingest_files(store, [path])
    raw = store.read(RAW_EVENTS).sort("event_id")
    assert raw["quantity"].to_list() == [Decimal("0.1"), Decimal("12345678901234.123456789012")]
    assert summary.rejected == 1
    assert "more than 12 decimal places" in _reasons(store)[3]


def test_reingesting_a_file_changes_nothing(tmp_path: Path, store) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1"), event("e2"), event("bad", qty="x")])
    ingest_files(store, [path])
    version = store.version(RAW_EVENTS)
    again = ingest_files(store, [path])
    assert (again.accepted, again.duplicates, again.rejected) == (0, 3, 0)
    assert store.version(RAW_EVENTS) == version
    copy = write_jsonl(tmp_path / "b.jsonl", [event("e1"), event("e2"), event("e3")])
    third = ingest_files(store, [copy])
    assert (third.accepted, third.duplicates) == (1, 2)


def test_conflict_against_history_keeps_the_first_version(tmp_path: Path, store) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("e1", qty=10)])])
    summary = ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [event("e1", qty=99)])])
    assert summary.conflicts == 1
    accepted = store.read(RAW_EVENTS).filter(pl.col("disposition") == "accepted")
    assert accepted["quantity"].to_list() == [Decimal(10)]
    arrivals = store.read(RAW_EVENTS).sort("source_file")
    assert arrivals["disposition"].to_list() == ["accepted", "conflict"]
    assert store.read(EVENT_CONFLICTS)["payload"][0].count('"quantity":"99.000000000000"') == 1


def test_same_event_id_for_different_accounts_is_not_a_duplicate(tmp_path: Path, store) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1", account="a"), event("e1", account="b")])
    assert ingest_files(store, [path]).accepted == 2


def test_bad_files_get_one_line_errors_and_good_files_still_load(tmp_path: Path, store) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [event("e1")])
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1garbage")
    paths = [
        good,
        tmp_path / "empty.jsonl",
        tmp_path / "notes.txt",
        tmp_path / "missing.csv",
        tmp_path / "broken.jsonl.gz",
        tmp_path / "broken.parquet",
    ]
    summary = ingest_files(store, paths)
    assert summary.accepted == 1
    assert len(summary.errors) == 5
    assert all("\n" not in e for e in summary.errors)
    assert any("unknown file format" in e for e in summary.errors)
    assert any("empty" in e for e in summary.errors)
    assert any("no such file" in e for e in summary.errors)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".jsonl.gz"])
def test_formats_round_trip(tmp_path: Path, store, suffix: str) -> None:
    frame = pl.DataFrame([event(f"e{i}", qty=str(i)) for i in range(1, 6)])
    path = tmp_path / f"events{suffix}"
    if suffix.startswith(".csv"):
        text = frame.write_csv()
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    elif suffix == ".parquet":
        frame.write_parquet(path)
    else:
        path.write_bytes(gzip.compress(frame.write_ndjson().encode()))
    summary = ingest_files(store, [path])
    assert summary.accepted == 5, summary
    assert store.read(RAW_EVENTS)["quantity"].sum() == Decimal(15)


def test_chunked_ingest_dedupes_across_chunks(tmp_path: Path, store) -> None:
    rows = [event(f"e{i % 50}") for i in range(120)]
    summary = ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", rows)], chunk_rows=7)
    assert (summary.accepted, summary.duplicates) == (50, 70)
    assert verify_ingest(store).passed
