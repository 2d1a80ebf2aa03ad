"""Focused tests for issue 11 items 8–13 and 16: exact quantities, the event-time window,
missing quantities, invalid UTF-8, and `raw_events` as the complete landing log."""

from __future__ import annotations

import gzip
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENTS, QUARANTINE, RAW_EVENTS
from usagebox_pipelines.events.quantity import parse_quantities
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.verify import verify_ingest


def _reasons(store) -> list[str]:
    return store.read(QUARANTINE).sort("row_number")["reason"].to_list()


def _forms(d: Decimal) -> list[str]:
    sign, digits, exp = d.as_tuple()
    mantissa = ("-" if sign else "") + "".join(map(str, digits))
    return [str(d), f"{d:f}", f"{d:e}", f"{d:E}", f"{mantissa}e{exp}", f"{mantissa}E{exp:+d}"]


@settings(max_examples=300, deadline=None)
@given(
    st.decimals(min_value=Decimal("-1e25"), max_value=Decimal("1e25"), places=12, allow_nan=False)
)
def test_every_textual_form_of_a_decimal_parses_back_to_exactly_it(d: Decimal) -> None:
    """Invariant: for any Decimal d with at most 12 places and at most 26 integer digits, every
    textual form (plain, fixed, scientific, mantissa+exponent) parses to exactly d, never
    rounded; exponents go through the same exact parser as plain text."""
    forms = _forms(d)
    values, reasons = parse_quantities(pl.Series(forms))
    assert reasons.to_list() == [None] * len(forms), (forms, reasons.to_list())
    assert all(v == d for v in values.to_list()), (forms, values.to_list())


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**15), st.integers(min_value=13, max_value=40))
def test_a_value_with_more_than_12_places_is_rejected_in_every_form(m: int, places: int) -> None:
    """Invariant: a value that Decimal(38, 12) cannot hold exactly is rejected, never rounded."""
    if m % 10 == 0:
        m += 1
    d = Decimal(m).scaleb(-places)
    values, reasons = parse_quantities(pl.Series(_forms(d)))
    assert values.null_count() == values.len()
    assert all("more than 12 decimal places" in r for r in reasons.to_list())


def test_exponent_quantities_are_exact_or_rejected(tmp_path: Path, store) -> None:
    lines = [
        '{"event_id":"a","account_id":"x","meter_id":"m","quantity":1e-20,"timestamp":"2026-10-01T10:00:00Z"}',
        '{"event_id":"b","account_id":"x","meter_id":"m","quantity":1.5e-12,"timestamp":"2026-10-01T10:00:00Z"}',
        '{"event_id":"c","account_id":"x","meter_id":"m","quantity":"1.0000000000005e0","timestamp":"2026-10-01T10:00:00Z"}',
        '{"event_id":"d","account_id":"x","meter_id":"m","quantity":2.5E3,"timestamp":"2026-10-01T10:00:00Z"}',
        '{"event_id":"e","account_id":"x","meter_id":"m","quantity":1e-12,"timestamp":"2026-10-01T10:00:00Z"}',
    ]  # fmt: skip
    summary = ingest_files(store, [write_jsonl(tmp_path / "e.jsonl", lines)])
    assert (summary.accepted, summary.rejected) == (2, 3)
    raw = store.read(RAW_EVENTS).sort("event_id")
    assert raw["quantity"].to_list() == [Decimal(2500), Decimal("1e-12")]
    assert all("more than 12 decimal places" in r for r in _reasons(store))


def test_parquet_floats_are_read_through_their_shortest_text(tmp_path: Path, store) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(
        pa.table(
            {
                "event_id": ["a", "b", "c"],
                "account_id": ["x"] * 3,
                "meter_id": ["m"] * 3,
                "quantity": pa.array([0.1, 1e-20, 1234.5678], pa.float64()),
                "timestamp": ["2026-10-01T10:00:00Z"] * 3,
            }
        ),
        path,
    )
    summary = ingest_files(store, [path])
    assert (summary.accepted, summary.rejected) == (2, 1)
    q = store.read(RAW_EVENTS).sort("event_id")["quantity"].to_list()
    assert q == [Decimal("0.1"), Decimal("1234.5678")]


def test_timestamps_outside_the_window_are_quarantined_and_later_ingests_still_work(
    tmp_path: Path, store
) -> None:
    rows = [
        event("far", ts="9999-12-31T23:59:59Z"),
        event("neg", ts="-0001-01-01T00:00:00Z"),
        event("old", ts="2023-12-31T23:00:00Z"),
        event("ok"),
    ]
    first = ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", rows)])
    assert (first.accepted, first.rejected) == (1, 3)
    reasons = _reasons(store)
    assert "future" in reasons[0] and "USAGEBOX_MIN_EVENT_TIME" in reasons[2]
    update_events(store)
    second = ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [event("ok2")])])
    assert second.accepted == 1 and not second.errors
    update_events(store)
    assert sorted(store.read(EVENTS)["event_id"].to_list()) == ["ok", "ok2"]


def test_min_event_time_setting_moves_the_window(tmp_path: Path, store, monkeypatch) -> None:
    monkeypatch.setenv("USAGEBOX_MIN_EVENT_TIME", "2020-01-01T00:00:00Z")
    rows = [event("old", ts="2023-12-31T23:00:00Z"), event("older", ts="2019-06-01T00:00:00Z")]
    summary = ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", rows)])
    assert (summary.accepted, summary.rejected) == (1, 1)


