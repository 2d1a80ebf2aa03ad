"""The four input shapes of CONTRACT.md §2 and chunked, byte-deterministic writers for them.

Shapes (field names; every shape also carries `product_id`, `unit`, `project_id`,
`correlation_id`, `billable`, `reason_code`, `correction_of` under their canonical names, so the
same event written in two shapes has the same canonical payload):

- `canonical` (JSONL): `event_id`, `account_id`, `meter_id`, `quantity`, `timestamp`, `model_id`,
  `dimensions` (object). Null fields and `{}` dimensions are omitted; `billable` only when false.
- `stigg` (JSONL): `idempotencyKey`, `customerId`, `eventName`, `timestamp`, optional `value`
  (omitted when the quantity is 1 and there is no model: Stigg counts it as 1), and `dimensions`
  (object) or, for model events, `metadata` (object holding `model` plus the dimensions).
- `csv`: `idempotency_key`, `customer_id`, `event_name`, `value` (decimal text), `ts` (RFC 3339,
  `Z` or a fixed offset), `model`, `dimensions` (JSON-object text), then the shared fields.
- `parquet`: `transaction_id`, `customer_id`, `meter`, `model`, `value` (decimal(38,12) or
  decimal text), `time` (timestamp[us, UTC]), `dimensions` (JSON text or a struct).

Columns of the input frame not named by the contract (e.g. `sdk_version`) pass through as extra
fields/columns. Writers take one frame or an iterable of frames (chunks), so 10 M events stream
with bounded memory; `.gz` paths are gzip-compressed with mtime 0 for byte-identical output.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

import polars as pl
import pyarrow.parquet as pq

from usagebox_pipelines.schemas import EVENT_FIELDS, QTY

Shape = Literal["canonical", "stigg", "csv", "parquet"]
SHAPES: tuple[Shape, ...] = ("canonical", "stigg", "csv", "parquet")
SHAPE_FORMAT = {"canonical": "jsonl", "stigg": "jsonl", "csv": "csv", "parquet": "parquet"}
SHARED_FIELDS = (
    "product_id",
    "unit",
    "project_id",
    "correlation_id",
    "billable",
    "reason_code",
    "correction_of",
)
CHUNK_ROWS = 200_000
# Accounts whose CSV exporter writes local time with a fixed offset (same instant as UTC).
CSV_OFFSETS = {"3": "+02:00", "7": "-04:00"}


def file_format(path: Path) -> str:
    """`jsonl`, `csv` or `parquet` from the file name (ignoring a trailing `.gz`)."""
    name = path.name.removesuffix(".gz")
    for fmt in ("jsonl", "csv", "parquet"):
        if name.endswith("." + fmt):
            return fmt
    raise ValueError(f"cannot tell the format of {path} (want .jsonl, .csv, .parquet[.gz])")


def write_shape(
    frames: pl.DataFrame | Iterable[pl.DataFrame],
    path: Path,
    shape: Shape,
    *,
    quantity_as: str | None = None,
    dims_as: str = "json",
) -> int:
    """Write canonical events in `shape` to `path` (chunked); returns rows written.

    quantity_as: JSON shapes `number` (default) or `string`; parquet `decimal` (default) or
    `string`. dims_as (parquet only): `json` text or `struct` (fields from the first chunk).
    """
    if shape not in SHAPE_FORMAT:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    fmt = file_format(Path(path))
    if SHAPE_FORMAT[shape] != fmt:
        raise ValueError(f"shape {shape!r} is written as .{SHAPE_FORMAT[shape]}, not {path}")
    converted = (
        shape_frame(chunk, shape, quantity_as=quantity_as, dims_as=dims_as)
        for chunk in _chunks(frames)
    )
    return write_frames(converted, Path(path))


def write_jsonl_chunks(
    frames: Iterable[pl.DataFrame], path: Path, shape: Shape = "canonical", **opts: str
) -> int:
    """Stream canonical frames (e.g. `iter_usage(...)`) to a JSONL(.gz) file; bounded memory."""
    return write_shape(frames, path, shape, **opts)


def shape_frame(
    df: pl.DataFrame, shape: Shape, *, quantity_as: str | None = None, dims_as: str = "json"
) -> pl.DataFrame:
    """Canonical events -> the columns of `shape` (JSON shapes: one `line` column of text)."""
    df = _with_defaults(df)
    extras = [c for c in df.columns if c not in EVENT_FIELDS and not c.startswith("_")]
    precise = _has_sub_ms(df["timestamp"])
    if shape in ("canonical", "stigg"):
        df = _escaped(df, extras)
        build = _canonical_line if shape == "canonical" else _stigg_line
        return df.select(line=build(extras, quantity_as or "number", precise))
    if shape == "csv":
        return df.select(_csv_columns(extras, precise))
    if shape == "parquet":
        return _parquet_frame(df, extras, quantity_as or "decimal", dims_as)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _with_defaults(df: pl.DataFrame) -> pl.DataFrame:
    """Add missing optional canonical columns as nulls so every shape sees the same fields."""
    missing = [
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in EVENT_FIELDS.items()
        if name not in df.columns and name != "extra"
    ]
    return df.with_columns(missing) if missing else df


def _has_sub_ms(ts: pl.Series) -> bool:
    """Whether any timestamp needs microseconds (else milliseconds are written, as APIs do)."""
    return bool((ts.dt.microsecond() % 1000 != 0).any())


def _escaped(df: pl.DataFrame, extras: list[str]) -> pl.DataFrame:
    """JSON-escape the string columns that need it (checked per chunk: ids rarely do)."""
    names = [n for n, t in df.schema.items() if t == pl.String() and n != "dimensions"]
    df = df.with_columns(pl.col(extras).cast(pl.String)) if extras else df
    unsafe = [n for n in (*names, *extras) if df[n].str.contains(r'["\\\x00-\x1f]').any()]
    if not unsafe:
        return df
    return df.with_columns(pl.col(unsafe).str.replace_many(_ESCAPES_FROM, _ESCAPES_TO))


_ESCAPES_FROM = ["\\", '"', "\n", "\r", "\t"]
_ESCAPES_TO = ["\\\\", '\\"', "\\n", "\\r", "\\t"]


# ---------------------------------------------------------------- value text


def quantity_text(expr: pl.Expr) -> pl.Expr:
    """Decimal -> shortest exact text (`1500`, `12.5`, `-100`), never via float."""
    text = expr.cast(QTY).cast(pl.String)
    trimmed = text.str.strip_chars_end("0").str.strip_chars_end(".")
    return pl.when(text.str.contains(".", literal=True)).then(trimmed).otherwise(text)


def timestamp_text(expr: pl.Expr, precise: bool = False, offset: pl.Expr | None = None) -> pl.Expr:
    """RFC 3339 with milliseconds (`precise`: microseconds) and `Z`, or the given local offset."""
    fmt = "%Y-%m-%dT%H:%M:%S%.6f" if precise else "%Y-%m-%dT%H:%M:%S%.3f"
    utc = pl.concat_str(expr.dt.to_string(fmt), pl.lit("Z"))
    if offset is None:
        return utc
    local = (expr.dt.replace_time_zone(None) + _offset_duration(offset)).dt.to_string(fmt)
    return pl.when(offset.is_null()).then(utc).otherwise(pl.concat_str(local, offset))


def _offset_duration(offset: pl.Expr) -> pl.Expr:
    """`+HH:MM` text -> duration to add to UTC for the local wall time."""
    sign = pl.when(offset.str.slice(0, 1) == "-").then(-1).otherwise(1)
    hours = offset.str.slice(1, 2).cast(pl.Int64)
    minutes = offset.str.slice(4, 2).cast(pl.Int64)
    return pl.duration(minutes=sign * (hours * 60 + minutes))


def _json_str(expr: pl.Expr) -> pl.Expr:
    """A JSON string literal of already-escaped text (null stays null)."""
    return pl.concat_str(pl.lit('"'), expr, pl.lit('"'))


def _field(key: str, value_json: pl.Expr, present: pl.Expr | None = None) -> pl.Expr:
    """`"key":value`; null (so omitted from the object) when the value is null or not present."""
    pair = pl.concat_str(pl.lit(f'"{key}":'), value_json)
    return pair if present is None else pl.when(present).then(pair)


def _str_field(key: str, column: str) -> pl.Expr:
    """`"key":"<column value>"`, omitted when the column is null."""
    return _field(key, _json_str(pl.col(column)))


def _object(fields: list[pl.Expr]) -> pl.Expr:
    inner = pl.concat_str(fields, separator=",", ignore_nulls=True)
    return pl.concat_str(pl.lit("{"), inner, pl.lit("}"))


def _number_or_string(expr: pl.Expr, quantity_as: str) -> pl.Expr:
    if quantity_as not in ("number", "string"):
        raise ValueError(f"JSON quantity_as must be 'number' or 'string', not {quantity_as!r}")
    text = quantity_text(expr)
    return _json_str(text) if quantity_as == "string" else text


def _dims_present() -> pl.Expr:
    return pl.col("dimensions").is_not_null() & (pl.col("dimensions") != "{}")


def _shared_fields(extras: list[str]) -> list[pl.Expr]:
    """Fields every shape writes under canonical names, then unknown extras as strings."""
    fields = [_str_field(n, n) for n in ("product_id", "unit", "project_id", "correlation_id")]
    fields.append(_field("billable", pl.lit("false"), pl.col("billable").not_()))
    return fields + [_str_field(n, n) for n in ("reason_code", "correction_of", *extras)]


# ---------------------------------------------------------------- shapes


def _canonical_line(extras: list[str], quantity_as: str, precise: bool) -> pl.Expr:
    c = pl.col
    return _object(
        [
            _str_field("event_id", "event_id"),
            _str_field("account_id", "account_id"),
            _str_field("meter_id", "meter_id"),
            _field("quantity", _number_or_string(c("quantity"), quantity_as)),
            _field("timestamp", _json_str(timestamp_text(c("timestamp"), precise))),
            _str_field("model_id", "model_id"),
            _field("dimensions", c("dimensions"), _dims_present()),
            *_shared_fields(extras),
        ]
    )


def _stigg_line(extras: list[str], quantity_as: str, precise: bool) -> pl.Expr:
    c = pl.col
    has_model = c("model_id").is_not_null()
    value_present = c("quantity").is_not_null() & (has_model | (c("quantity") != 1))
    dims = pl.when(_dims_present()).then(c("dimensions")).otherwise(pl.lit("{}"))
    rest = pl.when(_dims_present()).then(pl.concat_str(pl.lit(","), dims.str.strip_prefix("{")))
    metadata = pl.concat_str(
        pl.lit('{"model":'), _json_str(c("model_id")), rest.otherwise(pl.lit("}"))
    )
    return _object(
        [
            _str_field("idempotencyKey", "event_id"),
            _str_field("customerId", "account_id"),
            _str_field("eventName", "meter_id"),
            _field("timestamp", _json_str(timestamp_text(c("timestamp"), precise))),
            _field("value", _number_or_string(c("quantity"), quantity_as), value_present),
            _field("metadata", metadata, has_model),
            _field("dimensions", dims, has_model.not_()),
            *_shared_fields(extras),
        ]
    )


def _csv_columns(extras: list[str], precise: bool) -> list[pl.Expr]:
    c = pl.col
    offset_of = c("account_id").str.slice(-1).replace_strict(CSV_OFFSETS, default=None)
    billable = pl.when(c("billable").not_()).then(pl.lit("false")).otherwise(pl.lit("true"))
    return [
        c("event_id").alias("idempotency_key"),
        c("account_id").alias("customer_id"),
        c("meter_id").alias("event_name"),
        quantity_text(c("quantity")).alias("value"),
        timestamp_text(c("timestamp"), precise, offset_of).alias("ts"),
        c("model_id").alias("model"),
        pl.when(c("dimensions").is_null())
        .then(pl.lit("{}"))
        .otherwise(c("dimensions"))
        .alias("dimensions"),
        *[c(n) for n in ("product_id", "unit", "project_id", "correlation_id")],
        billable.alias("billable"),
        c("reason_code"),
        c("correction_of"),
        *[c(n).cast(pl.String) for n in extras],
    ]


def _parquet_frame(df: pl.DataFrame, extras: list[str], quantity_as: str, dims_as: str):
    c = pl.col
    if quantity_as not in ("decimal", "string"):
        raise ValueError(f"parquet quantity_as must be 'decimal' or 'string', not {quantity_as!r}")
    if dims_as not in ("json", "struct"):
        raise ValueError(f"dims_as must be 'json' or 'struct', not {dims_as!r}")
    value = c("quantity").cast(QTY) if quantity_as == "decimal" else quantity_text(c("quantity"))
    dims = pl.when(c("dimensions").is_null()).then(pl.lit("{}")).otherwise(c("dimensions"))
    out = df.select(
        c("event_id").alias("transaction_id"),
        c("account_id").alias("customer_id"),
        c("meter_id").alias("meter"),
        c("model_id").alias("model"),
        value.alias("value"),
        c("timestamp").cast(pl.Datetime("us", "UTC")).alias("time"),
        dims.alias("dimensions"),
        *[c(n) for n in ("product_id", "unit", "project_id", "correlation_id")],
        c("billable").fill_null(True),
        c("reason_code"),
        c("correction_of"),
        *[c(n) for n in extras],
    )
    return out.with_columns(_dims_struct(out["dimensions"])) if dims_as == "struct" else out


def _dims_struct(dims: pl.Series) -> pl.Series:
    """JSON dimension text -> struct with sorted fields (a key absent from a row is null)."""
    decoded = dims.str.json_decode(infer_schema_length=None)
    if not isinstance(decoded.dtype, pl.Struct) or not decoded.dtype.fields:
        return dims
    fields = decoded.struct.unnest()
    return fields.select(pl.struct(sorted(fields.columns)).alias(dims.name)).to_series()


# ---------------------------------------------------------------- writers


def _chunks(frames: pl.DataFrame | Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Slices of at most CHUNK_ROWS rows, so text building never holds a whole file."""
    for frame in [frames] if isinstance(frames, pl.DataFrame) else frames:
        if frame.height == 0:
            yield frame  # keeps the schema (CSV header, Parquet columns) for empty inputs
        yield from frame.iter_slices(CHUNK_ROWS)


