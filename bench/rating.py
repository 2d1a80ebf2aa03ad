"""Benchmark rating: N synthetic `usage_hourly` rows through `pricing.rate_usage`.

Usage: python bench/rating.py [--rows 1000000] [--accounts 2000] [--month 2026-10]
Prints one JSON object (rows, seconds, rows per second, peak RSS). Rows are built with Polars
hashes (deterministic, no Python loop) over every meter/model/dimension the standard pricebook
prices, so the run exercises per-unit, graduated, volume and package rates and the mid-month
version change.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import psutil

from usagebox_pipelines import schemas
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing import load_accounts, load_pricebooks, rate_usage

ROOT = Path(__file__).resolve().parents[1]
MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini",
    "claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-3-5-haiku",
]  # fmt: skip
FEATURES = ["chat", "search", "summarize", "code-review", "extract"]


def _kinds() -> pl.DataFrame:
    """Every (meter, model, dimensions, typical size) the demo world uses."""
    rows = [
        (meter, model, json.dumps({"feature": f}, separators=(",", ":")), size)
        for meter, size in (("input_tokens", 40_000), ("output_tokens", 8_000),
                            ("cached_input_tokens", 60_000))
        for model in MODELS
        for f in FEATURES
    ]  # fmt: skip
    rows += [("gpu_seconds", None, f'{{"gpu":"{g}"}}', 3_600) for g in ("h100", "a100", "l4")]
    tools = ("web_search", "code_interpreter", "file_search")
    rows += [("tool_calls", None, f'{{"tool":"{t}"}}', 40) for t in tools]
    schema = {"meter_id": pl.String, "model_id": pl.String, "dimensions": pl.String,
              "size": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row").with_row_index("kind")


def synthetic_usage(n_rows: int, n_accounts: int, month: str) -> pl.DataFrame:
    """Deterministic pseudo-random hourly rollup rows for one month."""
    start, end = month_bounds(month)
    hours = int((end - start).total_seconds() // 3600)
    kinds = _kinds()
    i = pl.int_range(n_rows, dtype=pl.UInt64)
    frame = pl.select(
        account_id=pl.format("acct-{}", (i.hash(1) % n_accounts + 1).cast(pl.String).str.zfill(3)),
        kind=(i.hash(2) % kinds.height).cast(pl.UInt32),
        hour=pl.lit(start) + pl.duration(hours=(i.hash(3) % hours).cast(pl.Int64)),
        draw=(i.hash(4) % 1000).cast(pl.Int64),
    ).join(kinds, on="kind")
    return schemas.conform(
        frame.with_columns(
            sum=((pl.col("size") * (pl.col("draw") + 1)) // 500).cast(schemas.QTY),
            count=pl.col("draw") % 50 + 1,
            billable=pl.lit(True),
            product_id=pl.lit("llm-api"),
            unit=pl.lit(None, dtype=pl.String),
        ),
        schemas.USAGE_HOURLY,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--month", default="2026-10")
    parser.add_argument("--pricebooks", type=Path, default=ROOT / "pricebooks")
    args = parser.parse_args()

    books = load_pricebooks(args.pricebooks)
    accounts = load_accounts(args.pricebooks)
    usage = synthetic_usage(args.rows, args.accounts, args.month)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    started = time.perf_counter()
    result = rate_usage(usage, args.month, books, accounts)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "usage_hourly_rows": usage.height,
                "accounts": args.accounts,
                "seconds": round(seconds, 3),
                "rows_per_second": round(usage.height / seconds),
                "rated_rows": result.rated.height,
                "unrated_rows": result.unrated.height,
                "rss_mb_before": round(rss_before / 2**20),
                "rss_mb_after": round(process.memory_info().rss / 2**20),
            }
        )
    )


if __name__ == "__main__":
    main()
