"""The one place that reads and writes Delta tables (local folders or S3-compatible stores),
and the documents stored beside them (`DocumentStore`: PDFs and reports under `<home>/documents`).

Every method takes a catalog entry (`usagebox_pipelines.catalog.Table`): the entry gives the
schema writes are conformed to, the partitioning applied when the table is created, and the
description and column comments written into the new table's Delta metadata. Every write is a
single Delta commit, so readers see a whole write or none of it. Partition replacement uses
predicate overwrite built here from typed partition keys (`replace_partition`), never from data
values and never by hand at call sites.

Concurrent writers are expected (ADR 0012): a commit that loses to another writer's is made
again against the re-read table, with bounded exponential backoff and jitter. A retried
partition replace is idempotent by construction; an append that must land exactly once carries
a Delta app transaction (`append(..., txn=(app_id, version))`) and is skipped once committed.

Over 400 lines on purpose: it is the one module for Delta and document I/O (ADR 0009).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from usagebox_pipelines.config import is_object_store
from usagebox_pipelines.errors import UsageboxError, one_line
from usagebox_pipelines.lease import EXCLUSIVE, SHARED, LeaseMode, holds_lease, writer_lease
from usagebox_pipelines.object_store import check_conditional_puts, storage_options
from usagebox_pipelines.schemas import conform

if TYPE_CHECKING:
    from usagebox_pipelines.catalog import Table

_log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_literal(value: object) -> str:
    """A SQL literal for a Delta predicate built from partition keys we generate."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z'"
    return _quote(str(value))


class _NotNull:
    """A key value meaning `col IS NOT NULL`: `delete_where(LINES, invoice_number=NOT_NULL)`."""

    def __repr__(self) -> str:
        return "NOT_NULL"


NOT_NULL = _NotNull()

Key = str | int | date | datetime | slice | Iterable | _NotNull | None


def predicate(table: Table, columns: Iterable[str], key: Mapping[str, object]) -> str:
    """`col = v AND ...` from typed keys; only `columns` of `table` may appear.

    A value is a scalar (`=`), a list/tuple/set of scalars (`IN`), a `slice(start, end)`
    for the half-open range `start <= col < end` (e.g. `hour=slice(start, end)`), `None`
    (`IS NULL`) or `NOT_NULL` (`IS NOT NULL`).
    """
    allowed = tuple(columns)
    if not key:
        raise ValueError(f"{table.name}: a partition key is required ({', '.join(allowed)})")
    terms = []
    for column, value in key.items():
        if column not in allowed:
            raise ValueError(
                f"{table.name}: {column!r} is not a key column (allowed: {', '.join(allowed)})"
            )
        if value is None:
            terms.append(f"{column} IS NULL")
        elif value is NOT_NULL:
            terms.append(f"{column} IS NOT NULL")
        elif isinstance(value, slice):
            if value.start is None or value.stop is None or value.step is not None:
                raise ValueError(f"{table.name}.{column}: a range needs slice(start, end)")
            terms.append(
                f"{column} >= {sql_literal(value.start)} AND {column} < {sql_literal(value.stop)}"
            )
        elif isinstance(value, list | tuple | set | frozenset):
            values = sorted(value)
            if not values:
                raise ValueError(f"{table.name}.{column}: an empty list of values")
            terms.append(f"{column} IN ({', '.join(map(sql_literal, values))})")
        else:
            terms.append(f"{column} = {sql_literal(value)}")
    return " AND ".join(terms)


def _with_comments(schema: pa.Schema, table: Table) -> pa.Schema:
    """`schema` with each column's catalog comment in its field metadata ({"comment": ...}):
    delta-rs writes it into the Delta schema, where Spark/Databricks show column comments."""
    fields = [
        f.with_metadata({"comment": table.comments[f.name]}) if f.name in table.comments else f
        for f in schema
    ]
    return pa.schema(fields)


