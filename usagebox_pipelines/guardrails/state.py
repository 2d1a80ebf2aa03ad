"""`spend_state`: per account and limit, month-to-date spend, headroom, thresholds and burn.

Money is exact (Python Decimal in the per-limit arithmetic, Decimal(38, 12) in the table).
The loop here is over limits (a few per account), never over events: every spend number comes
from `spend.spend_at`, which prices all prefixes in one vectorised rating call.

Windows are half-open and clipped to the month: the last hour is [now - 1 h, now), the last
day [max(month start, now - 24 h), now); burn rates are money per hour over those windows, and
the projection extrapolates the 24 h burn rate to the hard threshold.

Over 400 lines on purpose: the per-limit arithmetic (thresholds, crossings, burn, projection)
shares one context of spend snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.guardrails.budgets import BUDGET, BudgetTree, Limit
from usagebox_pipelines.guardrails.schemas import SPEND_STATE, STATUS_RANK
from usagebox_pipelines.guardrails.spend import (
    HOUR,
    SpendAt,
    Target,
    first_crossings,
    hourly_amounts,
    matched_usage,
    spend_at,
)
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.pricebook import PricebookSet

_TICK = Decimal(1).scaleb(-12)
_MICROS_PER_HOUR = Decimal(3_600_000_000)
_HUNDRED = Decimal(100)
_ZERO = Decimal(0)

STEPS = pl.Schema(
    {
        "account_id": pl.String(),
        "limit_id": pl.String(),
        "status": pl.String(),
        "at": schemas.TS,
        "rule": pl.String(),
        "spend": schemas.MONEY,
        "threshold": schemas.MONEY,
        "window_from": schemas.TS,
        "window_to": schemas.TS,
        "limited_by": pl.String(),
    }
)


@dataclass(frozen=True)
class SpendEvaluation:
    """The spend_state rows and, per row, the steps up its status ladder (for decisions)."""

    state: pl.DataFrame
    steps: pl.DataFrame
    hourly: pl.DataFrame


@dataclass(frozen=True)
class _Context:
    usage: pl.DataFrame
    period: str
    pricebooks: PricebookSet
    accounts: Accounts
    membership: pl.DataFrame
    matched: pl.DataFrame  # usage matched to versions and rates once (spend.matched_usage)


def exact(value: Decimal | None) -> Decimal | None:
    """A value at the table's 12 places, half-up (the same rule as pricing.money)."""
    if value is None:
        return None
    with localcontext() as ctx:
        ctx.prec = 80
        return value.quantize(_TICK, rounding=ROUND_HALF_UP)


def evaluate_spend(
    usage: pl.DataFrame,
    tree: BudgetTree,
    period: str,
    now: datetime,
    pricebooks: PricebookSet,
    accounts: Accounts,
) -> SpendEvaluation:
    """spend_state rows (without decision ids) for every limit of `tree` at `now`."""
    with localcontext() as decimal_ctx:
        decimal_ctx.prec = 80  # exact: money has 12 places, percentages at most 12 more
        return _evaluate_spend(usage, tree, period, now, pricebooks, accounts)