def test_missing_quantity_is_a_reason_except_for_shapes_without_one(tmp_path: Path, store) -> None:
    ts = "2026-10-01T10:00:00Z"
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            event("null", qty=None),
            event("empty", qty=""),
            {
                "event_id": "vnull",
                "account_id": "x",
                "meter_id": "m",
                "value": None,
                "timestamp": ts,
            },
            {"idempotencyKey": "stigg", "customerId": "x", "eventName": "calls", "timestamp": ts},
        ],
    )
    (tmp_path / "b.csv").write_text(
        f"event_id,account_id,meter_id,quantity,timestamp\ncsv-empty,x,m,,{ts}\ncsv-ok,x,m,2,{ts}\n"
    )
    (tmp_path / "c.csv").write_text(f"event_id,account_id,meter_id,timestamp\ncsv-stigg,x,m,{ts}\n")
    summary = ingest_files(store, sorted(tmp_path.iterdir()))
    raw = store.read(RAW_EVENTS).sort("event_id")
    assert dict(zip(raw["event_id"], raw["quantity"], strict=True)) == {
        "csv-ok": Decimal(2),
        "csv-stigg": Decimal(1),
        "stigg": Decimal(1),
    }
    assert summary.rejected == 4
    assert all(r.startswith("quantity missing") for r in store.read(QUARANTINE)["reason"])


def test_invalid_utf8_ids_are_quarantined_not_replaced_into_collisions(
    tmp_path: Path, store
) -> None:
    good = (
        b'{"event_id":"ok","account_id":"x","meter_id":"m","quantity":1,'
        b'"timestamp":"2026-10-01T10:00:00Z"}'
    )
    bad = [good.replace(b'"ok"', b'"a' + c + b'"') for c in (b"\xff", b"\xfe")]
    path = tmp_path / "u.jsonl.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\n".join([good, *bad]) + b"\n"))
    summary = ingest_files(store, [path])
    assert (summary.accepted, summary.duplicates, summary.rejected) == (1, 0, 2)
    q = store.read(QUARANTINE).sort("row_number")
    assert q["row_number"].to_list() == [2, 3]
    assert all("not valid UTF-8" in r for r in q["reason"])
    assert "\\xff" in q["payload"][0]  # the payload shows the bad byte, not a replacement


def test_latin1_csv_keeps_its_ascii_rows(tmp_path: Path, store) -> None:
    text = "event_id,account_id,meter_id,quantity,timestamp,unit\n"
    text += "a,x,m,1,2026-10-01T10:00:00Z,tokens\nb,x,m,1,2026-10-01T10:00:00Z,caf\u00e9\n"
    path = tmp_path / "l.csv"
    path.write_bytes(text.encode("latin-1"))
    summary = ingest_files(store, [path])
    assert (summary.accepted, summary.rejected) == (1, 1)
    assert "not valid UTF-8" in _reasons(store)[0]


def test_short_and_long_csv_rows_are_quarantined_alone_with_their_row_number(
    tmp_path: Path, store
) -> None:
    ts = "2026-10-01T10:00:00Z"
    text = f"event_id,account_id,meter_id,quantity,timestamp\na,x,m,1,{ts}\nb,x,m\nc,x,m,1,{ts},9\n"
    text += f'"d\nmultiline",x,m,1,{ts}\ne,x,m,1,{ts}\n'
    summary = ingest_files(store, [write_text(tmp_path / "r.csv", text)])
    assert (summary.accepted, summary.rejected) == (3, 2)
    q = store.read(QUARANTINE).sort("row_number")
    assert q["row_number"].to_list() == [2, 3]
    assert q["reason"].to_list() == [
        "CSV row 2 has 3 fields; the header has 5",
        "CSV row 3 has 6 fields; the header has 5",
    ]
    assert store.read(RAW_EVENTS).sort("row_number")["row_number"].to_list() == [1, 4, 5]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_raw_events_answers_which_file_resent_an_event_and_when(tmp_path: Path, store) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("x"), event("x")])])
    ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [event("x"), event("x", qty=99)])])
    raw = store.read(RAW_EVENTS).filter(pl.col("event_id") == "x").sort("source_file", "row_number")
    got = list(
        zip(
            [Path(p).name for p in raw["source_file"]],
            raw["row_number"],
            raw["disposition"],
            strict=True,
        )
    )
    assert got == [
        ("a.jsonl", 1, "accepted"),
        ("a.jsonl", 2, "duplicate"),
        ("b.jsonl", 1, "duplicate"),
        ("b.jsonl", 2, "conflict"),
    ]
    assert raw["ingested_at"].null_count() == 0
    assert verify_ingest(store).passed
    update_events(store)
    events = store.read(EVENTS)
    assert events["quantity"].to_list() == [Decimal(10)]  # only the accepted arrival is billed


def test_invariant_one_fails_when_a_stored_arrival_is_missing(tmp_path: Path, store) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("x"), event("x")])])
    store.delete_where(RAW_EVENTS, disposition="duplicate")
    result = verify_ingest(store)
    assert not result.passed
    assert result.examples[0]["raw_duplicates"] == 0


def test_a_home_without_the_disposition_column_still_ingests_and_builds(
    tmp_path: Path, store
) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("x")])])
    legacy = store.read(RAW_EVENTS).drop("disposition")
    store.drop(RAW_EVENTS)
    schema = pl.Schema({k: v for k, v in RAW_EVENTS.schema.items() if k != "disposition"})
    store.append(replace(RAW_EVENTS, schema=schema, comments={}), legacy)
    summary = ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [event("x"), event("y")])])
    assert (summary.accepted, summary.duplicates) == (1, 1)
    assert verify_ingest(store).passed
    update_events(store)
    assert sorted(store.read(EVENTS)["event_id"].to_list()) == ["x", "y"]
