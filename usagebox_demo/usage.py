"""Clean, canonical usage events: generated one UTC day at a time, entirely column-wise.

A day is a set of *runs* (standalone LLM call, agent run, GPU job, standalone tool call); runs
explode into *calls* (an agent run interleaves M LLM calls and N tool calls under one
`correlation_id`), calls explode into *rows* (an LLM call bills input, output and sometimes cached
input tokens). Per-day chunks keep memory bounded for streaming writers and make the output
globally time-ordered; the day's row count is fixed up front so `n_events` is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_demo import catalog as cat
from usagebox_demo.ids import STREAM_MAIN, STREAM_RUN, id_base, make_ids
from usagebox_demo.rand import Rng, choose
from usagebox_pipelines.months import month_bounds, shift_month  # noqa: F401 (re-exported)
from usagebox_pipelines.schemas import QTY, TS

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
RUN_LLM, RUN_AGENT, RUN_GPU, RUN_TOOL = range(4)
RUN_KIND_WEIGHTS = (0.78, 0.09, 0.08, 0.05)
ROWS_PER_RUN = 3.0  # expectation of the mix above; only sizes the first draw
CALL_LLM, CALL_TOOL, CALL_GPU = range(3)
GPU_LOG_MEDIAN_TENTHS = math.log(900.0)  # 90 s median job
# Run-level index columns carried down to every call and row.
RUN_FIELDS = ("run", "kind", "acct", "feature", "gpu", "model", "project", "agent")
USAGE_COLUMNS = (
    "event_id",
    "account_id",
    "meter_id",
    "quantity",
    "timestamp",
    "model_id",
    "product_id",
    "unit",
    "project_id",
    "dimensions",
    "correlation_id",
)


def month_index(month: str) -> int:
    start, _ = month_bounds(month)
    return start.year * 12 + start.month - 1


def split_days(first_day: datetime, n_days: int, n_events: int) -> list[tuple[datetime, int]]:
    """Events per UTC day by weekly/trend weights, rounded by largest remainder (sums exactly)."""
    days = [first_day + timedelta(days=i) for i in range(n_days)]
    weights = [cat.day_weight(d.weekday(), d.day) for d in days]
    total = sum(weights)
    exact = [n_events * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(n_days), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n_events - sum(counts)]:
        counts[i] += 1
    return list(zip(days, counts, strict=True))


@dataclass(frozen=True)
class Stream:
    """Everything that makes one family of events distinct and reproducible."""

    seed: int
    code: int
    month: str
    book: cat.AccountBook
    id_key: int

    @classmethod
    def make(cls, seed: int, code: int, month: str, book: cat.AccountBook) -> Stream:
        return cls(seed, code, month, book, Rng(seed, "id-key").bits64())


def iter_window(
    stream: Stream, first_day: datetime, n_days: int, n_events: int
) -> Iterator[pl.DataFrame]:
    """Canonical events of `n_days` UTC days from `first_day`, one time-sorted frame per day."""
    offset = 0
    anchor, _ = month_bounds(stream.month)
    for day, n in split_days(first_day, n_days, n_events):
        if n:
            yield _day_events(stream, day, (day - anchor).days, n, offset)
            offset += n


def iter_usage(
    month: str, seed: int, n_events: int, n_accounts: int = 50
) -> Iterator[pl.DataFrame]:
    """`generate_usage` as a stream of per-day frames, for writers that must bound memory."""
    if n_events < 0 or n_accounts < 1:
        raise ValueError("n_events must be >= 0 and n_accounts >= 1")
    start, end = month_bounds(month)
    stream = Stream.make(seed, STREAM_MAIN, month, cat.build_accounts(seed, n_accounts))
    yield from iter_window(stream, start, (end - start).days, n_events)


def generate_usage(month: str, seed: int, n_events: int, n_accounts: int = 50) -> pl.DataFrame:
    """`n_events` clean canonical events of `month` (UTC), time-ordered, deterministic per seed.

    Columns: USAGE_COLUMNS; quantity Decimal(38, 12), timestamp Datetime(us, UTC).
    """
    frames = list(iter_usage(month, seed, n_events, n_accounts))
    if not frames:
        return empty_usage()
    return pl.concat(frames, rechunk=False)


def empty_usage() -> pl.DataFrame:
    schema = {c: pl.String() for c in USAGE_COLUMNS} | {"quantity": QTY, "timestamp": TS}
    return pl.DataFrame(schema=schema)


def _day_events(stream: Stream, day: datetime, day_rel: int, n_rows: int, offset: int):
    """Exactly `n_rows` events for one UTC day."""
    rng = Rng(stream.seed, stream.code, stream.month, day.date().isoformat())
    n_runs = math.ceil(n_rows * 1.05 / ROWS_PER_RUN) + 8
    while True:
        rows = _rows(_calls(_runs(stream.book, rng, n_runs), rng), rng)
        if rows.height >= n_rows:
            break
        n_runs *= 2
    rows = (
        rows.with_row_index("_i")
        .sort(pl.col("kind") != RUN_AGENT, "_i")  # trim standalone rows, keep agent runs whole
        .head(n_rows)
        .sort("ts_ms", "run", "pos", "meter")
    )
    return _finish(stream, rows, day, day_rel, offset)


def _runs(book: cat.AccountBook, rng: Rng, n: int) -> pl.DataFrame:
    """One row per run: kind, account, start time, call counts, and run-level attributes."""
    acct = choose(rng.uniform(n), book.weights)
    frame = pl.DataFrame(
        {
            "run": pl.int_range(n, dtype=pl.UInt32, eager=True),
            "kind": choose(rng.uniform(n), RUN_KIND_WEIGHTS),
            "acct": acct,
            "hour": choose(rng.uniform(n), cat.hour_weights()),
            "feature": choose(rng.uniform(n), cat.FEATURE_WEIGHTS),
            "gpu": choose(rng.uniform(n), cat.GPU_WEIGHTS),
            "n_models": book.n_models.gather(acct),
            "n_projects": book.n_projects.gather(acct),
            "n_agents": book.n_agents.gather(acct),
            **{f"u_{k}": rng.uniform(n) for k in ("sec", "m", "p", "a", "llm", "tool", "step")},
        }
    )
    kind = pl.col("kind")
    agent = kind == RUN_AGENT
    n_llm = (
        pl.when(agent)
        .then(1 + (pl.col("u_llm") * 6).floor())
        .otherwise((kind == RUN_LLM).cast(pl.Float64))
    )
    n_tool = (
        pl.when(agent)
        .then(1 + (pl.col("u_tool") * 8).floor())
        .otherwise((kind == RUN_TOOL).cast(pl.Float64))
    )
    frame = frame.with_columns(
        n_llm=n_llm.cast(pl.Int64),
        n_tool=n_tool.cast(pl.Int64),
        step=pl.when(agent).then(1500 + (pl.col("u_step") * 20_000).floor()).otherwise(0),
        model=_slot(pl.col("u_m").pow(1.6), "n_models", cat.MAX_MODELS),
        project=_slot(pl.col("u_p"), "n_projects", cat.MAX_PROJECTS),
        agent=pl.when(agent).then(_slot(pl.col("u_a"), "n_agents", cat.MAX_AGENTS)),
    ).with_columns(
        n_calls=pl.when(kind == RUN_GPU).then(1).otherwise(pl.col("n_llm") + pl.col("n_tool")),
        step=pl.col("step").cast(pl.Int64),
    )
    start = pl.col("hour").cast(pl.Int64) * MS_PER_HOUR + pl.col("u_sec") * MS_PER_HOUR
    latest = MS_PER_DAY - 1 - pl.col("n_calls") * pl.col("step")  # whole run inside the day
    return frame.with_columns(start=pl.min_horizontal(start.floor().cast(pl.Int64), latest))


def _slot(u: pl.Expr, count_col: str, stride: int) -> pl.Expr:
    """Index into a fixed-stride per-account table: acct * stride + floor(u * count)."""
    slot = (u * pl.col(count_col)).floor().cast(pl.UInt32)
    return pl.col("acct") * stride + slot


def _calls(runs: pl.DataFrame, rng: Rng) -> pl.DataFrame:
    """Explode runs into calls; an agent run alternates LLM and tool calls, LLM first."""
    calls = runs.select(
        *RUN_FIELDS,
        "start",
        "step",
        "n_llm",
        "n_tool",
        pos=pl.int_ranges(0, "n_calls", dtype=pl.Int64),
    ).explode("pos")
    n = calls.height
    calls = calls.with_columns(
        u_jit=rng.uniform(n), u_cache=rng.uniform(n), tool=choose(rng.uniform(n), cat.TOOL_WEIGHTS)
    )
    pairs = pl.min_horizontal("n_llm", "n_tool")
    is_tool = pl.when(pl.col("pos") < 2 * pairs).then(pl.col("pos") % 2 == 1)
    is_tool = is_tool.otherwise(pl.col("n_tool") > pl.col("n_llm"))
    kind = pl.col("kind")
    call_kind = (
        pl.when(kind == RUN_GPU)
        .then(CALL_GPU)
        .when((kind == RUN_TOOL) | ((kind == RUN_AGENT) & is_tool))
        .then(CALL_TOOL)
        .otherwise(CALL_LLM)
    )
    p_cached = pl.when((kind == RUN_AGENT) & (pl.col("pos") > 0)).then(0.8).otherwise(0.25)
    jitter = (pl.col("u_jit") * pl.col("step") / 2).floor().cast(pl.Int64)
    calls = calls.with_columns(
        call=call_kind.cast(pl.UInt8),
        ts_ms=pl.col("start") + pl.col("pos") * pl.col("step") + jitter,
        cached=pl.col("u_cache") < p_cached,
    )
    n_rows = pl.when(pl.col("call") == CALL_LLM).then(2 + pl.col("cached").cast(pl.Int64))
    return calls.with_columns(n_rows=n_rows.otherwise(1))


def _rows(calls: pl.DataFrame, rng: Rng) -> pl.DataFrame:
    """Explode calls into billable rows and draw each row's quantity (integer base units)."""
    rows = calls.select(
        *RUN_FIELDS,
        "tool",
        "pos",
        "call",
        "ts_ms",
        r=pl.int_ranges(0, "n_rows", dtype=pl.UInt8),
    ).explode("r")
    call = pl.col("call")
    meter = pl.when(call == CALL_LLM).then(pl.col("r"))
    meter = meter.when(call == CALL_GPU).then(cat.M_GPU).otherwise(cat.M_TOOL)
    rows = rows.with_columns(meter=meter.cast(pl.UInt8), z=rng.normal(rows.height))
    return rows.with_columns(units=_units())