def _evaluate_spend(
    usage: pl.DataFrame,
    tree: BudgetTree,
    period: str,
    now: datetime,
    pricebooks: PricebookSet,
    accounts: Accounts,
) -> SpendEvaluation:
    start, end = month_bounds(period)
    now = min(max(now, start), end)
    matched = matched_usage(usage, period, pricebooks, accounts)
    ctx = _Context(usage, period, pricebooks, accounts, tree.membership(), matched)
    w1, w24 = max(start, now - HOUR), max(start, now - 24 * HOUR)
    snap = _snapshot(ctx, tree, [now, w1, w24])
    hourly = hourly_amounts(usage, period, pricebooks, accounts, matched)
    crossings = _crossings(ctx, tree, snap, hourly, start, now)
    rows, steps = [], []
    by_account: dict[str, dict] = {}
    for lim in tree.limits:
        row, ladder = _row(lim, tree, snap, crossings, by_account, now, (start, end, w1, w24))
        rows.append({k: row.get(k) for k in SPEND_STATE.names()})
        steps.extend({k: s.get(k) for k in STEPS.names()} for s in ladder)
        if lim.limit_id == BUDGET:
            by_account[lim.account_id] = row
    state = pl.DataFrame(rows, schema=SPEND_STATE) if rows else pl.DataFrame(schema=SPEND_STATE)
    state = state.with_columns(period=pl.lit(period), as_of=pl.lit(now, dtype=schemas.TS))
    state = _with_meters(state, usage)
    step_frame = pl.DataFrame(steps, schema=STEPS) if steps else pl.DataFrame(schema=STEPS)
    return SpendEvaluation(state.sort("account_id", "limit_id"), step_frame, hourly)


def _with_meters(state: pl.DataFrame, usage: pl.DataFrame) -> pl.DataFrame:
    """Budget rows list the meters the account used itself (for per-meter headroom)."""
    used = (
        usage.filter(pl.col("billable").fill_null(False))
        .group_by("account_id")
        .agg(used=pl.col("meter_id").unique().sort().str.join(","))
    )
    budget = pl.col("scope") == BUDGET
    return (
        state.join(used, on="account_id", how="left")
        .with_columns(meters=pl.when(budget).then(pl.col("used")))
        .select(SPEND_STATE.names())
    )


def with_anomalies(state: pl.DataFrame, anomalies: pl.DataFrame) -> pl.DataFrame:
    """Budget rows get the account's flagged anomaly hours and the latest one (0 / null)."""
    per_account = anomalies.group_by("account_id").agg(
        anomaly_hours=pl.col("hour").n_unique().cast(pl.Int32), last_anomaly_at=pl.col("hour").max()
    )
    budget = pl.col("scope") == BUDGET
    joined = state.drop("anomaly_hours", "last_anomaly_at").join(
        per_account, on="account_id", how="left"
    )
    return joined.with_columns(
        anomaly_hours=pl.when(budget).then(pl.col("anomaly_hours").fill_null(0)),
        last_anomaly_at=pl.when(budget).then(pl.col("last_anomaly_at")),
    ).select(SPEND_STATE.names())


# --------------------------------------------------------------------------- exact values


def limit_values(pairs: pl.DataFrame, membership: pl.DataFrame, at: SpendAt) -> pl.DataFrame:
    """(limit_key, cutoff) → value: Σ members' spend (budget) or matching usage (cap)."""
    budget = (
        pairs.join(membership.filter(pl.col("scope") == BUDGET), on="limit_key")
        .join(at.totals, on=["account_id", "cutoff"], how="inner")
        .group_by("limit_key", "cutoff")
        .agg(value=pl.col("spend").sum(), billed=pl.col("billed").sum())
    )
    meter_ok = pl.col("cap_meter").is_null() | (pl.col("cap_meter") == pl.col("meter_id"))
    model_ok = pl.col("cap_model").is_null() | (pl.col("cap_model") == pl.col("model_id"))
    caps = (
        pairs.join(membership.filter(pl.col("scope") != BUDGET), on="limit_key")
        .join(at.lines, on=["account_id", "cutoff"], how="inner")
        .filter(meter_ok & model_ok)
        .group_by("limit_key", "cutoff")
        .agg(value=pl.col("gross").sum())
    )
    found = pl.concat([budget.drop("billed"), caps])
    billed = budget.select("limit_key", "cutoff", "billed")
    return (
        pairs.select("limit_key", pl.col("cutoff").cast(schemas.TS))
        .join(found, on=["limit_key", "cutoff"], how="left")
        .join(billed, on=["limit_key", "cutoff"], how="left")
        .with_columns(pl.col("value").fill_null(0).cast(schemas.MONEY))
    )


