"""Rating: `usage_hourly` × pricebook versions × accounts → `rated_usage` + `unrated_usage`.

Works on rollup rows (one per account × meter × model × product × unit × dimensions × hour),
never on events. Steps, all vectorised Polars (Python loops only over versions and rates):

1. keep billable rows of the period (each account's own window when accounts bill in their
   time zone, ADR 0017); attach the account's pricebook and currency;
2. version: the pricebook version in effect at each row's hour (an as-of join on hours);
3. rate: match each distinct (version, meter, model, dimensions) key against the version's
   rates and keep the most specific (exact model over `*`, then more dimension keys);
   keys no rate matches go to `unrated` with a reason, never priced at 0;
4. position: the running quantity per account × meter × model × rate id in hour order, which
   carries across version changes, splits graduated tiers, picks volume tiers from the month
   total, and counts packages started;
5. sum quantities to the rated grain, then amount = quantity × unit_price / per once per row,
   exact at 12 places (half-up at the 12th place when the division is inexact);
6. per-price terms (pricing.terms): a rate's monthly minimum true-up or maximum cap per
   account, as usage rows of the rate;
7. contract lines (pricing.contract): discount → minimum true-up → prepaid credit.

Over 400 lines on purpose: the steps above are one pipeline over the same frame, each a small
function, kept in order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.months import zone_period
from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.contract import CreditBalances, contract_lines
from usagebox_pipelines.pricing.money import (
    EXACT,
    ONE,
    SAFE_LIMIT,
    fraction_of,
    from_scaled,
    lit_int,
    scaled_ceil_div,
    scaled_half_up_div,
    to_scaled,
)
from usagebox_pipelines.pricing.per_event import (
    RATE_KEYS as _PER_EVENT_KEYS,
)
from usagebox_pipelines.pricing.per_event import (
    PerEventResult,
    per_event_meters,
    per_event_rates,
    price_events,
)
from usagebox_pipelines.pricing.pricebook import PricebookSet, PricebookVersion, Rate
from usagebox_pipelines.pricing.terms import price_term_rows
from usagebox_pipelines.pricing.zones import own_period_rows

_I128 = pl.Int128
_USAGE_KEYS = ["account_id", "meter_id", "model_id", "product_id", "unit", "dimensions"]
_MATCH_KEYS = ["pricebook", "price_version", "meter_id", "model_id", "dimensions"]
_RATE_KEYS = ["pricebook", "price_version", "rate_idx"]
_LINE_KEYS = [*_USAGE_KEYS, "currency", *_RATE_KEYS, "tier", "fee"]
# Tier/package positions run per account × meter × model × rate id (× the values of the rate's
# `tier_by` dimension keys), across versions.
_POSITION_KEYS = ["account_id", "meter_id", "model_id", "rate_id", "tier_group"]
_ORDER = ["hour", "dimensions", "product_id", "unit"]
_LINE_ORDER = {"usage": 0, "discount": 1, "minimum": 2, "tax": 3, "credit": 4}
_COUNTED = ("package", "flat")
#: Price models priced per unit (a markup's and a percentage's unit price resolved at load).
_PER_UNIT = ("per_unit", "markup", "percentage")
#: Tier number of the free-units step (rated rows show it as tier null, price model `included`).
INCLUDED_TIER = -1


@dataclass(frozen=True)
class RatingResult:
    """Rated lines (usage + contract), unrated usage, and prepaid balances after the period:
    `closing_grants` per account and grant, `closing_credit` their sum per account."""

    rated: pl.DataFrame
    unrated: pl.DataFrame
    closing_grants: dict[str, dict[str, Decimal]]

    @property
    def closing_credit(self) -> dict[str, Decimal]:
        """Per account: the sum of its grant balances after the period."""
        return {a: sum(g.values(), Decimal(0)) for a, g in self.closing_grants.items()}

    @property
    def blocks_close(self) -> bool:
        """Unrated usage blocks the month close (CONTRACT.md §4)."""
        return self.unrated.height > 0


def rate_usage(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
    opening_credit: CreditBalances | None = None,
    scope: Collection[str] | None = None,
    events: pl.DataFrame | pl.LazyFrame | None = None,
) -> RatingResult:
    """Rate one month of `usage_hourly` (schemas.USAGE_HOURLY); nothing is written.

    `opening_credit` holds the grant balances carried from the issued periods
    (invoicing.credit.balances); accounts missing from it start from their full grants. `scope`: the
    accounts this call bills when the month is rated in shards (`shards.account_shards`;
    `usage_hourly` then holds only theirs), so each account's contract lines come once.

    `events`: the month's `events` rows (status ok) of the same accounts, for rates priced per
    event (pricing.per_event, ADR 0018): the hourly rows those rates match are left out and
    the events priced instead. Without `events`, such hourly rows are unrated (with a reason),
    never priced from their sums.
    """
    rows = _matched(usage_hourly, period, pricebooks, accounts)
    hourly_rows, held = split_per_event(rows, pricebooks)
    unrated = _unrated(hourly_rows, period)
    if events is None:
        per_event = None
        unrated = pl.concat([unrated, _needs_events(held, period)])
    else:
        per_event = rate_events(events, period, pricebooks, accounts)
        unrated = pl.concat([unrated, per_event.unrated])
    matched = hourly_rows.filter(pl.col("rate_idx").is_not_null())
    extra = None if per_event is None else per_event.lines
    usage_lines = _price(matched, pricebooks, period, extra)
    contract, closing = contract_lines(usage_lines, period, accounts, opening_credit, scope=scope)
    rated = pl.concat([usage_lines, schemas.conform(contract, schemas.RATED_USAGE)])
    return RatingResult(_sorted(rated), unrated, closing)


def rate_events(
    events: pl.DataFrame | pl.LazyFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
) -> PerEventResult:
    """The per-event lines of a month (pricing.per_event) from `events` rows: matched like
    hourly rows (each account's own window, the version in effect at the event's hour, the
    most specific rate), only rows of per-event rates priced."""
    meters = per_event_meters(pricebooks)
    usage = (
        events.lazy()
        .filter(
            (pl.col("status") == "ok")
            & pl.col("meter_id").is_in(meters)
            & pl.col("account_id").is_not_null()
        )
        .select(
            *_USAGE_KEYS,
            "hour",
            pl.col("quantity").alias("sum"),
            "billable",
            "event_id",
            "correction_of",
            "timestamp",
        )  # fmt: skip
    )
    keep = ("event_id", "correction_of", "timestamp")
    matched = match_usage(usage, period, pricebooks, accounts, keep, own_periods=True)
    return price_events(matched.filter(pl.col("rate_idx").is_not_null()), pricebooks, period)


def split_per_event(rows: pl.DataFrame, books: PricebookSet) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Matched hourly rows → (rows priced from hours, rows of per-event rates)."""
    keys = per_event_rates(books).select(_PER_EVENT_KEYS).with_columns(_per_event=pl.lit(True))
    if keys.is_empty():
        return rows, rows.clear()
    tagged = rows.join(keys, on=_PER_EVENT_KEYS, how="left", nulls_equal=False)
    flag = pl.col("_per_event").fill_null(False)
    return tagged.filter(~flag).drop("_per_event"), tagged.filter(flag).drop("_per_event")