def _units() -> pl.Expr:
    """Log-normal tokens by feature (cached context grows along an agent run), log-normal GPU
    tenths of a second, and tool calls of mostly 1."""
    medians = [math.log(m) for row in cat.FEATURE_MEDIANS for m in row]
    meter, z = pl.col("meter"), pl.col("z")
    llm_idx = pl.col("feature").cast(pl.Int64) * 3 + meter.cast(pl.Int64)
    mu = pl.lit(pl.Series(medians)).gather(pl.min_horizontal(llm_idx, len(medians) - 1))
    sigma = pl.lit(pl.Series(cat.TOKEN_SIGMA)).gather(pl.min_horizontal(meter, 2))
    growth = pl.when((meter == cat.M_CACHED) & (pl.col("kind") == RUN_AGENT))
    mu = mu + growth.then((1.0 + 0.5 * pl.col("pos")).log()).otherwise(0.0)
    tokens = (mu + sigma * z).exp().round().clip(1, 400_000)
    tenths = (GPU_LOG_MEDIAN_TENTHS + 1.1 * z).exp().round().clip(1, 360_000)
    tools = 1 + (z > 1.55).cast(pl.Int64) + (z > 2.05).cast(pl.Int64)
    units = pl.when(meter == cat.M_GPU).then(tenths).when(meter == cat.M_TOOL).then(tools)
    return units.otherwise(tokens).cast(pl.Int64)