def _evaluate(ctx: _Context, pairs: pl.DataFrame) -> pl.DataFrame:
    members = pairs.join(ctx.membership, on="limit_key").select("account_id", "cutoff").unique()
    at = spend_at(ctx.usage, members, ctx.period, ctx.pricebooks, ctx.accounts, ctx.matched)
    return limit_values(pairs, ctx.membership, at)


@dataclass(frozen=True)
class _Snapshot:
    values: dict[tuple[str, datetime], Decimal]
    own: dict[tuple[str, datetime], Decimal]
    billed: dict[str, Decimal]


def _snapshot(ctx: _Context, tree: BudgetTree, cutoffs: list[datetime]) -> _Snapshot:
    """Exact subtree and own values of every limit at each cutoff (one rating call)."""
    keys = [lim.key for lim in tree.limits]
    pairs = pl.DataFrame(
        [(k, c) for k in keys for c in sorted(set(cutoffs))],
        schema={"limit_key": pl.String, "cutoff": schemas.TS},
        orient="row",
    )
    members = pairs.join(ctx.membership, on="limit_key").select("account_id", "cutoff").unique()
    at = spend_at(ctx.usage, members, ctx.period, ctx.pricebooks, ctx.accounts, ctx.matched)
    subtree = limit_values(pairs, ctx.membership, at)
    owner = pl.col("limit_key").str.split("|").list.first()
    own = limit_values(pairs, ctx.membership.filter(pl.col("account_id") == owner), at)
    now = max(cutoffs)
    billed = subtree.filter(pl.col("cutoff") == now).select("limit_key", "billed")
    return _Snapshot(
        values={
            (k, c): v for k, c, v in subtree.select("limit_key", "cutoff", "value").iter_rows()
        },
        own={(k, c): v for k, c, v in own.select("limit_key", "cutoff", "value").iter_rows()},
        billed={k: b for k, b in billed.iter_rows() if b is not None},
    )


# --------------------------------------------------------------------------- crossings


def _crossings(
    ctx: _Context,
    tree: BudgetTree,
    snap: _Snapshot,
    hourly: pl.DataFrame,
    start: datetime,
    now: datetime,
) -> dict[tuple[str, str], tuple[datetime, Decimal, Decimal]]:
    """(limit_key, soft|hard) → (first hour crossed, spend before it, spend after it)."""
    wanted = []
    for lim in tree.limits:
        value = snap.values[(lim.key, now)]
        for name, threshold in (("soft", lim.soft_threshold), ("hard", lim.hard_threshold)):
            if threshold is not None and value >= threshold:
                wanted.append((lim.key, name, threshold))
    if not wanted:
        return {}
    candidates = _candidates(ctx.membership, hourly, wanted)
    targets = [Target(k, n, t, candidates.get((k, n))) for k, n, t in wanted]
    found = first_crossings(targets, lambda pairs: _evaluate(ctx, pairs), start, now)
    return {(k, n): (at, before, after) for k, n, at, before, after in found.iter_rows()}


def _candidates(
    membership: pl.DataFrame, hourly: pl.DataFrame, wanted: list[tuple[str, str, Decimal]]
) -> dict[tuple[str, str], datetime]:
    """First hour the approximate per-hour series reaches each threshold (vectorised)."""
    meter_ok = pl.col("cap_meter").is_null() | (pl.col("cap_meter") == pl.col("meter_id"))
    model_ok = pl.col("cap_model").is_null() | (pl.col("cap_model") == pl.col("model_id"))
    budget = pl.col("scope") == BUDGET
    series = (
        membership.join(hourly, on="account_id", how="inner")
        .filter(budget | (meter_ok & model_ok))
        .with_columns(v=pl.when(budget).then(pl.col("net")).otherwise(pl.col("gross")))
        .group_by("limit_key", "hour")
        .agg(pl.col("v").sum())
        .sort("limit_key", "hour")
        .with_columns(cum=pl.col("v").cum_sum().over("limit_key"))
    )
    thresholds = pl.DataFrame(
        wanted,
        schema={"limit_key": pl.String, "name": pl.String, "threshold": schemas.MONEY},
        orient="row",
    )
    first = (
        series.join(thresholds, on="limit_key")
        .filter(pl.col("cum") >= pl.col("threshold"))
        .group_by("limit_key", "name")
        .agg(pl.col("hour").min())
    )
    return {(k, n): h for k, n, h in first.iter_rows()}


