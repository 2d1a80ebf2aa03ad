"""Fast, seeded generator of one benchmark month of usage events (column-wise Polars, no loops).

Usage: python bench/generate.py --events N --accounts A --out DIR [--month 2026-10] [--seed 7]
                                [--jsonl] [--nightly-events K]

Writes `DIR/events.parquet` (canonical field names of CONTRACT §2: quantity `decimal(38,12)`,
timestamp `timestamp[us, UTC]`, dimensions as canonical JSON text), optionally
`DIR/events.jsonl` (the same rows in the canonical JSONL shape), optionally
`DIR/nightly.parquet` (K events of the first UTC day of the next month, with the same dirt) and
`DIR/manifest.json` (what was planted, and the ingest summary it must produce).

The file has exactly N rows, generated one UTC day at a time (bounded memory, one Parquet row
group per day). Of each day's rows: ~96.5 % distinct events, 3 % exact retries, 0.1 % conflicting
re-sends (same id, quantity +25 %), 0.5 % corrections (`correction_of` an event of the same day,
signed delta, 75 % negative, |delta| <= 50 %); 1 % of the distinct events carry a timestamp in
the previous month (late arrivals). Retries, conflicts and corrections sit after their original in
file order. Vocabulary (meters, products, units, GPUs, tools, features, agents) is the demo's
(`usagebox_demo.catalog`); the 12 models are the 10 of docs/TEAM-NOTES.md plus
`o3` and `o4-mini`, priced by the bench pricebooks (`bench/pricebooks.py`). Random columns come
from the demo's `Rng` (seeded `randbytes`), so the same seed always writes the same file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usagebox_demo import catalog as cat  # noqa: E402
from usagebox_demo.ids import (  # noqa: E402
    STREAM_CORRECTION,
    STREAM_MAIN,
    STREAM_RUN,
    id_base,
    make_ids,
)
from usagebox_demo.rand import Rng, choose  # noqa: E402
from usagebox_demo.usage import USAGE_COLUMNS, month_index, split_days  # noqa: E402
from usagebox_pipelines.months import month_bounds, shift_month  # noqa: E402

MODELS = (*cat.OPENAI_MODELS, *cat.ANTHROPIC_MODELS, "o3", "o4-mini")
LLM_METERS = cat.METERS[:3]
METER_WEIGHTS = (0.32, 0.32, 0.20, 0.08, 0.08)  # input, output, cached input, gpu, tool calls
MODEL_SLOT_WEIGHTS = (0.55, 0.25, 0.12, 0.08)  # an account's favourite model first
MODEL_STRIDE = 5  # account k uses models (k * 5 + slot) mod 12: ~4 models per account
TOKEN_MEDIANS = (1500.0, 350.0, 3000.0)
TOKEN_SIGMA = (0.9, 0.7, 0.7)
GPU_MEDIAN_TENTHS, GPU_SIGMA = 900.0, 1.1
PROJECTS_PER_ACCOUNT = 3
QTY = pl.Decimal(38, 12)
TS = pl.Datetime("us", "UTC")
RETRY, CONFLICT, CORRECTION, LATE = 0.03, 0.001, 0.005, 0.01
CANONICAL = (*USAGE_COLUMNS, "correction_of")


@dataclass
class Counts:
    """What one file holds; `expected_ingest` is what `usagebox ingest` must report for it."""

    rows: int = 0
    distinct: int = 0
    retries: int = 0
    conflicts: int = 0
    corrections: int = 0
    late_previous_month: int = 0

    def add(self, other: Counts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def expected_ingest(self) -> dict[str, int]:
        return {
            "accepted": self.distinct + self.corrections,
            "duplicates": self.retries,
            "conflicts": self.conflicts,
            "rejected": 0,
        }


def _dimension_texts() -> list[str]:
    """Every distinct dimensions text: LLM (feature x agent-or-none), GPU, tool (feature x tool)."""
    llm = [
        json.dumps(
            {"feature": f} | ({"agent_id": a} if a else {}), sort_keys=True, separators=(",", ":")
        )  # fmt: skip
        for f in cat.FEATURES
        for a in (None, *cat.AGENTS)
    ]
    gpu = [json.dumps({"gpu": g}, separators=(",", ":")) for g in cat.GPUS]
    tool = [
        json.dumps({"feature": f, "tool": t}, sort_keys=True, separators=(",", ":"))
        for f in cat.FEATURES
        for t in cat.TOOLS
    ]
    return llm + gpu + tool


DIMENSIONS = _dimension_texts()
N_AGENT_SLOTS = len(cat.AGENTS) + 1
GPU_DIMS = len(cat.FEATURES) * N_AGENT_SLOTS
TOOL_DIMS = GPU_DIMS + len(cat.GPUS)


@dataclass(frozen=True)
class World:
    """Per-seed lookup tables, gathered column-wise by index."""

    seed: int
    month: str
    accounts: pl.Series
    account_weights: list[float]
    projects: pl.Series
    id_key: int

    @classmethod
    def make(cls, seed: int, month: str, n_accounts: int) -> World:
        ids = [cat.account_id(k) for k in range(1, n_accounts + 1)]
        projects = [f"proj-{k:03d}-{p}" for k in range(1, n_accounts + 1) for p in cat.PROJECTS[:3]]
        weights = [1.0 / math.pow(k, cat.ZIPF_EXPONENT) for k in range(1, n_accounts + 1)]
        return cls(
            seed,
            month,
            pl.Series(ids, dtype=pl.String),
            weights,
            pl.Series(projects, dtype=pl.String),
            Rng(seed, "bench-id-key").bits64(),
        )


def _lit(values: list[str] | tuple[str, ...] | pl.Series) -> pl.Expr:
    return pl.lit(values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.String))


def _base(world: World, rng: Rng, day: datetime, n: int, offset: int) -> pl.DataFrame:
    """`n` distinct events of one UTC day (integer `units`, index columns kept for dirt)."""
    acct = choose(rng.uniform(n), world.account_weights)
    frame = pl.DataFrame(
        {
            "acct": acct,
            "meter": choose(rng.uniform(n), METER_WEIGHTS),
            "slot": choose(rng.uniform(n), MODEL_SLOT_WEIGHTS),
            "hour": choose(rng.uniform(n), cat.hour_weights()),
            "feature": choose(rng.uniform(n), cat.FEATURE_WEIGHTS),
            "agent": choose(rng.uniform(n), (0.7, *[0.3 / len(cat.AGENTS)] * len(cat.AGENTS))),
            "gpu": choose(rng.uniform(n), cat.GPU_WEIGHTS),
            "tool": choose(rng.uniform(n), cat.TOOL_WEIGHTS),
            "project": choose(rng.uniform(n), (0.6, 0.3, 0.1)),
            "u_ms": rng.uniform(n),
            "z": rng.normal(n),
            "i": pl.int_range(offset, offset + n, dtype=pl.UInt64, eager=True),
        }
    )
    meter, z = pl.col("meter"), pl.col("z")
    mu = pl.lit(pl.Series([math.log(m) for m in TOKEN_MEDIANS])).gather(pl.min_horizontal(meter, 2))
    sigma = pl.lit(pl.Series(TOKEN_SIGMA)).gather(pl.min_horizontal(meter, 2))
    tokens = (mu + sigma * z).exp().round().clip(1, 400_000)
    tenths = (math.log(GPU_MEDIAN_TENTHS) + GPU_SIGMA * z).exp().round().clip(1, 360_000)
    tools = 1 + (z > 1.55).cast(pl.Int64) + (z > 2.05).cast(pl.Int64)
    units = pl.when(meter == cat.M_GPU).then(tenths).when(meter == cat.M_TOOL).then(tools)
    dims = pl.when(meter == cat.M_GPU).then(GPU_DIMS + pl.col("gpu").cast(pl.Int64))
    dims = dims.when(meter == cat.M_TOOL).then(
        TOOL_DIMS + pl.col("feature").cast(pl.Int64) * len(cat.TOOLS) + pl.col("tool")
    )
    dims = dims.otherwise(pl.col("feature").cast(pl.Int64) * N_AGENT_SLOTS + pl.col("agent"))
    ms = pl.col("hour").cast(pl.Int64) * 3_600_000 + (pl.col("u_ms") * 3_600_000).cast(pl.Int64)
    model = (pl.col("acct").cast(pl.Int64) * MODEL_STRIDE + pl.col("slot")) % len(MODELS)
    return frame.select(
        "acct",
        "meter",
        "i",
        "agent",
        units=units.otherwise(tokens).cast(pl.Int64),
        dims=dims.cast(pl.UInt32),
        model=pl.when(meter <= cat.M_CACHED).then(model.cast(pl.UInt32)),
        project=pl.col("acct") * PROJECTS_PER_ACCOUNT + pl.col("project"),
        ts_us=int(day.timestamp()) * 1_000_000 + ms * 1000,
    )


def _quantity(units: pl.Expr) -> pl.Expr:
    """Integer base units -> exact decimal (GPU seconds have one decimal place)."""
    whole = units.cast(QTY)
    tenths = (whole * pl.lit(Decimal("0.1"), dtype=QTY)).cast(QTY)
    return pl.when(pl.col("meter") == cat.M_GPU).then(tenths).otherwise(whole)


def _day(world: World, day: datetime, n_rows: int, offsets: dict[str, int]) -> tuple[pl.DataFrame, Counts]:  # fmt: skip
    """Exactly `n_rows` rows for one UTC day: distinct events, then their planted dirt."""
    rng = Rng(world.seed, "bench", world.month, day.date().isoformat())
    n = math.floor(n_rows / (1 + RETRY + CONFLICT + CORRECTION))
    k_conflict, k_correction = round(n * CONFLICT), round(n * CORRECTION)
    k_retry = n_rows - n - k_conflict - k_correction
    k_late = round(n * LATE)
    if n <= 0 or k_retry < 0:
        n, k_retry, k_conflict, k_correction, k_late = n_rows, 0, 0, 0, 0
    base = _base(world, rng, day, n, offsets["main"])
    offsets["main"] += n
    # Disjoint roles by the rank of one seeded uniform: retried, conflicted, corrected, late.
    rank = pl.lit(rng.uniform(n).rank("ordinal").cast(pl.Int64) - 1)
    role = pl.lit(0, pl.UInt8)
    cut = 0
    for code, k in enumerate((k_retry, k_conflict, k_correction, k_late), 1):
        role = (
            pl.when((rank >= cut) & (rank < cut + k)).then(pl.lit(code, pl.UInt8)).otherwise(role)
        )
        cut += k
    lag = (pl.lit(rng.uniform(n)) * 600_000_000).cast(pl.Int64) + 1_000_000  # 1 s .. 10 min
    base = base.with_columns(
        role=role, arrival=pl.col("ts_us"), seq=pl.lit(0, pl.UInt8), lag_us=lag
    )
    if k_late:
        prev_start, prev_end = month_bounds(shift_month(world.month, -1))
        span_us = int((prev_end - prev_start).total_seconds()) * 1_000_000
        late_ts = int(prev_start.timestamp()) * 1_000_000 + (pl.lit(rng.uniform(n)) * span_us).cast(
            pl.Int64
        )
        base = base.with_columns(
            ts_us=pl.when(pl.col("role") == 4).then(late_ts).otherwise("ts_us")
        )
    retries = base.filter(pl.col("role") == 1).with_columns(
        arrival=pl.col("ts_us") + pl.col("lag_us"), seq=pl.lit(1, pl.UInt8)
    )
    conflicts = base.filter(pl.col("role") == 2).with_columns(
        units=pl.col("units") + pl.max_horizontal(pl.col("units") // 4, pl.lit(1)),
        arrival=pl.col("ts_us") + 2_000_000,
        seq=pl.lit(2, pl.UInt8),
    )
    corrections = _corrections(world, rng, base.filter(pl.col("role") == 3), offsets)
    main = pl.lit(id_base(STREAM_MAIN, _midx(world)), pl.UInt64) + pl.col("i")
    no_orig = pl.lit(None, pl.String).alias("orig_id")
    frames = [f.with_columns(pre=main, orig_id=no_orig) for f in (base, retries, conflicts)]
    columns = [*frames[0].columns]
    rows = pl.concat([f.select(columns) for f in (*frames, corrections)])
    out = _finish(world, rows.sort("arrival", "seq", maintain_order=True))
    counts = Counts(n_rows, n, k_retry, k_conflict, k_correction, k_late)
    return out, counts


def _corrections(world: World, rng: Rng, originals: pl.DataFrame, offsets: dict[str, int]):
    """Signed deltas of up to half the original, timestamped 1-29 h later (clamped to month)."""
    n = originals.height
    _, end = month_bounds(world.month)
    frac, sign, lag = (pl.lit(rng.uniform(n)) for _ in range(3))
    size = pl.max_horizontal((pl.col("units") * (0.05 + 0.45 * frac)).floor().cast(pl.Int64), 1)
    size = pl.min_horizontal(size, pl.col("units") // 2).clip(1)
    last_us = int(end.timestamp()) * 1_000_000 - 1000
    ts = (pl.col("ts_us") + (lag * 28 * 3_600_000_000).cast(pl.Int64) + 3_600_000_000).clip(
        upper_bound=last_us
    )
    first = offsets["correction"]
    fixed = originals.with_columns(
        orig_id=make_ids("evt_", id_base(STREAM_MAIN, _midx(world)), originals["i"], world.id_key),
        pre=pl.lit(id_base(STREAM_CORRECTION, _midx(world)), pl.UInt64)
        + pl.int_range(first, first + n, dtype=pl.UInt64),
        units=pl.when(sign < 0.75).then(-size).otherwise(size),
        ts_us=ts,
        arrival=ts,
        seq=pl.lit(3, pl.UInt8),
        agent=pl.lit(0, pl.UInt32),
    )
    offsets["correction"] += n
    return fixed


def _midx(world: World) -> int:
    return month_index(world.month)


def _finish(world: World, rows: pl.DataFrame) -> pl.DataFrame:
    """Index columns -> canonical string / decimal / timestamp columns (ids: mix of `pre`)."""
    ids = make_ids("evt_", 0, rows["pre"], world.id_key)
    runs = make_ids("run_", id_base(STREAM_MAIN | STREAM_RUN, _midx(world)), rows["i"] // 4, world.id_key)  # fmt: skip
    meter = pl.col("meter")
    return rows.select(
        event_id=pl.lit(ids),
        account_id=_lit(world.accounts).gather("acct"),
        meter_id=_lit(cat.METERS).gather(meter),
        quantity=_quantity(pl.col("units")),
        timestamp=pl.col("ts_us").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        model_id=_lit(MODELS).gather("model"),
        product_id=_lit(cat.PRODUCTS).gather(meter),
        unit=_lit(cat.UNITS).gather(meter),
        project_id=_lit(world.projects).gather("project"),
        dimensions=_lit(DIMENSIONS).gather("dims"),
        correlation_id=pl.when((pl.col("agent") > 0) & (meter <= cat.M_CACHED)).then(pl.lit(runs)),
        correction_of="orig_id",
    )


def iter_month(world: World, n_events: int):
    """(frame, counts) per UTC day of the month; day sizes follow the demo's weekly shape."""
    start, end = month_bounds(world.month)
    offsets = {"main": 0, "correction": 0}
    for day, n in split_days(start, (end - start).days, n_events):
        if n:
            yield _day(world, day, n, offsets)


