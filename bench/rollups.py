"""Benchmark rollups: one month of events -> `events` -> `usage_hourly` -> `usage_monthly`.

Usage: python bench/rollups.py [--events 1000000] [--accounts 2000] [--workdir DIR]
                               [--no-reference] [--no-rating] [--profile]

Setup (not part of the rollup time): N demo events are generated as one Parquet file (child
process, untimed) and ingested with `ingest_files` (timed, reported as `setup_ingest`). Timed
stages, each one Delta commit as in production:
  1. `update_events`       raw_events -> events (exactly-once, corrections), day partitions
  2. `build_usage_hourly`  the month's hours [start, end)
  3. `build_usage_monthly` the month
  4. `rate_month`          rating of the month's usage_hourly (pricing; nothing written), to
                           report rating time / rollup time (target <= 25 %)
The hand-written Polars reference (`bench/reference_rollups.py`) runs on the same input Parquet
in a child process; target: stages 1-3 within 1.5x of it. Peak RSS target < 4 GiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT,
    Measure,
    MiB,
    StageProfile,
    base_parser,
    generate_files,
    rate,
    result_line,
    workdir,
)

TARGET_REF_RATIO = 1.5
TARGET_RSS_MB = 4 * 1024
TARGET_RATING_SHARE = 0.25
ROLLUP_STAGES = [
    ("usagebox_pipelines.stages.events:committed_raw_events", "committed_raw_events (plan)"),
    ("usagebox_pipelines.stages.events:_resolve", "events: resolve the batch's corrections"),
    ("usagebox_pipelines.stages.events:resolve_corrections", "events: resolve_corrections"),
    ("usagebox_pipelines.stages.events:build_events", "events: build_events"),
    ("usagebox_pipelines.stages.rollups:rollup_hourly", "hourly: rollup_hourly (group-by)"),
    ("usagebox_pipelines.stages.rollups:rollup_monthly", "monthly: rollup_monthly (group-by)"),
    (
        "usagebox_pipelines.storage:DeltaStore.replace_partition",
        "DeltaStore.replace_partition (writes)",
    ),
    ("usagebox_pipelines.storage:write_deltalake", "  write_deltalake"),
    ("usagebox_pipelines.storage:conform", "  schemas.conform (before write)"),
]


def run_month(store, month: str, run_id: str = "bench") -> dict[str, Measure]:
    """Stages 1-3 for a whole month; returns one Measure per stage."""
    from usagebox_pipelines.rollups.aggregate import month_bounds
    from usagebox_pipelines.stages.events import update_events
    from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly

    start, end = month_bounds(month)
    out = {}
    with Measure("update_events") as out["update_events"]:
        update = update_events(store, run_id=run_id)
    with Measure("usage_hourly") as out["usage_hourly"]:
        hourly_rows = build_usage_hourly(store, start, end, run_id=run_id)
    with Measure("usage_monthly") as out["usage_monthly"]:
        monthly_rows = build_usage_monthly(store, month, run_id=run_id)
    out["_rows"] = {"events": update.rows, "usage_hourly": hourly_rows,
                    "usage_monthly": monthly_rows}  # fmt: skip
    return out


def run_reference(paths: list[Path], out_dir: Path, month: str) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "reference_rollups.py"), "--month", month,
           "--out", str(out_dir), *map(str, paths)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = base_parser(__doc__, accounts=2000)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-rating", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    from usagebox_pipelines.stages.ingest import ingest_files
    from usagebox_pipelines.stages.rating import rate_month
    from usagebox_pipelines.storage import DeltaStore

    with workdir(args.workdir) as work:
        paths, gen_secs = generate_files(
            work / "input", "parquet", args.events, args.accounts, 1, args.month, args.seed
        )
        print(f"generated {args.events:,} events ({args.accounts} accounts) in {gen_secs:.1f} s "
              "(not timed)")  # fmt: skip
        store = DeltaStore(str(work / "home"))
        with Measure("setup_ingest") as ing:
            summary = ingest_files(store, paths, source="bench")
        print(f"setup: ingest {summary.accepted:,} events in {ing.seconds:.1f} s "
              f"(peak RSS {ing.peak_rss / MiB:,.0f} MiB; see bench/ingest.py)")  # fmt: skip

        prof = StageProfile()
        if args.profile:
            for target, label in ROLLUP_STAGES:
                prof.wrap(target, label)
        stages = run_month(store, args.month)
        prof.restore()
        rows = stages.pop("_rows")
        rollup_secs = sum(m.seconds for m in stages.values())
        rollup_peak = max(m.peak_rss for m in stages.values())

        rating = None
        if not args.no_rating:
            with Measure("rate_month") as rt:
                rated = rate_month(store, ROOT / "pricebooks", args.month)
            rating = {**rt.as_dict(), "rated_rows": rated.rated.height,
                      "unrated_rows": rated.unrated.height,
                      "share_of_rollup": round(rt.seconds / rollup_secs, 3)}  # fmt: skip

        reference = None
        if not args.no_reference:
            reference = run_reference(paths, work / "reference", args.month)

        print(f"rollups, one month ({args.month}), {args.events:,} events, "
              f"{args.accounts} accounts:")  # fmt: skip
        for name, m in stages.items():
            print(f"  {name:<15} {m.seconds:8.2f} s   peak RSS {m.peak_rss / MiB:8,.0f} MiB")
        print(f"  {'total':<15} {rollup_secs:8.2f} s   ({rate(args.events, rollup_secs):,} "
              f"events/s; rows: {rows})")  # fmt: skip
        ratio = None
        if reference:
            ratio = rollup_secs / reference["seconds"]
            hm = stages["usage_hourly"].seconds + stages["usage_monthly"].seconds
            print(f"  reference (hand-written Polars) {reference['seconds']:.2f} s, hourly rows "
                  f"{reference['hourly_rows']:,} -> pipeline/reference {ratio:.1f}x "
                  f"(target <= {TARGET_REF_RATIO}x: {'OK' if ratio <= TARGET_REF_RATIO else 'MISSED'}"
                  f"); hourly+monthly alone {hm / reference['seconds']:.1f}x")  # fmt: skip
            reference["hourly_rows_match"] = reference["hourly_rows"] == rows["usage_hourly"]
            reference["monthly_rows_match"] = reference["monthly_rows"] == rows["usage_monthly"]
        print(f"  peak RSS {rollup_peak / MiB:,.0f} MiB (target < {TARGET_RSS_MB:,} MiB: "
              f"{'OK' if rollup_peak / MiB < TARGET_RSS_MB else 'MISSED'})")  # fmt: skip
        if rating:
            share = rating["share_of_rollup"]
            print(f"  rating {rating['seconds']:.2f} s = {share:.0%} of rollup time "
                  f"(target <= {TARGET_RATING_SHARE:.0%}: "
                  f"{'OK' if share <= TARGET_RATING_SHARE else 'MISSED'})")  # fmt: skip
        if args.profile:
            prof.print()
        result_line(
            "rollups",
            events=args.events,
            accounts=args.accounts,
            month=args.month,
            generation_seconds=round(gen_secs, 2),
            setup_ingest=ing.as_dict(),
            stages={k: m.as_dict() for k, m in stages.items()},
            rows=rows,
            seconds=round(rollup_secs, 3),
            events_per_second=rate(args.events, rollup_secs),
            peak_rss_mb=round(rollup_peak / MiB),
            reference=reference,
            ratio_vs_reference=round(ratio, 2) if ratio else None,
            meets_reference=ratio <= TARGET_REF_RATIO if ratio else None,
            meets_rss=rollup_peak / MiB < TARGET_RSS_MB,
            rating=rating,
            meets_rating_share=rating["share_of_rollup"] <= TARGET_RATING_SHARE if rating else None,
            breakdown=prof.table() if args.profile else None,
        )


if __name__ == "__main__":
    main()
