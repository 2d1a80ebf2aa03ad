"""Dedupe through the `event_keys` index and `events` folded per batch stay exact.

Whatever the chunking and batching, ingest through the index (one lookup per file, earlier
chunks of the file kept in memory) writes exactly the tables the former full scan of
`raw_events` per chunk wrote, and the incrementally folded `events` equals `events` rebuilt from
scratch; the index is rebuilt when it is missing or its hash changed; a fold interrupted between
its commits is finished by the next run without duplicating anything.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import event, write_jsonl
from tests.test_metering import _dirty_stream, _hourly, _naive, _run, base_events
from usagebox_pipelines.catalog import (
    EVENT_CONFLICTS,
    EVENT_KEYS,
    EVENTS,
    EVENTS_BUILDS,
    INGEST_LOG,
    QUARANTINE,
    RAW_EVENTS,
)
from usagebox_pipelines.events import keys
from usagebox_pipelines.events.build import INHERITED, build_events, resolve_corrections
from usagebox_pipelines.events.classify import HISTORY_COLUMNS
from usagebox_pipelines.events.normalize import payload_expr
from usagebox_pipelines.events.raw import accepted_only
from usagebox_pipelines.stages import dedupe
from usagebox_pipelines.stages import ingest as ingest_stage
from usagebox_pipelines.stages.dedupe import FileHistory, empty_history, key_ranges
from usagebox_pipelines.stages.events import committed_raw_events, update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.verify import verify
from usagebox_pipelines.storage import DeltaStore, WriteBehind

KEY = ["account_id", "event_id"]


def _table(store: DeltaStore, table, drop=("ingested_at",)) -> pl.DataFrame:
    frame = store.read(table).drop(*[c for c in drop if c in table.schema])
    return frame.select(sorted(frame.columns)).sort(sorted(frame.columns), nulls_last=True)


def _full_scan(store: DeltaStore, valid: pl.DataFrame) -> pl.DataFrame:
    """The former lookup: every accepted `raw_events` row (history and the file's earlier
    chunks, as written) sharing an id with the chunk or correcting its corrections' targets."""
    if valid.height == 0 or not store.exists(RAW_EVENTS):
        return empty_history()
    targets = valid["correction_of"].drop_nulls().unique()
    ids = pl.concat([valid["event_id"], targets]).unique()
    rows = (
        accepted_only(store.scan(RAW_EVENTS))
        .filter(
            pl.col("event_id").is_in(ids.implode())
            | pl.col("correction_of").is_in(targets.implode())
        )
        .select(HISTORY_COLUMNS)
        .collect()
    )
    return rows.with_columns(payload=payload_expr())


def _events_from_scratch(store: DeltaStore) -> pl.DataFrame:
    """`events` as the former full rebuild computed it: every correction in history resolved."""
    raw = committed_raw_events(store).collect()
    corrections = raw.filter(pl.col("correction_of").is_not_null())
    originals = raw.filter(pl.col("correction_of").is_null())
    resolved = resolve_corrections(
        corrections, originals.select("account_id", "event_id", "quantity", "hour", *INHERITED)
    )
    rows = build_events(originals, resolved)
    return rows.select(sorted(rows.columns)).sort(sorted(rows.columns), nulls_last=True)


def _ingest_all(home: Path, files: list[Path], chunk_rows: int, fold: list[bool]) -> DeltaStore:
    """Ingest each file; fold right after it in the same unit of work (as `usagebox ingest`
    does: the fold then reuses ingest's index hits) where `fold` says so, else later."""
    store = DeltaStore(str(home))
    for path, then_fold in zip(files, fold, strict=True):
        if then_fold:
            with store.writer("test"), store.cached():
                ingest_files(store, [path], chunk_rows=chunk_rows)
                update_events(store)
        else:
            ingest_files(store, [path], chunk_rows=chunk_rows)
    update_events(store)
    return store


def _reference(home: Path, files: list[Path], chunk_rows: int, fold: list[bool]) -> DeltaStore:
    """The former lookup reads the file's earlier chunks back from `raw_events`: each chunk is
    committed whole (no held-back days) before the next is classified (no write-behind)."""
    with pytest.MonkeyPatch.context() as patch:
        reader = DeltaStore(str(home))
        patch.setattr(FileHistory, "rows_for", lambda _self, valid: _full_scan(reader, valid))
        patch.setattr(ingest_stage, "SPARSE_DAY_SHARE", 10**12)
        patch.setattr(WriteBehind, "submit", lambda _self, commit: commit())
        return _ingest_all(home, files, chunk_rows, fold)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base=base_events, data=st.data())
