"""Load event files into `raw_events`, `quarantine` and `event_conflicts`, exactly once.

One file = one batch, identified by its content hash. Rows of a batch may span several Delta
commits (bounded chunks); the batch exists for readers only once its `ingest_log` row is
committed, which happens last. A crash leaves an uncommitted batch; the next ingest deletes its
rows and redoes it, so a rerun ends with the same tables as an uninterrupted run.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake.schema import Field, PrimitiveType

from usagebox_pipelines.catalog import (
    EVENT_CONFLICTS,
    EVENT_KEYS,
    HOUR_BUILDS,
    INGEST_LOG,
    QUARANTINE,
    RAW_EVENTS,
    Table,
)
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.events.classify import HISTORY_COLUMNS, classify
from usagebox_pipelines.events.keys import probe_keys
from usagebox_pipelines.events.normalize import normalize_events
from usagebox_pipelines.events.raw import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
)
from usagebox_pipelines.events.readers import CHUNK_ROWS, file_sha256, read_chunks
from usagebox_pipelines.events.window import event_window
from usagebox_pipelines.pricing.accounts import Accounts, AccountsError, load_accounts
from usagebox_pipelines.pricing.zones import local_month
from usagebox_pipelines.stages.books import closed_periods
from usagebox_pipelines.stages.dedupe import (
    FileHistory,
    append_keys,
    ensure_key_index,
    history_hits_key,
)
from usagebox_pipelines.storage import DeltaStore, WriteBehind, writes_tables

BATCH_TABLES = (RAW_EVENTS, QUARANTINE, EVENT_CONFLICTS, EVENT_KEYS)
# A day with fewer than CHUNK_ROWS / SPARSE_DAY_SHARE rows in a chunk is held back (`_RawArrivals`).
SPARSE_DAY_SHARE = 50
# Commit metadata of an `ingest_log` commit: the versions of BATCH_TABLES it committed.
BATCH_VERSIONS = "batch_table_versions"
Progress = Callable[[str], None]


@dataclass
class IngestSummary:
    """The JSON summary of CONTRACT.md §1 (plus `rows` and file-level `errors`)."""

    files: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    late: int = 0
    rows: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: IngestSummary) -> None:
        for name in ("files", "accepted", "duplicates", "conflicts", "rejected", "late", "rows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@writes_tables("ingest")
def ingest_files(
    store: DeltaStore,
    paths: Iterable[Path],
    source: str | None = None,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
    accounts: Accounts | None = None,
) -> IngestSummary:
    """Ingest files in sorted path order; unreadable files are reported, the rest still load.
    `accounts` (late_accounts) maps an event to its account's month for the late flag.

    Holds the home's writer lease throughout, so the cleanup of uncommitted batches only ever
    sees batches of writers that died, and the same file is never loaded by two processes.
    """
    progress = progress or (lambda _msg: None)
    with store.cached():
        remove_uncommitted_batches(store)
        ensure_key_index(store)
        total = IngestSummary()
        for path in sorted(Path(p) for p in paths):
            try:
                total.add(ingest_file(store, path, source, progress, chunk_rows, accounts))
            except UsageboxError as exc:
                total.errors.append(str(exc))
                progress(f"error: {exc}")
    return total


def ingest_file(
    store: DeltaStore,
    path: Path,
    source: str | None,
    progress: Progress,
    chunk_rows: int = CHUNK_ROWS,
    accounts: Accounts | None = None,
) -> IngestSummary:
    """One file as one batch; an already ingested file (same bytes) counts as duplicates.

    Two passes over bounded chunks: the first reads and normalises every chunk (earlier ones
    spilled to a local temporary Parquet file) and collects their keys, for one lookup of
    history for the whole file (`FileHistory`); the second classifies and commits each chunk.
    """
    if not path.exists():
        raise UsageboxError(f"{path}: no such file")
    if not path.is_file():
        raise UsageboxError(f"{path}: not a file")
    sha = file_sha256(path)
    logged = _logged_batch(store, sha)
    if logged is not None:
        progress(f"{path.name}: already ingested as {logged['batch_id']}, nothing to do")
        return IngestSummary(files=1, rows=logged["rows"], duplicates=logged["rows"])
    batch_id = f"b-{sha[:24]}"
    # Delta app id of this attempt at the batch: a retried chunk append is skipped, never
    # doubled; a later attempt (after a crash's leftovers were removed) gets a new one.
    attempt = f"ingest-{batch_id}-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    summary = IngestSummary(files=1)
    context = _LateContext.load(store, event_window(now), accounts)
    ensure_disposition_column(store)
    with tempfile.TemporaryDirectory(prefix="usagebox-ingest-") as spill:
        try:
            chunks = _Normalized(Path(spill))
            for chunk in read_chunks(path, chunk_rows):
                valid, rejects = normalize_events(chunk.rows, context.window)
                chunks.add(valid, pl.concat([chunk.rejects, rejects]))
                progress(f"{path.name}: {chunks.rows:,} rows read")
            if chunks.rows == 0:
                raise UsageboxError(f"{path}: file is empty (no rows)")
            history = FileHistory.lookup(store, chunks.take_probes())
            batch = _Batch(path, batch_id, attempt, source, now, context)
            store.memo[history_hits_key(batch_id)] = history.hits
            raw = _RawArrivals(store, attempt, chunk_rows)
            with WriteBehind() as writes:  # chunk n is committed while n + 1 is classified
                for n, (valid, rejects) in enumerate(chunks):
                    part = _ingest_chunk(store, batch, n, valid, rejects, history, raw, writes)
                    summary.add(part)
                    progress(
                        f"{path.name}: {summary.rows:,} rows in, {summary.accepted:,} accepted"
                    )
                writes.submit(raw.flush)
        except UsageboxError:
            # A file that fails part-way leaves no rows behind (later files must not dedupe
            # against a batch that will never be committed).
            _remove_batch(store, batch_id)
            raise
    versions = {t.name: store.version(t) for t in BATCH_TABLES}
    store.append(
        INGEST_LOG,
        pl.DataFrame(
            [
                {
                    "batch_id": batch_id,
                    "source": source,
                    "source_file": str(path),
                    "content_sha256": sha,
                    "ingested_at": now,
                    **{
                        k: getattr(summary, k)
                        for k in ("rows", "accepted", "duplicates", "conflicts", "rejected", "late")
                    },
                }
            ]
        ),
        metadata={BATCH_VERSIONS: json.dumps(versions, sort_keys=True)},
        txn=(attempt, 0),
    )
    return summary


class _Normalized:
    """A file's normalised chunks, in order: the latest in memory, earlier ones spilled to
    local Parquet files (memory is bounded by a chunk), with every chunk's probe keys."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spilled: list[tuple[Path, Path]] = []
        self.latest: tuple[pl.DataFrame, pl.DataFrame] | None = None
        self.probes: list[pl.DataFrame] = []
        self.rows = 0

    def take_probes(self) -> list[pl.DataFrame]:
        """Every chunk's probe keys, handed over once for the file's lookup: 12 bytes a row
        (360 MiB at 30 M rows) that the second pass does not hold; a chunk that meets history
        or an earlier chunk hashes its keys again (`FileHistory.rows_for`)."""
        probes, self.probes = self.probes, []
        return probes

    def add(self, valid: pl.DataFrame, rejects: pl.DataFrame) -> None:
        # The raw text is needed later only to quarantine a correction (classify's rejects).
        valid = valid.with_columns(
            _payload=pl.when(pl.col("correction_of").is_not_null()).then(pl.col("_payload"))
        )
        number = len(self.spilled) + (self.latest is not None)
        self.probes.append(
            pl.DataFrame({"key": probe_keys(valid)}).with_columns(chunk=pl.lit(number, pl.Int32))
        )
        self.rows += valid.height + rejects.height
        if self.latest is not None:
            paths = (self.folder / f"{number - 1}.valid", self.folder / f"{number - 1}.rejects")
            for frame, target in zip(self.latest, paths, strict=True):
                frame.write_parquet(target, compression="lz4", statistics=False)
            self.spilled.append(paths)
        self.latest = (valid, rejects)

    def __iter__(self) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        for valid, rejects in self.spilled:
            yield pl.read_parquet(valid), pl.read_parquet(rejects)
        if self.latest is not None:
            yield self.latest


