"""The demo month on disk: event files in all four shapes, with planted dirt and a manifest.

`write_demo_inputs` writes `events/main/` (the month as delivered at month end) and
`events/late/` (what arrives after close). Ingest the main files in sorted file-name order
(01 … 07) and each file top to bottom: that is the order "first accepted" refers to, and every
planted retry / conflicting re-send sits after its original in that order.

The returned `DemoManifest` says what was planted where (per-row ledger, counts per kind) and
carries `expected_usage`, the per account × meter × model × billable × hour sums of the distinct
first-accepted valid events (corrections counted in their original's hour), computed from the
generator's own frames, independently of any ingestion code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl

from usagebox_demo import catalog as cat
from usagebox_demo import dirt, malformed
from usagebox_demo.dirt import FILE, HIDDEN, HOUR, KIND, REASON
from usagebox_demo.ids import (
    STREAM_CORRECTION,
    STREAM_LATE_CORRECTION,
    STREAM_LATE_MONTH,
    STREAM_NEXT_MONTH,
    STREAM_PREV_MONTH,
)
from usagebox_demo.rand import Rng
from usagebox_demo.shapes import Shape, shape_frame, write_frames
from usagebox_demo.usage import (
    Stream,
    generate_usage,
    iter_window,
    month_bounds,
)
from usagebox_pipelines.schemas import QTY

DEMO_ACCOUNTS = 50
MIN_EVENTS = 200
EXPECTED_KEYS = ["account_id", "meter_id", "model_id", "billable", "hour"]


@dataclass(frozen=True)
class FileSpec:
    """One delivered file: its ingestion-order key, name, shape and shape options."""

    key: str
    stem: str
    suffix: str
    shape: Shape
    quantity_as: str | None = None
    dims_as: str = "json"
    sdk_column: bool = False

    def name(self, month: str) -> str:
        return f"{self.key}-{self.stem}-{month}{self.suffix}"


MAIN_FILES = (
    FileSpec("01", "api", ".jsonl", "canonical"),
    FileSpec("02", "stigg", ".jsonl.gz", "stigg"),
    FileSpec("03", "warehouse-a", ".csv", "csv", sdk_column=True),
    FileSpec("04", "warehouse-b", ".csv.gz", "csv", sdk_column=True),
    FileSpec("05", "lakehouse", ".parquet", "parquet", quantity_as="decimal"),
    FileSpec("06", "gpu", ".parquet", "parquet", quantity_as="string", dims_as="struct"),
    FileSpec("07", "replay", ".jsonl.gz", "canonical", quantity_as="string"),
)
LATE_FILE = FileSpec("late", "after-close", ".jsonl", "canonical")


@dataclass(frozen=True)
class DirtCounts:
    """How much of each kind of dirt to plant for a month of `n_events` clean events."""

    retries: int
    conflicts: int
    corrections: int
    late_corrections: int
    previous_month: int
    non_billable: int
    malformed_reps: int
    late_month_events: int
    next_month_events: int

    @classmethod
    def for_events(cls, n: int) -> DirtCounts:
        return cls(
            retries=round(0.03 * n),
            conflicts=max(3, round(0.002 * n)),
            corrections=max(3, round(0.002 * n)),
            late_corrections=max(2, round(0.0005 * n)),
            previous_month=max(5, round(0.005 * n)),
            non_billable=max(3, round(0.001 * n)),
            malformed_reps=max(1, n // 20_000),
            late_month_events=max(10, round(0.01 * n)),
            next_month_events=max(10, round(0.005 * n)),
        )


@dataclass(frozen=True)
class DemoManifest:
    """What `write_demo_inputs` wrote and planted; counts are rows, paths are absolute.

    `ledger` is the per-row ledger (file relative to out_dir, 1-based row_number = JSONL line /
    CSV data row after the header / Parquet row, kind, reason, event_id, account_id, billable).
    Kinds: event, billable_false, late_previous_month, correction (accepted); retry (duplicate);
    conflict; malformed (reason = bad_timestamp | missing_account | non_numeric_quantity |
    negative_quantity | too_many_dimensions | broken_json); in the late file late_month_event,
    late_correction, next_month_event. `clean_events` counts the month's distinct events
    including the `billable_false` ones.
    """

    out_dir: Path
    month: str
    seed: int
    main_files: tuple[Path, ...]
    late_files: tuple[Path, ...]
    rows_per_file: dict[str, int]
    clean_events: int
    billable_false: int
    exact_retries: int
    conflicts: int
    corrections: int
    late_previous_month: int
    malformed: dict[str, int]
    late_month_events: int
    late_corrections: int
    next_month_events: int
    expected_usage: pl.DataFrame = field(repr=False)
    expected_late_usage: pl.DataFrame = field(repr=False)
    ledger: pl.DataFrame = field(repr=False)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @property
    def main_rows(self) -> int:
        """Rows in the main files = clean + late previous month + corrections + retries +
        conflicts + malformed."""
        return sum(n for f, n in self.rows_per_file.items() if f.startswith("events/main/"))

    def expected_ingest(self) -> dict[str, int]:
        """What ingesting the main files (sorted name order) must report."""
        return {
            "files": len(self.main_files),
            "accepted": self.clean_events + self.late_previous_month + self.corrections,
            "duplicates": self.exact_retries,
            "conflicts": self.conflicts,
            "rejected": self.malformed_total,
        }

    def to_json(self) -> dict:
        """Counts and paths relative to out_dir (no frames), e.g. for `usagebox demo` output;
        relative so demo-manifest.json is byte-identical wherever the demo is written."""
        return {
            "month": self.month,
            "seed": self.seed,
            "ingestion_order": "sorted file name, each file top to bottom",
            "main_files": [p.relative_to(self.out_dir).as_posix() for p in self.main_files],
            "late_files": [p.relative_to(self.out_dir).as_posix() for p in self.late_files],
            "rows_per_file": self.rows_per_file,
            "clean_events": self.clean_events,
            "billable_false": self.billable_false,
            "exact_retries": self.exact_retries,
            "conflicts": self.conflicts,
            "corrections": self.corrections,
            "late_previous_month": self.late_previous_month,
            "malformed": self.malformed,
            "late_month_events": self.late_month_events,
            "late_corrections": self.late_corrections,
            "next_month_events": self.next_month_events,
            "expected_ingest_main": self.expected_ingest(),
        }


def write_demo_inputs(
    out_dir: Path, month: str = "2026-10", seed: int = 7, n_events: int = 20_000
) -> DemoManifest:
    """Write the demo month's event files under `out_dir/events/{main,late}` (deterministic).

    `n_events` clean events of `month` are spread over the main files; the dirt comes on top
    (see DemoManifest). Existing event files in those two folders are removed first so a
    re-run for another month never leaves stale inputs behind.
    """
    if n_events < MIN_EVENTS:
        raise ValueError(f"n_events must be >= {MIN_EVENTS} to plant every kind of dirt")
    out_dir = Path(out_dir).resolve()
    counts = DirtCounts.for_events(n_events)
    book = cat.build_accounts(seed, DEMO_ACCOUNTS)
    rng = Rng(seed, "dirt", month)
    base = _planned_base(generate_usage(month, seed, n_events, DEMO_ACCOUNTS), rng, counts)
    main = _main_rows(base, rng, counts, book, month=month, seed=seed)
    late = _late_rows(base, rng, counts, book, month=month, seed=seed)
    _clear(out_dir / "events" / "main", out_dir / "events" / "late")
    ledgers, paths = [], []
    for spec in MAIN_FILES:
        rel = f"events/main/{spec.name(month)}"
        ledgers.append(_write_file(out_dir, rel, spec, main.filter(pl.col(FILE) == spec.key)))
        paths.append(out_dir / rel)
    late_rel = f"events/late/{LATE_FILE.name(month)}"
    ledgers.append(_write_file(out_dir, late_rel, LATE_FILE, late))
    manifest = _manifest(out_dir, month, seed, n_events, main, late, pl.concat(ledgers), paths)
    (out_dir / "demo-manifest.json").write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return manifest


def _planned_base(events: pl.DataFrame, rng: Rng, counts: DirtCounts) -> pl.DataFrame:
    """Route clean events to files and pick who is non-billable, conflicted, corrected, retried."""
    base = dirt.route(events, rng)
    correctable = (pl.col("meter_id") != "tool_calls") & (dirt.units() >= 2)
    base = dirt.pick(
        base,
        rng,
        [
            (dirt.K_NON_BILLABLE, pl.col("meter_id") != "gpu_seconds", counts.non_billable),
            (dirt.K_CONFLICT, pl.lit(True), counts.conflicts),
            (dirt.K_CORRECTION, correctable, counts.corrections),
            (dirt.K_LATE_CORRECTION, correctable, counts.late_corrections),
            (dirt.K_RETRY, pl.lit(True), counts.retries),
        ],
    )
    return dirt.flag_non_billable(base)


def _picked(base: pl.DataFrame, kind: str) -> pl.DataFrame:
    return base.filter(pl.col("_pick") == kind)


def _main_rows(base, rng, counts, book, *, month: str, seed: int) -> pl.DataFrame:
    """All rows of the main files (clean + dirt), tagged with their file and kind."""
    start, end = month_bounds(month)
    fixes = dirt.corrections(
        _picked(base, dirt.K_CORRECTION),
        rng,
        stream=STREAM_CORRECTION,
        month=month,
        seed=seed,
        earliest=start,
        latest=dirt.end_of(end),
        kind=dirt.K_CORRECTION,
        file=dirt.RESEND_FILE,
    )
    prev_stream = Stream.make(seed, STREAM_PREV_MONTH, month, book)
    prev = _window(prev_stream, start - timedelta(days=3), 3, counts.previous_month, dirt.K_PREV)
    u = pl.lit(rng.uniform(prev.height))
    prev = prev.with_columns(**{FILE: pl.when(u < 0.5).then(pl.lit("01")).otherwise(pl.lit("07"))})
    donors = base.filter((pl.col("unit") == "tokens") & pl.col("_pick").is_null())
    donors = donors.with_columns(_u=rng.uniform(donors.height)).with_row_index("_i")
    donors = donors.sort("_u", "_i").drop("_u", "_i")
    bad = malformed.build(donors, counts.malformed_reps, month=month, id_key=dirt.rng_key(seed))
    parts = [
        base,
        dirt.retries(_picked(base, dirt.K_RETRY), rng),
        dirt.conflicts(_picked(base, dirt.K_CONFLICT)),
        fixes,
        prev,
        bad,
    ]
    return pl.concat(parts, how="diagonal_relaxed").drop("_pick")


def _late_rows(base, rng, counts, book, *, month: str, seed: int) -> pl.DataFrame:
    """The after-close file: last two days of the month, corrections, first day of next month."""
    _, end = month_bounds(month)
    late_stream = Stream.make(seed, STREAM_LATE_MONTH, month, book)
    extra = _window(
        late_stream, end - timedelta(days=2), 2, counts.late_month_events, dirt.K_LATE_EVENT
    )
    fixes = dirt.corrections(
        _picked(base, dirt.K_LATE_CORRECTION),
        rng,
        stream=STREAM_LATE_CORRECTION,
        month=month,
        seed=seed,
        earliest=end,
        latest=dirt.end_of(end + timedelta(days=2)),
        kind=dirt.K_LATE_CORRECTION,
        file=LATE_FILE.key,
    )
    next_stream = Stream.make(seed, STREAM_NEXT_MONTH, month, book)
    nxt = _window(next_stream, end, 1, counts.next_month_events, dirt.K_NEXT)
    rows = pl.concat([extra, fixes.drop("_pick"), nxt], how="diagonal_relaxed")
    return rows.with_columns(**{FILE: pl.lit(LATE_FILE.key)})


def _window(stream: Stream, first_day, n_days: int, n: int, kind: str) -> pl.DataFrame:
    """Clean events of another time window (own id stream), shaped like routed base rows."""
    events = pl.concat(list(iter_window(stream, first_day, n_days, n)))
    return events.with_columns(
        billable=pl.lit(True),
        reason_code=pl.lit(None, pl.String),
        correction_of=pl.lit(None, pl.String),
        **{KIND: pl.lit(kind), REASON: pl.lit(None, pl.String)},
        **{HOUR: pl.col("timestamp").dt.truncate("1h")},
    )


def _clear(*folders: Path) -> None:
    for folder in folders:
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and path.name.removesuffix(".gz").endswith(
                    (".jsonl", ".csv", ".parquet")
                ):
                    path.unlink()


def _write_file(out_dir: Path, rel: str, spec: FileSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """Sort (time, original before its same-file retry), shape, break malformed rows, write;
    returns the file's ledger."""
    rank = (pl.col(KIND) == dirt.K_RETRY).cast(pl.Int8)
    rows = rows.with_columns(_rank=rank).sort("timestamp", "_rank", "event_id", KIND)
    visible = rows.drop(*HIDDEN, "_rank")
    if spec.sdk_column:
        visible = dirt.with_sdk_version(visible)
    shaped = shape_frame(visible, spec.shape, quantity_as=spec.quantity_as, dims_as=spec.dims_as)
    if rows[REASON].is_not_null().any():
        shaped = shaped.hstack(rows.select(REASON)).with_columns(malformed.mutations(spec.shape))
        shaped = shaped.drop(REASON)
    write_frames([shaped], out_dir / rel)
    return rows.select(
        file=pl.lit(rel),
        row_number=pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
        kind=pl.col(KIND),
        reason=pl.col(REASON),
        event_id=pl.col("event_id"),
        account_id=pl.when(pl.col(REASON).ne_missing(malformed.MISSING_ACCOUNT)).then("account_id"),
        billable=pl.col("billable"),
    )


