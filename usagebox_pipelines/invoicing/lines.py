"""Draft invoice lines and invoices from `rated_usage`: grouped for humans, rounded once per line.

Rated usage arrives at the grain account × meter × model × dimensions × price version × tier,
plus contract rows (discount, minimum true-up, prepaid credit) computed by pricing. A person
reads one line per meter × model × price rule × price version × tier: dimensions that do not
change the price (feature, agent) are summed away; ones that do (GPU type) name the line.

Rounding (CONTRACT §4): `exact_amount` is the exact sum of the group; `amount` is that rounded
half-up once (pricing.money.round_money); invoice totals are sums of rounded lines.
Totals: `subtotal` = this period's net charges (usage + discount + minimum true-up), before
tax; `total` = subtotal + tax + adjustments for earlier periods + prepaid credit = sum of every
line. The tax line (kind `tax`) keeps its base in `quantity` and its rate (percent) in
`unit_price` with `per` 100, and is kept at 0.00 too: a reverse-charge or out-of-scope invoice
must still state its treatment.

Over 400 lines on purpose: grouping, rounding and totals must agree line for line, so they sit
side by side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import polars as pl

from usagebox_pipelines import shards
from usagebox_pipelines.decimals import grouped_text, price_text
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.hard_stop import waiver_description
from usagebox_pipelines.pricing.contract import (
    COUPON_RATE,
    GRANT_RATE,
    SPEND_CAP_RATE,
    WAIVER_RATE,
)
from usagebox_pipelines.pricing.money import minor_units, round_money
from usagebox_pipelines.schemas import INVOICE_LINES, INVOICES, MONEY, MONEY2, QTY, conform

KIND_ORDER = {"usage": 0, "discount": 1, "minimum": 2, "tax": 3, "adjustment": 4, "credit": 5}
PERIOD_KINDS = ("usage", "discount", "minimum")
CONTRACT_KINDS = ("discount", "minimum", "tax", "credit")
CONTRACT_LABELS = {
    "discount": "Discount",
    "minimum": "Minimum commitment true-up",
    "tax": "Tax",
    "credit": "Prepaid credit applied",
}
METER_LABELS = {
    "input_tokens": ("Input tokens", "tokens"),
    "cached_input_tokens": ("Cached input tokens", "tokens"),
    "output_tokens": ("Output tokens", "tokens"),
    "gpu_seconds": ("GPU time", "seconds"),
    "tool_calls": ("Tool calls", "calls"),
}
METER_RANK = {meter: i for i, meter in enumerate(METER_LABELS)}
DETAIL_SEP = " — "
#: Line details of the free-units slice of a rate and of a cost-plus (markup) rate.
INCLUDED_TEXT = "included usage"
MARKUP_TEXT = "vendor list price + markup"

#: Columns that identify "the same line" across an issue and a later re-rating (adjustments).
#: Contract lines have no meter; their kind is kept in `unit` so they stay distinguishable.
COMPARABLE_KEY = [
    "account_id",
    "meter_id",
    "model_id",
    "unit",
    "price_version",
    "tier",
    "unit_price",
    "per",
]


def field(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or key `name` of an Account object or a plain dict (tests, YAML)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def meter_label(meter_id: str | None) -> str:
    """Human name of a meter: `output_tokens` → `Output tokens`."""
    if meter_id is None:
        return "Usage"
    return METER_LABELS.get(meter_id, (meter_id.replace("_", " ").capitalize(), None))[0]


# --------------------------------------------------------------------------- rated → lines


def rated_lines(rated: pl.DataFrame) -> pl.DataFrame:
    """Lines (INVOICE_LINES columns, unnumbered) of every account and period in `rated`.

    Needs no account: adjustments use it to re-rate; build_invoice_lines adds account wording.
    """
    kind = pl.col("line_kind").fill_null("usage")
    parts = [
        _usage_lines(rated.filter(kind == "usage")),
        _contract_lines(rated.filter(kind != "usage")),
    ]
    parts = [p for p in parts if not p.is_empty()]
    if not parts:
        return pl.DataFrame(schema=INVOICE_LINES)
    return conform(pl.concat(parts, how="diagonal_relaxed"), INVOICE_LINES)


def round_line(exact: pl.Expr, currencies: Iterable[str | None]) -> pl.Expr:
    """THE rounding (pricing.money.round_money) at each row's currency minor unit, as MONEY2.

    `currencies` are the codes present; the `currency` column picks the rule per row.
    """
    by_units: dict[int, list[str]] = {}
    for code in sorted({c for c in currencies if c}):
        by_units.setdefault(minor_units(code), []).append(code)
    if any(units > 2 for units in by_units):
        raise UsageboxError(f"invoice amounts are 2-decimal; cannot bill {by_units}")
    result = round_money(exact, 2).cast(MONEY2)
    for units, codes in by_units.items():
        rounded = round_money(exact, units).cast(MONEY2)
        result = pl.when(pl.col("currency").is_in(codes)).then(rounded).otherwise(result)
    return result


def _usage_lines(rated: pl.DataFrame) -> pl.DataFrame:
    """One line per account × meter × model × rate × price version × tier × unit price."""
    if rated.is_empty():
        return pl.DataFrame()
    keys = ["account_id", "period", "meter_id", "model_id", "rate_id", "price_version", "tier"]
    keys += ["unit_price", "per", "price_model", "currency"]
    grouped = (
        rated.with_columns(pl.col("dimensions").fill_null("{}"))
        .group_by(keys, maintain_order=True)
        .agg(
            pl.col("quantity").sum().cast(QTY),
            pl.col("amount").sum().cast(MONEY).alias("exact_amount"),
            pl.col("unit").drop_nulls().first().alias("rated_unit"),
            pl.col("dimensions").unique().sort().alias("dims"),
        )
        .with_columns(kind=pl.lit("usage"))
    )
    grouped = grouped.with_columns(amount=round_line(pl.col("exact_amount"), rated["currency"]))
    grouped = grouped.with_columns(unit=_unit_expr())
    grouped = grouped.with_columns(description=_usage_descriptions(grouped))
    # a flat fee is not "unit price per N units": keep the fee, drop the `per`
    grouped = grouped.with_columns(
        per=pl.when(pl.col("price_model") == "flat").then(None).otherwise(pl.col("per"))
    )
    return grouped.drop("dims", "rate_id", "price_model", "rated_unit")


def _unit_expr() -> pl.Expr:
    """Display unit from the meter (tokens, seconds, calls), else the event's own unit."""
    mapping = {meter: unit for meter, (_, unit) in METER_LABELS.items()}
    return (
        pl.col("meter_id")
        .replace_strict(mapping, default=None, return_dtype=pl.String)
        .fill_null(pl.col("rated_unit"))
        .fill_null("units")
    )


