"""Benchmark an incremental run: 100 K new events for one day on top of a month of history.

Usage: python bench/incremental.py [--events 1000000] [--accounts 50] [--new-events 100000]
                                   [--day 2026-10-15] [--workdir DIR] [--profile]

Setup: `--events` demo events for the month (Parquet, child process, untimed) are ingested and
built into events / usage_hourly / usage_monthly; those stages are timed and are the "full"
baseline. Then `--new-events` fresh events (their own id stream, so all are new) for one UTC day
are generated (untimed) and the incremental run is timed:
  ingest_files(new file) -> update_events -> build_usage_hourly(affected days' hours)
  -> build_usage_monthly(month)
Target: incremental <= 1/20 of full. Two ratios are printed: with ingest on both sides
(incremental ingest+rollups vs month ingest+rollups) and rollups alone (events+hourly+monthly).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Measure,
    MiB,
    StageProfile,
    _generate_day,
    base_parser,
    generate_files,
    in_child,
    result_line,
    workdir,
)
from bench.rollups import ROLLUP_STAGES, run_month  # noqa: E402

TARGET_FRACTION = 1 / 20
INCREMENTAL_STAGES = [
    ("usagebox_pipelines.stages.ingest:remove_uncommitted_batches", "ingest: remove_uncommitted"),
    ("usagebox_pipelines.stages.dedupe:FileHistory.lookup", "ingest: FileHistory.lookup"),
    ("usagebox_pipelines.stages.dedupe:FileHistory.rows_for", "ingest: FileHistory.rows_for"),
    ("usagebox_pipelines.stages.ingest:_LateContext.load", "ingest: _LateContext.load"),
    ("usagebox_pipelines.stages.ingest:normalize_events", "ingest: normalize_events"),
    ("usagebox_pipelines.stages.ingest:classify", "ingest: classify"),
    ("usagebox_pipelines.stages.events:_resolve", "events: resolve the batch's corrections"),
    ("usagebox_pipelines.stages.events:build_events", "events: build_events"),
    *ROLLUP_STAGES[4:],
]


def main() -> None:
    parser = base_parser(__doc__, accounts=50)
    parser.add_argument("--new-events", type=int, default=100_000)
    parser.add_argument("--day", default="2026-10-15")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    from usagebox_pipelines.stages.events import day_bounds, update_events
    from usagebox_pipelines.stages.ingest import ingest_files
    from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
    from usagebox_pipelines.storage import DeltaStore

    with workdir(args.workdir) as work:
        paths, gen_secs = generate_files(
            work / "input", "parquet", args.events, args.accounts, 1, args.month, args.seed
        )
        new_path = work / "input" / f"day-{args.day}.parquet"
        gen_secs += in_child(_generate_day, str(new_path), args.day, args.new_events,
                             args.accounts, args.month, args.seed)  # fmt: skip
        print(f"generated {args.events:,} history + {args.new_events:,} new events "
              f"in {gen_secs:.1f} s (not timed)")  # fmt: skip
        store = DeltaStore(str(work / "home"))

        with Measure("full_ingest") as full_ingest:
            ingest_files(store, paths, source="bench")
        full = run_month(store, args.month)
        full_rows = full.pop("_rows")
        full_rollups = sum(m.seconds for m in full.values())
        full_total = full_ingest.seconds + full_rollups
        print(f"full month: ingest {full_ingest.seconds:.2f} s + rollups {full_rollups:.2f} s "
              f"= {full_total:.2f} s  rows {full_rows}")  # fmt: skip

        prof = StageProfile()
        if args.profile:
            for target, label in INCREMENTAL_STAGES:
                prof.wrap(target, label)
        inc: dict[str, Measure] = {}
        with Measure("incremental") as total:
            with Measure("ingest") as inc["ingest"]:
                summary = ingest_files(store, [new_path], source="bench-incremental")
            with Measure("update_events") as inc["update_events"]:
                update = update_events(store, run_id="bench-incremental")
            with Measure("usage_hourly") as inc["usage_hourly"]:
                hourly_rows = 0
                for day in update.days:
                    hourly_rows += build_usage_hourly(store, *day_bounds(day), "bench-incremental")
            with Measure("usage_monthly") as inc["usage_monthly"]:
                months = sorted({d.strftime("%Y-%m") for d in update.days})
                for month in months:
                    build_usage_monthly(store, month, "bench-incremental")
        prof.restore()
        inc_rollups = total.seconds - inc["ingest"].seconds
        frac_total = total.seconds / full_total
        frac_rollups = inc_rollups / full_rollups
        peak = max([total.peak_rss, full_ingest.peak_rss, *(m.peak_rss for m in full.values())])

        print(f"incremental: +{summary.accepted:,} events on {args.day} "
              f"(days touched {[str(d) for d in update.days]}, hours {len(update.hours)})")  # fmt: skip
        for name, m in inc.items():
            print(f"  {name:<15} {m.seconds:8.2f} s   peak RSS {m.peak_rss / MiB:8,.0f} MiB")
        print(f"  {'total':<15} {total.seconds:8.2f} s")
        ok = "OK" if frac_total <= TARGET_FRACTION else "MISSED"
        print(f"  incremental / full (ingest+rollups) = {frac_total:.3f} "
              f"(1/{1 / frac_total:.1f}; target <= 1/20: {ok})")  # fmt: skip
        ok = "OK" if frac_rollups <= TARGET_FRACTION else "MISSED"
        print(f"  incremental / full (rollups only)   = {frac_rollups:.3f} "
              f"(1/{1 / frac_rollups:.1f}; target <= 1/20: {ok})")  # fmt: skip
        print(f"  peak RSS (whole run) {peak / MiB:,.0f} MiB")
        if args.profile:
            prof.print()
        result_line(
            "incremental",
            events=args.events,
            new_events=args.new_events,
            accounts=args.accounts,
            day=args.day,
            generation_seconds=round(gen_secs, 2),
            full={
                "ingest": full_ingest.as_dict(),
                **{k: m.as_dict() for k, m in full.items()},
                "rollups_seconds": round(full_rollups, 3),
                "total_seconds": round(full_total, 3),
                "rows": full_rows,
            },  # fmt: skip
            incremental={k: m.as_dict() for k, m in inc.items()},
            seconds=round(total.seconds, 3),
            rollups_seconds=round(inc_rollups, 3),
            accepted=summary.accepted,
            hourly_rows_rebuilt=hourly_rows,
            fraction_of_full=round(frac_total, 4),
            fraction_of_full_rollups=round(frac_rollups, 4),
            meets_target=frac_total <= TARGET_FRACTION,
            meets_target_rollups_only=frac_rollups <= TARGET_FRACTION,
            peak_rss_mb=round(peak / MiB),
            breakdown=prof.table() if args.profile else None,
        )


if __name__ == "__main__":
    main()
