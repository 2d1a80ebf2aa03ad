"""A writer process for the concurrency tests: commits one UTC day of `hour_builds` again and
again, without the home's writer lease, as a partition-scoped Dagster step would.

`python -m tests.partition_writer HOME WRITER DAY --mode replace|append --repeats N --start T`
waits until wall-clock time T (so every writer starts together), then makes N commits of the
day's 24 hours: predicate overwrites of the day, or appends carrying the app transaction
(WRITER, n). Each commit's metadata names the writer and n. Conflict retries are logged.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, date, datetime, timedelta

import polars as pl

from usagebox_pipelines.catalog import HOUR_BUILDS
from usagebox_pipelines.storage import DeltaStore


def day_rows(day: date, run_id: str) -> pl.DataFrame:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    hours = pl.datetime_range(start, start + timedelta(days=1), "1h", closed="left", eager=True)
    return pl.DataFrame({"hour": hours}).with_columns(
        built_at=pl.lit(datetime.now(UTC)), run_id=pl.lit(run_id)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home")
    parser.add_argument("writer")
    parser.add_argument("day", type=date.fromisoformat)
    parser.add_argument("--mode", choices=("replace", "append"), required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--start", type=float, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store = DeltaStore(args.home)
    start = datetime(args.day.year, args.day.month, args.day.day, tzinfo=UTC)
    time.sleep(max(0.0, args.start - time.time()))
    for n in range(args.repeats):
        rows = day_rows(args.day, f"{args.writer}:{n}")
        meta = {"writer": args.writer, "n": str(n)}
        if args.mode == "replace":
            window = slice(start, start + timedelta(days=1))
            store.replace_partition(HOUR_BUILDS, rows, metadata=meta, hour=window)
        else:
            store.append(HOUR_BUILDS, rows, metadata=meta, txn=(args.writer, n))


if __name__ == "__main__":
    main()