def _contract_lines(rated: pl.DataFrame) -> pl.DataFrame:
    """One line per account × contract kind (discount, minimum, credit), amount only; a
    hard-stop waiver (rate_id WAIVER_RATE, a `discount`) is a line of its own per stop, its
    `unit` naming the limit (`after_hard_stop:budget`) so restatements compare it alone; the
    spend cap (rate_id SPEND_CAP_RATE, a `discount`) and each coupon (`coupon:<id>`, its rate id
    kept as the unit) are lines of their own too."""
    if rated.is_empty():
        return pl.DataFrame()
    waiver = pl.col("rate_id").fill_null("") == WAIVER_RATE
    grant = pl.col("rate_id").fill_null("").str.starts_with(GRANT_RATE + ":")
    tax = pl.col("line_kind") == "tax"
    grouped = (
        rated.with_columns(
            unit=pl.when(waiver | grant)
            .then(pl.col("unit"))
            .when(pl.col("rate_id") == SPEND_CAP_RATE)
            .then(pl.lit(SPEND_CAP_RATE))
            .when(pl.col("rate_id").fill_null("").str.starts_with(COUPON_RATE + ":"))
            .then(pl.col("rate_id"))
            .otherwise(pl.col("line_kind")),
            stop_at=pl.when(waiver).then(pl.col("first_hour")),
            balance_after=pl.when(grant).then(
                pl.col("dimensions").str.json_path_match("$.balance_after")
            ),
        )
        .group_by(["account_id", "period", "line_kind", "unit", "currency"], maintain_order=True)
        .agg(
            pl.col("amount").sum().cast(MONEY).alias("exact_amount"),
            pl.col("stop_at").min(),
            pl.col("balance_after").drop_nulls().first(),
            # the tax line is one row per account: its base, rate and per stay on the line
            pl.col("quantity").filter(tax).first().cast(QTY),
            pl.col("unit_price").filter(tax).first().cast(MONEY),
            pl.col("per").filter(tax).first().cast(QTY),
        )
        .rename({"line_kind": "kind"})
    )
    waivers = [
        waiver_description(u, at) if is_waiver(u) else None
        for u, at in grouped.select("unit", "stop_at").iter_rows()
    ]
    labels = pl.col("kind").replace_strict(
        CONTRACT_LABELS, default=pl.col("kind"), return_dtype=pl.String
    )
    return (
        grouped.drop("stop_at")
        .with_columns(
            amount=round_line(pl.col("exact_amount"), rated["currency"]),
            waiver_text=pl.Series(waivers, dtype=pl.String),
        )
        .with_columns(description=pl.coalesce("waiver_text", _grant_words(), labels))
        .drop("waiver_text", "balance_after")
    )


