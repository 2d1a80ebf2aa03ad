"""Stream event files (JSONL, CSV, Parquet; optionally gzipped) as bounded chunks.

Each chunk is a frame of the file's own columns plus `_row` (1-based row number: the line number
for JSONL, the data-row number for CSV and Parquet); JSONL rows also carry `_payload`, the raw
line kept for quarantine (CSV/Parquet rows get theirs from `row_json` only if rejected).
Rows that cannot even be parsed come back as rejects with a reason.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

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


def read_chunks(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Yield chunks of at most `chunk_rows` rows; raises UsageboxError if unreadable."""
    fmt, gz = detect_format(path)
    try:
        if fmt == "jsonl":
            yield from _jsonl_chunks(path, gz, chunk_rows)
        elif fmt == "csv":
            yield from _csv_chunks(path, gz, chunk_rows)
        else:
            yield from _parquet_chunks(path, gz, chunk_rows)
    except (OSError, EOFError, pa.ArrowInvalid, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        kind = f"{fmt}{' (gzip)' if gz else ''}"
        raise UsageboxError(f"{path}: cannot read {kind} file: {exc}") from exc


# --- JSONL -------------------------------------------------------------------------------------


def _jsonl_chunks(path: Path, gz: bool, chunk_rows: int) -> Iterator[Chunk]:
    first_line = 1
    with _open_binary(path, gz) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")
        while True:
            lines = list(itertools.islice(text, chunk_rows))
            if not lines:
                return
            yield _parse_jsonl(lines, first_line)
            first_line += len(lines)


def _parse_jsonl(lines: list[str], first_line: int) -> Chunk:
    frame = pl.DataFrame({"_payload": lines}).with_columns(
        _row=pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64),
        _payload=pl.col("_payload").str.strip_chars(),
    )
    frame = frame.filter(pl.col("_payload") != "")
    quoted = frame["_payload"].str.replace_all(_QUOTE_NUMBERS, '"$1":"$2"')
    try:
        decoded = decode_json_objects(quoted)
        rejects = _no_rejects()
    except pl.exceptions.PolarsError:
        ok = _valid_json_objects(frame["_payload"].to_list())
        rejects = frame.filter(~ok).select(
            "_row", "_payload", reason=pl.lit("invalid JSON line: not a parsable JSON object")
        )
        frame, quoted = frame.filter(ok), quoted.filter(ok)
        decoded = decode_json_objects(quoted) if frame.height else pl.Series(dtype=pl.Struct({}))
    rows = pl.DataFrame(decoded).unnest(decoded.name) if frame.height else pl.DataFrame()
    rows = rows.with_columns(frame["_row"], frame["_payload"]) if frame.height else _empty_rows()
    return Chunk(rows, rejects)


def _empty_rows() -> pl.DataFrame:
    return pl.DataFrame(schema={"_row": pl.Int64, "_payload": pl.String})


def _valid_json_objects(lines: list[str]) -> pl.Series:
    """Slow path, only for a chunk that holds a broken line: find which lines are objects."""

    def is_object(line: str) -> bool:
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False

    return pl.Series([is_object(line) for line in lines], dtype=pl.Boolean)


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


def _csv_chunks(path: Path, gz: bool, chunk_rows: int) -> Iterator[Chunk]:
    with _open_binary(path, gz) as raw:
        header = raw.readline()
        if not header.strip():
            return
        names = next(csv.reader([header.decode("utf-8-sig")]))
        reader = pacsv.open_csv(
            raw,
            read_options=pacsv.ReadOptions(column_names=names, block_size=64 << 20),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False
            ),
        )
        yield from _batches_to_chunks(reader, chunk_rows, csv=True)


# --- Parquet -----------------------------------------------------------------------------------


def _parquet_chunks(path: Path, gz: bool, chunk_rows: int) -> Iterator[Chunk]:
    source = pa.BufferReader(gzip.decompress(path.read_bytes())) if gz else str(path)
    parquet = pq.ParquetFile(source)
    yield from _batches_to_chunks(parquet.iter_batches(batch_size=chunk_rows), chunk_rows)


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
    frame = pl.from_arrow(pa.Table.from_batches(batches))
    if csv:
        frame = frame.with_columns(pl.all().replace("", None))
    rows = frame.with_columns(_row=pl.int_range(first, first + frame.height, dtype=pl.Int64))
    return Chunk(rows, _no_rejects())  # `_payload` is built later, for rejected rows only


def row_json(frame: pl.DataFrame) -> pl.Expr:
    """The raw row as JSON text, for quarantine (temporal and decimal values as strings)."""
    cols = [
        pl.col(name).cast(pl.String) if dtype.is_temporal() or dtype == pl.Decimal else pl.col(name)
        for name, dtype in frame.schema.items()
    ]
    return pl.struct(cols).struct.json_encode()
