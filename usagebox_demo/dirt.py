"""The dirt of real feeds, planted on purpose so every ingest rule has something to catch.

Everything here is column-wise: which events get retried, re-sent with another quantity,
corrected or flagged non-billable is decided by ranking a seeded uniform column, so the same seed
always plants the same dirt. Malformed rows are valid events first and are then broken in their
file's own shape (see `mutations`), so each carries exactly one defect.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_demo.ids import id_base, make_ids
from usagebox_demo.rand import Rng, choose
from usagebox_demo.usage import month_index
from usagebox_pipelines.schemas import QTY

# Hidden bookkeeping columns (never written): file key, row kind, malformed reason, and the
# hour a row counts in (a correction counts in its original's hour).
FILE, KIND, REASON, HOUR = "_file", "_kind", "_reason", "_hour"
HIDDEN = (FILE, KIND, REASON, HOUR)

K_EVENT, K_NON_BILLABLE, K_PREV = "event", "billable_false", "late_previous_month"
K_CORRECTION, K_RETRY, K_CONFLICT, K_MALFORMED = "correction", "retry", "conflict", "malformed"
K_LATE_EVENT, K_LATE_CORRECTION, K_NEXT = "late_month_event", "late_correction", "next_month_event"
ACCEPTED_KINDS = (K_EVENT, K_NON_BILLABLE, K_PREV, K_CORRECTION)

NON_BILLABLE_REASONS = ("internal_testing", "sla_credit", "free_trial")
SDK_VERSIONS = ("py-2.3.1", "node-1.8.0", "go-0.9.4")

# Which later-or-same file an exact retry of an event in a given file lands in (ingestion is in
# sorted file-name order, so the planted copy is always the one reported as duplicate).
RETRY_TARGETS = {"01": ("05", "07"), "02": ("07",), "03": ("04",), "04": ("04",), "05": ("07",)}
RETRY_TARGETS |= {"06": ("06",)}
LLM_ROUTES = (("01", 0.30), ("02", 0.08), ("03", 0.20), ("04", 0.15), ("05", 0.27))
RESEND_FILE = "07"


def route(events: pl.DataFrame, rng: Rng) -> pl.DataFrame:
    """Assign each clean event its main file: GPU -> 06, tool calls mostly Stigg, LLM spread."""
    n = events.height
    keys = pl.Series([k for k, _ in LLM_ROUTES])
    llm_file = pl.lit(keys).gather(pl.lit(choose(rng.uniform(n), [w for _, w in LLM_ROUTES])))
    u = pl.lit(rng.uniform(n))
    meter = pl.col("meter_id")
    file = pl.when(meter == "gpu_seconds").then(pl.lit("06"))
    file = file.when(meter == "tool_calls").then(
        pl.when(u < 0.75).then(pl.lit("02")).otherwise(pl.lit("01"))
    )
    return events.with_columns(
        billable=pl.lit(True),
        reason_code=pl.lit(None, pl.String),
        correction_of=pl.lit(None, pl.String),
        **{FILE: file.otherwise(llm_file), KIND: pl.lit(K_EVENT), REASON: pl.lit(None, pl.String)},
        **{HOUR: pl.col("timestamp").dt.truncate("1h")},
    )


def units() -> pl.Expr:
    """Quantity in integer base units (GPU tenths of a second) for exact delta arithmetic."""
    gpu = pl.col("meter_id") == "gpu_seconds"
    return pl.when(gpu).then(pl.col("quantity") * 10).otherwise(pl.col("quantity")).cast(pl.Int64)


def from_units(u: pl.Expr) -> pl.Expr:
    """Integer base units -> exact decimal quantity (inverse of `units`)."""
    whole = u.cast(QTY)
    tenths = (whole * pl.lit(Decimal("0.1"), dtype=QTY)).cast(QTY)
    return pl.when(pl.col("meter_id") == "gpu_seconds").then(tenths).otherwise(whole)


def pick(events: pl.DataFrame, rng: Rng, wants: list[tuple[str, pl.Expr, int]]) -> pl.DataFrame:
    """Tag disjoint sets of events (`_pick` = category) in seeded random order, each set drawn
    only from events matching its predicate."""
    events = events.with_columns(_u=rng.uniform(events.height), _pick=pl.lit(None, pl.String))
    order = events.with_row_index("_row").sort("_u", "_row")  # row breaks ties: deterministic
    for name, predicate, k in wants:
        free = order.filter(pl.col("_pick").is_null() & predicate).head(k)["_row"]
        hit = pl.col("_row").is_in(free.implode())
        order = order.with_columns(_pick=pl.when(hit).then(pl.lit(name)).otherwise("_pick"))
    return order.sort("_row").drop("_row", "_u")


def flag_non_billable(events: pl.DataFrame) -> pl.DataFrame:
    """`billable: false` with a `reason_code` on the events picked as non-billable."""
    hit = pl.col("_pick") == K_NON_BILLABLE
    codes = pl.lit(pl.Series(NON_BILLABLE_REASONS))
    code = codes.gather(pl.int_range(pl.len()) % len(NON_BILLABLE_REASONS))
    return events.with_columns(
        billable=pl.when(hit).then(pl.lit(False)).otherwise("billable"),
        reason_code=pl.when(hit).then(code),
        **{KIND: pl.when(hit).then(pl.lit(K_NON_BILLABLE)).otherwise(KIND)},
    )


def retries(originals: pl.DataFrame, rng: Rng) -> pl.DataFrame:
    """Identical copies, each in a same-or-later file (see RETRY_TARGETS)."""
    u = pl.lit(rng.uniform(originals.height))
    llm = pl.col("unit") == "tokens"
    target = pl.when((pl.col(FILE) == "01") & llm & (u < 0.5)).then(pl.lit("05"))
    for src, targets in RETRY_TARGETS.items():
        target = target.when(pl.col(FILE) == src).then(pl.lit(targets[-1]))
    return originals.with_columns(**{FILE: target, KIND: pl.lit(K_RETRY)})


def conflicts(originals: pl.DataFrame) -> pl.DataFrame:
    """Same account and event_id, quantity raised by ~25 % (at least one unit), in file 07."""
    bumped = units() + pl.max_horizontal(units() // 4, pl.lit(1))
    return originals.with_columns(
        quantity=from_units(bumped), **{FILE: pl.lit(RESEND_FILE), KIND: pl.lit(K_CONFLICT)}
    )


def corrections(
    originals: pl.DataFrame,
    rng: Rng,
    *,
    stream: int,
    month: str,
    seed: int,
    earliest: datetime,
    latest: datetime,
    kind: str,
    file: str,
) -> pl.DataFrame:
    """Signed-delta events with `correction_of` = the original's id: mostly -5..50 %, some +.

    A delta never exceeds half the original, so its net stays positive; the correction's own
    timestamp is hours after the original, clamped into [earliest, latest]; it counts in the
    original's hour (`_hour`).
    """
    n = originals.height
    frac, sign, lag = rng.uniform(n), rng.uniform(n), rng.uniform(n)
    size = pl.max_horizontal((units() * (0.05 + 0.45 * pl.lit(frac))).floor().cast(pl.Int64), 1)
    delta = pl.when(pl.lit(sign) < 0.75).then(-size).otherwise(size)
    lag_ms = (pl.lit(lag) * 29 * 3_600_000).cast(pl.Int64) + 3_600_000
    ts = pl.col("timestamp") + pl.duration(milliseconds=lag_ms)
    ts = ts.clip(pl.lit(earliest).dt.cast_time_unit("us"), pl.lit(latest).dt.cast_time_unit("us"))
    ids = make_ids(
        "evt_", id_base(stream, month_index(month)), pl.int_range(n, eager=True), rng_key(seed)
    )
    return originals.with_columns(
        event_id=pl.lit(ids),
        quantity=from_units(delta),
        timestamp=ts,
        correlation_id=pl.lit(None, pl.String),
        correction_of=pl.col("event_id"),
        **{FILE: pl.lit(file), KIND: pl.lit(kind)},
    )


def rng_key(seed: int) -> int:
    """The id scrambling key of a seed (same as usage.Stream.make)."""
    return Rng(seed, "id-key").bits64()


def with_sdk_version(frame: pl.DataFrame) -> pl.DataFrame:
    """The CSV exporter's unknown extra column, derived from the account (so retries match)."""
    digit = pl.col("account_id").str.slice(-1).cast(pl.Int64, strict=False).fill_null(0)
    return frame.with_columns(sdk_version=pl.lit(pl.Series(SDK_VERSIONS)).gather(digit % 3))


def end_of(moment: datetime) -> datetime:
    """The last millisecond before `moment`."""
    return moment - timedelta(milliseconds=1)