def _finish(stream: Stream, rows: pl.DataFrame, day: datetime, day_rel: int, offset: int):
    """Turn index columns into the canonical string/decimal/timestamp columns."""
    n, book, midx = rows.height, stream.book, month_index(stream.month)
    event_ids = make_ids(
        "evt_",
        id_base(stream.code, midx),
        pl.int_range(offset, offset + n, eager=True),
        stream.id_key,
    )
    run_index = rows["run"].cast(pl.UInt64) + ((day_rel + 128) << 24)
    run_ids = make_ids("run_", id_base(stream.code | STREAM_RUN, midx), run_index, stream.id_key)
    day_us = int(day.timestamp()) * 1_000_000
    meter, agent_run = pl.col("meter"), pl.col("kind") == RUN_AGENT
    is_llm = meter <= cat.M_CACHED
    return rows.select(
        event_id=pl.lit(event_ids),
        account_id=pl.lit(book.ids).gather("acct"),
        meter_id=pl.lit(pl.Series(cat.METERS)).gather(meter),
        quantity=_quantity(),
        timestamp=(day_us + pl.col("ts_ms") * 1000)
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC"),
        model_id=pl.when(is_llm).then(pl.lit(book.models).gather("model")),
        product_id=pl.lit(pl.Series(cat.PRODUCTS)).gather(meter),
        unit=pl.lit(pl.Series(cat.UNITS)).gather(meter),
        project_id=pl.lit(book.projects).gather("project"),
        dimensions=_dimensions(book),
        correlation_id=pl.when(agent_run).then(pl.lit(run_ids)),
    )


def _quantity() -> pl.Expr:
    """Exact decimal quantity: whole tokens/calls, GPU seconds with one decimal."""
    whole = pl.col("units").cast(QTY)
    tenths = (whole * pl.lit(Decimal("0.1"), dtype=QTY)).cast(QTY)
    return pl.when(pl.col("meter") == cat.M_GPU).then(tenths).otherwise(whole)


def _dimensions(book: cat.AccountBook) -> pl.Expr:
    """Canonical dimensions JSON (sorted keys, compact): agent_id, feature, gpu, tool."""
    meter = pl.col("meter")
    agent = pl.when(pl.col("kind") == RUN_AGENT).then(pl.lit(book.agents).gather("agent"))
    feature = pl.when(meter != cat.M_GPU).then(pl.lit(pl.Series(cat.FEATURES)).gather("feature"))
    gpu = pl.when(meter == cat.M_GPU).then(pl.lit(pl.Series(cat.GPUS)).gather("gpu"))
    tool = pl.when(meter == cat.M_TOOL).then(pl.lit(pl.Series(cat.TOOLS)).gather("tool"))
    pairs = [
        pl.concat_str(pl.lit(f'"{key}":"'), value, pl.lit('"'))
        for key, value in (("agent_id", agent), ("feature", feature), ("gpu", gpu), ("tool", tool))
    ]
    inner = pl.concat_str(pairs, separator=",", ignore_nulls=True)
    return pl.concat_str(pl.lit("{"), inner, pl.lit("}"))