@contextlib.contextmanager
def _spooled(
    data: pl.DataFrame | Iterable[pl.DataFrame], table: Table
) -> Iterator[Callable[[bool], pa.Table | pa.RecordBatchReader]]:
    """`data` conformed to the table's schema once per write: yields `arrow(new)`, the Arrow
    data of one commit attempt (with the column comments when the attempt creates the table).

    An iterable of frames is spooled to local Arrow files before the first attempt, and every
    attempt streams from them (one frame in memory at a time), so a conflict is retried without
    running the producer again. Producing every frame before delta-rs starts also means a
    producer may read tables itself (inside delta-rs's write it could not: a runtime in a
    runtime), and its errors are raised as themselves before anything is written. The spool is
    removed when the block ends.
    """
    if isinstance(data, pl.DataFrame):
        rows = conform(data, table.schema).to_arrow()
        described = pa.Table.from_arrays(rows.columns, schema=_with_comments(rows.schema, table))
        yield lambda new: described if new else rows
        return
    schema = conform(pl.DataFrame(schema=table.schema), table.schema).to_arrow().schema
    with tempfile.TemporaryDirectory(prefix="usagebox-spool-") as folder:
        spooled = []
        for number, chunk in enumerate(data):
            spooled.append(Path(folder) / f"{number}.arrow")
            conform(chunk, table.schema).write_ipc(spooled[-1])

        def batches(target: pa.Schema) -> Iterator[pa.RecordBatch]:
            for path in spooled:
                with pa.memory_map(str(path)) as source:
                    spool = pa.ipc.open_file(source)
                    for number in range(spool.num_record_batches):
                        batch = spool.get_batch(number)
                        yield pa.RecordBatch.from_arrays(batch.columns, schema=target)

        def stream(new: bool) -> pa.RecordBatchReader:
            described = _with_comments(schema, table) if new else schema
            return pa.RecordBatchReader.from_batches(described, batches(described))

        yield stream


