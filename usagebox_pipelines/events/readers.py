"""Stream event files (JSONL, CSV, Parquet; optionally gzipped) as bounded chunks.

Each chunk is a frame of the file's own columns plus `_row` (1-based row number: the line number
for JSONL, the data-row number for CSV (blank lines not counted) and Parquet); JSONL rows also
carry `_payload`, the raw line kept for quarantine (CSV/Parquet rows get theirs from `row_json`
only if rejected), and `_qty_absent` (the row has no `quantity`/`value` key at all: a Stigg-style
event that counts 1, as opposed to an explicit null).

A bad row never refuses the good rows of its file: rows that cannot be parsed (invalid UTF-8,
not a JSON object, duplicate JSON keys, NaN literals, nesting too deep, a CSV row with too few or
too many fields, a Parquet value of a type we cannot read) come back as rejects with a reason.
Only a file that cannot be parsed at all (not gzip, not Parquet, UTF-16, duplicate CSV header)
raises a one-line `UsageboxError` naming the file.

Speed: clean chunks are decoded by Polars/Arrow in one vectorized pass. A chunk that trips the
fast path (a broken line, mixed JSON types, a duplicate key candidate) is decoded row by row in
Python with exact checks; such chunks are rare, and only they pay for it.

Over 400 lines on purpose: the three formats share the chunking, row numbering and reject
reasons described here.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from polars.exceptions import PanicException

from usagebox_pipelines.errors import UsageboxError

# Rows per chunk (one Delta commit each); bounded memory for any file size.
CHUNK_ROWS = int(os.environ.get("USAGEBOX_CHUNK_ROWS", "250000"))
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
# JSON numbers for quantity are quoted before decoding so their digits stay exact (no float).
_QUOTE_NUMBERS = r'"(quantity|value)"\s*:\s*(-?[0-9][0-9.eE+\-]*)'
QUANTITY_KEYS = ("quantity", "value")
# Lines whose inferred schema a JSONL chunk is first decoded with (see `_decode_sampled`).
SAMPLE_LINES = 1000
_BLOCK_BYTES = 16 << 20
# Fields that must hold one scalar value (CONTRACT.md §2 and aliases).
SCALAR_FIELDS = {
    "event_id", "idempotencyKey", "idempotency_key", "transaction_id",
    "account_id", "customer_id", "customerId",
    "meter_id", "meter", "eventName", "event_name",
    "quantity", "value", "timestamp", "ts", "time", "model_id", "model",
    "product_id", "unit", "project_id", "correlation_id", "reason_code", "schema_version",
    "correction_of", "billable",
}  # fmt: skip
DIMENSION_SOURCES = ("dimensions", "metadata")
NOT_UTF8 = "not valid UTF-8; re-encode the file as UTF-8"
NOT_OBJECT = "invalid JSON line: not a parsable JSON object"
_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
_UTF8_BOM = b"\xef\xbb\xbf"
_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    pa.ArrowException,
    pl.exceptions.PolarsError,
    PanicException,
)


@dataclass
class Chunk:
    """One bounded piece of a file: parsed rows and rows rejected before normalisation."""

    rows: pl.DataFrame
    rejects: pl.DataFrame  # columns _row, _payload, reason


def detect_format(path: Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name; unknown suffixes are a user error."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UsageboxError(
            f"{path}: unknown file format (expected .jsonl, .ndjson, .json, .csv or .parquet, "
            "optionally .gz)"
        )
    return fmt, gz


def file_sha256(path: Path) -> str:
    """Content hash of the file as stored (so the same bytes are recognised under any name)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_binary(path: Path, gz: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if gz else path.open("rb")


def _no_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema={"_row": pl.Int64, "_payload": pl.String, "reason": pl.String})


def _rejects(rows: list[int], payloads: list[str], reasons: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"_row": rows, "_payload": payloads, "reason": reasons},
        schema={"_row": pl.Int64, "_payload": pl.String, "reason": pl.String},
    )


