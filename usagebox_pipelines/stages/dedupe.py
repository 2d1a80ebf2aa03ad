"""What an arriving file is compared with for exactly-once, without reading all history.

Two sources, together exactly the accepted rows the old full scan of `raw_events` returned for
a chunk (rows sharing an event id with it, or correcting its corrections' targets):

* **History before the file**: one lookup of the `event_keys` index per file (8-byte hashes,
  events/keys.py) names the `raw_events` partitions and batches that can hold such rows; for
  each chunk only those are read and compared by the real ids.
* **The file's own earlier chunks**: rows accepted by an earlier chunk that a later chunk
  refers to (its keys are probed again later) are kept in memory until the last chunk that
  refers to them, so no chunk re-reads what this file already wrote.

The index itself is maintained by ingest (one append per chunk) and (re)built here from
`raw_events` when it is missing or was built with another hash (`hash_canary`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import polars as pl

from usagebox_pipelines.catalog import EVENT_KEYS, RAW_EVENTS
from usagebox_pipelines.events.classify import HISTORY_COLUMNS
from usagebox_pipelines.events.keys import (
    hash_canary,
    index_rows,
    key_hash,
    probe_keys,
    target_hash,
)
from usagebox_pipelines.events.normalize import payload_expr
from usagebox_pipelines.events.raw import accepted_only
from usagebox_pipelines.storage import DeltaStore

# Commit metadata key of `event_keys` writes: the hash canary the index was built with.
KEY_HASH = "key_hash"
# Rows per group of days when the key index is rebuilt from `raw_events` (memory bound).
REBUILD_ROWS = 2_000_000
HISTORY_SCHEMA = pl.Schema({c: RAW_EVENTS.schema[c] for c in HISTORY_COLUMNS})
#: Keys per range of a file's history lookup (`FileHistory.lookup`): bounds its memory.
LOOKUP_KEYS = 4_000_000
_KEY_MIN, _KEY_END = -(2**63), 2**63  # the Int64 key space, half-open


def key_ranges(keys: int, per_range: int | None = None) -> list[tuple[int, int]]:
    """Half-open [low, high) ranges covering the whole Int64 key space, enough of them that
    each holds about `per_range` (default `LOOKUP_KEYS`) of `keys` uniformly hashed keys (one
    range for small files).
    The last `high` is 2**63, past every Int64 (see `in_key_range`)."""
    count = max(1, -(-keys // max(per_range or LOOKUP_KEYS, 1)))
    width = (_KEY_END - _KEY_MIN) // count
    bounds = [_KEY_MIN + i * width for i in range(count)] + [_KEY_END]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def in_key_range(low: int, high: int) -> pl.Expr:
    """`key` in [low, high), as Int64 comparisons a scan prunes row groups with."""
    key = pl.col("key")
    above = key >= pl.lit(low, dtype=pl.Int64)
    return above if high >= _KEY_END else above & (key < pl.lit(high, dtype=pl.Int64))


def history_hits_key(batch_id: str) -> str:
    """`DeltaStore.memo` key of a batch's index hits (history before it), left by ingest."""
    return f"event_keys hits:{batch_id}"


def empty_history() -> pl.DataFrame:
    return pl.DataFrame(schema=HISTORY_SCHEMA).with_columns(payload=pl.lit(None, dtype=pl.String))