def _needs_events(held: pl.DataFrame, period: str) -> pl.DataFrame:
    """Hourly rows of per-event rates rated without their events: unrated, with the reason."""
    reason = pl.format(
        "rate {}@{} #{} is priced per event and this rating was given no events",
        pl.col("pricebook"),
        pl.col("price_version"),
        pl.col("rate_idx"),
    )
    out = (
        held.with_columns(reason=reason, period=pl.lit(period))
        .group_by("period", "account_id", "meter_id", "model_id", "dimensions", "reason")
        .agg(quantity=pl.col("sum").sum(), first_hour=pl.col("hour").min())
    )
    return schemas.conform(out, schemas.UNRATED_USAGE)


def rate_lines(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
    *,
    contract: bool = True,
) -> pl.DataFrame:
    """The rated lines of `rate_usage` (no opening credit), in no particular order, for callers
    that aggregate them (guardrail spend): no sort, no unrated report, and with
    `contract=False` usage lines only."""
    matched = match_usage(usage_hourly, period, pricebooks, accounts, own_periods=True)
    return price_matched(matched, period, pricebooks, accounts, contract=contract)


def match_usage(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
    keep: tuple[str, ...] = (),
    *,
    own_periods: bool = False,
) -> pl.DataFrame:
    """Steps 1–3: billable rows of the period with account terms, version and `rate_idx`
    (null: unrated), plus the `keep` columns of the input.

    The period is the UTC month, or with `own_periods` (invoices: `rate_usage`) each
    account's own month in its time zone (ADR 0017). Guardrail spend matches without it: its
    budget months stay UTC months.

    Matching reads only a row's account (its pricebook and currency), hour, meter, model and
    dimensions, so callers that rate many variants of the same rows (guardrail prefixes, hours
    folded into units) match once and relabel `account_id` (to an account with the same
    pricebook and currency) or `unit` before `price_matched`.
    """
    zoned = own_periods and accounts.zoned
    window = accounts.span(period) if zoned else zone_period(period)
    usage = _billable(usage_hourly, window.start, window.end, keep)
    if zoned:
        usage = own_period_rows(usage, period, accounts)
    accounts_frame = _account_frame(usage, pricebooks, accounts).lazy()
    joined = usage.lazy().join(accounts_frame, on="account_id", how="left")
    return _with_rates(_with_versions(joined, pricebooks).collect(), pricebooks)


