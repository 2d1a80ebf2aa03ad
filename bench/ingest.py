"""Benchmark ingest: N demo events from file(s) into Delta via `ingest_files`, end to end.

Usage: python bench/ingest.py [--events 1000000] [--format parquet|jsonl] [--accounts 50]
                              [--files 1] [--chunk-rows 1000000] [--workdir DIR] [--profile]
                              [--with-events]

Generation (demo distribution, `iter_usage` + `write_shape`, canonical shape, days split evenly
over `--files` files) runs in a child process before timing starts. The timed stage is
`ingest_files(store, paths)`: read + parse, normalise + pandera validation, exactly-once
classification against history, Delta appends and the `ingest_log` commit. `--with-events` also
times `update_events` (which the CLI runs right after) as a separate stage, not part of events/s.
`--profile` adds a per-function breakdown (inclusive wall seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Measure,
    MiB,
    StageProfile,
    base_parser,
    dir_size,
    generate_files,
    rate,
    result_line,
    workdir,
)

TARGET_EPS = {"parquet": 1_000_000, "jsonl": 250_000}
TARGET_RSS_MB = 3 * 1024
# Functions whose inclusive time makes up the ingest breakdown.
INGEST_STAGES = [
    ("usagebox_pipelines.stages.ingest:remove_uncommitted_batches", "remove_uncommitted_batches"),
    ("usagebox_pipelines.stages.ingest:file_sha256", "file_sha256"),
    ("usagebox_pipelines.stages.ingest:_logged_batch", "_logged_batch"),
    ("usagebox_pipelines.stages.ingest:_LateContext.load", "_LateContext.load"),
    ("usagebox_pipelines.stages.ingest:read_chunks", "read_chunks (parse)"),
    ("usagebox_pipelines.stages.ingest:normalize_events", "normalize_events (incl. pandera)"),
    ("usagebox_pipelines.events.normalize:_validate_schema", "  pandera _validate_schema"),
    ("usagebox_pipelines.stages.dedupe:FileHistory.lookup", "FileHistory.lookup (per file)"),
    ("usagebox_pipelines.stages.dedupe:FileHistory.rows_for", "FileHistory.rows_for (per chunk)"),
    ("usagebox_pipelines.stages.ingest:classify", "classify"),
    ("usagebox_pipelines.storage:DeltaStore._write", "DeltaStore._write (all appends)"),
    ("usagebox_pipelines.storage:write_deltalake", "  write_deltalake"),
    ("usagebox_pipelines.storage:DeltaStore.exists", "DeltaStore.exists (table opens)"),
    ("usagebox_pipelines.storage:DeltaStore.version", "DeltaStore.version (table opens)"),
]


def main() -> None:
    parser = base_parser(__doc__, accounts=50)
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--files", type=int, default=1, help="split the month over this many files")
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: CHUNK_ROWS (1 M)")
    parser.add_argument("--profile", action="store_true", help="per-function stage breakdown")
    parser.add_argument("--with-events", action="store_true", help="also time update_events")
    args = parser.parse_args()

    from usagebox_pipelines.events.readers import CHUNK_ROWS
    from usagebox_pipelines.stages.events import update_events
    from usagebox_pipelines.stages.ingest import ingest_files
    from usagebox_pipelines.storage import DeltaStore

    chunk_rows = args.chunk_rows or CHUNK_ROWS
    with workdir(args.workdir) as work:
        paths, gen_secs = generate_files(
            work / "input", args.format, args.events, args.accounts, args.files,
            args.month, args.seed,
        )  # fmt: skip
        input_mb = sum(p.stat().st_size for p in paths) / MiB
        print(f"generated {args.events:,} events in {len(paths)} {args.format} file(s), "
              f"{input_mb:.1f} MiB, in {gen_secs:.1f} s (not timed)")  # fmt: skip
        store = DeltaStore(str(work / "home"))

        prof = StageProfile()
        if args.profile:
            for target, label in INGEST_STAGES:
                prof.wrap(target, label)
        with Measure("ingest") as m:
            summary = ingest_files(store, paths, source="bench", chunk_rows=chunk_rows)
        prof.restore()
        events_stage = None
        if args.with_events:
            with Measure("update_events") as ev:
                update = update_events(store, run_id="bench")
            events_stage = {**ev.as_dict(), "events_rows": update.rows}
        delta_mb = dir_size(work / "home") / MiB

        eps = rate(args.events, m.seconds)
        target = TARGET_EPS[args.format]
        print(f"ingest {args.format}: {args.events:,} events, {len(paths)} file(s), "
              f"chunk_rows={chunk_rows:,}")  # fmt: skip
        print(f"  accepted={summary.accepted:,} rejected={summary.rejected:,} "
              f"duplicates={summary.duplicates:,} errors={len(summary.errors)}")  # fmt: skip
        print(f"  time {m.seconds:.2f} s -> {eps:,} events/s "
              f"(target >= {target:,}: {'OK' if eps >= target else 'MISSED'}, "
              f"{eps / target:.2f}x of target)")  # fmt: skip
        print(f"  peak RSS {m.peak_rss / MiB:,.0f} MiB (target < {TARGET_RSS_MB:,} MiB at 10 M: "
              f"{'OK' if m.peak_rss / MiB < TARGET_RSS_MB else 'MISSED'}); "
              f"Delta on disk {delta_mb:,.0f} MiB")  # fmt: skip
        if events_stage:
            print(f"  update_events {events_stage['seconds']:.2f} s, "
                  f"peak RSS {events_stage['peak_rss_mb']:,} MiB")  # fmt: skip
        if args.profile:
            prof.print()
        if summary.accepted != args.events:
            print(f"  WARNING: accepted {summary.accepted:,} of {args.events:,}; "
                  f"errors: {summary.errors[:3]}")  # fmt: skip
        result_line(
            "ingest",
            format=args.format,
            events=args.events,
            accounts=args.accounts,
            files=len(paths),
            chunk_rows=chunk_rows,
            input_mb=round(input_mb, 1),
            generation_seconds=round(gen_secs, 2),
            **m.as_dict(),
            events_per_second=eps,
            target_events_per_second=target,
            meets_throughput=eps >= target,
            meets_rss=m.peak_rss / MiB < TARGET_RSS_MB,
            accepted=summary.accepted,
            rejected=summary.rejected,
            delta_mb=round(delta_mb, 1),
            update_events=events_stage,
            stages=prof.table() if args.profile else None,
        )


if __name__ == "__main__":
    main()