def _ids_and_targets(valid: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    targets = valid["correction_of"].drop_nulls()
    return pl.concat([valid["event_id"], targets]), targets


def _related(rows: pl.LazyFrame | pl.DataFrame, ids: pl.Series, targets: pl.Series):
    return rows.filter(
        pl.col("event_id").is_in(ids.implode()) | pl.col("correction_of").is_in(targets.implode())
    )


@dataclass
class FileHistory:
    """History for the chunks of one file: build with `lookup` after reading every chunk's
    keys, then per chunk (in order) `rows_for` before classifying it and `remember` after."""

    hits: pl.DataFrame  # key, event_date, batch_id: index entries matching the file's keys
    last: pl.DataFrame  # key, last: keys probed by two or more chunks, and the last such chunk
    kept: pl.DataFrame = field(default_factory=empty_history)  # + _own, _target
    # `raw_events` as it was before the file (the rows `hits` name): its own scan, pinned to
    # that version, so reading it never touches the table the file's chunks are written to
    before: pl.LazyFrame = field(default_factory=lambda: pl.LazyFrame(schema=RAW_EVENTS.schema))

    @classmethod
    def lookup(cls, store: DeltaStore, probes: Iterable[pl.DataFrame]) -> FileHistory:
        """`probes`: per chunk, a frame of its `probe_keys` (`key`) and number (`chunk`).

        The keys are looked up in ranges of the key space of at most `LOOKUP_KEYS` keys each,
        so the hash tables of one range, not of the whole file, are in memory (a 30 M-event
        file otherwise peaks at 2 GiB here); what each range yields is small (keys seen twice,
        index hits)."""
        keyed = pl.concat(
            [pl.DataFrame(schema={"key": pl.Int64, "chunk": pl.Int32}), *probes],
            how="vertical_relaxed",
        )
        indexed = keyed.height > 0 and store.exists(EVENT_KEYS)
        lasts, hits = [], []
        for low, high in key_ranges(keyed.height):
            part = keyed.filter(in_key_range(low, high))
            lasts.append(
                # each chunk's probe keys are unique: a key's rows count its chunks
                part.group_by("key")
                .agg(chunks=pl.len(), last=pl.col("chunk").max())
                .filter(pl.col("chunks") > 1)
                .select("key", "last")
            )
            if indexed and part.height:
                hits.append(
                    store.scan(EVENT_KEYS)
                    .filter(
                        in_key_range(low, high)
                        & pl.col("key").is_in(part["key"].unique().implode())
                    )
                    .select("key", "event_date", "batch_id")
                    .collect()
                )
        no_hits = pl.DataFrame(
            schema={"key": pl.Int64, "event_date": pl.Date, "batch_id": pl.String}
        )
        kept = empty_history().with_columns(
            _own=pl.lit(None, dtype=pl.Int64), _target=pl.lit(None, dtype=pl.Int64)
        )
        version = store.version(RAW_EVENTS)
        before = (
            pl.LazyFrame(schema=RAW_EVENTS.schema)
            if version is None
            else store.scan(RAW_EVENTS, version=version)
        )
        return cls(pl.concat([no_hits, *hits]), pl.concat(lasts), kept, before)

    def rows_for(self, valid: pl.DataFrame, probes: pl.Series | None = None) -> pl.DataFrame:
        """The accepted rows chunk `valid` must be compared with (history + earlier chunks);
        `probes`: its `probe_keys`, if already computed.

        Kept rows are found by their hashes (a kept row shares a key with the chunk exactly
        when one of its hashes is a probe; a collision only adds a row classify ignores)."""
        if valid.height == 0 or (self.kept.height == 0 and self.hits.height == 0):
            return empty_history()
        probes = probe_keys(valid) if probes is None else probes
        parts = [
            self.kept.filter(
                pl.col("_own").is_in(probes.implode()) | pl.col("_target").is_in(probes.implode())
            ).drop("_own", "_target")
        ]
        hits = self.hits
        if hits.height:
            hits = hits.join(pl.DataFrame({"key": probes}), on="key", how="semi")
        if hits.height:
            ids, targets = _ids_and_targets(valid)
            before = _related(
                accepted_only(self.before).filter(
                    pl.col("event_date").is_in(hits["event_date"].unique().implode())
                    & pl.col("batch_id").is_in(hits["batch_id"].unique().implode())
                ),
                ids,
                targets,
            )
            rows = before.select(HISTORY_COLUMNS).collect(engine="streaming")
            parts.insert(0, rows.with_columns(payload=payload_expr()))
        return pl.concat(parts, how="vertical_relaxed")

    def remember(self, accepted: pl.DataFrame, chunk: int) -> None:
        """Keep the rows of `accepted` (chunk number `chunk`, HISTORY_COLUMNS) that a later
        chunk refers to; forget kept rows no chunk after this one refers to."""
        if self.last.height == 0:
            return
        later = self.last.filter(pl.col("last") > chunk)
        keyed = accepted.with_columns(
            _own=key_hash(pl.col("account_id"), pl.col("event_id")),
            _target=pl.when(pl.col("correction_of").is_not_null()).then(
                target_hash(pl.col("account_id"), pl.col("correction_of"))
            ),
        )
        wanted = pl.col("_own").is_in(later["key"].implode()) | pl.col("_target").is_in(
            later["key"].implode()
        )
        fresh = keyed.filter(wanted).with_columns(payload=payload_expr()).select(self.kept.columns)
        self.kept = pl.concat([self.kept.filter(wanted), fresh], how="vertical_relaxed")


def indexed_rows(
    store: DeltaStore,
    raw: pl.LazyFrame,
    keys: pl.DataFrame,
    ids: pl.Series,
    targets: pl.Series,
) -> pl.LazyFrame | None:
    """Rows of `raw` (accepted `raw_events`, lazily) with `event_id` in `ids` or
    `correction_of` in `targets`, read only where the `event_keys` index says rows related to
    `keys` (account_id, event_id, correction_of) can be; None when the index has none."""
    if keys.height == 0 or not store.exists(EVENT_KEYS):
        return None
    hits = (
        store.scan(EVENT_KEYS)
        .filter(pl.col("key").is_in(probe_keys(keys).implode()))
        .select("event_date", "batch_id")
        .unique()
        .collect()
    )
    if hits.height == 0:
        return None
    return _related(
        raw.filter(
            pl.col("event_date").is_in(hits["event_date"].unique().implode())
            & pl.col("batch_id").is_in(hits["batch_id"].unique().implode())
        ),
        ids,
        targets,
    )


def append_keys(
    store: DeltaStore, accepted: pl.DataFrame, batch_id: str, txn: tuple[str, int] | None = None
) -> None:
    """Index the accepted rows of a chunk (`event_date` = their `raw_events` partition);
    `txn` makes the append exactly-once (`DeltaStore.append`)."""
    keys = index_rows(accepted).with_columns(batch_id=pl.lit(batch_id))
    store.append(EVENT_KEYS, keys, metadata={KEY_HASH: hash_canary()}, txn=txn)


def ensure_key_index(store: DeltaStore) -> None:
    """(Re)build `event_keys` from accepted `raw_events` if it is missing or was built with a
    hash that differs from today's (a Polars upgrade may change it): one streamed commit.

    Runs under the lease after the uncommitted-batch cleanup, so every raw row is committed.
    """
    canary = hash_canary()
    if store.last_commit(EVENT_KEYS, KEY_HASH) == canary:
        return
    if not store.exists(RAW_EVENTS) and not store.exists(EVENT_KEYS):
        return
    store.overwrite(EVENT_KEYS, _index_of_raw(store), metadata={KEY_HASH: canary})


def _index_of_raw(store: DeltaStore) -> Iterator[pl.DataFrame]:
    """`event_keys` rows of every accepted raw row, a group of whole days at a time."""
    yield pl.DataFrame(schema=EVENT_KEYS.schema)
    files = store.files(RAW_EVENTS)
    if files.height == 0:
        return
    days = (
        files.group_by(day=pl.col("partition.event_date"))
        .agg(pl.col("num_records").sum())
        .sort("day")
        .with_columns(group=(pl.col("num_records").cum_sum() // REBUILD_ROWS))
    )
    raw = accepted_only(store.scan(RAW_EVENTS))
    for _, group in days.group_by("group", maintain_order=True):
        rows = (
            raw.filter(pl.col("event_date").is_in(group["day"].implode()))
            .select("account_id", "event_id", "correction_of", "event_date", "batch_id")
            .collect(engine="streaming")
        )
        yield index_rows(rows, "batch_id")