def _grant_words() -> pl.Expr:
    """`Credit grant promo-q3 (balance left 70.00 USD)`: which grant paid, and what is left of
    it after this invoice (null on other lines)."""
    return pl.when(is_grant(pl.col("unit"))).then(
        pl.concat_str(
            pl.lit("Credit grant "),
            pl.col("unit").str.strip_prefix(GRANT_RATE + ":"),
            pl.lit(" (balance left "),
            pl.col("balance_after"),
            pl.lit(" "),
            pl.col("currency"),
            pl.lit(")"),
        )
    )


def is_grant(unit: pl.Expr) -> pl.Expr:
    """A credit line of a credit grant other than `prepaid_credit` (told apart by its unit)."""
    return unit.fill_null("").str.starts_with(GRANT_RATE + ":")


def is_waiver(unit: object) -> bool:
    """A hard-stop waiver line (kind `discount`) is told apart by its unit."""
    return isinstance(unit, str) and unit.startswith(WAIVER_RATE)


def _usage_descriptions(grouped: pl.DataFrame) -> pl.Series:
    """`gpt-4.1 · Output tokens — tier 2, prices from 2026-10-16`, detail only where it differs.

    Siblings are lines of the same account, period, meter and model. Tier and price version
    are named only when siblings differ in them; dimensions only when they tell siblings apart.
    Polars over all lines; Python only for the rare parts: lines told apart by dimensions
    (`_dimension_labels`) and package counts.
    """
    family = ["account_id", "period", "meter_id", "model_id"]
    rivals = [*family, "price_version", "tier"]
    frame = grouped.with_row_index("_row").with_columns(
        _dims_label=_dims_label_column(grouped, rivals, family),
        _package=_package_column(grouped),
        _per_event=_per_event_column(grouped),
    )
    model = pl.col("model_id")
    meters = frame.get_column("meter_id").unique().to_list()
    label = pl.col("meter_id").replace_strict(
        {m: meter_label(m) for m in meters if m is not None},
        default=pl.lit(meter_label(None)),
        return_dtype=pl.String,
    )
    dims_label = pl.col("_dims_label")
    head = pl.concat_str(
        pl.when(model.is_not_null() & (model != "")).then(model),
        label,
        pl.when(dims_label != "").then(dims_label),
        separator=" · ",
        ignore_nulls=True,
    )
    many_tiers = pl.col("tier").n_unique().over(family) > 1
    many_versions = pl.col("price_version").n_unique().over(family) > 1
    version = pl.col("price_version")
    details = pl.concat_str(
        pl.when(many_tiers & pl.col("tier").is_not_null()).then(
            pl.format("tier {}", pl.col("tier"))
        ),
        pl.when(many_versions & version.is_not_null() & (version != "")).then(
            pl.lit("prices from ") + version
        ),
        pl.when(pl.col("price_model") == "flat").then(pl.lit("flat fee")),
        pl.when(pl.col("price_model") == "included").then(pl.lit(INCLUDED_TEXT)),
        pl.when(pl.col("price_model") == "tier_flat").then(pl.lit("tier flat fee")),
        pl.when(pl.col("price_model") == "markup").then(pl.lit(MARKUP_TEXT)),
        pl.when(pl.col("price_model") == "percentage").then(
            pl.format("{}% of the amount", _percent_text(pl.col("unit_price")))
        ),
        pl.when(pl.col("price_model") == "price_minimum").then(
            pl.format("minimum {} a month, true-up", pl.col("unit_price").cast(MONEY2))
        ),
        pl.when(pl.col("price_model") == "price_cap").then(
            pl.format("capped at {} a month", pl.col("unit_price").cast(MONEY2))
        ),
        pl.col("_package"),
        pl.col("_per_event"),
        separator=", ",
        ignore_nulls=True,
    )
    described = pl.when(details != "").then(head + pl.lit(DETAIL_SEP) + details)
    return frame.select(described.otherwise(head).alias("description")).to_series()