class WriteBehind:
    """Commits made one at a time in a background thread while the caller produces the next
    frame: delta-rs encodes Parquet and commits without the GIL, so building the next chunk
    overlaps writing the last (`usagebox ingest` of 5 M events on 2 cores: 33.9 s to 28.7 s,
    ADR 0020).

    Commits keep their order and at most one is in flight: `submit` first waits for the previous
    one and raises its error, so nothing is committed after a failed commit. Leaving the block
    waits for the last commit (an error in the block still lets the one in flight finish, as if
    it had been made before the error). The caller must not touch the table being written until
    the block ends: the cached `DeltaTable` is the writer thread's meanwhile.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind")
        self._pending: Future[object] | None = None

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()

    def submit(self, commit: Callable[[], object]) -> None:
        self.wait()
        self._pending = self._pool.submit(commit)

    def wait(self) -> None:
        """Wait for the commit in flight; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def writes_tables(purpose: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a stage (first argument: the store) as a writer: it runs under the home's lease.

    Every stage that commits to tables carries this (or `writes_partition`), so the unit of work
    is serialised however it is started (CLI, `usagebox run`, a schedule, a sensor, the UI);
    nested stages re-enter.
    """
    return _under_lease(purpose, EXCLUSIVE)


def writes_partition(purpose: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a stage that only replaces its own partition of a derived table: it holds the
    home's lease shared, so such stages run concurrently (on different partitions, their
    commits retried on conflict) but never beside an exclusive writer such as ingest (ADR 0012).
    """
    return _under_lease(purpose, SHARED)


def _under_lease(purpose: str, mode: LeaseMode) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def decorate(stage: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(stage)
        def under_lease(*args: P.args, **kwargs: P.kwargs) -> R:
            store = cast(DeltaStore, args[0] if args else kwargs["store"])
            with store.writer(purpose, mode):
                return stage(*args, **kwargs)

        return under_lease

    return decorate


#: Attempts at one commit before a conflict is reported (about 15 s of backoff in all).
#: Rows per Parquet row group of every table. A reader holds at most one row group at a time
#: before its filter applies, and prunes by each group's min/max statistics: with month-sized
#: groups (delta-rs writes up to 1 M rows in one) every account shard would read the whole
#: month. Rows are written sorted by account, so a group also spans a narrow account range.
#: Pages are zstd-compressed: delta-rs writes them uncompressed by default, and zstd makes the
#: tables 2.5x smaller (raw_events of 1 M events: 26 MiB, not 64) at no measurable write cost.
ROW_GROUP_ROWS = 65_536
_WRITER = WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="ZSTD")

COMMIT_ATTEMPTS = 10
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 3.0


def _backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: exponential, capped, with full jitter, so writers
    that collided do not collide again in step."""
    return random.uniform(0, min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt))


def _lost_to_concurrent_writers(table: Table, attempts: int, exc: Exception) -> UsageboxError:
    return UsageboxError(
        f"{table.name}: commit lost to concurrent writers {attempts} times "
        f"({one_line(str(exc), 120)}); nothing of it was committed: run the command again"
    )


class DeltaStore:
    """Tables under `<home>/tables/<name>`, addressed by catalog entries."""

    def __init__(self, home: str) -> None:
        self.home = home.rstrip("/")
        self.storage_options = storage_options(self.home)
        # Open tables by name while `cached()` is active (None: every call opens the table).
        self._open: dict[str, DeltaTable | None] | None = None
        # Notes one stage leaves for the next within the same `cached()` block (emptied with
        # it), e.g. ingest's key-index hits for the fold of `events` right after it.
        self.memo: dict[str, Any] = {}

    def writer(
        self, purpose: str, mode: LeaseMode = EXCLUSIVE
    ) -> contextlib.AbstractContextManager[None]:
        """The home's writer lease (see `lease`): hold it around any unit of work that writes.

        The lease on object storage is itself a Delta commit, so the store's conditional puts
        are probed first (`object_store.check_conditional_puts`, once per process)."""
        check_conditional_puts(self.home, self.storage_options)
        return writer_lease(self.home, purpose, self.storage_options, mode=mode)

    @contextlib.contextmanager
    def cached(self) -> Iterator[None]:
        """Open each table at most once for the block (re-entrant; needs the writer lease).

        Opening a Delta table reads its log (about 20 ms locally, more on object storage); a
        unit of work that touches a table many times (ingest: several commits per chunk) opens
        it once here. The lease makes this process the only writer, and every write and delete
        below goes through the cached object, which delta-rs moves to the new version in place,
        so the cache is never stale. A lazy `scan` taken inside the block reads the table as it
        is when collected.
        """
        if self._open is not None:
            yield
            return
        if not holds_lease(self.home):
            raise RuntimeError("DeltaStore.cached() needs the home's exclusive writer lease")
        self._open = {}
        try:
            yield
        finally:
            self._open = None
            self.memo = {}

    def uri(self, table: Table) -> str:
        return f"{self.home}/tables/{table.name}"

    def table(self, table: Table, version: int | None = None) -> DeltaTable | None:
        """The Delta table itself (None if it does not exist yet)."""
        if version is None and self._open is not None:
            if self._open.get(table.name) is None:
                self._open[table.name] = self._load(table, None)
            return self._open[table.name]
        return self._load(table, version)

    def _load(self, table: Table, version: int | None) -> DeltaTable | None:
        try:
            return DeltaTable(
                self.uri(table), version=version, storage_options=self.storage_options
            )
        except TableNotFoundError:
            return None

    def exists(self, table: Table) -> bool:
        return self.table(table) is not None

    def version(self, table: Table) -> int | None:
        dt = self.table(table)
        return None if dt is None else dt.version()

    def scan(
        self,
        table: Table,
        *,
        version: int | None = None,
    ) -> pl.LazyFrame:
        """Lazy scan of a table; an empty frame of its schema if it does not exist yet."""
        if version is None and self._open is not None:
            dt = self.table(table)
            return pl.LazyFrame(schema=table.schema) if dt is None else pl.scan_delta(dt)
        if not self.exists(table):
            return pl.LazyFrame(schema=table.schema)
        return pl.scan_delta(self.uri(table), version=version, storage_options=self.storage_options)

    def read(
        self,
        table: Table,
        *,
        version: int | None = None,
    ) -> pl.DataFrame:
        return self.scan(table, version=version).collect()

    def _write(
        self,
        table: Table,
        df: pl.DataFrame | Iterable[pl.DataFrame],
        mode: Literal["append", "overwrite"],
        predicate: str | None = None,
        metadata: Mapping[str, str] | None = None,
        txn: tuple[str, int] | None = None,
    ) -> int:
        """One commit of `df`, retried on a commit conflict.

        A conflict means nothing was committed, so the write is simply made again against the
        re-opened table: a predicate overwrite replaces its slice whatever landed meanwhile
        (idempotent by construction), and an append carrying `txn` is skipped once the table
        records that app transaction. A stream of frames is spooled once, before the first
        attempt (`_spooled`), so it is replayed like a frame: the producer runs exactly once.
        """
        check_conditional_puts(self.home, self.storage_options)
        with _spooled(df, table) as arrow:
            return self._retried(
                table, lambda: self._commit(table, arrow, mode, predicate, metadata, txn)
            )

    def _retried(self, table: Table, commit: Callable[[], R]) -> R:
        """`commit()`, made again with backoff after each commit conflict (bounded)."""
        attempt = 1
        while True:
            try:
                return commit()
            except CommitFailedError as exc:
                if attempt >= COMMIT_ATTEMPTS:
                    raise _lost_to_concurrent_writers(table, attempt, exc) from exc
            _log.info("%s: commit conflict, retrying (attempt %d)", table.name, attempt + 1)
            self._forget(table)
            time.sleep(_backoff(attempt))
            attempt += 1

    def _commit(
        self,
        table: Table,
        arrow: Callable[[bool], pa.Table | pa.RecordBatchReader],
        mode: Literal["append", "overwrite"],
        predicate: str | None,
        metadata: Mapping[str, str] | None,
        txn: tuple[str, int] | None,
    ) -> int:
        existing = self.table(table)
        new = existing is None
        if existing is not None and txn is not None:
            done = existing.transaction_version(txn[0])
            if done is not None and done >= txn[1]:
                return existing.version()  # this app transaction is already committed
        props = CommitProperties(
            custom_metadata=dict(metadata or {}),
            app_transactions=[Transaction(*txn)] if txn is not None else None,
        )
        if predicate is not None and new:
            # delta-rs#3959: predicate overwrite on a missing table panics; create it first.
            predicate = None
            mode = "append"
        # name, description, partitioning and column comments are set at creation
        # delta-rs types its overloads by the literal `mode`; ours is a variable of both
        cast(Any, write_deltalake)(
            existing if existing is not None else self.uri(table),
            arrow(new),
            mode=mode,
            predicate=predicate,
            storage_options=self.storage_options,
            commit_properties=props,
            writer_properties=_WRITER,
            partition_by=(list(table.partition_by) or None) if new else None,
            name=table.name if new else None,
            description=table.description if new else None,
        )
        if existing is not None:  # delta-rs moved it to the new version in place
            return existing.version()
        return self.version(table) or 0

    def _forget(self, table: Table) -> None:
        """Drop the open table from the cache: after a conflict it is re-read from its log."""
        if self._open is not None:
            self._open.pop(table.name, None)

    def append(
        self,
        table: Table,
        df: pl.DataFrame,
        *,
        metadata: Mapping[str, str] | None = None,
        txn: tuple[str, int] | None = None,
    ) -> int:
        """Append rows in one commit (creates the table on first write).

        `txn=(app_id, version)` makes the append exactly-once: the commit records that Delta
        app transaction, and an append whose app id is already at `version` or later is
        skipped (a retry after an ambiguous failure, or a rerun of the same step)."""
        return self._write(table, df, "append", metadata=metadata, txn=txn)

    def overwrite(
        self,
        table: Table,
        df: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Replace the whole table in one commit (small derived tables, or an iterable of
        frames streamed into the one commit)."""
        return self._write(table, df, "overwrite", metadata=metadata)

    def files(self, table: Table) -> pl.DataFrame:
        """The table's data files from its Delta log, one row each: `path`, `num_records`,
        `partition.<col>`, `min.<col>`, `max.<col>` (no data is read; empty if no table)."""
        dt = self.table(table)
        if dt is None:
            return pl.DataFrame(schema={"path": pl.String, "num_records": pl.Int64})
        return pl.DataFrame(dt.get_add_actions(flatten=True))

    def last_commit(self, table: Table, key: str, limit: int = 20) -> str | None:
        """The value of custom commit metadata `key` in the latest of the last `limit` commits
        that carries it (None if none does, or there is no table)."""
        dt = self.table(table)
        if dt is None:
            return None
        for commit in dt.history(limit):
            if key in commit:
                return str(commit[key])
        return None

    def replace_partition(
        self,
        table: Table,
        df: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        metadata: Mapping[str, str] | None = None,
        **key: Key,
    ) -> int:
        """Atomically replace exactly the rows of one slice of `table` with `df`.

        `key` names the slice by the entry's `replace_by` columns, e.g.
        `replace_partition(USAGE_MONTHLY, rows, month="2026-10")` or, for the half-open hours
        [start, end), `replace_partition(USAGE_HOURLY, rows, hour=slice(start, end))`. Every row
        of `df` must fall inside the slice (delta-rs refuses the commit otherwise). An iterable
        of frames is spooled once, then streamed into the one commit, and again into each retry
        after a conflict (memory: one frame).
        """
        where = predicate(table, table.replace_by, key)
        return self._write(table, df, "overwrite", predicate=where, metadata=metadata)

    def delete_where(self, table: Table, **key: Key) -> None:
        """Delete the rows matching typed keys on any columns (`batch_id=[...]`, see
        `predicate`)."""
        where = predicate(table, table.schema.names(), key)
        check_conditional_puts(self.home, self.storage_options)

        def delete() -> None:  # deleting the same rows again is a no-op: safe to retry
            dt = self.table(table)
            if dt is not None:
                dt.delete(where)

        self._retried(table, delete)

    def describe(self, table: Table) -> int:
        """Write the catalog's name, description and column comments into an existing table's
        Delta metadata where they differ (tables created before the catalog carried them); the
        number of metadata commits made."""
        dt = self.table(table)
        if dt is None:
            return 0
        commits = 0
        meta = dt.metadata()
        if meta.name != table.name:
            dt.alter.set_table_name(table.name)
            commits += 1
        if meta.description != table.description:
            dt.alter.set_table_description(table.description)
            commits += 1
        for column in dt.schema().fields:
            comment = table.comments.get(column.name)
            if comment is not None and column.metadata.get("comment") != comment:
                dt.alter.set_column_metadata(column.name, {"comment": comment})
                commits += 1
        return commits

    def compact(self, table: Table) -> dict[str, Any]:
        """Rewrite small data files into large ones (one commit; old versions stay readable
        until `vacuum`): delta-rs's optimize metrics."""
        dt = self.table(table)
        if dt is None:
            return {}
        return dict(dt.optimize.compact(commit_properties=CommitProperties({"stage": "compact"})))

    def vacuum(self, table: Table, retention_hours: int, keep_versions: list[int]) -> int:
        """Delete data files no version younger than `retention_hours` reads, except those of
        `keep_versions` (versions stamped on issued invoices): the files removed."""
        dt = self.table(table)
        if dt is None:
            return 0
        removed = dt.vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            enforce_retention_duration=False,
            keep_versions=sorted(set(keep_versions)) or None,
        )
        return len(removed)

    def drop(self, table: Table) -> None:
        """Remove a table entirely (used by rebuild tests and `reset`); local homes only."""
        import shutil

        if is_object_store(self.home):
            raise NotImplementedError("drop is only supported on local homes")
        shutil.rmtree(self.uri(table), ignore_errors=True)
        if self._open is not None:
            self._open.pop(table.name, None)


