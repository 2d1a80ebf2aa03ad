"""Stage `events`: fold each committed ingest batch into `events` in O(batch), not O(history).

A batch's accepted rows are copied once: originals as they are (`status` ok), its corrections
resolved against their originals and earlier corrections (found through the `event_keys` index,
never by reading all history). The only older rows a batch changes are corrections that were
waiting for an original this batch brings (`pending` -> `ok` / `rejected`, moving to the
original's hour); only the days holding those few are rewritten.

Commits, each idempotent so a crash anywhere is finished by the next run:
1. the batch's rows, replacing any rows of that batch (`batch_id` predicate), in groups of
   whole hours of at most `CHUNK_ROWS` rows (memory by chunk, even for a day of a million
   events; later groups append);
2. if the batch resolved waiting corrections, the days holding them, rewritten in one commit;
3. `events_builds` records the batch (last, so a crash redoes the batch).
Between 1 and 2 a reader sees the batch with its waiting corrections not applied yet, never a
duplicated key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from usagebox_pipelines.catalog import EVENTS, EVENTS_BUILDS, INGEST_LOG, RAW_EVENTS
from usagebox_pipelines.events.build import INHERITED, KEY, build_events, resolve_corrections
from usagebox_pipelines.events.keys import probe_keys
from usagebox_pipelines.events.raw import accepted_only
from usagebox_pipelines.events.readers import CHUNK_ROWS
from usagebox_pipelines.events.window import min_event_time
from usagebox_pipelines.stages.dedupe import ensure_key_index, history_hits_key, indexed_rows
from usagebox_pipelines.stages.ingest import committed_batches
from usagebox_pipelines.storage import DeltaStore, WriteBehind, writes_tables

# The first hourly partition = the earliest accepted event time (events/window.py): ingest
# quarantines anything earlier, so `events_inside_partitions` holds by construction.
FIRST_HOUR = min_event_time()
TARGET = ["account_id", "correction_of"]


def committed_raw_events(store: DeltaStore) -> pl.LazyFrame:
    """Accepted `raw_events` rows of batches whose ingest finished (crashed batches are
    invisible; duplicate and conflict arrivals are in the landing log, never in `events`)."""
    raw = accepted_only(store.scan(RAW_EVENTS))
    return raw.join(committed_batches(store), on="batch_id", how="semi")


@dataclass
class EventsUpdate:
    batches: list[str]
    days: list[date]
    hours: list[datetime]
    rows: int


@dataclass
class _Fold:
    days: set[date] = field(default_factory=set)
    hours: set[datetime] = field(default_factory=set)
    rows: int = 0

    def wrote(self, frame: pl.DataFrame) -> None:
        self.days.update(frame["event_date"].unique().to_list())
        self.hours.update(frame["hour"].unique().to_list())
        self.rows += frame.height


@writes_tables("events")
def update_events(store: DeltaStore, run_id: str = "cli") -> EventsUpdate:
    """Fold newly committed batches into `events`, in ingest order, one batch at a time."""
    with store.cached():
        done = store.scan(EVENTS_BUILDS).select("batch_id")
        new_batches = (
            store.scan(INGEST_LOG)
            .select("batch_id", "ingested_at")
            .join(done, on="batch_id", how="anti")
            .sort("ingested_at", "batch_id")
            .collect()
        )
        if new_batches.height == 0:
            return EventsUpdate([], [], [], 0)
        ensure_key_index(store)
        total = _Fold()
        for batch_id in new_batches["batch_id"].to_list():
            _fold_batch(store, batch_id, run_id, total)
            built = pl.DataFrame({"batch_id": [batch_id]}).with_columns(
                built_at=pl.lit(datetime.now(UTC))
            )
            store.append(EVENTS_BUILDS, built)
    return EventsUpdate(
        new_batches["batch_id"].to_list(), sorted(total.days), sorted(total.hours), total.rows
    )


def _fold_batch(store: DeltaStore, batch_id: str, run_id: str, total: _Fold) -> None:
    """Commits 1 and 2 of the module docstring for one batch."""
    meta = {"run_id": run_id, "stage": "events", "batch_id": batch_id}
    raw = committed_raw_events(store)
    batch = raw.filter(pl.col("batch_id") == batch_id)  # file statistics: only its files
    fresh = batch.filter(pl.col("correction_of").is_not_null()).collect()
    waiting = _resolved_by(store, batch)
    targets = pl.concat([fresh.select(TARGET), waiting.select(TARGET)]).unique()
    resolved = _resolve(store, raw, targets, fresh, batch_id, waiting)
    own = resolved.filter(pl.col("batch_id") == batch_id)
    with WriteBehind() as writes:  # group n + 1 is read and built while n is written
        for n, (days, hours) in enumerate(_hour_groups(batch)):
            originals = batch.filter(
                pl.col("event_date").is_in(days.implode())  # prunes partitions
                & pl.col("hour").is_in(hours.implode())
                & pl.col("correction_of").is_null()
            ).collect()
            rows = build_events(originals, own if n == 0 else own.clear())
            writes.submit(functools.partial(_write_group, store, rows, n, meta, batch_id))
            total.wrote(rows)
    if waiting.height:
        _rewrite_waiting(store, waiting, resolved, meta, total)


def _write_group(
    store: DeltaStore, rows: pl.DataFrame, n: int, meta: dict[str, str], batch_id: str
) -> None:
    """Commit 1 for hour group `n`: the first replaces any rows of the batch (a crashed fold's),
    later ones append."""
    if n == 0:
        store.replace_partition(EVENTS, rows, metadata=meta, batch_id=batch_id)
    else:
        store.append(EVENTS, rows, metadata=meta)


def _hour_groups(batch: pl.LazyFrame) -> list[tuple[pl.Series, pl.Series]]:
    """The batch's hours, in groups of at most `CHUNK_ROWS` rows (an hour whole), each with its
    `event_date` days: what one commit of the fold holds in memory, whatever a day holds."""
    hours = (
        batch.group_by("event_date", "hour")
        .agg(n=pl.len())
        .sort("hour")
        .with_columns(group=(pl.col("n").cum_sum() - pl.col("n")) // max(CHUNK_ROWS, 1))
        .collect()
    )
    return [
        (part["event_date"].unique(), part["hour"])
        for _, part in hours.group_by("group", maintain_order=True)
    ]


def _resolved_by(store: DeltaStore, batch: pl.LazyFrame) -> pl.DataFrame:
    """Corrections in `events` waiting (`pending`) for an original that this batch brings."""
    pending = (
        store.scan(EVENTS)  # file statistics on `status` skip files without pending rows
        .filter(pl.col("status") == "pending")
        .select("account_id", "event_id", "correction_of", "event_date", "hour", "batch_id")
        .collect()
    )
    if pending.height == 0:
        return pending
    arrived = (
        batch.filter(
            pl.col("correction_of").is_null()
            & pl.col("event_id").is_in(pending["correction_of"].unique().implode())
        )
        .select("account_id", pl.col("event_id").alias("correction_of"))
        .collect()
    )
    return pending.join(arrived, on=TARGET, how="semi")


def _resolve(
    store: DeltaStore,
    raw: pl.LazyFrame,
    targets: pl.DataFrame,
    like: pl.DataFrame,
    batch_id: str,
    waiting: pl.DataFrame,
) -> pl.DataFrame:
    """Every correction of `targets` (account_id, correction_of), resolved in arrival order
    against its original; `raw` rows are read only where the key index says they can be.
    `like`: a frame of raw rows (for the columns when there is nothing to resolve).

    Right after its ingest (same `cached()` block) the index hits of the batch are known: the
    rows are then the batch's own and those of history the hits name, without another scan of
    the index. Those hits are the batch's own keys met in history, so the `waiting`
    corrections (pending in `events`, their original in this batch) are read by where
    `events` says they are: missing them dropped them from `events` (a lost correction).
    Corrections of later batches are not needed: they never change earlier ones.
    """
    found = like.clear()
    if targets.height:
        ids = targets["correction_of"].unique()
        keys = targets.with_columns(event_id=pl.col("correction_of"))
        hits = store.memo.get(history_hits_key(batch_id))
        if hits is None:
            rows = indexed_rows(store, raw, keys, ids, ids)
            found = found if rows is None else rows.collect(engine="streaming")
        else:
            found = _own_and_hit_rows(raw, batch_id, hits, keys, ids)
    if waiting.height:
        found = pl.concat([found, _waiting_rows(raw, waiting)], how="vertical_relaxed")
        found = found.unique(subset=KEY, keep="first", maintain_order=True)
    corrections = found.filter(pl.col("correction_of").is_not_null()).join(
        targets, on=TARGET, how="semi"
    )
    originals = (
        found.filter(pl.col("correction_of").is_null())
        .join(targets.rename({"correction_of": "event_id"}), on=KEY, how="semi")
        .select("account_id", "event_id", "quantity", "hour", *INHERITED)
    )
    return resolve_corrections(corrections, originals)


def _waiting_rows(raw: pl.LazyFrame, waiting: pl.DataFrame) -> pl.DataFrame:
    """The raw rows of the waiting corrections (their days and batches, as `events` says)."""
    return (
        raw.filter(
            pl.col("event_date").is_in(waiting["event_date"].unique().implode())
            & pl.col("batch_id").is_in(waiting["batch_id"].unique().implode())
        )
        .join(waiting.select(KEY).lazy(), on=KEY, how="semi")
        .collect(engine="streaming")
    )


def _own_and_hit_rows(
    raw: pl.LazyFrame, batch_id: str, hits: pl.DataFrame, keys: pl.DataFrame, ids: pl.Series
) -> pl.DataFrame:
    """Rows of `raw` related to `ids` in the batch itself and where `hits` (the batch's index
    hits in earlier history) name partitions and batches for `keys`."""
    related = pl.col("event_id").is_in(ids.implode()) | pl.col("correction_of").is_in(ids.implode())
    parts = [raw.filter(pl.col("batch_id") == batch_id).filter(related)]
    hits = hits.join(pl.DataFrame({"key": probe_keys(keys)}), on="key", how="semi")
    if hits.height:
        parts.append(
            raw.filter(
                pl.col("event_date").is_in(hits["event_date"].unique().implode())
                & pl.col("batch_id").is_in(hits["batch_id"].unique().implode())
            ).filter(related)
        )
    return pl.concat([p.collect(engine="streaming") for p in parts], how="vertical_relaxed")


def _rewrite_waiting(
    store: DeltaStore,
    waiting: pl.DataFrame,
    resolved: pl.DataFrame,
    meta: dict[str, str],
    total: _Fold,
) -> None:
    """Commit 2: move resolved waiting corrections, rewriting only the days they leave and
    enter (one commit: a reader never sees a correction twice or not at all)."""
    moved = build_events(resolved.clear(), resolved.join(waiting, on=KEY, how="semi"))
    days = sorted(set(waiting["event_date"].to_list()) | set(moved["event_date"].to_list()))
    kept = (
        store.scan(EVENTS)
        .filter(pl.col("event_date").is_in(days))
        .collect()
        .join(waiting.select(KEY), on=KEY, how="anti")
    )
    rows = pl.concat([kept, moved], how="diagonal_relaxed")
    store.replace_partition(EVENTS, rows, metadata=meta, event_date=days)
    total.wrote(moved)
    total.days.update(days)
    total.hours.update(waiting["hour"].to_list())


def events_frame(store: DeltaStore, version: int | None = None) -> pl.LazyFrame:
    return store.scan(EVENTS, version=version)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)