# --------------------------------------------------------------------------- one row


def _row(
    lim: Limit,
    tree: BudgetTree,
    snap: _Snapshot,
    crossings: dict,
    by_account: dict[str, dict],
    now: datetime,
    windows: tuple[datetime, datetime, datetime, datetime],
) -> tuple[dict, list[dict]]:
    """One spend_state row and the ladder of statuses it climbed (own and inherited)."""
    start, end, w1, w24 = windows
    spend = snap.values[(lim.key, now)]
    account = tree.accounts.get(lim.account_id)
    soft = crossings.get((lim.key, "soft"))
    hard = crossings.get((lim.key, "hard"))
    ladder = _own_ladder(lim, soft, hard, start, now)
    remaining = None if lim.hard_threshold is None else lim.hard_threshold - spend
    parent_row = (
        _parent_budget_row(tree, lim.account_id, by_account) if lim.scope == BUDGET else None
    )
    parent_remaining = None if parent_row is None else parent_row["_effective"]
    effective, limited_by = _binding(lim.account_id, remaining, parent_row)
    if parent_row is not None:
        ladder.extend(_inherited_step(parent_row))
    ladder = _climb(ladder)
    status = ladder[-1]["status"] if ladder else "ok"
    burn_1h = _burn(spend, snap.values[(lim.key, w1)], now - w1)
    burn_24h = _burn(spend, snap.values[(lim.key, w24)], now - w24)
    projected = _projection(lim, spend, status, burn_24h, now, end)
    row = {
        "account_id": lim.account_id,
        "parent_id": account.parent,
        "root_id": tree.root(lim.account_id),
        "level": tree.level(lim.account_id),
        "members": ",".join(tree.subtree(lim.account_id)),
        "scope": lim.scope,
        "limit_id": lim.limit_id,
        "meter_id": lim.meter_id,
        "model_id": lim.model_id,
        "currency": account.currency,
        "enforcement": lim.enforcement if lim.monthly is not None else None,
        "budget": lim.monthly,
        "soft_pct": lim.soft_pct if lim.monthly is not None else None,
        "hard_pct": lim.hard_pct if lim.monthly is not None else None,
        "soft_threshold": exact(lim.soft_threshold),
        "hard_threshold": exact(lim.hard_threshold),
        "own_spend": snap.own[(lim.key, now)],
        "spend": spend,
        "billed": snap.billed.get(lim.key) if lim.scope == BUDGET else None,
        "pct_of_budget": None if lim.monthly is None else exact(spend * _HUNDRED / lim.monthly),
        "remaining": exact(remaining),
        "parent_remaining": exact(parent_remaining),
        "effective_remaining": exact(effective),
        "limited_by": limited_by,
        "status": status,
        "rule": ladder[-1]["rule"] if ladder else None,
        "status_since": ladder[-1]["at"] if ladder else None,
        "soft_crossed_at": soft[0] if soft else None,
        "hard_crossed_at": hard[0] if hard else None,
        "spend_at_soft": soft[2] if soft else None,
        "spend_at_hard": hard[2] if hard else None,
        "burn_1h": exact(burn_1h),
        "burn_24h": exact(burn_24h),
        "burn_window_from": w24,
        "projected_hard_at": projected,
        "projected_in_period": None if projected is None else projected < end,
        "_effective": effective,
    }
    return row, [{**s, "account_id": lim.account_id, "limit_id": lim.limit_id} for s in ladder]


