"""`raw_events` file layout: a day that a chunk holds only a few rows of (late events, a clock
off by a day) is not a file per chunk. Ingest holds such rows back and writes them together,
with every row still landing exactly once, in a batch that appears only once it is logged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENTS, RAW_EVENTS
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files

MAIN_DAY = datetime(2026, 10, 15, tzinfo=UTC)


def _file(tmp_path: Path, main_rows: int, late_days: int, late_per_day: int) -> Path:
    """`main_rows` events on MAIN_DAY, with `late_per_day` events on each of `late_days`
    September days spread evenly through the file (as late events arrive)."""
    late = [
        event(f"late-{d}-{k}", ts=(datetime(2026, 9, 1, 9, tzinfo=UTC) + timedelta(days=d))
              .isoformat().replace("+00:00", "Z"))
        for k in range(late_per_day) for d in range(late_days)
    ]  # fmt: skip
    main = [
        event(f"main-{n}", ts=(MAIN_DAY + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"))
        for n in range(main_rows)
    ]
    step = max(len(main) // max(len(late), 1), 1)
    rows: list[dict | str] = []
    for n, row in enumerate(main):
        rows.append(row)
        if n % step == 0 and late:
            rows.append(late.pop())
    rows.extend(late)
    return write_jsonl(tmp_path / "events.jsonl", rows)


def test_sparse_days_are_one_file_each_not_one_per_chunk(tmp_path: Path, store) -> None:
    """Invariant (nothing lost, exactly once): every row is in `raw_events` once and folds into
    `events`; the 20 sparse days, present in all 6 chunks, are one file each."""
    path = _file(tmp_path, main_rows=5_940, late_days=20, late_per_day=3)
    summary = ingest_files(store, [path], chunk_rows=1_000)
    assert (summary.rows, summary.accepted, summary.rejected) == (6_000, 6_000, 0)
    raw = store.read(RAW_EVENTS)
    assert raw.height == 6_000 and raw["event_id"].n_unique() == 6_000
    files = store.files(RAW_EVENTS).with_columns(day=pl.col("partition.event_date").cast(pl.String))
    per_day = dict(files.group_by("day").len().iter_rows())
    september = {d: n for d, n in per_day.items() if d.startswith("2026-09")}
    assert len(september) == 20 and set(september.values()) == {1}
    assert per_day["2026-10-15"] == 6  # the well-filled day: one file per chunk
    update_events(store)
    assert store.read(EVENTS).height == 6_000


def test_held_rows_past_a_chunk_flush_in_the_file_and_land_once(tmp_path: Path, store) -> None:
    """Invariant (exactly once): when the held rows reach a chunk, they are written mid-file
    with their own commit version; a re-ingest of the same file adds nothing."""
    # 4 chunks of 250 main and 250 sparse rows (about 6 a day): 500 held after chunks 2 and 4
    path = _file(tmp_path, main_rows=1_000, late_days=40, late_per_day=25)
    summary = ingest_files(store, [path], chunk_rows=500)
    assert (summary.rows, summary.accepted) == (2_000, 2_000)
    raw = store.read(RAW_EVENTS)
    assert raw.height == 2_000 and raw["event_id"].n_unique() == 2_000
    files = store.files(RAW_EVENTS).with_columns(day=pl.col("partition.event_date").cast(pl.String))
    sparse = files.filter(pl.col("day") != "2026-10-15").group_by("day").len()
    assert sparse.height == 40 and sparse["len"].max() == 2  # two flushes, not four chunks
    update_events(store)
    assert store.read(EVENTS).height == 2_000
    again = ingest_files(store, [path], chunk_rows=500)
    assert again.duplicates == 2_000 and store.read(RAW_EVENTS).height == 2_000
