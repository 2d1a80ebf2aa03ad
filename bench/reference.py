"""Hand-written reference for the month benchmark: plain Polars + deltalake, no Dagster, no checks.

Usage: python bench/reference.py events.parquet --rates rates.csv --out DIR [--month 2026-10]

What a competent engineer would write with no framework, over the same file `usagebox ingest`
reads, writing Delta tables under DIR:
  read      the Parquet file (all columns)
  raw       write it as a Delta table (`raw_events`, one commit)
  dedupe    one row per (account_id, event_id), first arrival kept -> `events` (Delta)
  hourly    corrections counted in their original's hour; group by account x meter x model x
            product x unit x dimensions x hour, the month's hours only -> `usage_hourly` (Delta)
  monthly   group the hourly rows by account x meter x model x product x unit x dimensions
            -> `usage_monthly` (Delta)
  price     join the flat per-unit rate table (`rates.csv` from bench/pricebooks.py: tokens on
            meter x model, GPU/tool on meter x gpu/tool dimension), exact Decimal amounts, lines
            per account x meter x model rounded half-up to cents -> `invoice_lines` (Delta)
  invoice   totals per account (sum of rounded lines) -> `invoices` (Delta)
No tiers, packages, price versions, discounts, credits, minimums, validation, quarantine, audit
columns or PDFs: it is the lower bound. Prints one JSON line (seconds per step, rows).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake import write_deltalake

QTY = pl.Decimal(38, 12)
MONEY2 = pl.Decimal(18, 2)
KEYS = ["account_id", "meter_id", "model_id", "product_id", "unit", "dimensions"]


def _month_bounds(month: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    nxt = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start, nxt


def _write(frame: pl.DataFrame, out: Path, name: str) -> None:
    write_deltalake(str(out / name), frame.to_arrow(), mode="overwrite")


def run(path: Path, rates_csv: Path, out: Path, month: str) -> dict:
    start, end = _month_bounds(month)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    raw = pl.read_parquet(path)
    lap("read")
    _write(raw, out, "raw_events")
    lap("raw")
    events = raw.unique(["account_id", "event_id"], keep="first", maintain_order=True)
    _write(events, out, "events")
    lap("dedupe")
    originals = events.select("account_id", "event_id", orig_ts="timestamp")
    counted = (
        events.join(
            originals,
            left_on=["account_id", "correction_of"],
            right_on=["account_id", "event_id"],
            how="left",
        )
        .with_columns(hour=pl.coalesce("orig_ts", "timestamp").dt.truncate("1h"))
        .filter((pl.col("hour") >= start) & (pl.col("hour") < end))
    )
    hourly = counted.group_by([*KEYS, "hour"]).agg(
        sum=pl.col("quantity").cast(QTY).sum(), count=pl.len()
    )
    _write(hourly, out, "usage_hourly")
    lap("hourly")
    monthly = hourly.group_by(KEYS).agg(sum=pl.col("sum").sum(), count=pl.col("count").sum())
    monthly = monthly.with_columns(month=pl.lit(month))
    _write(monthly, out, "usage_monthly")
    lap("monthly")
    rates = pl.read_csv(rates_csv, schema_overrides={"unit_price": pl.String}).with_columns(
        pl.col("unit_price").cast(QTY), pl.col("dim_value").fill_null("")
    )
    dim = pl.coalesce(
        pl.col("dimensions").str.json_path_match("$.gpu"),
        pl.col("dimensions").str.json_path_match("$.tool"),
        pl.lit(""),
    )
    keyed = monthly.with_columns(
        rate_model=pl.when(pl.col("meter_id").is_in(["gpu_seconds", "tool_calls"]))
        .then(pl.lit("*"))
        .otherwise("model_id"),
        dim_value=dim,
    )
    priced = keyed.join(
        rates.select("meter_id", "model_id", "dim_value", "unit_price"),
        left_on=["meter_id", "rate_model", "dim_value"],
        right_on=["meter_id", "model_id", "dim_value"],
        how="left",
    )
    lines = (
        priced.with_columns(amount=(pl.col("sum") * pl.col("unit_price")).cast(QTY))
        .group_by("account_id", "meter_id", "model_id")
        .agg(quantity=pl.col("sum").sum(), amount=pl.col("amount").sum())
        .with_columns(
            amount=pl.col("amount").round(2, mode="half_away_from_zero").cast(MONEY2),
            period=pl.lit(month),
        )
    )
    _write(lines, out, "invoice_lines")
    lap("price")
    invoices = lines.group_by("account_id", "period").agg(
        total=pl.col("amount").sum(), lines=pl.len()
    )
    _write(invoices, out, "invoices")
    lap("invoice")
    unpriced = priced.filter(pl.col("unit_price").is_null()).height
    return {
        "bench": "reference_month",
        "seconds": round(sum(seconds.values()), 3),
        "steps": seconds,
        "rows": {
            "input": raw.height,
            "events": events.height,
            "usage_hourly": hourly.height,
            "usage_monthly": monthly.height,
            "invoice_lines": lines.height,
            "invoices": invoices.height,
            "unpriced_groups": unpriced,
        },
        "total": str(invoices["total"].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rates", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--month", default="2026-10")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.path, args.rates, args.out, args.month)), flush=True)


if __name__ == "__main__":
    main()
