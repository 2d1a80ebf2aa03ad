"""Spend priced exactly like the invoice, at any cutoff time, for many accounts at once.

Month-to-date spend at time t is what `pricing.rate_usage` charges for the usage of
[month start, t): the usage lines plus the discount line, exact (not rounded), so it equals
the draft invoice of the same hours. Rating is not additive over hours (graduated tiers,
packages, volume tiers, and a discount computed on the rounded subtotal), so per-hour amounts
summed up would drift from the invoice. Instead:

* `spend_at` rates *prefixes*. Each (account, cutoff) pair becomes a pseudo account
  `account␟cutoff` carrying the account's terms, so one vectorised `rate_usage` call prices any
  number of prefixes independently (positions and discounts are per account).
* `hourly_amounts` rates the month once with each row's hour folded into its `unit` (a line
  key that no position depends on), giving per-hour amounts: exact per hour, and close to the
  prefix totals. They locate *candidate* threshold crossings and feed spend-spike detection.
* `first_crossings` confirms each candidate with two exact prefixes, and falls back to a
  batched bisection over hours (assuming spend does not fall, as without refunds it cannot).

Over 400 lines on purpose: prefixes, hourly amounts and month usage are three views of the
same rating device, described above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines import schemas, shards
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.contract import INVOICE_LINE_KEYS
from usagebox_pipelines.pricing.money import minor_units, round_money
from usagebox_pipelines.pricing.pricebook import PricebookSet
from usagebox_pipelines.pricing.rating import match_usage, merge_runs, price_matched

HOUR = timedelta(hours=1)
# Unit separator: cannot occur in account ids (pricing.accounts._ID_RE) or in canonical units.
SEP = "\x1f"
SPEND_KINDS = ("usage", "discount")
# Rating works on at most this many usage rows at once (whole accounts, see `shards`); prefix
# pairs multiply rows, so a guardrail shard is cut again by this bound.
SHARD_ROWS = shards.SHARD_ROWS
_EMPTY_TOTALS = pl.Schema(
    {
        "account_id": pl.String(),
        "cutoff": schemas.TS,
        "spend": schemas.MONEY,
        "billed": schemas.MONEY2,
    }
)
_EMPTY_LINES = pl.Schema(
    {
        "account_id": pl.String(),
        "cutoff": schemas.TS,
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "gross": schemas.MONEY,
    }
)


@dataclass(frozen=True)
class SpendAt:
    """Exact spend per (account, cutoff): `totals` (spend, billed) and usage `lines` (gross)."""

    totals: pl.DataFrame
    lines: pl.DataFrame


# --------------------------------------------------------------------------- usage rows


def floor_hour(t: datetime) -> datetime:
    """The UTC hour that contains `t` (its partition key)."""
    return t.replace(minute=0, second=0, microsecond=0)


def month_usage(
    hourly: pl.LazyFrame,
    events: pl.LazyFrame,
    builds: pl.DataFrame | None,
    period: str,
    now: datetime,
    split_at: Iterable[datetime] = (),
) -> pl.DataFrame:
    """Usage of [month start, now) as USAGE_HOURLY rows plus `at` (when the row counts).

    Completed hours come from the rollup when built and not stale (no event ingested after
    the build), like `usagebox usage --source auto`; every other hour comes from `events`: the
    open hour, hours not rolled up yet, and the hours of `split_at` (cutoffs inside an hour,
    such as now - 1 h, which need event times). Rollup rows count at their hour start, events
    at their timestamp (a correction at its original's hour, where it is counted).
    """
    start, end = month_bounds(period)
    now = min(now, end)
    closed_end = floor_hour(now)
    ok_events = events.filter(
        (pl.col("status") == "ok") & (pl.col("hour") >= start) & (pl.col("hour") < now)
    )
    rollup_hours = _rollup_hours(hourly, ok_events, builds, start, closed_end)
    splits = [floor_hour(t) for t in split_at if t != floor_hour(t)]
    split_hours = pl.Series(splits, dtype=schemas.TS).implode()
    rollup_hours = rollup_hours.filter(~pl.col("hour").is_in(split_hours))
    from_rollup = (
        hourly.filter((pl.col("hour") >= start) & (pl.col("hour") < closed_end))
        .join(rollup_hours.lazy(), on="hour", how="semi")
        .with_columns(at=pl.col("hour"))
    )
    at = pl.when(pl.col("correction_of").is_null()).then(pl.col("timestamp")).otherwise("hour")
    answered = rollup_hours.get_column("hour").implode()
    from_events = (
        _on_days(ok_events, _days_not_answered(rollup_hours, start, now))
        .filter(~pl.col("hour").is_in(answered))
        .with_columns(at=at.cast(schemas.TS), sum=pl.col("quantity"), count=pl.lit(1, pl.Int64))
        .filter(pl.col("at") < now)
    )
    return pl.concat([_with_at(from_rollup.collect()), _with_at(from_events.collect())])


def _days_not_answered(rollup_hours: pl.DataFrame, start: datetime, now: datetime) -> pl.Series:
    """UTC dates with an hour of [start, now) the rollup does not answer (events are read)."""
    hours = pl.datetime_range(
        floor_hour(start), now, "1h", closed="left", time_zone="UTC", eager=True
    ).cast(schemas.TS)
    open_hours = pl.DataFrame({"hour": hours}).join(rollup_hours, on="hour", how="anti")
    return open_hours.select(pl.col("hour").dt.date().unique().sort()).to_series()


def _on_days(events: pl.LazyFrame, days: pl.Series) -> pl.LazyFrame:
    """`events` of those dates only: prunes the `event_date` partitions of the Delta scan.

    Without the column (a hand-built frame), the hour filter that follows is all there is.
    """
    if "event_date" not in events.collect_schema().names():
        return events
    return events.filter(pl.col("event_date").is_in(days.implode()))


def _with_at(frame: pl.DataFrame) -> pl.DataFrame:
    """USAGE_HOURLY columns (conformed) plus `at`."""
    at = frame.select(pl.col("at").cast(schemas.TS))
    return pl.concat([schemas.conform(frame, schemas.USAGE_HOURLY), at], how="horizontal")


def _rollup_hours(
    hourly: pl.LazyFrame,
    events: pl.LazyFrame,
    builds: pl.DataFrame | None,
    start: datetime,
    end: datetime,
) -> pl.DataFrame:
    """Completed hours answerable from the rollup: built, and no event ingested since."""
    if builds is None:
        built = hourly.filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        return built.select(pl.col("hour").cast(schemas.TS)).unique().collect()
    built = builds.filter((pl.col("hour") >= start) & (pl.col("hour") < end)).select(
        pl.col("hour").cast(schemas.TS), "built_at"
    )
    # one (hour, max ingested_at) per hour: the streaming engine never holds the month's events
    latest = (
        events.select("hour", "ingested_at")
        .group_by("hour")
        .agg(pl.col("ingested_at").max())
        .collect(engine="streaming")
    )
    stale = built.join(latest, on="hour", how="inner").filter(
        pl.col("ingested_at") > pl.col("built_at")
    )
    return built.join(stale, on="hour", how="anti").select("hour").unique()


def history_usage(hourly: pl.LazyFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Rollup rows of [start, end) (earlier, closed hours used only as anomaly baselines)."""
    rows = hourly.filter((pl.col("hour") >= start) & (pl.col("hour") < end)).collect()
    return _with_at(rows.with_columns(at=pl.col("hour")))


# --------------------------------------------------------------------------- exact prefixes


def spend_at(
    usage: pl.DataFrame,
    cutoffs: pl.DataFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
    matched: pl.DataFrame | None = None,
) -> SpendAt:
    """Exact spend of each (account_id, cutoff) pair: usage with `at < cutoff`, rated.

    `spend` = usage + discount lines (exact); `billed` = the same lines rounded as the
    invoice rounds them (each usage line once, then the discount line); `lines` = usage
    amounts per meter × model (list price, before discount), for caps. `matched` is
    `matched_usage(usage, ...)` when the caller has it (it is the same for every cutoff).
    """
    pairs = cutoffs.select("account_id", pl.col("cutoff").cast(schemas.TS)).unique()
    if pairs.is_empty():
        return SpendAt(pl.DataFrame(schema=_EMPTY_TOTALS), pl.DataFrame(schema=_EMPTY_LINES))
    if matched is None:
        matched = matched_usage(usage, period, pricebooks, accounts)
    classes = _prefix_classes(usage, pairs)
    reps = classes.select("account_id", cutoff=pl.col("rep")).unique()
    # rows each account brings: its usage rows once per distinct prefix asked of it
    weight = (
        usage.group_by("account_id")
        .len()
        .join(reps.group_by("account_id").len("n"), on="account_id", how="inner")
        .select("account_id", w=pl.col("len") * pl.col("n"))
    )
    parts = [
        _spend_at(
            matched, reps.join(ids, on="account_id", how="semi"), period, pricebooks, accounts
        )
        for ids in account_shards(weight, reps.get_column("account_id"))
    ]
    totals = pl.concat([p.totals for p in parts]) if parts else pl.DataFrame(schema=_EMPTY_TOTALS)
    lines = pl.concat([p.lines for p in parts]) if parts else pl.DataFrame(schema=_EMPTY_LINES)
    keys = ["account_id", "rep"]
    totals = classes.join(totals.rename({"cutoff": "rep"}), on=keys, how="inner")
    lines = classes.join(lines.rename({"cutoff": "rep"}), on=keys, how="inner")
    return SpendAt(
        totals.select(_EMPTY_TOTALS.names()).sort("account_id", "cutoff"),
        lines.select(_EMPTY_LINES.names()),
    )


def _prefix_classes(usage: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """(account_id, cutoff, rep): pairs whose prefixes hold the same rows share `rep`, the
    earliest of their cutoffs, so each distinct prefix is rated once.

    An account's prefixes are nested (`at < cutoff`), so two of them are the same rows exactly
    when they hold as many rows: e.g. an account idle in the last day has one prefix for
    now, now - 1 h and now - 24 h.
    """
    held = (
        usage.select("account_id", "at")
        .join(pairs, on="account_id", how="inner")
        .filter(pl.col("at") < pl.col("cutoff"))
        .group_by("account_id", "cutoff")
        .agg(n=pl.len())
    )
    return (
        pairs.join(held, on=["account_id", "cutoff"], how="left")
        .with_columns(pl.col("n").fill_null(0))
        .with_columns(rep=pl.col("cutoff").min().over("account_id", "n"))
        .select("account_id", "cutoff", "rep")
    )


def account_shards(
    weight: pl.DataFrame, wanted: pl.Series, max_rows: int | None = None
) -> list[pl.DataFrame]:
    """`wanted` accounts in shards (frames of account_id) of at most `max_rows` weight each
    (`shards.account_shards`; `weight`: account_id, w)."""
    limit = SHARD_ROWS if max_rows is None else max_rows
    ids = wanted.unique().to_list()
    mine = weight.filter(pl.col("account_id").is_in(ids))
    return [
        pl.DataFrame({"account_id": shard}, schema={"account_id": pl.String})
        for shard in shards.account_shards(mine, ids, limit)
    ]


def matched_usage(
    usage: pl.DataFrame, period: str, pricebooks: PricebookSet, accounts: Accounts
) -> pl.DataFrame:
    """`usage` (month_usage rows) matched to versions and rates once, `at` kept: every prefix
    and hour-folded rating of the same rows reuses it (pricing.rating.match_usage)."""
    keep = ("at",) if "at" in usage.columns else ()
    return match_usage(usage, period, pricebooks, accounts, keep)


def _spend_at(
    matched: pl.DataFrame,
    pairs: pl.DataFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
) -> SpendAt:
    """`spend_at` for one shard of accounts (one rating call)."""
    pairs = pairs.with_columns(key=_pseudo_key())
    rows = (
        _shared_prefix_merged(matched, pairs, pricebooks)
        .join(pairs, on="account_id", how="inner")
        .filter(pl.col("at") < pl.col("cutoff"))
        .with_columns(account_id=pl.col("key"))
        .drop("at", "cutoff", "key")
    )
    pseudo = _pseudo_accounts(accounts, pairs)
    rated = price_matched(rows, period, pricebooks, pseudo)
    rated = rated.filter(pl.col("line_kind").is_in(SPEND_KINDS))
    back = pairs.select("key", "account_id", "cutoff")
    totals = _totals(rated).rename({"account_id": "key"})
    totals = back.join(totals, on="key", how="left").select(
        "account_id",
        "cutoff",
        pl.col("spend").fill_null(0).cast(schemas.MONEY),
        pl.col("billed").fill_null(0).cast(schemas.MONEY2),
    )
    lines = (
        rated.filter(pl.col("line_kind") == "usage")
        .group_by(pl.col("account_id").alias("key"), "meter_id", "model_id")
        .agg(gross=pl.col("amount").sum().cast(schemas.MONEY))
        .join(back, on="key", how="inner")
        .select(_EMPTY_LINES.names())
    )
    return SpendAt(totals, lines)


def _shared_prefix_merged(
    matched: pl.DataFrame, pairs: pl.DataFrame, books: PricebookSet
) -> pl.DataFrame:
    """The shard's matched rows, those of whole hours before an account's earliest cutoff
    merged into runs (`pricing.rating.merge_runs`, exact): every prefix of the account holds
    them, and each prefix would otherwise rate them again row by row. For a month-end
    evaluation (cutoffs now, now - 1 h, now - 24 h) that is all but the last day."""
    shared_end = pairs.group_by("account_id").agg(
        shared_end=pl.col("cutoff").min().dt.truncate("1h")
    )
    mine = matched.join(shared_end, on="account_id", how="inner")
    shared = pl.col("hour") < pl.col("shared_end")
    return pl.concat(
        [
            merge_runs(mine.filter(shared).drop("shared_end"), books),
            mine.filter(~shared).drop("shared_end"),
        ]
    )


def _pseudo_key() -> pl.Expr:
    micros = pl.col("cutoff").dt.epoch("us").cast(pl.String)
    return pl.concat_str(pl.col("account_id"), pl.lit(SEP), micros)


def _pseudo_accounts(accounts: Accounts, pairs: pl.DataFrame) -> Accounts:
    """One stand-alone account per pair with the real account's pricebook, currency and discount.

    Minimum commit, prepaid credit and credit grants are dropped: they are not spend (budgets
    measure what usage costs, not how it is paid), and the parent link is cut (each prefix
    stands alone).
    """
    listed = {}
    for key, account_id in pairs.select("key", "account_id").iter_rows():
        base = accounts.get(account_id)
        listed[key] = dataclasses.replace(
            base,
            account_id=key,
            parent=None,
            minimum_commit=None,
            prepaid_credit=None,
            credit_grants=(),
        )
    return Accounts(defaults=accounts.defaults, listed=listed, file=accounts.file)


def _totals(rated: pl.DataFrame) -> pl.DataFrame:
    """Per (pseudo) account: exact spend and invoice-rounded spend."""
    usage = rated.filter(pl.col("line_kind") == "usage")
    lines = usage.group_by(INVOICE_LINE_KEYS).agg(pl.col("amount").sum())
    discount = (
        rated.filter(pl.col("line_kind") == "discount")
        .group_by("account_id", "currency")
        .agg(pl.col("amount").sum())
    )
    rounded = pl.concat(
        [
            lines.select("account_id", "currency", "amount", is_usage=pl.lit(True)),
            discount.select("account_id", "currency", "amount", is_usage=pl.lit(False)),
        ]
    ).with_columns(rounded=_round_by_currency(rated["currency"].unique().to_list()))
    # Like the invoice (invoicing.lines._drop_empty): a line that rounds to 0.00 is not on it,
    # so a tiny discount does not count; usage lines always do (their exact amount is billed).
    kept = rounded.filter((pl.col("rounded") != 0) | pl.col("is_usage"))
    return kept.group_by("account_id").agg(
        spend=pl.col("amount").sum(), billed=pl.col("rounded").sum()
    )


def _round_by_currency(currencies: list[str | None]) -> pl.Expr:
    """THE invoice rounding (pricing.money.round_money) at each row's currency minor unit."""
    out = round_money(pl.col("amount"), 2).cast(schemas.MONEY2)
    for code in sorted(c for c in currencies if c):
        units = minor_units(code)
        if units != 2:
            rounded = round_money(pl.col("amount"), units).cast(schemas.MONEY2)
            out = pl.when(pl.col("currency") == code).then(rounded).otherwise(out)
    return out


# --------------------------------------------------------------------------- per-hour amounts


def hourly_amounts(
    usage: pl.DataFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
    matched: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per account × hour × meter × model: billable quantity, amounts (list price) and velocity.

    One `rate_usage` call with the hour folded into `unit`: positions (tiers, packages) run
    exactly as for the month, each hour becomes its own line. `gross` is what the hour was
    charged; `net` applies the account's discount to it (an approximation of the discount on
    the rounded subtotal, good to a fraction of a cent: only used to locate candidates).
    `velocity` is the marginal cost of the hour's units (a package charge spread over its
    units, flat fees left out), so spike detection sees usage, not package boundaries.
    """
    if usage.is_empty():
        return _empty_hourly()
    if matched is None:
        matched = matched_usage(usage, period, pricebooks, accounts)
    weight = usage.group_by("account_id").agg(w=pl.len())
    shards = account_shards(weight, usage.get_column("account_id"))
    parts = [
        _hourly_amounts(
            usage.join(ids, on="account_id", how="semi"),
            matched.join(ids, on="account_id", how="semi"),
            period,
            pricebooks,
            accounts,
        )
        for ids in shards
    ]
    keys = ["account_id", "hour", "meter_id", "model_id"]
    return pl.concat(parts).sort(keys, nulls_last=True)


def _hourly_amounts(
    usage: pl.DataFrame,
    matched: pl.DataFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
) -> pl.DataFrame:
    """`hourly_amounts` of one shard of accounts (one rating call)."""
    micros = pl.col("hour").cast(schemas.TS).dt.epoch("us").cast(pl.String)
    tagged = matched.with_columns(
        unit=pl.concat_str(pl.col("unit").fill_null(""), pl.lit(SEP), micros)
    )
    rated = price_matched(tagged, period, pricebooks, accounts, contract=False)
    marginal = pl.col("quantity") * pl.col("unit_price") / pl.col("per")
    velocity = (
        pl.when(pl.col("price_model") == "package")
        .then(marginal)
        .when(pl.col("price_model") == "flat")
        .then(pl.lit(0, dtype=schemas.MONEY))
        .otherwise(pl.col("amount"))
    )
    # a line is one hour of one usage key (the hour is in its unit): its first hour is that hour
    amounts = (
        rated.lazy()
        .filter(pl.col("line_kind") == "usage")
        .with_columns(hour=pl.col("first_hour"), velocity=velocity.cast(schemas.MONEY))
        .group_by("account_id", "hour", "meter_id", "model_id")
        .agg(gross=pl.col("amount").sum().cast(schemas.MONEY), velocity=pl.col("velocity").sum())
    )
    start, end = month_bounds(period)
    quantities = (
        usage.lazy()
        .filter(
            pl.col("billable").fill_null(False) & (pl.col("hour") >= start) & (pl.col("hour") < end)
        )
        .group_by("account_id", "hour", "meter_id", "model_id")
        .agg(quantity=pl.col("sum").sum().cast(schemas.QTY))
    )
    keys = ["account_id", "hour", "meter_id", "model_id"]
    out = quantities.join(amounts, on=keys, how="full", coalesce=True, nulls_equal=True)
    out = out.with_columns(pl.col("quantity", "gross", "velocity").fill_null(0)).collect()
    return (
        out.lazy()
        .join(_discounts(out, accounts).lazy(), on="account_id", how="left")
        .with_columns(net=(pl.col("gross") * pl.col("keep")).cast(schemas.MONEY))
        .drop("keep")
        .sort(keys, nulls_last=True)
        .collect()
    )


def _discounts(frame: pl.DataFrame, accounts: Accounts) -> pl.DataFrame:
    """Per account: the share of list price it pays (1 - discount_pct / 100)."""
    ids = frame.get_column("account_id").unique().sort().to_list()
    keep = [1 - accounts.get(a).discount_pct / 100 for a in ids]
    return pl.DataFrame(
        {"account_id": ids, "keep": keep}, schema={"account_id": pl.String, "keep": schemas.MONEY}
    )


def _empty_hourly() -> pl.DataFrame:
    schema = {
        "account_id": pl.String,
        "hour": schemas.TS,
        "meter_id": pl.String,
        "model_id": pl.String,
        "quantity": schemas.QTY,
        "gross": schemas.MONEY,
        "velocity": schemas.MONEY,
        "net": schemas.MONEY,
    }
    return pl.DataFrame(schema=schema)


# --------------------------------------------------------------------------- crossings


@dataclass
class Target:
    """Find the first hour in which `value(limit_key, ·)` reaches `threshold`."""

    limit_key: str
    name: str
    threshold: Decimal
    candidate: datetime | None
    lo: int = 0
    hi: int = 0
    found: int | None = None


Evaluate = Callable[[pl.DataFrame], pl.DataFrame]


def first_crossings(
    targets: list[Target], evaluate: Evaluate, start: datetime, now: datetime
) -> pl.DataFrame:
    """(limit_key, name, crossed_at, value_before, value_after) for every target.

    `evaluate` takes (limit_key, cutoff) pairs and returns them with an exact `value`. The
    crossing hour i is the first whose end (clipped to `now`) reaches the threshold; each
    round is one batched evaluation, so a month needs at most 2 + log2(744) rounds.
    """
    n_hours = max(1, -(-int((now - start).total_seconds()) // 3600))

    def end_of(i: int) -> datetime:
        return min(start + (i + 1) * HOUR, now)

    for t in targets:
        t.lo, t.hi = 0, n_hours - 1
        if t.candidate is not None:
            t.candidate = min(max(t.candidate, start), start + (n_hours - 1) * HOUR)
    _check_candidates(targets, evaluate, start, end_of)
    while open_ := [t for t in targets if t.found is None and t.lo < t.hi]:
        mids = {id(t): (t.lo + t.hi) // 2 for t in open_}
        values = _values(evaluate, [(t.limit_key, end_of(mids[id(t)])) for t in open_])
        for t in open_:
            if values[(t.limit_key, end_of(mids[id(t)]))] >= t.threshold:
                t.hi = mids[id(t)]
            else:
                t.lo = mids[id(t)] + 1
    for t in targets:
        if t.found is None:
            t.found = t.lo
    edges = [(t.limit_key, start + t.found * HOUR) for t in targets]
    edges += [(t.limit_key, end_of(t.found)) for t in targets]
    values = _values(evaluate, edges)
    rows = [
        (
            t.limit_key,
            t.name,
            start + t.found * HOUR,
            values[(t.limit_key, start + t.found * HOUR)],
            values[(t.limit_key, end_of(t.found))],
        )
        for t in targets
    ]
    schema = {
        "limit_key": pl.String,
        "name": pl.String,
        "crossed_at": schemas.TS,
        "value_before": schemas.MONEY,
        "value_after": schemas.MONEY,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def _check_candidates(
    targets: list[Target], evaluate: Evaluate, start: datetime, end_of: Callable
) -> None:
    """Confirm candidates exactly (value before the hour < threshold <= value after it)."""
    with_candidate = [t for t in targets if t.candidate is not None]
    if not with_candidate:
        return
    idx = {id(t): int((t.candidate - start) / HOUR) for t in with_candidate}
    pairs = [(t.limit_key, start + idx[id(t)] * HOUR) for t in with_candidate]
    pairs += [(t.limit_key, end_of(idx[id(t)])) for t in with_candidate]
    values = _values(evaluate, pairs)
    for t in with_candidate:
        i = idx[id(t)]
        before = values[(t.limit_key, start + i * HOUR)]
        after = values[(t.limit_key, end_of(i))]
        if before < t.threshold <= after:
            t.found = i
        elif before >= t.threshold:
            t.hi = max(0, i - 1)
        else:
            t.lo = i + 1
        t.lo = min(t.lo, t.hi)


def _values(evaluate: Evaluate, pairs: list[tuple[str, datetime]]) -> dict:
    frame = pl.DataFrame(
        sorted(set(pairs)), schema={"limit_key": pl.String, "cutoff": schemas.TS}, orient="row"
    )
    out = evaluate(frame)
    return {(k, c): v for k, c, v in out.select("limit_key", "cutoff", "value").iter_rows()}