def _own_ladder(
    lim: Limit, soft: tuple | None, hard: tuple | None, start: datetime, now: datetime
) -> list[dict]:
    """Steps from the limit's own thresholds: soft alert, then the hard status."""
    prefix = "budget" if lim.scope == BUDGET else "cap"
    steps = []
    for name, found, status, threshold in (
        ("soft", soft, "soft_alert", lim.soft_threshold),
        ("hard", hard, lim.hard_status, lim.hard_threshold),
    ):
        if found is None:
            continue
        at, _before, after = found
        steps.append(
            {
                "status": status,
                "at": at,
                "rule": f"{prefix}_{name}",
                "spend": after,
                "threshold": exact(threshold),
                "window_from": start,
                "window_to": min(at + HOUR, now),
                "limited_by": lim.account_id,
            }
        )
    return steps


def _parent_budget_row(tree: BudgetTree, account_id: str, by_account: dict) -> dict | None:
    """The budget row of the nearest ancestor that has one (rows are built top-down)."""
    for ancestor in tree.ancestors(account_id):
        row = by_account.get(ancestor)
        if row is not None and (row["budget"] is not None or row["_effective"] is not None):
            return row
    return None


def _binding(
    account_id: str, remaining: Decimal | None, parent_row: dict | None
) -> tuple[Decimal | None, str | None]:
    """(effective remaining, whose remainder binds): a child never exceeds its parent's."""
    effective, limited_by = remaining, account_id if remaining is not None else None
    parent_remaining = None if parent_row is None else parent_row["_effective"]
    if parent_remaining is not None and (effective is None or parent_remaining < effective):
        effective, limited_by = parent_remaining, parent_row["limited_by"]
    return effective, limited_by


def _inherited_step(parent_row: dict) -> list[dict]:
    """An ancestor at its hard threshold leaves no remainder: the child inherits its status."""
    if STATUS_RANK[parent_row["status"]] < STATUS_RANK["hard_alert"]:
        return []
    step = {
        "status": parent_row["status"],
        "at": parent_row["status_since"],
        "rule": "parent_remainder",
        "spend": parent_row["spend"],
        "threshold": parent_row["hard_threshold"],
        "window_from": None,
        "window_to": None,
        "limited_by": parent_row["limited_by"] or parent_row["account_id"],
    }
    return [step]


def _climb(ladder: list[dict]) -> list[dict]:
    """Steps in time order that each raise the status (a later equal or lower one is dropped)."""
    out: list[dict] = []
    for step in sorted(ladder, key=lambda s: (s["at"], STATUS_RANK[s["status"]])):
        if not out or STATUS_RANK[step["status"]] > STATUS_RANK[out[-1]["status"]]:
            out.append(step)
    return out


def _burn(now_value: Decimal, then_value: Decimal, window: timedelta) -> Decimal | None:
    """Money per hour over a window (None for an empty window)."""
    micros = Decimal(window // timedelta(microseconds=1))
    if micros <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 80
        return (now_value - then_value) * _MICROS_PER_HOUR / micros


def _projection(
    lim: Limit,
    spend: Decimal,
    status: str,
    burn: Decimal | None,
    now: datetime,
    end: datetime,
) -> datetime | None:
    """When the hard threshold is reached at the 24 h burn rate (None if never or already)."""
    threshold = lim.hard_threshold
    if threshold is None or burn is None or burn <= _ZERO or spend >= threshold or now >= end:
        return None
    if STATUS_RANK[status] >= STATUS_RANK["hard_alert"]:
        return None
    with localcontext() as ctx:
        ctx.prec = 80
        micros = ((threshold - spend) / burn * _MICROS_PER_HOUR).to_integral_value(ROUND_CEILING)
    if micros > (datetime.max.replace(tzinfo=now.tzinfo) - now) // timedelta(microseconds=1):
        return None  # beyond any representable time (a trickle of spend): never, in effect
    return now + timedelta(microseconds=int(micros))