def price_matched(
    matched: pl.DataFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
    *,
    contract: bool = True,
) -> pl.DataFrame:
    """Steps 4–6 over `match_usage` rows: `rate_lines` without the matching.

    Rows of per-event rates are left out: guardrail spend, which prices hourly prefixes this
    way, does not count per-event charges (ADR 0018)."""
    hourly_rows, _ = split_per_event(matched.filter(pl.col("rate_idx").is_not_null()), pricebooks)
    usage_lines = _price(hourly_rows, pricebooks, period)
    if not contract:
        return usage_lines
    lines, _ = contract_lines(usage_lines, period, accounts)
    return pl.concat([usage_lines, schemas.conform(lines, schemas.RATED_USAGE)])


def _matched(
    usage_hourly: pl.DataFrame | pl.LazyFrame,
    period: str,
    pricebooks: PricebookSet,
    accounts: Accounts,
) -> pl.DataFrame:
    return match_usage(usage_hourly, period, pricebooks, accounts, own_periods=True)


def _billable(
    usage: pl.DataFrame | pl.LazyFrame,
    start: datetime,
    end: datetime,
    keep: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Billable rows of the window, with exact quantities and canonical empty dimensions."""
    return (
        usage.lazy()
        .with_columns(pl.col("hour").cast(schemas.TS))
        .filter(
            pl.col("billable").fill_null(False)  # only billable == True is rated
            & (pl.col("hour") >= start)
            & (pl.col("hour") < end)
        )
        .select(
            *_USAGE_KEYS[:-1],
            pl.col("dimensions").fill_null("{}"),
            "hour",
            pl.col("sum").cast(schemas.QTY),
            *keep,
        )
        .collect()
    )


def _account_frame(usage: pl.DataFrame, books: PricebookSet, accounts: Accounts) -> pl.DataFrame:
    """Per account: pricebook, currency, and why it cannot be rated (None when it can)."""
    records = []
    for account_id in usage.get_column("account_id").unique().sort().to_list():
        account = accounts.get(account_id)
        book_currency = books.currency_of(account.pricebook)
        problem = None
        if book_currency is None:
            problem = f"account's pricebook {account.pricebook!r} does not exist"
        elif book_currency != account.currency:
            problem = (
                f"account bills in {account.currency} but pricebook {account.pricebook!r} "
                f"is in {book_currency}"
            )
        records.append((account_id, account.pricebook, account.currency, problem))
    schema = {
        "account_id": pl.String,
        "pricebook": pl.String,
        "currency": pl.String,
        "problem": pl.String,
    }
    return pl.DataFrame(records, schema=schema, orient="row")


def _with_versions(rows: pl.LazyFrame, books: PricebookSet) -> pl.LazyFrame:
    """Attach the version in effect at each row's hour (as-of join on distinct hours)."""
    versions = pl.DataFrame(
        [(v.pricebook, v.version, v.effective_from) for v in books.versions],
        schema={"pricebook": pl.String, "price_version": pl.String, "effective_from": schemas.TS},
        orient="row",
    ).sort("effective_from")
    hours = (
        rows.filter(pl.col("problem").is_null())
        .select("pricebook", "hour")
        .unique()
        .sort("hour")
        .join_asof(
            versions.lazy(),
            left_on="hour",
            right_on="effective_from",
            by="pricebook",
            strategy="backward",
            check_sortedness=False,
        )
        .select("pricebook", "hour", "price_version")
    )
    return rows.join(hours, on=["pricebook", "hour"], how="left")


def _with_rates(rows: pl.DataFrame, books: PricebookSet) -> pl.DataFrame:
    """Attach `rate_idx` of the most specific matching rate (null when none matches)."""
    keys = rows.filter(pl.col("price_version").is_not_null()).select(_MATCH_KEYS).unique()
    candidates = [
        _candidates(keys, version, position, rate)
        for version in _used_versions(keys, books)
        for position, rate in enumerate(version.rates)
    ]
    schema = {
        **keys.schema,
        "rate_idx": pl.Int32,
        "spec_model": pl.Int8,
        "spec_dims": pl.Int8,
        "spec_priority": pl.Int64,
    }
    if candidates:
        best = (
            pl.concat(candidates)
            .sort(["spec_model", "spec_dims", "spec_priority"], descending=True)
            .unique(subset=_MATCH_KEYS, keep="first", maintain_order=True)
        )
    else:
        best = pl.DataFrame(schema=schema)
    return rows.join(
        best.select(*_MATCH_KEYS, "rate_idx"), on=_MATCH_KEYS, how="left", nulls_equal=True
    )


def _used_versions(keys: pl.DataFrame, books: PricebookSet) -> list[PricebookVersion]:
    used = keys.select("pricebook", "price_version").unique().rows()
    return [books.get(f"{pricebook}@{version}") for pricebook, version in sorted(used)]


def _candidates(
    keys: pl.DataFrame, version: PricebookVersion, position: int, rate: Rate
) -> pl.DataFrame:
    """Keys of `version` that `rate` (at `position` in its rates: the `rate_idx`) matches,
    with its specificity."""
    cond = (
        (pl.col("pricebook") == version.pricebook)
        & (pl.col("price_version") == version.version)
        & (pl.col("meter_id") == rate.meter_id)
    )
    if rate.model_id != "*":
        cond &= pl.col("model_id") == rate.model_id
    for key, value in rate.dimensions:
        cond &= pl.col("dimensions").str.json_path_match(f"$['{key}']") == value
    spec_model, spec_dims, spec_priority = rate.specificity
    return keys.filter(cond).with_columns(
        rate_idx=pl.lit(position, dtype=pl.Int32),
        spec_model=pl.lit(spec_model, dtype=pl.Int8),
        spec_dims=pl.lit(spec_dims, dtype=pl.Int8),
        spec_priority=pl.lit(spec_priority, dtype=pl.Int64),
    )


def _unrated(rows: pl.DataFrame, period: str) -> pl.DataFrame:
    """Usage no rate prices, grouped with a reason a person can act on."""
    model = pl.col("model_id").fill_null("(none)")
    reason = (
        pl.when(pl.col("problem").is_not_null())
        .then(pl.col("problem"))
        .when(pl.col("price_version").is_null())
        .then(
            pl.format("no version of pricebook '{}' is in effect at this hour", pl.col("pricebook"))
        )
        .otherwise(
            pl.format(
                "no rate in {}@{} matches meter '{}', model '{}', dimensions {}",
                pl.col("pricebook"),
                pl.col("price_version"),
                pl.col("meter_id"),
                model,
                pl.col("dimensions"),
            )
        )
    )
    out = (
        rows.filter(pl.col("rate_idx").is_null())
        .with_columns(reason=reason, period=pl.lit(period))
        .group_by("period", "account_id", "meter_id", "model_id", "dimensions", "reason")
        .agg(quantity=pl.col("sum").sum(), first_hour=pl.col("hour").min())
        .sort("account_id", "meter_id", "model_id", "dimensions", "reason", nulls_last=True)
    )
    return schemas.conform(out, schemas.UNRATED_USAGE)


def _price(
    matched: pl.DataFrame,
    books: PricebookSet,
    period: str,
    extra: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Matched usage rows → rated usage lines (schemas.RATED_USAGE); `extra` lines (per-event
    charges) join them before the per-price terms, which read a rate's lines of both.

    Positions (running quantity, month total, rank) are computed only for rows of rate ids
    that are tiered, packaged or flat in some version: a rate id priced per unit everywhere
    never reads them, and its rows are most of the month.
    """
    meta, tiers = _rate_tables(books)
    magnitude = int(matched.select(to_scaled(pl.col("sum")).abs().sum()).item() or 0)
    _guard(2 * magnitude * int(meta["pkg_den"].max() or 1))
    positioned = meta.filter(pl.col("path") != "per_unit").get_column("rate_id")
    rows = (
        matched.lazy()
        .join(meta.lazy(), on=_RATE_KEYS, how="left")
        .with_columns(q=to_scaled(pl.col("sum")))
    )
    needs_position = pl.col("rate_id").is_in(positioned.unique().implode())
    per_unit = rows.filter(~needs_position).select(
        *_LINE_KEYS[:-2],
        tier=pl.lit(0, dtype=pl.Int32),
        fee=pl.lit(False),
        hour=pl.col("hour"),
        part=pl.col("q"),
        count=lit_int(0),
    )
    rows = (
        rows.filter(needs_position)
        .with_columns(tier_group=_tier_group(meta))
        .with_columns(
            cum=pl.col("q").cum_sum().over(_POSITION_KEYS, order_by=_ORDER),
            total=pl.col("q").sum().over(_POSITION_KEYS),
            rank=pl.int_range(pl.len()).over(_POSITION_KEYS, order_by=_ORDER),
        )
        .with_columns(prev=pl.col("cum") - pl.col("q"))
        .collect(engine="in-memory")
        .lazy()
    )
    parts = pl.concat(
        [
            _graduated(rows.filter(pl.col("path") == "graduated"), tiers),
            _volume(rows.filter(pl.col("path") == "volume"), tiers),
            _untiered(rows.filter(~pl.col("path").is_in(["graduated", "volume"]))),
            per_unit,
        ]
    )
    lines = (
        parts.group_by(_LINE_KEYS)
        .agg(
            part=pl.col("part").sum(),
            count=pl.col("count").sum(),
            first_hour=pl.col("hour").min(),
            last_hour=pl.col("hour").max(),
        )
        .join(meta.lazy(), on=_RATE_KEYS, how="left")
        .collect()
    )
    priced = _amounts(lines, tiers, period)
    if extra is not None:
        priced = pl.concat([priced, extra])
    return pl.concat([priced, price_term_rows(priced, books)])


def _tier_group(meta: pl.DataFrame) -> pl.Expr:
    """Each row's values of its rate's `tier_by` keys (`h100|eu`), "" for rates without: one
    expression per distinct key list (a few), never per row."""
    group = pl.lit("")
    for keys in sorted(set(meta["tier_by"].to_list()) - {""}):
        values = [
            pl.col("dimensions").str.json_path_match(f"$['{key}']").fill_null("")
            for key in keys.split(",")
        ]
        group = (
            pl.when(pl.col("tier_by") == keys)
            .then(pl.concat_str(values, separator="|"))
            .otherwise(group)
        )
    return group


def _graduated(rows: pl.LazyFrame, tiers: pl.DataFrame) -> pl.LazyFrame:
    """Split each row's [prev, cum] position over the tiers it crosses."""
    lo, hi = pl.col("lo"), pl.col("hi")

    def clip(col: str) -> pl.Expr:
        return pl.max_horizontal(lo, pl.min_horizontal(pl.col(col), hi))

    at_prev = (lo.is_null() | (pl.col("prev") > lo)) & (hi.is_null() | (pl.col("prev") <= hi))
    joined = rows.join(tiers.lazy(), on=_RATE_KEYS, how="inner")
    start = lo.fill_null(lit_int(0))
    block = pl.col("block")

    def blocks(col: str) -> pl.Expr:
        return scaled_ceil_div(pl.max_horizontal(clip(col) - start, lit_int(0)), block)

    # a tier with `block`: blocks started in this slice (a started block is billed whole)
    started = pl.when(block > lit_int(0)).then(blocks("cum") - blocks("prev")).otherwise(lit_int(0))
    units = (
        joined.with_columns(part=clip("cum") - clip("prev"))
        .filter((pl.col("part") != lit_int(0)) | ((pl.col("q") == lit_int(0)) & at_prev))
        .with_columns(count=started.cast(_I128), fee=pl.lit(False))
        .select(*_LINE_KEYS, "hour", "part", "count")
    )
    enters = (pl.col("cum") > start) & (pl.col("prev") <= start) & (pl.col("total") > start)
    return pl.concat([units, _tier_fees(joined, enters)])


def _tier_fees(joined: pl.LazyFrame, in_tier: pl.Expr) -> pl.LazyFrame:
    """One fee row (count 1, part 0) per account × rate id × tier with a `flat_fee`: on the
    first row in hour order where `in_tier` holds (graduated: the position enters the tier and
    the month's total stays in or past it; volume: the month's total lands in it)."""
    keys = [*_POSITION_KEYS, "tier"]
    first = pl.col("rank") == pl.col("rank").filter(in_tier).min().over(keys)
    return (
        joined.filter(pl.col("fee_scaled") > lit_int(0))
        .filter(in_tier & first)
        .with_columns(part=lit_int(0), count=lit_int(1), fee=pl.lit(True))
        .select(*_LINE_KEYS, "hour", "part", "count")
    )


def _volume(rows: pl.LazyFrame, tiers: pl.DataFrame) -> pl.LazyFrame:
    """All of a month's units at the tier its total reaches (per version's own tier table)."""
    lo, hi, total = pl.col("lo"), pl.col("hi"), pl.col("total")
    joined = rows.join(tiers.lazy(), on=_RATE_KEYS, how="inner").filter(
        (lo.is_null() | (total > lo)) & (hi.is_null() | (total <= hi))
    )
    units = joined.with_columns(part=pl.col("q"), count=lit_int(0), fee=pl.lit(False)).select(
        *_LINE_KEYS, "hour", "part", "count"
    )
    return pl.concat([units, _tier_fees(joined, total > lit_int(0))])


def _untiered(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Per-unit rows as they are; packages started and flat fees counted on positions.

    Packages round up (a package counts from its first unit) unless `round: down`. A package
    rate's `free_units` come off the position first: packages start only once the
    month's quantity passes them (Lago's package `free_units`).
    """
    size = pl.col("pkg_num") * lit_int(ONE)
    zero = lit_int(0)

    def billed(col: str) -> pl.Expr:
        return pl.max_horizontal(pl.col(col) - pl.col("free"), zero) * pl.col("pkg_den")

    up = scaled_ceil_div(billed("cum"), size) - scaled_ceil_div(billed("prev"), size)
    # `round: down`: only complete packages are billed (floor of the position)
    down = billed("cum") // size - billed("prev") // size
    started = pl.when(pl.col("pkg_round") == "down").then(down).otherwise(up)
    first_used = (pl.col("rank") == 0) & (pl.col("total") > lit_int(0))
    count = (
        pl.when(pl.col("price_model") == "package")
        .then(started)
        .when((pl.col("price_model") == "flat") & first_used)
        .then(lit_int(1))
        .otherwise(lit_int(0))
    )
    return rows.with_columns(
        tier=pl.lit(0, dtype=pl.Int32), part=pl.col("q"), count=count.cast(_I128), fee=pl.lit(False)
    ).select(*_LINE_KEYS, "hour", "part", "count")


def _amounts(lines: pl.DataFrame, tiers: pl.DataFrame, period: str) -> pl.DataFrame:
    """amount = quantity × price fraction, once per line, half-up at the 12th place."""
    lines = lines.join(tiers.drop("lo", "hi"), on=[*_RATE_KEYS, "tier"], how="left")
    fee = pl.col("fee")
    base = (
        pl.when(pl.col("price_model").is_in(_COUNTED) | fee)
        .then(pl.col("count") * lit_int(ONE))
        .when(pl.col("block") > lit_int(0))
        .then(pl.col("count") * pl.col("block"))
        .otherwise(pl.col("part"))
    )
    # a tier's flat fee: count × fee (a fraction fee / 1), shown at unit price = the fee
    lines = lines.with_columns(
        num=pl.when(fee).then(pl.col("fee_scaled")).otherwise(pl.col("num")),
        den=pl.when(fee).then(lit_int(ONE)).otherwise(pl.col("den")),
        unit_price=pl.when(fee).then(pl.col("fee_amount")).otherwise(pl.col("unit_price")),
        per=pl.when(fee).then(pl.lit(Decimal(1), dtype=EXACT)).otherwise(pl.col("per")),
    )
    lines = lines.with_columns(base=base)
    widest = int(lines.select(pl.col("base").abs().max()).item() or 0)
    _guard(2 * widest * int(lines["num"].max() or 1) + 2 * int(lines["den"].max() or 1))
    return schemas.conform(
        lines.with_columns(
            period=pl.lit(period),
            line_kind=pl.lit("usage"),
            quantity=from_scaled(pl.col("part")),
            amount=from_scaled(scaled_half_up_div(pl.col("base") * pl.col("num"), pl.col("den"))),
            tier=pl.when(pl.col("tier") > 0).then(pl.col("tier")),
            price_model=pl.when(pl.col("tier") == INCLUDED_TIER)
            .then(pl.lit("included"))
            .when(fee)
            .then(pl.lit("tier_flat"))
            .otherwise(pl.col("price_model")),
        ),
        schemas.RATED_USAGE,
    )


def _rate_tables(books: PricebookSet) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Small frames of every rate (meta) and every priced step (tiers; tier 0 = untiered)."""
    meta, tiers = [], []
    for version in books.versions:
        for position, rate in enumerate(version.rates):
            size = fraction_of(rate.package_size or Decimal(1))
            head = (version.pricebook, version.version, position)
            free = int(rate.free_units * ONE)
            meta.append(
                (
                    *head,
                    rate.rate_id,
                    rate.price_model,
                    _path(rate),
                    rate.package_round,
                    ",".join(rate.tier_by),
                    free,
                    size.numerator,
                    size.denominator,
                )
            )
            tiers.extend((*head, *step) for step in _steps(rate))
    meta_schema = {
        "pricebook": pl.String,
        "price_version": pl.String,
        "rate_idx": pl.Int32,
        "rate_id": pl.String,
        "price_model": pl.String,
        "path": pl.String,
        "pkg_round": pl.String,
        "tier_by": pl.String,
        "free": _I128,
        "pkg_num": _I128,
        "pkg_den": _I128,
    }
    tier_schema = {
        "pricebook": pl.String,
        "price_version": pl.String,
        "rate_idx": pl.Int32,
        "tier": pl.Int32,
        "lo": _I128,
        "hi": _I128,
        "num": _I128,
        "den": _I128,
        "per": EXACT,
        "unit_price": EXACT,
        "fee_amount": EXACT,
        "fee_scaled": _I128,
        "block": _I128,
    }
    return (
        pl.DataFrame(meta, schema=meta_schema, orient="row"),
        pl.DataFrame(tiers, schema=tier_schema, orient="row"),
    )


def _path(rate: Rate) -> str:
    """How `_price` positions a rate: per_unit (no positions), graduated, volume or untiered.

    Free units turn a per-unit (markup, percentage) price into two graduated steps, included then
    priced, and put an included step in front of graduated tiers.
    """
    if rate.price_model in _PER_UNIT:
        return "graduated" if rate.free_units else "per_unit"
    if rate.price_model in ("graduated", "volume"):
        return rate.price_model
    return "untiered"


def _steps(rate: Rate) -> list[tuple]:
    """(tier, lo, hi, num, den, per, unit_price, fee, fee scaled, block scaled) with lo/hi as
    scaled positions.

    Free units are the step `INCLUDED_TIER` (price 0, shown as `included` and tier null), in
    front of the rate's own steps, which move up by the free units.
    """
    free = int(rate.free_units * ONE)
    none = (Decimal(0), 0, 0)  # no tier fee, no block
    included: list[tuple] = []
    if free:
        included.append((INCLUDED_TIER, None, free, 0, 1, rate.per, Decimal(0), *none))
    if rate.price_model in _PER_UNIT:
        price = fraction_of(rate.unit_price) / fraction_of(rate.per)
        lo = free if free else None
        step = (0, lo, None, price.numerator, price.denominator, rate.per, rate.unit_price, *none)
        return [*included, step]
    if rate.price_model in _COUNTED:
        amount = rate.package_price if rate.price_model == "package" else rate.flat
        per = rate.package_size if rate.price_model == "package" else Decimal(1)
        price = fraction_of(amount)
        return [(0, None, None, price.numerator, price.denominator, per, amount, *none)]
    steps, lo = included, (free if free else None)
    for number, tier in enumerate(rate.tiers, start=1):
        hi = None if tier.up_to is None else int(tier.up_to * ONE) + free
        price = fraction_of(tier.unit_price) / fraction_of(rate.per)
        fee = (tier.flat_fee, int(tier.flat_fee * ONE), int((tier.block or 0) * ONE))
        steps.append(
            (number, lo, hi, price.numerator, price.denominator, rate.per, tier.unit_price, *fee)
        )
        lo = hi
    return steps


def _guard(bound: int) -> None:
    """Int128 wraps silently: refuse inputs whose exact products could overflow."""
    if bound >= SAFE_LIMIT:
        raise UsageboxError(
            "usage quantities too large to rate exactly with these prices; "
            "split the account's usage or simplify the price"
        )


def _sorted(rated: pl.DataFrame) -> pl.DataFrame:
    """A stable line order: account, usage before contract lines, then the line keys."""
    order = pl.col("line_kind").replace_strict(_LINE_ORDER, return_dtype=pl.Int8)
    return (
        rated.with_columns(_order=order)
        .sort(
            [
                "account_id",
                "_order",
                "meter_id",
                "model_id",
                "product_id",
                "unit",
                "dimensions",
                "price_version",
                "tier",
            ],
            nulls_last=True,
        )
        .drop("_order")
    )


#: What tells a matched row's line apart within its account × meter × model (`_LINE_KEYS`
#: without the tier and fee, which pricing derives).
_RUN_KEYS = ["product_id", "unit", "dimensions", "pricebook", "currency", "problem",
             "price_version", "rate_idx"]  # fmt: skip
_RUN_GROUP = ["account_id", "meter_id", "model_id"]


def merge_runs(matched: pl.DataFrame, books: PricebookSet) -> pl.DataFrame:
    """`match_usage` rows merged where `price_matched` prices the merged row the same:
    quantities summed, at the first hour (`at`, when present: the latest).

    Why it is exact: a rate priced per unit in every version (most rows) reads no positions,
    so all its rows of one line merge into one. Tiers, packages and flat fees run positions
    per account × meter × model (× rate id × tier group) in `_ORDER`, and a row's tier parts,
    started blocks and packages are differences of one function of its position before and
    after it: a run of consecutive rows of one line that no other row of its account × meter ×
    model interleaves telescopes into one row, and a tier's flat fee stays one fee on the
    first row that enters the tier. Runs end at a negative row (a correction) all the same,
    so each merged run only ever climbs: the plain case of that argument, at no real cost.
    Merged hours no longer say when each unit was used: callers merge only rows they need as
    a total (guardrail prefixes: the hours before every cutoff)."""
    if matched.is_empty():
        return matched
    meta, _ = _rate_tables(books)
    positioned = meta.filter(pl.col("path") != "per_unit").get_column("rate_id").unique()
    ids = meta.select(*_RATE_KEYS, "rate_id")
    tagged = matched.join(ids, on=_RATE_KEYS, how="left").with_columns(
        _positioned=pl.col("rate_id").is_in(positioned.implode()).fill_null(False)
    )
    free = tagged.filter(~pl.col("_positioned")).with_columns(_run=pl.lit(0, pl.UInt32))
    ordered = tagged.filter(pl.col("_positioned")).sort([*_RUN_GROUP, *_ORDER], nulls_last=True)
    negative = pl.col("sum") < 0
    starts = (
        pl.any_horizontal(
            *[pl.col(k).ne_missing(pl.col(k).shift(1)) for k in [*_RUN_GROUP, *_RUN_KEYS]]
        )
        | negative
        | negative.shift(1).fill_null(False)
    )
    runs = ordered.with_columns(_run=starts.cum_sum().cast(pl.UInt32) + 1)
    aggs = [pl.col("hour").min(), pl.col("sum").sum()]
    if "at" in matched.columns:
        aggs.append(pl.col("at").max())
    merged = pl.concat([free, runs]).group_by("_run", *_RUN_GROUP, *_RUN_KEYS).agg(aggs)
    return merged.select(matched.columns)