def _percent_text(unit_price: pl.Expr) -> pl.Expr:
    """A percentage rate's unit price (rate / 100, Decimal(38, 12)) as its percent, exact and
    without trailing zeros: 0.029 → `2.9`, 0.01 → `1`."""
    text = (unit_price * 100).cast(pl.String)
    return text.str.strip_chars_end("0").str.strip_chars_end(".")


def _dims_label_column(grouped: pl.DataFrame, rivals: list[str], family: list[str]) -> pl.Series:
    """Per line: the dimensions that name it among its family (meter × model) when the family
    is priced by several rates (GPU types, tools): every line of the rate keeps its label, so
    a tiered `h100` line is never just "GPU time". Otherwise `_dimension_labels` within its
    rivals (empty where a line has no rival)."""
    indexed = grouped.with_row_index("_row")
    by_rate = pl.col("rate_id").n_unique().over(family) > 1
    labels = [""] * grouped.height
    parsed: dict[str, dict] = {}
    for keys, contested, label_of in (
        (family, indexed.filter(by_rate), _rate_labels),
        (rivals, indexed.filter(~by_rate & (pl.len().over(rivals) > 1)), _dimension_labels),
    ):
        if contested.is_empty():
            continue
        groups = contested.group_by(keys, maintain_order=True).agg("_row", "dims")
        for rows, dims in groups.select("_row", "dims").iter_rows():
            for row, label in zip(rows, label_of(dims, parsed), strict=True):
                labels[row] = label
    return pl.Series(labels, dtype=pl.String)


def _rate_labels(dims_lists: list[list[str]], parsed: dict[str, dict]) -> list[str]:
    """Per line of a family priced by several rates: the dimensions that tell its lines apart
    (`h100`, `h100, eu`, `web_search`), leaving out any that varies inside a line (features
    and agents are summed away by the grouping, so they never name a price)."""
    commons = [_common_items(d, parsed) for d in dims_lists]
    seen = [set().union(*(_parsed(text, parsed) for text in d)) for d in dims_lists]
    varying = set().union(*(keys - set(c) for keys, c in zip(seen, commons, strict=True)))
    stable = [{k: v for k, v in c.items() if k not in varying} for c in commons]
    keys = sorted(set().union(*stable))
    telling = [k for k in keys if len({c.get(k) for c in stable}) > 1]
    shown = [k for k in keys if k in telling or all(k in c for c in stable)]
    return [", ".join(str(c[k]) for k in shown if k in c) if telling else "" for c in stable]


def _parsed(text: str | None, cache: dict[str, dict]) -> dict:
    key = text or "{}"
    if key not in cache:
        cache[key] = json.loads(key)
    return cache[key]


def _package_column(grouped: pl.DataFrame) -> pl.Series:
    """Per line: `1,234 × package of 1,000 calls` for package lines with a price, else null."""
    out: list[str | None] = [None] * grouped.height
    priced = (pl.col("price_model") == "package") & pl.col("unit_price").is_not_null()
    packages = (
        grouped.with_row_index("_row")
        .filter(priced & (pl.col("unit_price") != 0))
        .select("_row", "exact_amount", "unit_price", "per", "unit")
    )
    for row, amount, price, per, unit in packages.iter_rows():
        count = (amount / price).to_integral_value()
        out[row] = f"{count:,} × package of {_plain(per)} {unit}"
    return pl.Series(out, dtype=pl.String)


#: Per-event parts (pricing.per_event): the text after the transaction count.
_PER_EVENT_TEXT = {
    "transaction_fee": "transaction(s) × fixed fee {}",
    "transaction_min": "transaction(s) at the minimum of {} per transaction",
    "transaction_max": "transaction(s) at the maximum of {} per transaction",
}


