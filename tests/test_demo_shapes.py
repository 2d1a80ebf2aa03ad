"""write_shape: each shape reads back to the same events; chunked and gzip output is stable."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pyarrow.parquet as pq
import pytest

from usagebox_demo import generate_usage, iter_usage, shapes, write_jsonl_chunks
from usagebox_demo import write_shape as write

CASES = [
    ("canonical", "e.jsonl", {}),
    ("canonical", "e.jsonl.gz", {"quantity_as": "string"}),
    ("stigg", "e.jsonl.gz", {}),
    ("csv", "e.csv", {}),
    ("csv", "e.csv.gz", {}),
    ("parquet", "e.parquet", {}),
    ("parquet", "e.parquet", {"quantity_as": "string", "dims_as": "struct"}),
]


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return generate_usage("2026-10", seed=5, n_events=3_000)


def _read(path, shape) -> list[dict]:
    """Minimal shape-aware reader -> (event_id, account, meter, quantity, instant, model, dims)."""
    if shape == "parquet":
        rows = pq.read_table(path).to_pylist()
    elif shape == "csv":
        rows = pl.read_csv(path, infer_schema=False).to_dicts()
    else:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt") as fh:
            rows = [json.loads(line, parse_float=Decimal) for line in fh]
    return [_normal(r) for r in rows]


def _normal(r: dict) -> tuple:
    event_id = r.get("event_id") or r.get("idempotencyKey") or r.get("idempotency_key")
    event_id = event_id or r.get("transaction_id")
    account = r.get("account_id") or r.get("customerId") or r.get("customer_id")
    meter = r.get("meter_id") or r.get("eventName") or r.get("event_name") or r.get("meter")
    qty = r.get("quantity", r.get("value", 1))
    ts = r.get("timestamp") or r.get("ts") or r.get("time")
    ts = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    dims = r.get("dimensions", r.get("metadata")) or {}
    dims = json.loads(dims) if isinstance(dims, str) else dict(dims)
    model = r.get("model_id") or r.get("model") or dims.pop("model", None)
    dims = {k: v for k, v in dims.items() if v is not None}
    return (
        event_id,
        account,
        meter,
        Decimal(str(qty)).normalize(),
        ts.astimezone(UTC),
        model,
        json.dumps(dims, sort_keys=True, separators=(",", ":")),
    )


def _expected(events: pl.DataFrame) -> list[tuple]:
    return [
        (
            r["event_id"],
            r["account_id"],
            r["meter_id"],
            r["quantity"].normalize(),
            r["timestamp"],
            r["model_id"],
            r["dimensions"],
        )
        for r in events.iter_rows(named=True)
    ]


@pytest.mark.parametrize(("shape", "name", "opts"), CASES)
def test_shape_round_trip(events, tmp_path, shape, name, opts):
    path = tmp_path / name
    assert write(events, path, shape, **opts) == events.height
    assert _read(path, shape) == _expected(events)


def test_parquet_types(events, tmp_path):
    write(events, tmp_path / "d.parquet", "parquet")
    schema = pq.read_schema(tmp_path / "d.parquet")
    assert str(schema.field("value").type) == "decimal128(38, 12)"
    assert str(schema.field("time").type) == "timestamp[us, tz=UTC]"
    write(events, tmp_path / "s.parquet", "parquet", quantity_as="string", dims_as="struct")
    schema = pq.read_schema(tmp_path / "s.parquet")
    assert str(schema.field("value").type) == "large_string"
    assert schema.field("dimensions").type.num_fields >= 1


def test_stigg_omits_quantity_one_for_tool_calls(events, tmp_path):
    write(events, tmp_path / "s.jsonl", "stigg")
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    tools = [r for r in rows if r["eventName"] == "tool_calls"]
    assert any("value" not in r for r in tools) and any("value" in r for r in tools)
    assert all(
        "metadata" in r and "model" in r["metadata"]
        for r in rows
        if r["eventName"].endswith("tokens")
    )


def test_csv_local_offsets_are_the_same_instant(events, tmp_path):
    write(events, tmp_path / "c.csv", "csv")
    text = (tmp_path / "c.csv").read_text()
    assert "+02:00," in text and "-04:00," in text and "Z," in text


def test_chunked_output_is_byte_identical(events, tmp_path, monkeypatch):
    for shape, name, opts in CASES:
        whole = tmp_path / f"whole-{shape}-{name}"
        write(events, whole, shape, **opts)
        monkeypatch.setattr(shapes, "CHUNK_ROWS", 700)
        parts = tmp_path / f"parts-{shape}-{name}"
        write(iter(events.iter_slices(1_100)), parts, shape, **opts)
        monkeypatch.setattr(shapes, "CHUNK_ROWS", 200_000)
        if shape == "parquet":  # row groups differ; content must not
            assert pl.read_parquet(whole).equals(pl.read_parquet(parts))
        else:
            assert whole.read_bytes() == parts.read_bytes(), name


def test_gzip_is_reproducible(events, tmp_path):
    write(events, tmp_path / "a.jsonl.gz", "canonical")
    write(events, tmp_path / "b.jsonl.gz", "canonical")
    data = (tmp_path / "a.jsonl.gz").read_bytes()
    assert data == (tmp_path / "b.jsonl.gz").read_bytes()
    assert data[4:8] == b"\x00\x00\x00\x00"  # mtime 0


def test_streaming_jsonl_from_iter_usage(tmp_path):
    n = write_jsonl_chunks(iter_usage("2026-10", seed=2, n_events=5_000), tmp_path / "s.jsonl")
    assert n == 5_000
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 5_000


def test_quantity_text_is_exact():
    values = ["1500", "12.5", "-100", "0.000000000001", "0", "100"]
    s = pl.Series([Decimal(v) for v in values], dtype=pl.Decimal(38, 12))
    out = s.to_frame("q").select(shapes.quantity_text(pl.col("q")))["q"].to_list()
    assert out == values


def test_extra_columns_pass_through(events, tmp_path):
    extra = events.head(5).with_columns(sdk_version=pl.lit("py-1.0"))
    write(extra, tmp_path / "x.jsonl", "canonical")
    assert all(
        '"sdk_version":"py-1.0"' in x for x in (tmp_path / "x.jsonl").read_text().splitlines()
    )
    write(extra, tmp_path / "x.csv", "csv")
    assert pl.read_csv(tmp_path / "x.csv")["sdk_version"].to_list() == ["py-1.0"] * 5


def test_wrong_suffix_or_shape(events, tmp_path):
    with pytest.raises(ValueError):
        write(events, tmp_path / "x.csv", "canonical")
    with pytest.raises(ValueError):
        write(events, tmp_path / "x.txt", "csv")
    with pytest.raises(ValueError):
        write(events, tmp_path / "x.jsonl", "nope")  # type: ignore[arg-type]