@dataclass(frozen=True)
class _Batch:
    """The file being ingested as one batch, and what it was ingested against."""

    path: Path
    batch_id: str
    attempt: str  # Delta app id of this attempt: chunk n's appends carry (attempt, n)
    source: str | None
    now: datetime
    context: _LateContext


def _ingest_chunk(
    store: DeltaStore,
    batch: _Batch,
    number: int,
    valid: pl.DataFrame,
    rejects: pl.DataFrame,
    history: FileHistory,
    raw: _RawArrivals,
    writes: WriteBehind,
) -> IngestSummary:
    """Classify chunk `number` (normalised) and hand its rows to `writes` (committed while the
    next chunk is classified)."""
    rows = valid.height + rejects.height
    result = classify(valid, history.rows_for(valid))
    rejects = pl.concat([rejects, result.rejects])
    new = result.new.with_columns(is_late=batch.context.is_late(pl.col("hour")))
    batch_id, source = batch.batch_id, batch.source
    stamp = {
        "ingested_at": pl.lit(batch.now, dtype=RAW_EVENTS.schema["ingested_at"]),
        "source_file": pl.lit(str(batch.path)),
        "batch_id": pl.lit(batch_id),
    }
    arrivals = _arrivals(new, result)
    if arrivals.height:
        arrivals = arrivals.with_columns(
            **stamp,
            source=pl.lit(source),
            row_number=pl.col("_row"),
            event_date=pl.col("hour").dt.date(),
        )
    if rejects.height:
        rejects = rejects.with_columns(
            **stamp, row_number=pl.col("_row"), payload=pl.col("_payload")
        )
    conflicts = result.conflicts
    if conflicts.height:
        conflicts = conflicts.with_columns(**stamp, row_number=pl.col("_row"))
    keyed = new.with_columns(event_date=pl.col("hour").dt.date())
    once = (batch.attempt, number)
    writes.submit(_ChunkCommit(store, raw, once, arrivals, rejects, conflicts, keyed, batch_id))
    if new.height:
        history.remember(
            new.with_columns(**stamp, row_number=pl.col("_row")).select(HISTORY_COLUMNS), number
        )
    return IngestSummary(
        rows=rows,
        accepted=new.height,
        duplicates=result.duplicates,
        conflicts=result.conflicts.height,
        rejected=rejects.height,
        late=int(new["is_late"].sum()) if new.height else 0,
    )