def iter_nightly(world: World, n_events: int):
    """One day of the next month (its own id space), same mix of dirt; late = this month."""
    nxt = World(world.seed, shift_month(world.month, 1), world.accounts, world.account_weights,
                world.projects, world.id_key)  # fmt: skip
    start, _ = month_bounds(nxt.month)
    yield _day(nxt, start, n_events, {"main": 0, "correction": 0})


class _ParquetSink:
    """One Parquet file written by a background thread (Arrow and Polars release the GIL), so
    encoding day d overlaps generating day d + 1; at most one day is queued."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer = path, None
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: Future | None = None

    def write(self, frame: pl.DataFrame) -> None:
        self._wait()
        self._pending = self._pool.submit(self._write, frame)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="snappy")
        self.writer.write_table(table.cast(self.writer.schema), row_group_size=1_000_000)

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown()
        if self.writer is None:  # no rows: still a readable file with the schema
            schema = {c: pl.String() for c in CANONICAL} | {"quantity": QTY, "timestamp": TS}
            pq.write_table(pl.DataFrame(schema=schema).to_arrow(), self.path)
        else:
            self.writer.close()


def write_files(
    out: Path, n_events: int, n_accounts: int, month: str, seed: int, jsonl: bool,
    nightly_events: int = 0,
) -> dict:  # fmt: skip
    """Write the month (and optionally its JSONL twin and the nightly day); returns the manifest."""
    from usagebox_demo.shapes import shape_frame

    out.mkdir(parents=True, exist_ok=True)
    world = World.make(seed, month, n_accounts)
    t0 = time.perf_counter()
    sink, total = _ParquetSink(out / "events.parquet"), Counts()
    text = (out / "events.jsonl").open("wb") if jsonl else None
    try:
        for frame, counts in iter_month(world, n_events):
            sink.write(frame)
            total.add(counts)
            if text is not None:
                for part in frame.iter_slices(500_000):
                    shape_frame(part, "canonical").select("line").write_csv(
                        text, include_header=False, quote_style="never"
                    )
    finally:
        sink.close()
        if text is not None:
            text.close()
    manifest: dict = {
        "month": month,
        "seed": seed,
        "accounts": n_accounts,
        "models": list(MODELS),
        "meters": list(cat.METERS),
        "events": asdict(total),
        "expected_ingest": total.expected_ingest(),
    }
    if nightly_events:
        night, night_counts = Counts(), None
        nsink = _ParquetSink(out / "nightly.parquet")
        try:
            for frame, night_counts in iter_nightly(world, nightly_events):
                nsink.write(frame)
                night.add(night_counts)
        finally:
            nsink.close()
        start, _ = month_bounds(shift_month(month, 1))
        manifest["nightly"] = {
            "date": start.date().isoformat(),
            "events": asdict(night),
            "expected_ingest": night.expected_ingest(),
        }
    manifest["seconds"] = round(time.perf_counter() - t0, 3)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--month", default="2026-10")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jsonl", action="store_true", help="also write events.jsonl")
    parser.add_argument("--nightly-events", type=int, default=0)
    args = parser.parse_args()
    manifest = write_files(
        args.out, args.events, args.accounts, args.month, args.seed, args.jsonl,
        args.nightly_events,
    )  # fmt: skip
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