def expected_usage(rows: pl.DataFrame) -> pl.DataFrame:
    """Reference hourly sums of accepted rows: account × meter × model × billable × hour."""
    return (
        rows.rename({HOUR: "hour"})
        .group_by(EXPECTED_KEYS)
        .agg(sum=pl.col("quantity").sum().cast(QTY), count=pl.len().cast(pl.Int64))
        .sort(EXPECTED_KEYS, nulls_last=True)
    )


def _count(frame: pl.DataFrame, kind: str) -> int:
    return frame.filter(pl.col(KIND) == kind).height


def _manifest(out_dir, month, seed, n_events, main, late, ledger, paths) -> DemoManifest:
    accepted = main.filter(pl.col(KIND).is_in(dirt.ACCEPTED_KINDS))
    reasons = main.filter(pl.col(KIND) == dirt.K_MALFORMED)[REASON].value_counts()
    bad = dict(zip(reasons[REASON], reasons["count"], strict=True))
    per_file = ledger.group_by("file", maintain_order=True).len()
    return DemoManifest(
        out_dir=out_dir,
        month=month,
        seed=seed,
        main_files=tuple(paths),
        late_files=(out_dir / f"events/late/{LATE_FILE.name(month)}",),
        rows_per_file=dict(zip(per_file["file"], per_file["len"], strict=True)),
        clean_events=n_events,
        billable_false=_count(main, dirt.K_NON_BILLABLE),
        exact_retries=_count(main, dirt.K_RETRY),
        conflicts=_count(main, dirt.K_CONFLICT),
        corrections=_count(main, dirt.K_CORRECTION),
        late_previous_month=_count(main, dirt.K_PREV),
        malformed={r: bad.get(r, 0) for r in malformed.REASONS},
        late_month_events=_count(late, dirt.K_LATE_EVENT),
        late_corrections=_count(late, dirt.K_LATE_CORRECTION),
        next_month_events=_count(late, dirt.K_NEXT),
        expected_usage=expected_usage(accepted),
        expected_late_usage=expected_usage(late),
        ledger=ledger,
    )


__all__ = [
    "MAIN_FILES",
    "DemoManifest",
    "DirtCounts",
    "FileSpec",
    "expected_usage",
    "write_demo_inputs",
]
