"""Reference: the same hourly and monthly group-bys, hand-written in Polars on the input Parquet.

Usage: python bench/reference_rollups.py --month 2026-10 --out DIR FILE.parquet [...]

What a competent engineer would write with no framework: one lazy scan of the Parquet feed
(demo `parquet` shape: transaction_id/customer_id/meter/model/value/time/dimensions/...), hour
truncation, group-by account x meter x model x product x unit x billable x dimensions x hour with
sum(value) and count, written as Parquet; then the monthly group-by of that hourly result
(sum of sums, sum of counts), written as Parquet. No dedup, validation or Delta log: it is the
lower bound the pipeline's events -> hourly -> monthly is compared with. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measure, MiB, rss_hwm  # noqa: E402

KEYS = ["account_id", "meter_id", "model_id", "product_id", "unit", "billable"]
QTY = pl.Decimal(38, 12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--month", default="2026-10")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = datetime.strptime(args.month, "%Y-%m").replace(tzinfo=UTC)
    end = (start.replace(day=28) + (start.replace(day=28) - start.replace(day=24))).replace(day=1)

    with Measure("reference") as m:
        t0 = time.perf_counter()
        events = pl.scan_parquet(args.paths).select(
            pl.col("customer_id").alias("account_id"),
            pl.col("meter").alias("meter_id"),
            pl.col("model").alias("model_id"),
            "product_id",
            "unit",
            pl.col("billable").fill_null(True),
            "dimensions",
            pl.col("time").dt.truncate("1h").alias("hour"),
            pl.col("value").cast(QTY).alias("quantity"),
        )
        hourly = (
            events.filter((pl.col("hour") >= start) & (pl.col("hour") < end))
            .group_by([*KEYS, "dimensions", "hour"])
            .agg(sum=pl.col("quantity").sum(), count=pl.len())
            .sort([*KEYS, "dimensions", "hour"], nulls_last=True)
        )
        hourly_path = args.out / "usage_hourly.parquet"
        hourly.sink_parquet(hourly_path)
        hourly_secs = time.perf_counter() - t0
        monthly = (
            pl.scan_parquet(hourly_path)
            .group_by(KEYS)
            .agg(sum=pl.col("sum").sum(), count=pl.col("count").sum())
            .with_columns(month=pl.lit(args.month))
            .sort(KEYS, nulls_last=True)
        )
        monthly_path = args.out / "usage_monthly.parquet"
        monthly.sink_parquet(monthly_path)
    hourly_rows = pl.scan_parquet(hourly_path).select(pl.len()).collect().item()
    monthly_rows = pl.scan_parquet(monthly_path).select(pl.len()).collect().item()
    print(
        json.dumps(
            {
                "bench": "reference_rollups",
                "seconds": round(m.seconds, 3),
                "hourly_seconds": round(hourly_secs, 3),
                "monthly_seconds": round(m.seconds - hourly_secs, 3),
                "peak_rss_mb": round(m.peak_rss / MiB),
                "peak_rss_hwm_mb": round(rss_hwm() / MiB),
                "hourly_rows": hourly_rows,
                "monthly_rows": monthly_rows,
            }
        )
    )


if __name__ == "__main__":
    main()
