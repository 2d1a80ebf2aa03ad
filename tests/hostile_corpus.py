"""A generated corpus of hostile event files (issue 11, items 8–13): nothing committed but code.

`generate(folder)` writes a few hundred files and returns one `HostileFile` per file: its path,
how many input rows it holds (what ingest must account for), the good event ids that must be
accepted, and whether the file as a whole is unreadable (then one clear error, no rows).
Every row file also carries good rows, so a bad row refusing its neighbours shows up.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TS = "2026-10-01T10:00:00Z"


@dataclass
class HostileFile:
    path: Path
    rows: int  # input rows ingest must account for (0 for a file-level error)
    good_ids: list[str] = field(default_factory=list)
    file_error: bool = False  # unreadable as a whole: one error line, nothing stored


def _good(eid: str, qty: str = "10") -> str:
    return (
        f'{{"event_id":"{eid}","account_id":"acct-001","meter_id":"input_tokens",'
        f'"quantity":{qty},"timestamp":"{TS}"}}'
    )


def _row(eid: str, **fields: str) -> str:
    """A JSON object line; values are raw JSON text (so hostile literals survive)."""
    base = {
        "event_id": json.dumps(eid),
        "account_id": '"acct-001"',
        "meter_id": '"input_tokens"',
        "quantity": "5",
        "timestamp": json.dumps(TS),
    }
    base.update(fields)
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in base.items() if v is not None) + "}"


DEEP = "[" * 5000 + "]" * 5000
# Every class is written plain and gzipped: the gzip layer is shared, but a reader that decodes
# differently once decompressed (BOM, encodings, short rows) must still place every row.

# name -> JSON line (str) or bytes (raw line, possibly not UTF-8)
JSON_HOSTILE: dict[str, str | bytes] = {
    "qty_nan": _row("h", quantity="NaN"),
    "qty_inf": _row("h", quantity="Infinity"),
    "qty_neg_inf": _row("h", quantity="-Infinity"),
    "qty_1e-20": _row("h", quantity="1e-20"),
    "qty_1.5e-12": _row("h", quantity="1.5e-12"),
    "qty_str_exp_13_places": _row("h", quantity='"1.0000000000005e0"'),
    "qty_str_exp_ok": _row("h", quantity='"1.5E+2"'),
    "qty_exp_ok": _row("h", quantity="1e3"),
    "qty_1e400": _row("h", quantity="1e400"),
    "qty_huge_exponent": _row("h", quantity='"1e999999999"'),
    "qty_tiny_exponent": _row("h", quantity='"1e-999999999"'),
    "qty_30_digits": _row("h", quantity="123456789012345678901234567890"),
    "qty_null": _row("h", quantity="null"),
    "qty_empty": _row("h", quantity='""'),
    "qty_blank": _row("h", quantity='"   "'),
    "qty_list": _row("h", quantity="[1]"),
    "qty_object": _row("h", quantity='{"a":1}'),
    "qty_bool": _row("h", quantity="true"),
    "qty_text": _row("h", quantity='"abc"'),
    "qty_hex": _row("h", quantity='"0x10"'),
    "qty_negative": _row("h", quantity="-5"),
    "value_null": _row("h", quantity=None, value="null"),
    "ts_9999": _row("h", timestamp='"9999-12-31T23:59:59Z"'),
    "ts_minus_1": _row("h", timestamp='"-0001-01-01T00:00:00Z"'),
    "ts_1999": _row("h", timestamp='"1999-12-31T00:00:00Z"'),
    "ts_2023": _row("h", timestamp='"2023-12-31T23:00:00Z"'),
    "ts_far_future": _row("h", timestamp='"2030-01-01T00:00:00Z"'),
    "ts_null": _row("h", timestamp="null"),
    "ts_list": _row("h", timestamp='["2026-10-01T10:00:00Z"]'),
    "ts_object": _row("h", timestamp='{"t":1}'),
    "ts_number": _row("h", timestamp="1700000000"),
    "ts_naive": _row("h", timestamp='"2026-10-01T10:00:00"'),
    "ts_bad_month": _row("h", timestamp='"2026-13-01T00:00:00Z"'),
    "ts_nan": _row("h", timestamp="NaN"),
    "id_list": _row("h", event_id='["a"]'),
    "id_object": _row("h", event_id='{"a":1}'),
    "id_number": _row("h", event_id="12345"),
    "id_null": _row("h", event_id="null"),
    "id_empty": _row("h", event_id='""'),
    "id_long": _row("x" * 200),
    "id_nan": _row("h", event_id="NaN"),
    "billable_list": _row("h", billable="[true]"),
    "billable_object": _row("h", billable='{"b":true}'),
    "billable_text": _row("h", billable='"maybe"'),
    "account_list": _row("h", account_id='["a"]'),
    "dup_key_id": '{"event_id":"a","event_id":"b","account_id":"acct-001",'
    '"meter_id":"m","quantity":1,"timestamp":"2026-10-01T10:00:00Z"}',
    "dup_key_qty": _row("h", quantity="1").replace('"quantity":1', '"quantity":1,"quantity":2'),
    "deep_top": "{" + '"x":' + DEEP + "}",
    "deep_dims": _row("h", dimensions='{"a":' + DEEP + "}"),
    "deep_extra": _row("h", extra=DEEP),
    "not_object_list": "[1,2,3]",
    "not_object_number": "42",
    "not_object_string": '"event"',
    "not_object_null": "null",
    "broken_json": '{"event_id": "h", ',
    "trailing_garbage": _row("h") + " xyz",
    "dims_text_not_json": _row("h", dimensions='"not json"'),
    "dims_list": _row("h", dimensions="[1,2]"),
    "dims_17_keys": _row("h", dimensions=json.dumps({f"k{i}": i for i in range(17)})),
    "dims_nested": _row("h", dimensions='{"a":{"b":1}}'),
    "dims_nan": _row("h", dimensions='{"a":NaN}'),
    "metadata_list": _row("h", metadata="[1]"),
    "invalid_utf8": _row("h").encode().replace(b'"h"', b'"a\xff"'),
    "latin1": _row("h", unit='"caf\u00e9"').encode("latin-1"),
    "control_chars": _row("h\u0001\u0002"),
    "reserved_field": _row("h", _row="1"),
    "huge_int_id": _row("h", event_id="1" * 400),
}


def _jsonl_files(folder: Path) -> list[HostileFile]:
    out: list[HostileFile] = []
    for name, line in JSON_HOSTILE.items():
        for suffix in (".jsonl", ".jsonl.gz"):
            stem = f"j-{name}{'-gz' if suffix.endswith('gz') else ''}"
            hostile = line if isinstance(line, bytes) else line.encode()
            hostile = hostile.replace(b'"h"', json.dumps(f"{stem}-h").encode(), 1)
            good = [f"{stem}-g1", f"{stem}-g2"]
            data = b"\n".join([_good(good[0]).encode(), hostile, _good(good[1]).encode()]) + b"\n"
            out.append(_write(folder / f"{stem}{suffix}", data, HostileFile, 3, good))
    # Every hostile line in one file: mixed types across rows, one chunk.
    lines, good = [], []
    for i, (_name, line) in enumerate(JSON_HOSTILE.items()):
        raw = line if isinstance(line, bytes) else line.encode()
        lines.append(raw.replace(b'"h"', f'"all-h{i}"'.encode(), 1))
        good.append(f"all-g{i}")
        lines.append(_good(good[-1]).encode())
    out.append(
        _write(
            folder / "j-all-mixed.jsonl", b"\n".join(lines) + b"\n", HostileFile, len(lines), good
        )
    )
    # Encodings and framing.
    bom = b"\xef\xbb\xbf" + _good("bom-g1").encode() + b"\n" + _good("bom-g2").encode() + b"\n"
    out.append(_write(folder / "j-bom.jsonl", bom, HostileFile, 2, ["bom-g1", "bom-g2"]))
    utf16 = (_good("u16-g1") + "\n").encode("utf-16")
    out.append(HostileFile(_raw(folder / "j-utf16.jsonl", utf16), 0, file_error=True))
    crlf = (_good("crlf-g1") + "\r\n\r\n" + _good("crlf-g2") + "\r\n").encode()
    out.append(_write(folder / "j-crlf-blank.jsonl", crlf, HostileFile, 2, ["crlf-g1", "crlf-g2"]))
    stigg = json.dumps(
        {
            "idempotencyKey": "stigg-g1",
            "customerId": "acct-001",
            "eventName": "calls",
            "timestamp": TS,
            "dimensions": {"value": None},
        }
    )
    out.append(
        _write(
            folder / "j-stigg-nested-value.jsonl",
            (stigg + "\n").encode(),
            HostileFile,
            1,
            ["stigg-g1"],
        )
    )
    out.append(HostileFile(_raw(folder / "j-empty.jsonl", b""), 0, file_error=True))
    out.append(HostileFile(_raw(folder / "j-not-gzip.jsonl.gz", b"plain text"), 0, file_error=True))
    return out


CSV_HEADER = "event_id,account_id,meter_id,quantity,timestamp,dimensions"
# name -> (CSV data rows as bytes, input rows, good ids)
CSV_ROW = "{id},acct-001,input_tokens,{q},2026-10-01T10:00:00Z,{d}"


def _csv_row(eid: str, q: str = "5", d: str = "") -> bytes:
    return CSV_ROW.format(id=eid, q=q, d=d).encode()


CSV_HOSTILE: dict[str, bytes] = {
    "short_row": b"h,acct-001,input_tokens",
    "long_row": _csv_row("h") + b",extra,more",
    "invalid_utf8": b"h,acct-001,input_tokens,5,2026-10-01T10:00:00Z,\xff\xfe",
    "latin1": _csv_row("h", d='"{""unit"": ""caf\u00e9""}"').replace(b"\xc3\xa9", b"\xe9"),
    "qty_empty": _csv_row("h", q=""),
    "qty_blank": _csv_row("h", q="   "),
    "qty_nan": _csv_row("h", q="NaN"),
    "qty_inf": _csv_row("h", q="inf"),
    "qty_1e-20": _csv_row("h", q="1e-20"),
    "qty_exp_13_places": _csv_row("h", q="1.0000000000005e0"),
    "qty_exp_ok": _csv_row("h", q="2.5e1"),
    "qty_30_digits": _csv_row("h", q="1" * 30),
    "qty_text": _csv_row("h", q="ten"),
    "ts_9999": b"h,acct-001,input_tokens,5,9999-12-31T23:59:59Z,",
    "ts_minus_1": b"h,acct-001,input_tokens,5,-0001-01-01T00:00:00Z,",
    "ts_2023": b"h,acct-001,input_tokens,5,2023-06-01T00:00:00Z,",
    "ts_empty": b"h,acct-001,input_tokens,5,,",
    "dims_not_json": _csv_row("h", d="notjson"),
    "dims_deep": _csv_row("h", d='"{""a"":' + DEEP.replace('"', '""') + '}"'),
    "dims_nested": _csv_row("h", d='"{""a"": {""b"": 1}}"'),
    "dims_nan": _csv_row("h", d='"{""a"": NaN}"'),
    "dims_list": _csv_row("h", d='"[1,2]"'),
    "quoted_newline": b'"h\nx",acct-001,input_tokens,5,2026-10-01T10:00:00Z,',
    "unterminated_quote": b'"h,acct-001,input_tokens,5,2026-10-01T10:00:00Z,',
    "id_empty": b",acct-001,input_tokens,5,2026-10-01T10:00:00Z,",
}


def _csv_files(folder: Path) -> list[HostileFile]:
    out: list[HostileFile] = []
    for name, row in CSV_HOSTILE.items():
        for suffix in (".csv", ".csv.gz"):
            stem = f"c-{name}{'-gz' if suffix.endswith('gz') else ''}"
            hostile = row.replace(b"h,", f"{stem}-h,".encode(), 1)
            good = [f"{stem}-g1", f"{stem}-g2"]
            rows = [_csv_row(good[0]), hostile, _csv_row(good[1])]
            if name == "unterminated_quote":  # swallows the rest of the file into one field
                rows, good = [_csv_row(good[0]), hostile], good[:1]
            data = CSV_HEADER.encode() + b"\n" + b"\n".join(rows) + b"\n"
            out.append(_write(folder / f"{stem}{suffix}", data, HostileFile, len(rows), good))
    header = CSV_HEADER.encode()
    cases = {
        "c-bom.csv": (
            b"\xef\xbb\xbf" + header + b"\n" + _csv_row("cbom-g1") + b"\n",
            1,
            ["cbom-g1"],
        ),
        "c-crlf.csv": (header + b"\r\n" + _csv_row("ccrlf-g1") + b"\r\n\r\n", 1, ["ccrlf-g1"]),
        "c-latin1-file.csv": (
            (
                CSV_HEADER
                + "\n"
                + CSV_ROW.format(id="clat-g1", q="1", d="")
                + "\n"
                + CSV_ROW.format(id="clat-\u00e9", q="1", d="")
                + "\n"
            ).encode("latin-1"),
            2,
            ["clat-g1"],
        ),
        "c-header-only.csv": (header + b"\n", 0, []),
        "c-stigg-no-qty.csv": (
            b"idempotencyKey,customerId,eventName,timestamp\ncs-g1,acct-001,calls,"
            + TS.encode()
            + b"\n",
            1,
            ["cs-g1"],
        ),
    }
    for fname, (data, rows, good) in cases.items():
        error = rows == 0
        out.append(
            _write(folder / fname, data, HostileFile, rows, good)
            if not error
            else HostileFile(_raw(folder / fname, data), 0, file_error=True)
        )
    for fname, data in {
        "c-dup-header.csv": b"event_id,event_id,account_id\n1,2,3\n",
        "c-utf16.csv": (CSV_HEADER + "\n").encode("utf-16"),
        "c-bad-header-utf8.csv": b"event_id,acc\xff\n1,2\n",
        "c-empty.csv": b"",
    }.items():
        out.append(HostileFile(_raw(folder / fname, data), 0, file_error=True))
    return out


def _base_columns(prefix: str, n: int) -> dict[str, pa.Array]:
    return {
        "event_id": pa.array([f"{prefix}-{i}" for i in range(n)]),
        "account_id": pa.array(["acct-001"] * n),
        "meter_id": pa.array(["input_tokens"] * n),
        "timestamp": pa.array([TS] * n),
    }


def _parquet_cases() -> dict[str, tuple[dict[str, pa.Array], int, list[int]]]:
    """name -> (extra/override columns for 3 rows, rows, indexes of rows that must be accepted)."""
    dt = pa.timestamp("us", tz="UTC")
    return {
        "qty_decimal256": ({"quantity": pa.array([1, 2, 3], pa.decimal256(40, 2))}, 3, [0, 1, 2]),
        "qty_decimal128_18": (
            {
                "quantity": pa.array(["1.5", "0.000000000000000001", "2"], pa.string()).cast(
                    pa.decimal128(38, 18)
                )
            },
            3,
            [0, 2],
        ),
        "qty_float": ({"quantity": pa.array([0.1, 1e-20, 2.5], pa.float64())}, 3, [0, 2]),
        "qty_float_nan_inf": ({"quantity": pa.array([1.0, float("nan"), float("inf")])}, 3, [0]),
        "qty_float32": ({"quantity": pa.array([0.5, 0.1, 1e-20], pa.float32())}, 3, [0, 1]),
        "qty_null": ({"quantity": pa.array([1, None, 3], pa.int64())}, 3, [0, 2]),
        "qty_list": ({"quantity": pa.array([[1], [2], None], pa.list_(pa.int64()))}, 3, []),
        "qty_struct": ({"quantity": pa.array([{"a": 1}, {"a": 2}, {"a": 3}])}, 3, []),
        "qty_string_exp": ({"quantity": pa.array(["1e2", "1e-20", "NaN"])}, 3, [0]),
        "qty_bool": ({"quantity": pa.array([True, False, True])}, 3, []),
        "id_binary": (
            {"event_id": pa.array([b"pb-0", b"pb-\xff", b"pb-2"], pa.binary())},
            3,
            [0, 2],
        ),
        "id_large_binary": (
            {"event_id": pa.array([b"plb-0", b"plb-1", b"plb-2"], pa.large_binary())},
            3,
            [0, 1, 2],
        ),
        "id_fixed_binary": (
            {"event_id": pa.array([b"pf-0", b"pf-1", b"pf-\xfe"], pa.binary(4))},
            3,
            [0, 1],
        ),
        "id_int": ({"event_id": pa.array([100, 101, 102])}, 3, [0, 1, 2]),
        "id_list": ({"event_id": pa.array([["a"], ["b"], ["c"]])}, 3, []),
        "id_dictionary": (
            {"event_id": pa.array(["pd-0", "pd-1", "pd-2"]).dictionary_encode()},
            3,
            [0, 1, 2],
        ),
        "id_large_string": (
            {"event_id": pa.array(["pl-0", "pl-1", "pl-2"], pa.large_string())},
            3,
            [0, 1, 2],
        ),
        "dims_map": (
            {
                "dimensions": pa.array(
                    [{"gpu": "h100"}, None, {"a": 'q"uote'}], pa.map_(pa.string(), pa.string())
                )
            },
            3,
            [0, 1, 2],
        ),
        "dims_map_int": (
            {"dimensions": pa.array([{"gpu": 1}, {"b": 2}, {}], pa.map_(pa.string(), pa.int64()))},
            3,
            [0, 1, 2],
        ),
        "dims_struct": (
            {"dimensions": pa.array([{"gpu": "h100"}, {"gpu": None}, None])},
            3,
            [0, 1, 2],
        ),
        "dims_text": ({"dimensions": pa.array(['{"a":"b"}', "nope", None])}, 3, [0, 2]),
        "dims_list_int": ({"dimensions": pa.array([[1], [2], [3]])}, 3, []),
        "ts_timestamp_tz": ({"timestamp": pa.array([1790000000000000] * 3, dt)}, 3, [0, 1, 2]),
        "ts_naive": ({"timestamp": pa.array([1790000000000000] * 3, pa.timestamp("us"))}, 3, []),
        "ts_seconds_9999": (
            {
                "timestamp": pa.array(
                    [1790000000, 253402300799, 1790000000], pa.timestamp("s", tz="UTC")
                )
            },
            3,
            [0, 2],
        ),
        "ts_date": ({"timestamp": pa.array([20000, 20001, 20002], pa.date32())}, 3, []),
        "ts_int": ({"timestamp": pa.array([1, 2, 3])}, 3, []),
        "extra_duration": (
            {"quantity": pa.array([1, 2, 3]), "took": pa.array([1, 2, 3], pa.duration("s"))},
            3,
            [0, 1, 2],
        ),
        "extra_time": (
            {"quantity": pa.array([1, 2, 3]), "at": pa.array([1, 2, 3], pa.time64("us"))},
            3,
            [0, 1, 2],
        ),
        "extra_decimal256": (
            {"quantity": pa.array([1, 2, 3]), "big": pa.array([1, 2, 3], pa.decimal256(60, 3))},
            3,
            [0, 1, 2],
        ),
        "billable_int": (
            {"quantity": pa.array([1, 2, 3]), "billable": pa.array([1, 0, 2])},
            3,
            [0],
        ),
        "null_column": (
            {"quantity": pa.array([1, 2, 3]), "model_id": pa.array([None, None, None], pa.null())},
            3,
            [0, 1, 2],
        ),
    }


def _parquet_files(folder: Path) -> list[HostileFile]:
    out: list[HostileFile] = []
    for name, (columns, rows, good_idx) in _parquet_cases().items():
        for gz in (False, True):
            stem = f"p-{name}{'-gz' if gz else ''}"
            cols = _base_columns(stem, rows)
            cols.setdefault("quantity", pa.array([1] * rows))
            cols.update(columns)
            table = pa.table(cols)
            ids = [
                (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                for v in table["event_id"].to_pylist()
            ]
            path = folder / f"{stem}.parquet{'.gz' if gz else ''}"
            pq.write_table(table, path.with_suffix(".tmp"))
            data = path.with_suffix(".tmp").read_bytes()
            path.with_suffix(".tmp").unlink()
            out.append(
                _write(
                    path,
                    gzip.compress(data) if gz else data,
                    HostileFile,
                    rows,
                    [ids[i] for i in good_idx],
                )
            )
    dup = pa.Table.from_arrays([pa.array(["x"]), pa.array(["y"])], names=["event_id", "event_id"])
    pq.write_table(dup, folder / "p-dup-columns.parquet")
    out.append(HostileFile(folder / "p-dup-columns.parquet", 0, file_error=True))
    for fname, data in {
        "p-garbage.parquet": b"PAR1 this is not parquet at all PAR1",
        "p-truncated.parquet": (folder / "p-qty_float.parquet").read_bytes()[:200],
        "p-empty.parquet": b"",
        "p-not-gzip.parquet.gz": b"PAR1xx",
    }.items():
        out.append(HostileFile(_raw(folder / fname, data), 0, file_error=True))
    return out


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write(path: Path, data: bytes, cls, rows: int, good: list[str]) -> HostileFile:
    if path.name.endswith(".gz") and not path.name.endswith(".parquet.gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".parquet.gz"):
        pass  # already compressed by the caller
    path.write_bytes(data)
    return cls(path, rows, good)


def generate(folder: Path) -> list[HostileFile]:
    """Write the whole corpus under `folder`; one `HostileFile` per file."""
    folder.mkdir(parents=True, exist_ok=True)
    return _jsonl_files(folder) + _csv_files(folder) + _parquet_files(folder)