def test_the_index_finds_what_a_full_scan_of_history_finds(tmp_path_factory, base, data) -> None:
    stream = _dirty_stream(base, data)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    batches = [b for b in batches if b]
    fold = [data.draw(st.booleans()) for _ in batches]
    chunk_rows = data.draw(st.integers(1, 7))
    folder = tmp_path_factory.mktemp("chunks")
    files = [write_jsonl(folder / f"{i:03d}.jsonl", batch) for i, batch in enumerate(batches)]
    # the lookup in ranges of the key space (1 key per range: every key in its own) finds
    # what one lookup of the whole file finds
    per_range = data.draw(st.sampled_from([1, 3, dedupe.LOOKUP_KEYS]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dedupe, "LOOKUP_KEYS", per_range)
        chunked = _ingest_all(folder / "indexed", files, chunk_rows, fold)
    whole = _reference(folder / "scanned", files, chunk_rows, fold)
    for table in (RAW_EVENTS, QUARANTINE, EVENT_CONFLICTS, EVENTS, INGEST_LOG):
        assert _table(chunked, table).equals(_table(whole, table)), table
    # the per-batch fold equals the former rebuild of every day from all of history
    rebuilt = _events_from_scratch(chunked)
    assert _table(chunked, EVENTS, drop=()).equals(rebuilt)
    _run(chunked)
    assert _hourly(chunked) == _naive(stream)
    assert all(r.passed for r in verify(chunked))


def test_a_waiting_correction_is_applied_when_its_original_arrives_with_duplicates(
    tmp_path: Path,
) -> None:
    """Invariant 1 (every accepted row in `events` once): a correction that waited in an
    earlier file is applied, not dropped, when `usagebox ingest` folds the file bringing its
    original (and a duplicate of an older event, so the batch has index hits in history).
    Found by the property test above (seed 332693343413899411474482363563359134328)."""
    first = write_jsonl(
        tmp_path / "a.jsonl",
        [event("e0", account="b"), event("c5", account="b", qty=-3, correction_of="e5")],
    )
    second = write_jsonl(
        tmp_path / "b.jsonl",
        [event("e0", account="b"), event("e5", account="b", qty=40, ts="2026-10-01T01:07:00Z")],
    )
    store = _ingest_all(tmp_path / "home", [first, second], chunk_rows=5, fold=[True, True])
    events = _table(store, EVENTS, drop=())
    assert events.equals(_events_from_scratch(store))
    c5 = events.filter(pl.col("event_id") == "c5").row(0, named=True)
    assert (c5["status"], c5["quantity"]) == ("ok", -3)
    held = "1_events_hold_every_accepted_row"
    assert {r.name: r.passed for r in verify(store)}[held]
    # `usagebox verify` names such a loss: the same home with the correction taken out
    kept = store.read(EVENTS).filter(pl.col("event_id") != "c5")
    store.replace_partition(EVENTS, kept, event_date=kept["event_date"].unique().to_list())
    (lost,) = [r for r in verify(store) if r.name == held]
    assert not lost.passed and lost.examples == [{"account_id": "b", "event_id": "c5"}]


def _two_files(tmp_path: Path) -> tuple[Path, Path]:
    first = write_jsonl(
        tmp_path / "a.jsonl",
        [event("e1", qty=5), event("e2", qty=7), event("c1", qty=-2, correction_of="e9")],
    )
    second = write_jsonl(
        tmp_path / "b.jsonl",
        [
            event("e1", qty=5),  # duplicate of history
            event("e2", qty=8),  # conflict with history
            event("e9", qty=10),  # the original c1 waits for
            event("c2", qty=-3, correction_of="e1"),
        ],
    )
    return first, second


def _check_second_file(store: DeltaStore, summary) -> None:
    assert (summary.accepted, summary.duplicates, summary.conflicts) == (2, 1, 1)
    update_events(store)
    events = store.read(EVENTS).sort("event_id")
    assert events["event_id"].to_list() == ["c1", "c2", "e1", "e2", "e9"]
    assert events["status"].to_list() == ["ok", "ok", "ok", "ok", "ok"]
    checked = {r.name: r.passed for r in verify(store)}
    assert checked["1_ingest_rows_reconcile"] and checked["2_events_unique"]


def test_a_missing_index_is_rebuilt_from_raw_events(tmp_path: Path, store: DeltaStore) -> None:
    first, second = _two_files(tmp_path)
    ingest_files(store, [first])
    store.drop(EVENT_KEYS)  # e.g. a home written before the index existed
    _check_second_file(store, ingest_files(store, [second]))
    assert store.read(EVENT_KEYS).height == 3 + 2 + 1 + 1  # own keys + target keys


def test_an_index_built_with_another_hash_is_rebuilt(
    tmp_path: Path, store: DeltaStore, monkeypatch
) -> None:
    first, second = _two_files(tmp_path)
    ingest_files(store, [first])
    monkeypatch.setattr(keys, "OWN_SEED", keys.OWN_SEED + 1)  # as if Polars changed its hash
    _check_second_file(store, ingest_files(store, [second]))


def test_a_fold_interrupted_before_its_builds_row_is_finished_once(
    tmp_path: Path, store: DeltaStore, monkeypatch
) -> None:
    first, second = _two_files(tmp_path)
    ingest_files(store, [first])
    update_events(store)
    ingest_files(store, [second])
    real_append = store.append

    def crash_on_builds(table, df, **kwargs):
        if table is EVENTS_BUILDS:
            raise KeyboardInterrupt("killed before events_builds")
        return real_append(table, df, **kwargs)

    monkeypatch.setattr(store, "append", crash_on_builds)
    try:
        update_events(store)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(store, "append", real_append)
    update = update_events(store)
    assert len(update.batches) == 1
    events = store.read(EVENTS)
    assert events.select(KEY).is_duplicated().sum() == 0
    assert _table(store, EVENTS, drop=()).equals(_events_from_scratch(store))


def test_only_days_of_waiting_corrections_are_rewritten(
    tmp_path: Path, store: DeltaStore, monkeypatch
) -> None:
    rows = [event(f"e{i}", ts=f"2026-10-{i + 1:02d}T10:00:00Z") for i in range(5)]
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", rows)])
    waiting = event("c1", qty=-1, ts="2026-10-03T10:00:00Z", correction_of="late")
    ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [waiting])])
    update_events(store)
    replaced = []
    real = store.replace_partition

    def record(table, df, **kwargs):
        replaced.append({k: v for k, v in kwargs.items() if k != "metadata"})
        return real(table, df, **kwargs)

    monkeypatch.setattr(store, "replace_partition", record)
    original = event("late", qty=5, ts="2026-10-20T10:00:00Z")
    ingest_files(store, [write_jsonl(tmp_path / "c.jsonl", [original])])
    update = update_events(store)
    batch = store.read(INGEST_LOG).sort("ingested_at")["batch_id"][-1]
    day3, day20 = pl.date(2026, 10, 3), pl.date(2026, 10, 20)
    assert replaced == [
        {"batch_id": batch},
        {"event_date": [pl.select(day3).item(), pl.select(day20).item()]},
    ]
    assert [d.isoformat() for d in update.days] == ["2026-10-03", "2026-10-20"]
    moved = store.read(EVENTS).filter(pl.col("event_id") == "c1")
    assert moved.select("status", "event_date").row(0) == ("ok", pl.select(day20).item())