# --------------------------------------------------------------------------- documents


def _s3_filesystem(options: Mapping[str, str]) -> Any:
    """A pyarrow S3 filesystem from the same AWS_* settings the Delta tables use."""
    from pyarrow.fs import S3FileSystem

    endpoint = options.get("AWS_ENDPOINT_URL")
    scheme = "https"
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    return S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"),
        region=options.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.rstrip("/") if endpoint else None,
        scheme=scheme,
    )


def checked_relpath(relpath: str) -> str:
    """`relpath` if it is a plain relative path (`invoices/2026-10/UBX-2026-000001.pdf`).

    Paths are generated by us from validated periods and numbers, never from input; absolute
    paths, `..`, `.`, empty parts and backslashes are refused anyway.
    """
    parts = relpath.split("/") if isinstance(relpath, str) else []
    if (
        not parts
        or "\\" in relpath
        or "\x00" in relpath
        or any(p in ("", ".", "..") for p in parts)
        or ":" in parts[0]
    ):
        raise UsageboxError(f"refusing document path {relpath!r}: not a plain relative path")
    return relpath


class DocumentStore:
    """Documents beside the tables: `<home>/documents/<relpath>`, local or on object storage.

    Invoices, credit notes and reconciliation reports are written here. `put` is atomic: a
    local write goes to a temp file in the same folder and is renamed over the target (the temp
    file is removed if anything fails, and the old file is left as it was); on object storage
    it is a single PUT, which readers see whole or not at all. `put` returns the bytes' sha256.
    """

    def __init__(self, home: str) -> None:
        self.home = home.rstrip("/")
        self.root = f"{self.home}/documents"
        self._options = storage_options(self.home)
        self._fs: Any = None

    @property
    def is_local(self) -> bool:
        return self._options is None

    def uri(self, relpath: str) -> str:
        """Where the document lives (a local path or an `s3://` URI), for messages."""
        return f"{self.root}/{checked_relpath(relpath)}"

    def local_path(self, relpath: str) -> Path:
        """The real local file, for the few callers that need one (local homes only)."""
        if not self.is_local:
            raise UsageboxError(f"{self.root} is on object storage: read documents with get()")
        return Path(self.root) / checked_relpath(relpath)

    @property
    def _s3(self) -> Any:
        """The pyarrow S3 filesystem (made on first use)."""
        if self._fs is None:
            self._fs = _s3_filesystem(self._options or {})
        return self._fs

    def _object(self, relpath: str) -> str:
        """`bucket/prefix/documents/<relpath>` for pyarrow's S3 filesystem."""
        return f"{self.root.split('://', 1)[1]}/{checked_relpath(relpath)}"

    def put(self, relpath: str, data: bytes) -> str:
        """Store `data` at `relpath` atomically; the sha256 of the bytes."""
        if self.is_local:
            path = self.local_path(relpath)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            key = self._object(relpath)
            with self._s3.open_output_stream(key) as out:
                out.write(data)
        return hashlib.sha256(data).hexdigest()

    def get(self, relpath: str) -> bytes | None:
        """The stored bytes, or None if there is no such document."""
        if self.is_local:
            path = self.local_path(relpath)
            return path.read_bytes() if path.is_file() else None
        key = self._object(relpath)
        try:
            with self._s3.open_input_stream(key) as src:
                return cast(bytes, src.read())
        except FileNotFoundError:
            return None

    def exists(self, relpath: str) -> bool:
        if self.is_local:
            return self.local_path(relpath).is_file()
        from pyarrow.fs import FileType

        return bool(self._fs_info(relpath).type == FileType.File)

    def _fs_info(self, relpath: str) -> Any:
        return self._s3.get_file_info(self._object(relpath))

    def sha256(self, relpath: str) -> str | None:
        """sha256 of the stored bytes, or None if there is no such document."""
        data = self.get(relpath)
        return None if data is None else hashlib.sha256(data).hexdigest()

    def delete(self, relpath: str) -> None:
        """Remove a document if it exists."""
        if self.is_local:
            self.local_path(relpath).unlink(missing_ok=True)
        elif self.exists(relpath):
            self._s3.delete_file(self._object(relpath))

    def listdir(self, folder: str, suffix: str = "") -> list[str]:
        """Relative paths of the documents directly in `folder` ending in `suffix`, sorted."""
        folder = checked_relpath(folder)
        if self.is_local:
            base = Path(self.root) / folder
            names = [p.name for p in base.iterdir() if p.is_file()] if base.is_dir() else []
        else:
            from pyarrow.fs import FileSelector, FileType

            infos = self._s3.get_file_info(FileSelector(self._object(folder), allow_not_found=True))
            names = [i.base_name for i in infos if i.type == FileType.File]
        return sorted(f"{folder}/{n}" for n in names if n.endswith(suffix) and n[:1] != ".")