def _per_event_column(grouped: pl.DataFrame) -> pl.Series:
    """Per line: `3 transaction(s) × fixed fee 0.30` for the parts of a per-event percentage
    (the count is amount / unit price: each such part charges its unit price per
    transaction), `priced per event` for dynamic lines, else null."""
    out: list[str | None] = [None] * grouped.height
    models = pl.col("price_model")
    parts = (
        grouped.with_row_index("_row")
        .filter(models.is_in(list(_PER_EVENT_TEXT)) | (models == "dynamic"))
        .select("_row", "price_model", "exact_amount", "unit_price")
    )
    for row, model, amount, price in parts.iter_rows():
        if model == "dynamic":
            out[row] = "each event's own price"
            continue
        count = f"{(amount / price).to_integral_value():,} " if price else ""
        out[row] = count + _PER_EVENT_TEXT[model].format(price_text(price))
    return pl.Series(out, dtype=pl.String)


def _dimension_labels(
    dims_lists: list[list[str]], parsed: dict[str, dict] | None = None
) -> list[str]:
    """Per rival line: the dimension values all its rows share, when they tell rivals apart
    (`h100` / `h100, eu`); empty when the rivals' dimensions do not differ. `parsed` caches
    the JSON of each dimensions text across calls."""
    if len(dims_lists) < 2:
        return [""] * len(dims_lists)
    cache: dict[str, dict] = {} if parsed is None else parsed
    commons = [_common_items(d, cache) for d in dims_lists]
    keys = set().union(*commons)
    telling = sorted(k for k in keys if len({c.get(k) for c in commons}) > 1)
    if not telling:
        return [""] * len(dims_lists)
    shared = sorted(k for k in keys if k not in telling and all(k in c for c in commons))
    return [", ".join(str(c[k]) for k in shared + telling if k in c) for c in commons]


def _common_items(dims: list[str], parsed: dict[str, dict]) -> dict:
    docs = [_parsed(d, parsed) for d in dims]
    first = docs[0] if docs else {}
    return {k: v for k, v in first.items() if all(p.get(k) == v for p in docs[1:])}


def _plain(value: Decimal | None) -> str:
    return "" if value is None else grouped_text(value)


# --------------------------------------------------------------------------- one account