def read_chunks(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Yield chunks of at most `chunk_rows` rows; raises UsageboxError if unreadable."""
    fmt, gz = detect_format(path)
    kind = f"{fmt}{' (gzip)' if gz else ''}"
    try:
        if fmt == "jsonl":
            yield from _jsonl_chunks(path, gz, chunk_rows)
        elif fmt == "csv":
            yield from _csv_chunks(path, gz, chunk_rows)
        else:
            yield from _parquet_chunks(path, gz, chunk_rows)
    except UsageboxError:
        raise
    except _READ_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageboxError(f"{path}: cannot read {kind} file: {first}") from exc


def _check_bom(first: bytes, path: Path) -> bytes:
    """Strip a UTF-8 byte-order mark; a UTF-16/32 file is a clear file-level error."""
    for bom, name in _BOMS.items():
        if first.startswith(bom):
            raise UsageboxError(f"{path}: file is {name} encoded; re-encode it as UTF-8")
    return first[len(_UTF8_BOM) :] if first.startswith(_UTF8_BOM) else first


# --- JSONL -------------------------------------------------------------------------------------


def _jsonl_chunks(path: Path, gz: bool, chunk_rows: int) -> Iterator[Chunk]:
    first_line = 1
    step = max(chunk_rows, 1)
    with _open_binary(path, gz) as raw:
        for lines in _line_batches(raw, step):
            if first_line == 1:
                lines[0] = _check_bom(lines[0], path)
            yield _parse_jsonl(lines, first_line)
            first_line += len(lines)


def _line_batches(raw: io.BufferedIOBase, size: int) -> Iterator[list[bytes]]:
    """The file's lines (without their `\n`), `size` at a time; read in large blocks (far
    fewer Python calls than iterating over the file line by line)."""
    pending: list[bytes] = []
    tail = b""
    while True:
        block = raw.read(_BLOCK_BYTES)
        if block:
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
        else:
            lines, tail = ([tail] if tail else []), b""
        pending.extend(lines)
        start = 0
        while len(pending) - start >= size or (not block and start < len(pending)):
            yield pending[start : start + size]
            start += size
        pending = pending[start:]
        if not block:
            return


def _parse_jsonl(lines: list[bytes], first_line: int) -> Chunk:
    rows_idx = pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64, eager=True)
    binary = pl.Series("_payload", lines, dtype=pl.Binary)
    try:
        text = binary.cast(pl.String)
        bad_utf8 = _no_rejects()
    except pl.exceptions.PolarsError:  # slow path: only a chunk holding invalid bytes
        decoded = [_utf8_or_none(b) for b in lines]
        bad = [i for i, d in enumerate(decoded) if d is None]
        bad_utf8 = _rejects(
            [first_line + i for i in bad],
            [lines[i].decode("utf-8", "backslashreplace").strip() for i in bad],
            [f"line {first_line + i}: {NOT_UTF8}" for i in bad],
        )
        text = pl.Series("_payload", decoded, dtype=pl.String)
    frame = pl.DataFrame({"_row": rows_idx, "_payload": text}).with_columns(
        pl.col("_payload").str.strip_chars()
    )
    frame = frame.filter(pl.col("_payload").is_not_null() & (pl.col("_payload") != ""))
    if frame.height == 0:
        return Chunk(_empty_rows(), bad_utf8)
    rows = _decode_fast(frame)
    if rows is not None:
        return Chunk(rows, bad_utf8)
    rows, rejects = _decode_exact(frame)
    return Chunk(rows, pl.concat([bad_utf8, rejects]))


def _utf8_or_none(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _empty_rows() -> pl.DataFrame:
    return pl.DataFrame(schema={"_row": pl.Int64, "_payload": pl.String})


def _decode_fast(frame: pl.DataFrame) -> pl.DataFrame | None:
    """Vectorized decode of a clean chunk; None when any line needs the exact row-by-row path.

    Candidates for the exact path: duplicate keys (textual key list has repeats; nested objects
    reusing a top-level name are false positives, settled exactly) and an explicit
    `"quantity": null` (Polars cannot tell it from an absent key).
    """
    payload = frame["_payload"]
    # Every key token at any depth, with `null` when that is its value: one regex pass gives
    # the duplicate check, the number of keys and the number of null-valued keys per line.
    tokens = payload.str.extract_all(r'"(?:[^"\\]|\\.)*"\s*:(?:\s*(?:null|\[|\{))?')
    keys = tokens.list.eval(pl.element().str.replace(r"\s*:(\s*(null|\[|\{))?$", ""))
    suspect = (keys.list.len() != keys.list.n_unique()) | payload.str.contains(
        r'"(quantity|value)"\s*:\s*null'
    )
    if suspect.any():
        return None
    quoted = payload.str.replace_all(_QUOTE_NUMBERS, '"$1":"$2"')
    counts = pl.DataFrame({"t": tokens}).select(
        keys=pl.col("t").list.len(),
        nulls=pl.col("t").list.eval(pl.element().str.ends_with("null").sum()).list.first(),
        nested=pl.col("t")
        .list.eval((pl.element().str.ends_with("[") | pl.element().str.ends_with("{")).sum())
        .list.first(),
    )
    try:
        decoded = _decode_sampled(quoted, counts)
        if decoded is None:
            decoded = decode_json_objects(quoted)
    except (pl.exceptions.PolarsError, PanicException):
        return None
    rows = pl.DataFrame(decoded).unnest(decoded.name)
    if any(name in ("_row", "_payload", "_qty_absent") for name in rows.columns):
        return None
    if any(n in SCALAR_FIELDS and _nested(rows.schema[n]) for n in rows.columns):
        return None  # a list/object where one value belongs: Polars may coerce its neighbours
    present = [k for k in QUANTITY_KEYS if k in rows.columns]
    absent = pl.all_horizontal([pl.col(k).is_null() for k in present]) if present else pl.lit(True)
    return rows.with_columns(frame["_row"], frame["_payload"], _qty_absent=absent)


class _Num(str):
    """A JSON number kept as its literal text (never a float)."""


class _Constant(str):
    """A NaN / Infinity literal (not JSON, but Python's parser accepts it)."""


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _parse_line(line: str) -> tuple[dict | None, str | None]:
    """(row of text values, None) or (None, reason): the exact per-line decoder."""
    try:
        obj = json.loads(
            line,
            object_pairs_hook=_pairs,
            parse_float=_Num,
            parse_int=_Num,
            parse_constant=_Constant,
        )
    except _DuplicateKey as exc:
        return None, f"duplicate JSON key {exc.key!r} in one object; send each field once"
    except RecursionError:
        return None, "invalid JSON line: nested too deeply"
    except ValueError:
        return None, NOT_OBJECT
    if not isinstance(obj, dict):
        return None, NOT_OBJECT
    row: dict[str, str | None] = {}
    for key, value in obj.items():
        if key in ("_row", "_payload", "_qty_absent"):
            return None, f"field {key!r} is reserved; rename it"
        if key in SCALAR_FIELDS:
            if isinstance(value, dict | list):
                kind = "an object" if isinstance(value, dict) else "a list"
                return None, f"{key} must be a single value, not {kind}"
            if isinstance(value, _Constant) and key not in QUANTITY_KEYS:
                return None, f"{key} is {value}, which is not valid JSON"
            row[key] = _scalar_text(value)
        elif key in DIMENSION_SOURCES:
            row[key] = value if isinstance(value, str) or value is None else _json(value)
        else:
            row[key] = _json(value) if isinstance(value, dict | list) else _scalar_text(value)
    row["_qty_absent"] = not any(k in obj for k in QUANTITY_KEYS)
    return row, None


def _scalar_text(value: object) -> str | None:
    """A JSON input scalar as the text the fast path decodes it to (`true`, `12.5`): input
    parsing, not `decimals` formatting of our own numbers."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json(value: object) -> str | None:
    """JSON text of a nested value; numbers become strings (as the fast path decodes leaves)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return None


def _decode_exact(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Row-by-row decode (only for a chunk the fast path refused): rows and rejects."""
    good: list[dict] = []
    bad_rows, bad_payloads, bad_reasons = [], [], []
    for row_no, line in zip(frame["_row"].to_list(), frame["_payload"].to_list(), strict=True):
        row, reason = _parse_line(line)
        if row is None:
            bad_rows.append(row_no)
            bad_payloads.append(line)
            bad_reasons.append(reason or NOT_OBJECT)
        else:
            row["_row"] = row_no
            row["_payload"] = line
            good.append(row)
    rejects = _rejects(bad_rows, bad_payloads, bad_reasons)
    if not good:
        return _empty_rows(), rejects
    names = list(dict.fromkeys(k for row in good for k in row))
    schema = {
        n: (pl.Int64 if n == "_row" else pl.Boolean if n == "_qty_absent" else pl.String)
        for n in names
    }
    return pl.from_dicts(good, schema=schema), rejects


def _decode_sampled(texts: pl.Series, counts: pl.DataFrame) -> pl.Series | None:
    """`decode_json_objects(texts)` with the schema inferred from the first lines only and
    Polars' NDJSON reader (several times faster than decoding a column), or None when that
    schema may not be the whole chunk's (the caller then infers over every line).

    Decoding with a schema drops keys it does not name, and this reader writes an object or
    array found where the schema has a scalar as its JSON text. So every line must account for
    all its keys and nested values, from `counts` (per line: `keys` in its text at any depth,
    null-valued `nulls`, object- or array-valued `nested`): non-null values decoded + nulls =
    keys, and struct values decoded = nested. A scalar where the sample had an object fails the
    read (the caller falls back on the error). Lists are left to full inference.
    """
    sample = texts.head(SAMPLE_LINES).str.json_decode(infer_schema_length=None)
    if not isinstance(sample.dtype, pl.Struct) or _has_list(sample.dtype):
        return None
    schema = _stringify_leaves(sample.dtype, top=True)
    assert isinstance(schema, pl.Struct)
    lines = io.BytesIO()
    texts.to_frame().write_csv(lines, include_header=False, quote_style="never")
    frame = pl.read_ndjson(lines.getvalue(), schema={f.name: f.dtype for f in schema.fields})
    if frame.height != texts.len():
        return None
    decoded = frame.select(pl.struct(pl.all()).alias("_json")).to_series()
    value = pl.lit(decoded)
    found = pl.select(values=_present(value, schema), nested=_present(value, schema, structs=True))
    ok = (found["values"] + counts["nulls"] == counts["keys"]) & (
        found["nested"] == counts["nested"]
    )
    return decoded if ok.all() else None


def _present(value: pl.Expr, dtype: pl.Struct, structs: bool = False) -> pl.Expr:
    """Per row, the non-null fields (`structs`: of struct type only) of a struct value at any
    depth."""
    terms = []
    for f in dtype.fields:
        child = value.struct.field(f.name)
        nested = isinstance(f.dtype, pl.Struct)
        if nested or not structs:
            terms.append(child.is_not_null().cast(pl.UInt32))
        if nested and f.dtype.fields:
            terms.append(_present(child, f.dtype, structs).fill_null(0))
    return pl.sum_horizontal(terms).cast(pl.UInt32) if terms else pl.lit(0, dtype=pl.UInt32)


def _has_list(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.List | pl.Array):
        return True
    return isinstance(dtype, pl.Struct) and any(_has_list(f.dtype) for f in dtype.fields)


def decode_json_objects(texts: pl.Series) -> pl.Series:
    """Decode JSON object text; scalar leaves of nested objects are decoded as strings.

    Decoding twice (infer, then with explicit String leaves) makes the textual form of a
    dimension value independent of what else is in the chunk, so equal events stay equal.
    """
    inferred = texts.str.json_decode(infer_schema_length=None)
    if not isinstance(inferred.dtype, pl.Struct):
        raise pl.exceptions.ComputeError("not JSON objects")
    return texts.str.json_decode(_stringify_leaves(inferred.dtype, top=True)).alias("_json")


def _stringify_leaves(dtype: pl.DataType, top: bool = False) -> pl.DataType:
    if isinstance(dtype, pl.Struct):
        return pl.Struct(
            {
                f.name: (_stringify_leaves(f.dtype) if not top or _nested(f.dtype) else pl.String())
                for f in dtype.fields
            }
        )
    if isinstance(dtype, pl.List):
        return dtype
    return pl.String()


def _nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Struct | pl.List)


# --- CSV ---------------------------------------------------------------------------------------


def _csv_header(raw: io.BufferedIOBase, path: Path) -> list[str] | None:
    header = _check_bom(raw.readline(), path)
    if not header.strip():
        return None
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageboxError(f"{path}: CSV header is {NOT_UTF8}") from None
    names = next(csv.reader([text]))
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise UsageboxError(
            f"{path}: duplicate CSV column {', '.join(map(repr, dups))} in the header; "
            "name each column once"
        )
    reserved = [n for n in names if n in ("_row", "_payload", "_qty_absent")]
    if reserved:
        raise UsageboxError(f"{path}: CSV column {reserved[0]!r} is reserved; rename it")
    return names


def _csv_chunks(path: Path, gz: bool, chunk_rows: int) -> Iterator[Chunk]:
    with _open_binary(path, gz) as raw:
        names = _csv_header(raw, path)
        if names is None:
            return
        if _csv_has_ragged_rows(raw, names):
            raw.seek(0)
            raw.readline()
            yield from _csv_exact_chunks(raw, names, chunk_rows)
            return
        raw.seek(0)
        raw.readline()
        yield from _batches_to_chunks(_csv_reader(raw, names), chunk_rows, csv=True)


def _csv_reader(raw, names: list[str], handler=None, include=None):
    return pacsv.open_csv(
        raw,
        read_options=pacsv.ReadOptions(column_names=names, block_size=64 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=handler),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in names},
            strings_can_be_null=False,
            include_columns=include,
        ),
    )


def _csv_has_ragged_rows(raw, names: list[str]) -> bool:
    """One cheap pass (one column converted): does any row have too few or too many fields?

    Arrow's invalid-row handler does not know row numbers when values may contain newlines, so a
    file with such rows is read by the exact path instead, which numbers every row.
    """
    seen: list[int] = []

    def handler(_row) -> str:
        seen.append(1)
        return "skip"

    try:
        for _batch in _csv_reader(raw, names, handler, include=names[:1]):
            if seen:
                return True
    except pa.ArrowInvalid:  # e.g. an unterminated quote: the exact path quarantines that row
        return True
    return bool(seen)


def _csv_exact_chunks(raw, names: list[str], chunk_rows: int) -> Iterator[Chunk]:
    """Row-by-row CSV (a file with ragged rows): each bad row is quarantined alone."""
    text = io.TextIOWrapper(raw, encoding="latin-1", newline="")  # bytes 1:1, decoded below
    width = len(names)
    row_no = 0
    good: list[list[str | None]] = []
    good_rows: list[int] = []
    bad: tuple[list, list, list] = ([], [], [])
    for record in csv.reader(text):
        if not record:
            continue
        row_no += 1
        cells = [_utf8_or_none(c.encode("latin-1")) for c in record]
        payload = json.dumps(
            [c.encode("latin-1").decode("utf-8", "backslashreplace") for c in record],
            ensure_ascii=False,
        )
        if len(record) != width:
            bad[0].append(row_no)
            bad[1].append(payload)
            bad[2].append(f"CSV row {row_no} has {len(record)} fields; the header has {width}")
        elif any(c is None for c in cells):
            bad[0].append(row_no)
            bad[1].append(payload)
            bad[2].append(f"CSV row {row_no}: {NOT_UTF8}")
        else:
            good.append([c if c != "" else None for c in cells])
            good_rows.append(row_no)
        if len(good) + len(bad[0]) >= chunk_rows:
            yield _exact_csv_chunk(names, good, good_rows, bad)
            good, good_rows, bad = [], [], ([], [], [])
    if good or bad[0]:
        yield _exact_csv_chunk(names, good, good_rows, bad)


def _exact_csv_chunk(names, good, good_rows, bad) -> Chunk:
    columns = {n: [row[i] for row in good] for i, n in enumerate(names)}
    rows = pl.DataFrame(columns, schema={n: pl.String for n in names}).with_columns(
        _row=pl.Series(good_rows, dtype=pl.Int64)
    )
    return Chunk(rows, _rejects(*bad))


# --- Parquet -----------------------------------------------------------------------------------


def _parquet_chunks(path: Path, gz: bool, chunk_rows: int) -> Iterator[Chunk]:
    source = pa.BufferReader(gzip.decompress(path.read_bytes())) if gz else str(path)
    parquet = pq.ParquetFile(source)
    names = parquet.schema_arrow.names
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise UsageboxError(f"{path}: duplicate Parquet column {', '.join(map(repr, dups))}")
    if not gz and all(_plain(field.type) for field in parquet.schema_arrow):
        yield from _plain_parquet_chunks(path, parquet.metadata.num_rows, chunk_rows)
        return
    yield from _batches_to_chunks(parquet.iter_batches(batch_size=chunk_rows), chunk_rows)


def _plain(dtype: pa.DataType) -> bool:
    """A Parquet column type Polars reads natively to the same values `_arrow_column` gives."""
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_timestamp(dtype)
        or pa.types.is_date32(dtype)
        or (pa.types.is_decimal128(dtype) and dtype.precision <= 38)
    )


def _plain_parquet_chunks(path: Path, rows: int, chunk_rows: int) -> Iterator[Chunk]:
    """Chunks of a file whose columns are all plain types, read by Polars' own Parquet reader
    (row groups of the slice only): nothing in such a file can be unreadable per row."""
    step = max(chunk_rows, 1)
    for start in range(0, rows, step):
        frame = pl.scan_parquet(path).slice(start, step).collect()
        first = start + 1
        row_numbers = pl.int_range(first, first + frame.height, dtype=pl.Int64, eager=True)
        yield Chunk(frame.with_columns(_row=row_numbers), _no_rejects())


def _batches_to_chunks(batches, chunk_rows: int, csv: bool = False) -> Iterator[Chunk]:
    """Regroup Arrow record batches into chunks of about `chunk_rows` rows with row numbers."""
    pending: list[pa.RecordBatch] = []
    pending_rows, first = 0, 1
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= chunk_rows:
            yield _arrow_chunk(pending, first, csv)
            first += pending_rows
            pending, pending_rows = [], 0
    if pending_rows:
        yield _arrow_chunk(pending, first, csv)


def _arrow_chunk(batches: list[pa.RecordBatch], first: int, csv: bool) -> Chunk:
    table = pa.Table.from_batches(batches)
    rows_idx = pl.int_range(first, first + table.num_rows, dtype=pl.Int64, eager=True)
    columns: list[pl.Series] = []
    bad: dict[int, str] = {}  # row offset -> first reason
    for name, column in zip(table.column_names, table.columns, strict=True):
        series, reasons = _arrow_column(name, column)
        columns.append(series)
        if reasons is not None:
            for i in reasons.arg_true().to_list():
                bad.setdefault(i, reasons_text(name, column.type, csv))
    frame = pl.DataFrame(columns)
    if csv:
        frame = frame.with_columns(pl.all().replace("", None))
    frame = frame.with_columns(_row=rows_idx)
    if not bad:
        return Chunk(frame, _no_rejects())  # `_payload` is built later, for rejected rows only
    mask = pl.Series([i in bad for i in range(frame.height)], dtype=pl.Boolean)
    bad_frame = frame.filter(mask)
    payload = bad_frame.drop("_row").select(row_json(bad_frame.drop("_row"))).to_series()
    order = sorted(bad)
    rejects = _rejects(
        bad_frame["_row"].to_list(), payload.to_list(), [bad[i] for i in order]
    ).with_columns(reason=pl.format("row {}: {}", pl.col("_row"), pl.col("reason")))
    return Chunk(frame.filter(~mask), rejects)


def reasons_text(name: str, dtype: pa.DataType, csv: bool) -> str:
    if csv or pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        return f"column {name!r} is {NOT_UTF8}"
    return f"column {name!r} has a type this pipeline cannot read ({dtype}); send it as a string"


def _arrow_column(name: str, column: pa.ChunkedArray) -> tuple[pl.Series, pl.Series | None]:
    """A Polars column from an Arrow one, and a mask of rows whose value could not be read.

    Decimals wider than Decimal128 become text (read exactly by the quantity parser); map
    columns become lists of key/value structs; binary becomes UTF-8 text (invalid bytes reject
    the row); any other type Polars cannot take is tried as text, else its non-null rows reject.
    """
    dtype = column.type
    if pa.types.is_dictionary(dtype):
        column = column.cast(dtype.value_type)
        dtype = column.type
    if pa.types.is_decimal(dtype) and (dtype.bit_width > 128 or dtype.precision > 38):
        column = column.cast(pa.string())
    if pa.types.is_fixed_size_binary(dtype):
        column = column.cast(pa.binary())
    if pa.types.is_duration(dtype):  # kept as text like "90s" (Polars cannot print durations)
        counts = pl.Series(name, pl.from_arrow(column.cast(pa.int64())))
        return counts.cast(pl.String) + dtype.unit, None
    try:
        series = pl.Series(name, pl.from_arrow(column))
    except (Exception, PanicException):
        try:
            series = pl.Series(name, pl.from_arrow(column.cast(pa.string())))
        except (Exception, PanicException):
            valid = pl.Series(column.is_valid().to_pylist(), dtype=pl.Boolean)
            return pl.Series(name, [None] * len(column), dtype=pl.String), valid
    if isinstance(series.dtype, pl.Map):
        series = series.cast(pl.List(pl.Struct({"key": pl.String, "value": pl.String})))
    if series.dtype == pl.Binary:
        try:
            return series.cast(pl.String), None
        except pl.exceptions.PolarsError:  # slow path: a column holding invalid bytes
            values = series.to_list()
            invalid = [v is not None and _utf8_or_none(v) is None for v in values]
            texts = [None if v is None else v.decode("utf-8", "backslashreplace") for v in values]
            return pl.Series(name, texts, dtype=pl.String), pl.Series(invalid, dtype=pl.Boolean)
    return series, None


def row_json(frame: pl.DataFrame) -> pl.Expr:
    """The raw row as JSON text, for quarantine (temporal, decimal, odd values as strings)."""
    cols = [
        pl.col(name).cast(pl.String)
        if dtype.is_temporal()
        or dtype == pl.Decimal
        or dtype in (pl.Categorical, pl.Binary)
        or isinstance(dtype, pl.Enum)
        else pl.col(name)
        for name, dtype in frame.schema.items()
    ]
    return pl.struct(cols).struct.json_encode()