def test_a_resend_repeated_in_one_file_is_compared_with_the_version_that_stands(
    tmp_path: Path, store: DeltaStore
) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("e1", qty=5)])])
    again = [event("e1", qty=6), event("e1", qty=6), event("e1", qty=5)]
    summary = ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", again)])
    assert (summary.accepted, summary.duplicates, summary.conflicts) == (0, 1, 2)
    kept = store.read(EVENT_CONFLICTS)["kept_payload"].to_list()
    assert len(kept) == 2 and all('"quantity":"5.000000000000"' in k for k in kept)


def test_key_ranges_cover_the_key_space_once() -> None:
    """Every Int64 key is in exactly one range, whatever the number of ranges."""
    edges = [-(2**63), -1, 0, 1, 2**62, 2**63 - 1]
    for count, per_range in [(0, 4), (10, 4_000_000), (30_000_000, 4_000_000), (7, 1)]:
        ranges = key_ranges(count, per_range)
        assert len(ranges) == max(1, -(-count // per_range))
        frame = pl.DataFrame({"key": edges}, schema={"key": pl.Int64})
        counts = sum(
            frame.select(dedupe.in_key_range(a, b).cast(pl.Int32)).to_series() for a, b in ranges
        )
        assert counts.to_list() == [1] * len(edges)