def build_invoice_lines(
    rated: pl.DataFrame,
    account: Any,
    period: str,
    adjustments: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Numbered lines (INVOICE_LINES) of one account's invoice for `period`.

    Usage lines, then discount, minimum true-up, adjustments for earlier periods (already
    rounded: see adjustments.py) and prepaid credit; line_no 1..n in that stable order.
    `invoice_number` stays null until the invoice is issued.
    """
    account_id = field(account, "account_id")
    mine = rated.filter((pl.col("account_id") == account_id) & (pl.col("period") == period))
    adj = None
    if adjustments is not None and not adjustments.is_empty():
        adj = adjustments.filter(pl.col("account_id") == account_id)
    terms = _terms([(account_id, account)])
    return conform(
        _numbered(_account_lines(mine, terms, period, adj), [_ACCOUNT_KEY]), INVOICE_LINES
    )


def _drop_empty(lines: pl.DataFrame) -> pl.DataFrame:
    """Usage lines with no quantity and no money (netted corrections), contract lines of 0.00
    (but the tax line, which states the treatment even at 0 %)."""
    is_usage = pl.col("kind") == "usage"
    keep = pl.when(is_usage).then(
        (pl.col("quantity") != 0) | (pl.col("exact_amount") != 0)
    ).otherwise((pl.col("amount") != 0) | (pl.col("kind") == "tax"))  # fmt: skip
    return lines.filter(keep)


def _account_words(account: Any) -> tuple[str, str, str]:
    """(discount, minimum, spend cap) descriptions with the account's terms:
    `Discount (10% of usage)`, `Spend cap (maximum 1,000.00 USD a month)`."""
    currency = field(account, "currency") or ""
    discount, minimum = CONTRACT_LABELS["discount"], CONTRACT_LABELS["minimum"]
    pct = field(account, "discount_pct")
    if pct:
        discount = f"Discount ({_plain(Decimal(str(pct)))}% of usage)"
    commit = field(account, "minimum_commit")
    if commit:
        commit_text = f"{Decimal(str(commit)):,.2f} {currency}".strip()
        minimum = f"Minimum commitment true-up (commitment {commit_text})"
    cap = field(account, "maximum_spend")
    cap_words = "Spend cap"
    if cap:
        cap_words = f"Spend cap (maximum {Decimal(str(cap)):,.2f} {currency} a month)"
    return discount, minimum, cap_words


def _tax_words(account: Any) -> str:
    """`VAT 20%`, `VAT 0% (reverse charge)`: the account's treatment (pricing.tax)."""
    tax = field(account, "tax")
    return tax.label if tax is not None else CONTRACT_LABELS["tax"]


def _account_wording() -> pl.Expr:
    """Contract descriptions with each row's account terms (columns of `_terms`)."""
    waiver = pl.col("unit").fill_null("").str.starts_with(WAIVER_RATE)
    kind = pl.col("kind")
    wording = (
        pl.when(kind == "discount")
        .then(pl.col("_discount_words"))
        .when(kind == "minimum")
        .then(pl.col("_minimum_words"))
        .when(kind == "tax")
        .then(pl.col("_tax_words"))
        .when(kind == "credit")
        .then(pl.lit(CONTRACT_LABELS["credit"]))
    )
    contract = kind.is_in(list(CONTRACT_KINDS)) & ~waiver & ~is_grant(pl.col("unit"))
    spend_cap = pl.col("unit").fill_null("") == SPEND_CAP_RATE
    coupon = pl.col("unit").fill_null("").str.starts_with(COUPON_RATE + ":")
    coupon_words = pl.lit("Discount coupon ") + pl.col("unit").str.strip_prefix(COUPON_RATE + ":")
    return (
        pl.when(spend_cap)
        .then(pl.col("_cap_words"))
        .when(coupon)
        .then(coupon_words)
        .when(contract)
        .then(wording)
        .otherwise(pl.col("description"))
    )


_ACCOUNT_KEY = "account_id"
_DOC_ORDER = "_doc"
_TERMS = pl.Schema(
    {
        "account_id": pl.String(),
        "_discount_words": pl.String(),
        "_minimum_words": pl.String(),
        "_cap_words": pl.String(),
        "_tax_words": pl.String(),
        "_account_currency": pl.String(),
    }
)


def _terms(accounts: list[tuple[str, Any]]) -> pl.DataFrame:
    """Per account (id, account object): contract wording and the fallback currency."""
    rows = [(i, *_account_words(a), _tax_words(a), field(a, "currency")) for i, a in accounts]
    return pl.DataFrame(rows, schema=_TERMS, orient="row")


def _account_lines(
    rated: pl.DataFrame, terms: pl.DataFrame, period: str, adjustments: pl.DataFrame | None
) -> pl.DataFrame:
    """Unnumbered lines of every account in `terms`: its rated lines (period `period`) with
    its contract wording, then its adjustments. Rows of other accounts are ignored."""
    ids = pl.col(_ACCOUNT_KEY).is_in(terms.get_column(_ACCOUNT_KEY).implode())
    lines = rated_lines(rated.filter(ids))
    lines = (
        _drop_empty(lines)
        .join(terms, on=_ACCOUNT_KEY, how="left", maintain_order="left")
        .with_columns(description=_account_wording())
        .select(INVOICE_LINES.names())
    )
    if adjustments is not None and not adjustments.is_empty():
        adj = conform(adjustments.filter(ids), INVOICE_LINES)
        lines = pl.concat([lines, adj.with_columns(period=pl.lit(period))])
    return lines


def _reading_order() -> list[pl.Expr]:
    """The order lines read in (`number_lines`). A hard-stop waiver reads before the
    percentage discount: it is applied first."""
    return [
        pl.col("kind").replace_strict(KIND_ORDER, default=9, return_dtype=pl.Int32),
        ~pl.col("unit").fill_null("").str.starts_with(WAIVER_RATE),
        pl.col("adjusts_period"),
        pl.col("model_id").is_null(),
        pl.col("model_id"),
        pl.col("meter_id").replace_strict(METER_RANK, default=99, return_dtype=pl.Int32),
        pl.col("meter_id"),
        pl.col("description"),
        pl.col("price_version"),
        pl.col("tier"),
        pl.col("unit_price"),
    ]


def _numbered(lines: pl.DataFrame, documents: list[str]) -> pl.DataFrame:
    """Lines sorted into reading order per document (`documents` columns, in that order) and
    numbered 1..n in each; the sort is stable, so equal lines keep their order."""
    ordered = lines.sort(
        [pl.col(c) for c in documents] + _reading_order(), nulls_last=True, maintain_order=True
    )
    line_no = pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(documents)
    return ordered.with_columns(line_no=line_no)


def number_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """Sort lines into reading order and number them 1..n (conformed to INVOICE_LINES).

    A hard-stop waiver reads before the percentage discount: it is applied first."""
    ordered = lines.sort(_reading_order(), nulls_last=True, maintain_order=True)
    numbered = ordered.with_columns(line_no=pl.int_range(1, pl.len() + 1, dtype=pl.Int32))
    return conform(numbered, INVOICE_LINES)


# --------------------------------------------------------------------------- all accounts


def build_draft_invoices(
    rated: pl.DataFrame,
    accounts: Any,
    period: str,
    adjustments: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Draft INVOICES and INVOICE_LINES for every account with rated rows or adjustments.

    `accounts`: pricing.accounts.Accounts (preferred: unlisted ids get the defaults), a
    mapping of id to Account, or an iterable of Accounts.

    When an account's negative adjustments exceed its invoice (total < 0), they move to a
    separate `credit_note` document for the period; the invoice keeps this period's charges.

    Accounts are built together in Polars, in shards of whole accounts of at most
    `SHARD_ROWS` rated rows (memory bounded by a shard): the lines of each account are what
    `build_invoice_lines` gives it alone. Documents come in account order, each account's
    invoice before its credit note.
    """
    lookup = _lookup(accounts)
    in_period = rated.filter(pl.col("period") == period)
    has_adj = adjustments is not None and not adjustments.is_empty()
    ids = set(in_period.get_column(_ACCOUNT_KEY).drop_nulls().unique().to_list())
    if has_adj:
        assert adjustments is not None
        ids |= set(adjustments.get_column(_ACCOUNT_KEY).drop_nulls().unique().to_list())
    if not ids:
        return pl.DataFrame(schema=INVOICES), pl.DataFrame(schema=INVOICE_LINES)
    found = {i: lookup(i) for i in sorted(ids)}
    stand_ins = _stand_ins([i for i, a in found.items() if not a], in_period)
    terms = _terms([(i, a or stand_ins[i]) for i, a in found.items()])
    invoices, lines = [], []
    for shard in _shards(terms, in_period):
        mine = pl.col(_ACCOUNT_KEY).is_in(shard.get_column(_ACCOUNT_KEY).implode())
        own = in_period.filter(mine)
        adj = adjustments.filter(mine) if has_adj and adjustments is not None else None
        shard_lines = _account_lines(own, shard, period, adj)
        shard_lines = _numbered(_with_documents(shard_lines), [_ACCOUNT_KEY, _DOC_ORDER])
        invoices.append(_invoice_rows(shard_lines, shard, period, own))
        lines.append(conform(shard_lines, INVOICE_LINES))
    return pl.concat(invoices), pl.concat(lines)


#: Rated rows of the accounts drafted together (whole accounts; one bigger account alone).
SHARD_ROWS = shards.SHARD_ROWS


def _shards(terms: pl.DataFrame, rated: pl.DataFrame) -> list[pl.DataFrame]:
    """`terms` (sorted by account) cut into consecutive shards of about SHARD_ROWS rows."""
    weight = rated.group_by(_ACCOUNT_KEY).agg(w=pl.len())
    ids = terms.get_column(_ACCOUNT_KEY).to_list()
    cut = shards.account_shards(weight.filter(pl.col(_ACCOUNT_KEY).is_in(ids)), ids, SHARD_ROWS)
    return [terms.filter(pl.col(_ACCOUNT_KEY).is_in(shard)) for shard in cut]


def _lookup(accounts: Any) -> Callable[[str], Any]:
    """`pricing.accounts.Accounts` (its `get` applies the defaults), a mapping, or a list."""
    if isinstance(accounts, Mapping):
        return accounts.get
    if callable(getattr(accounts, "get", None)):
        return accounts.get
    by_id = {field(a, "account_id"): a for a in accounts}
    return by_id.get


def _stand_ins(account_ids: list[str], rated: pl.DataFrame) -> dict[str, SimpleNamespace]:
    """Minimal accounts for ids the caller did not resolve (drafts only; name = id)."""
    if not account_ids:
        return {}
    currency = (
        rated.filter(pl.col(_ACCOUNT_KEY).is_in(account_ids))
        .group_by(_ACCOUNT_KEY)
        .agg(pl.col("currency").drop_nulls().first())
    )
    found = dict(currency.iter_rows())
    return {i: SimpleNamespace(account_id=i, name=i, currency=found.get(i)) for i in account_ids}


def _with_documents(lines: pl.DataFrame) -> pl.DataFrame:
    """`_DOC_ORDER` per line: 0 = the invoice; 1 = a credit note, which takes an account's
    adjustment lines when their negative amounts push its total below zero."""
    is_adj = pl.col("kind") == "adjustment"
    per_account = pl.col("amount").sum().over(_ACCOUNT_KEY)
    any_adj = is_adj.any().over(_ACCOUNT_KEY)
    to_note = (per_account < 0) & any_adj & is_adj
    return lines.with_columns(pl.when(to_note).then(1).otherwise(0).cast(pl.Int8).alias(_DOC_ORDER))


def _invoice_rows(
    lines: pl.DataFrame, terms: pl.DataFrame, period: str, rated: pl.DataFrame
) -> pl.DataFrame:
    """One INVOICES row per document of `lines` (numbered, with `_DOC_ORDER`)."""
    if lines.is_empty():
        return pl.DataFrame(schema=INVOICES)
    doc = pl.col(_DOC_ORDER).first()
    in_period = pl.col("kind").is_in(list(PERIOD_KINDS))
    total = pl.col("amount").sum()
    corrected = pl.col("adjusts_period").drop_nulls().unique().sort().str.join(", ")
    docs = lines.group_by(_ACCOUNT_KEY, _DOC_ORDER).agg(
        subtotal=pl.when(doc == 1).then(total).otherwise(pl.col("amount").filter(in_period).sum()),
        total=total,
        notes=pl.when(pl.col("adjusts_period").is_not_null().any()).then(
            pl.lit("Corrects period(s) ") + corrected
        ),
    )
    own = rated.group_by(_ACCOUNT_KEY).agg(
        _rated_currency=pl.col("currency").drop_nulls().min(),
        pricebook_versions=pl.concat_str(
            pl.col("pricebook").fill_null("?"), pl.lit("@"), pl.col("price_version")
        )
        .drop_nulls()
        .unique()
        .sort()
        .str.join(","),
    )
    out = (
        docs.join(own, on=_ACCOUNT_KEY, how="left")
        .join(terms.select(_ACCOUNT_KEY, "_account_currency"), on=_ACCOUNT_KEY, how="left")
        .sort(_ACCOUNT_KEY, _DOC_ORDER)
        .with_columns(
            period=pl.lit(period),
            document_type=pl.when(pl.col(_DOC_ORDER) == 1)
            .then(pl.lit("credit_note"))
            .otherwise(pl.lit("invoice")),
            currency=pl.coalesce("_rated_currency", "_account_currency"),
            subtotal=pl.col("subtotal").fill_null(0).cast(MONEY2),
            total=pl.col("total").fill_null(0).cast(MONEY2),
            status=pl.lit("draft"),
            pricebook_versions=pl.when(pl.col("pricebook_versions") != "").then(
                pl.col("pricebook_versions")
            ),
            template_version=pl.lit(TEMPLATE_VERSION),
        )
    )
    return conform(out, INVOICES)


def line_documents(invoices: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    """`lines` with `document_type`: adjustment lines of an account that has a credit note in
    the period belong to it, every other line to the invoice (the split rule above)."""
    notes = invoices.filter(pl.col("document_type") == "credit_note").select(
        "account_id", "period", has_note=pl.lit(True)
    )
    joined = lines.join(notes.unique(), on=["account_id", "period"], how="left")
    to_note = pl.col("has_note").fill_null(False) & (pl.col("kind") == "adjustment")
    doc = pl.when(to_note).then(pl.lit("credit_note")).otherwise(pl.lit("invoice"))
    return joined.with_columns(document_type=doc).drop("has_note")