class _RawArrivals:
    """The batch's `raw_events` appends, with the days a chunk holds only a few rows of (late
    events, a clock off by a day) held back and written together.

    `raw_events` is partitioned by `event_date`, so each day in a commit is a file of its own:
    1 % of late events spread over the month before made about 30 files of some 80 rows per
    chunk (1,262 of the 1,334 files of a 10 M-event month), which every reader of the table
    lists and opens. Held rows are at most `limit` (one chunk): memory stays bounded by a
    chunk. Each commit carries its own app-transaction version (chunk n: 2n, a flush after it:
    2n + 1), so a retried commit is skipped, never doubled. Nobody reads the batch before its
    `ingest_log` row, which is written after the last flush.
    """

    def __init__(self, store: DeltaStore, attempt: str, limit: int) -> None:
        self.store, self.attempt, self.limit = store, attempt, max(limit, 1)
        self.few = max(self.limit // SPARSE_DAY_SHARE, 1)  # fewer rows of a day in a chunk
        self.held: list[pl.DataFrame] = []
        self.held_rows = 0
        self.number = 0

    def append(self, rows: pl.DataFrame, number: int) -> None:
        """Write chunk `number`'s rows of its well-filled days; hold the rest."""
        self.number = number
        days = rows.group_by("event_date").len().filter(pl.col("len") < self.few)
        sparse = pl.col("event_date").is_in(days.get_column("event_date").implode())
        kept = rows.filter(sparse) if days.height else rows.clear()
        main = rows.filter(~sparse) if days.height else rows
        if main.height:
            self.store.append(RAW_EVENTS, main, txn=(self.attempt, 2 * number))
        if kept.height:
            self.held.append(kept)
            self.held_rows += kept.height
        if self.held_rows >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Write the held rows in one commit (after the latest chunk's own)."""
        if not self.held:
            return
        rows = pl.concat(self.held, how="vertical_relaxed")
        self.store.append(RAW_EVENTS, rows, txn=(self.attempt, 2 * self.number + 1))
        self.held, self.held_rows = [], 0


@dataclass(frozen=True)
class _ChunkCommit:
    """A chunk's commits, made in `WriteBehind`'s thread: its arrivals, rejects, conflicts and
    key-index entries, each carrying the chunk's app-transaction version `once`."""

    store: DeltaStore
    raw: _RawArrivals
    once: tuple[str, int]
    arrivals: pl.DataFrame
    rejects: pl.DataFrame
    conflicts: pl.DataFrame
    keyed: pl.DataFrame  # the accepted rows, with their `event_date`
    batch_id: str

    def __call__(self) -> None:
        if self.arrivals.height:
            self.raw.append(self.arrivals, self.once[1])
        if self.rejects.height:
            self.store.append(QUARANTINE, self.rejects, txn=self.once)
        if self.conflicts.height:
            self.store.append(EVENT_CONFLICTS, self.conflicts, txn=self.once)
        if self.keyed.height:
            append_keys(self.store, self.keyed, self.batch_id, txn=self.once)


def _arrivals(new: pl.DataFrame, result) -> pl.DataFrame:
    """Every valid arrival of the chunk for `raw_events`, each with its disposition.

    Duplicates and conflicts count in their own timestamp's hour (they are never billed; the
    hour only places them in an `event_date` partition), and are never late.
    """
    others = [
        frame.with_columns(
            hour=pl.col("timestamp").dt.truncate("1h"), is_late=pl.lit(False), disposition=pl.lit(d)
        )
        for frame, d in ((result.duplicate_rows, DUPLICATE), (result.conflicts, CONFLICT))
        if frame.height
    ]
    accepted = new.with_columns(disposition=pl.lit(ACCEPTED))
    if not others:
        return accepted
    columns = accepted.columns
    return pl.concat([accepted, *[o.select(columns) for o in others]]).sort("_row")


def _remove_batch(store: DeltaStore, batch_id: str) -> None:
    for table in BATCH_TABLES:
        if store.exists(table):
            store.delete_where(table, batch_id=batch_id)


def _logged_batch(store: DeltaStore, sha: str) -> dict | None:
    if not store.exists(INGEST_LOG):
        return None
    hit = store.scan(INGEST_LOG).filter(pl.col("content_sha256") == sha).head(1).collect()
    return hit.row(0, named=True) if hit.height else None


def committed_batches(store: DeltaStore) -> pl.LazyFrame:
    """Batch ids whose ingest finished (the only ones readers may see)."""
    return store.scan(INGEST_LOG).select("batch_id")


def remove_uncommitted_batches(store: DeltaStore) -> list[str]:
    """Delete rows of batches that crashed before their `ingest_log` commit."""
    stamp = store.last_commit(INGEST_LOG, BATCH_VERSIONS)
    now = json.dumps({t.name: store.version(t) for t in BATCH_TABLES}, sort_keys=True)
    if stamp == now:  # nothing was written to a batch table since the last committed batch
        return []
    removed: set[str] = set()
    done = set(committed_batches(store).collect()["batch_id"].to_list())
    for table in BATCH_TABLES:
        if not store.exists(table):
            continue
        orphans = sorted(_batch_ids(store, table) - done)
        if orphans:
            store.delete_where(table, batch_id=orphans)
            removed.update(orphans)
    return sorted(removed)


def _batch_ids(store: DeltaStore, table: Table) -> set[str]:
    """The batch ids in a table, from the Delta log's per-file statistics when every file holds
    a single batch (ingest writes them so); otherwise by reading the column."""
    files = store.files(table)
    if files.height == 0:
        return set()
    if "min.batch_id" in files.columns and "max.batch_id" in files.columns:
        low, high = files["min.batch_id"], files["max.batch_id"]
        if low.null_count() == 0 and (low == high).all():
            return set(low.to_list())
    return set(store.scan(table).select("batch_id").unique().collect()["batch_id"].to_list())


@dataclass
class _LateContext:
    """Hours whose rollup was already built, periods already closed, and the event-time window,
    at ingest time; with `accounts` in time zones an event's period is its account's local
    month (ADR 0017)."""

    built_hours: pl.Series
    closed_periods: pl.Series
    window: tuple[datetime, datetime]  # accepted [earliest, latest) event time
    accounts: Accounts | None = None

    @classmethod
    def load(
        cls,
        store: DeltaStore,
        window: tuple[datetime, datetime],
        accounts: Accounts | None = None,
    ) -> _LateContext:
        hours = store.scan(HOUR_BUILDS).select("hour").unique().collect()["hour"]
        closed = pl.Series("period", sorted(closed_periods(store)), dtype=pl.String)
        return cls(hours, closed, window, accounts)

    def is_late(self, hour: pl.Expr) -> pl.Expr:
        month = hour.dt.strftime("%Y-%m")
        if self.accounts is not None:
            month = local_month(hour, self.accounts)
        return hour.is_in(self.built_hours.implode()) | month.is_in(self.closed_periods.implode())


def late_accounts(pricebooks: Path) -> Accounts | None:
    """The accounts whose zones decide which month an event is late for; None (UTC months)
    when accounts.yaml is invalid: ingest never refuses events over billing config, and the
    rating of the month reports the file and field."""
    try:
        return load_accounts(pricebooks)
    except AccountsError:
        return None


def ensure_disposition_column(store: DeltaStore) -> None:
    """Schema evolution for homes created before `disposition`: add the (nullable) column."""
    table = store.table(RAW_EVENTS)
    if table is None:
        return
    if "disposition" not in [f.name for f in table.schema().fields]:
        table.alter.add_columns(Field("disposition", PrimitiveType("string"), nullable=True))