def _open(path: Path) -> IO[bytes]:
    """A binary sink; gzip with mtime 0 and no file name so output is byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.open("wb")
    if path.name.endswith(".gz"):
        return _GzipSink(raw)
    return raw


class _GzipSink(gzip.GzipFile):
    """GzipFile that also closes the underlying file."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        self._raw = raw

    def close(self) -> None:
        super().close()
        self._raw.close()


def write_frames(frames: Iterable[pl.DataFrame], path: Path) -> int:
    """Write already-shaped frames (JSON `line` column, CSV text columns, or Parquet columns)."""
    fmt = file_format(path)
    if fmt == "parquet":
        return _write_parquet(frames, path)
    rows, first = 0, True
    with _open(path) as sink:
        for frame in frames:
            buf = io.BytesIO()
            if fmt == "jsonl":  # one pre-built JSON text column, written verbatim
                frame.select("line").write_csv(buf, include_header=False, quote_style="never")
            else:
                frame.write_csv(buf, include_header=first)
            sink.write(buf.getvalue())
            rows, first = rows + frame.height, False
    return rows


def _write_parquet(frames: Iterable[pl.DataFrame], path: Path) -> int:
    """Row groups per chunk through one ParquetWriter; later chunks are cast to the first schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    try:
        for frame in frames:
            table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            rows += frame.height
    finally:
        if writer is not None:
            writer.close()
    return rows
