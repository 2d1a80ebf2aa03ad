"""Draft invoice lines and invoices from `rated_usage`: grouped for humans, rounded once per line.

Rated usage arrives at the grain account × meter × model × dimensions × price version × tier,
plus contract rows (discount, minimum true-up, prepaid credit) computed by pricing. A person
reads one line per meter × model × price rule × price version × tier: dimensions that do not
change the price (feature, agent) are summed away; ones that do (GPU type) name the line.

Rounding (CONTRACT §4): `exact_amount` is the exact sum of the group; `amount` is that rounded
half-up once (pricing.money.round_money); invoice totals are sums of rounded lines.
Totals: `subtotal` = this period's charges (usage + discount + minimum true-up);
`total` = subtotal + adjustments for earlier periods + prepaid credit = sum of every line.

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

from usagebox_pipelines.decimals import grouped_text
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.hard_stop import waiver_description
from usagebox_pipelines.pricing.contract import WAIVER_RATE
from usagebox_pipelines.pricing.money import minor_units, round_money
from usagebox_pipelines.schemas import INVOICE_LINES, INVOICES, MONEY, MONEY2, QTY, conform

KIND_ORDER = {"usage": 0, "discount": 1, "minimum": 2, "adjustment": 3, "credit": 4}
PERIOD_KINDS = ("usage", "discount", "minimum")
CONTRACT_KINDS = ("discount", "minimum", "credit")
CONTRACT_LABELS = {
    "discount": "Discount",
    "minimum": "Minimum commitment true-up",
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
    grouped = grouped.with_columns(description=pl.Series(_usage_descriptions(grouped)))
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
    `unit` naming the limit (`after_hard_stop:budget`) so restatements compare it alone."""
    if rated.is_empty():
        return pl.DataFrame()
    waiver = pl.col("rate_id").fill_null("") == WAIVER_RATE
    grouped = (
        rated.with_columns(
            unit=pl.when(waiver).then(pl.col("unit")).otherwise(pl.col("line_kind")),
            stop_at=pl.when(waiver).then(pl.col("first_hour")),
        )
        .group_by(["account_id", "period", "line_kind", "unit", "currency"], maintain_order=True)
        .agg(pl.col("amount").sum().cast(MONEY).alias("exact_amount"), pl.col("stop_at").min())
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
        .with_columns(description=pl.coalesce("waiver_text", labels))
        .drop("waiver_text")
    )


def is_waiver(unit: object) -> bool:
    """A hard-stop waiver line (kind `discount`) is told apart by its unit."""
    return isinstance(unit, str) and unit.startswith(WAIVER_RATE)


def _usage_descriptions(grouped: pl.DataFrame) -> list[str]:
    """`gpt-4.1 · Output tokens — tier 2, prices from 2026-10-16`, detail only where it differs.

    Siblings are lines of the same account, period, meter and model. Tier and price version
    are named only when siblings differ in them; dimensions only when they tell siblings apart.
    """
    rows = grouped.select(
        "account_id", "period", "meter_id", "model_id", "price_version", "tier", "dims",
        "price_model", "per", "quantity", "exact_amount", "unit_price", "unit",
    ).to_dicts()  # fmt: skip
    families: dict[tuple, list[int]] = {}
    rivals: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        key = (row["account_id"], row["period"], row["meter_id"], row["model_id"])
        families.setdefault(key, []).append(i)
        rivals.setdefault((*key, row["price_version"], row["tier"]), []).append(i)
    dims_labels = [""] * len(rows)
    for members in rivals.values():  # lines told apart only by the rate their dimensions hit
        labels = _dimension_labels([rows[i]["dims"] for i in members])
        for i, label in zip(members, labels, strict=True):
            dims_labels[i] = label
    out = [""] * len(rows)
    for members in families.values():
        many_tiers = len({rows[i]["tier"] for i in members}) > 1
        many_versions = len({rows[i]["price_version"] for i in members}) > 1
        for i in members:
            out[i] = _describe(rows[i], dims_labels[i], many_tiers, many_versions)
    return out


def _describe(row: dict, dims_label: str, many_tiers: bool, many_versions: bool) -> str:
    head = [row["model_id"]] if row["model_id"] else []
    head.append(meter_label(row["meter_id"]))
    if dims_label:
        head.append(dims_label)
    details = []
    if many_tiers and row["tier"] is not None:
        details.append(f"tier {row['tier']}")
    if many_versions and row["price_version"]:
        details.append(f"prices from {row['price_version']}")
    if row["price_model"] == "flat":
        details.append("flat fee")
    if row["price_model"] == "package" and row["unit_price"]:
        packages = (row["exact_amount"] / row["unit_price"]).to_integral_value()
        details.append(f"{packages:,} × package of {_plain(row['per'])} {row['unit']}")
    text = " · ".join(head)
    return text + (DETAIL_SEP + ", ".join(details) if details else "")


def _dimension_labels(dims_lists: list[list[str]]) -> list[str]:
    """Per rival line: the dimension values all its rows share, when they tell rivals apart
    (`h100` / `h100, eu`); empty when the rivals' dimensions do not differ."""
    if len(dims_lists) < 2:
        return [""] * len(dims_lists)
    commons = [_common_items(d) for d in dims_lists]
    keys = set().union(*commons)
    telling = sorted(k for k in keys if len({c.get(k) for c in commons}) > 1)
    if not telling:
        return [""] * len(dims_lists)
    shared = sorted(k for k in keys if k not in telling and all(k in c for c in commons))
    return [", ".join(str(c[k]) for k in shared + telling if k in c) for c in commons]


def _common_items(dims: list[str]) -> dict:
    parsed = [json.loads(d or "{}") for d in dims]
    first = parsed[0] if parsed else {}
    return {k: v for k, v in first.items() if all(p.get(k) == v for p in parsed[1:])}


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
    lines = rated_lines(mine)
    lines = _drop_empty(lines).with_columns(description=_account_wording(account, lines))
    if adjustments is not None and not adjustments.is_empty():
        adj = adjustments.filter(pl.col("account_id") == account_id)
        lines = pl.concat([lines, conform(adj, INVOICE_LINES).with_columns(period=pl.lit(period))])
    return number_lines(lines)


def _drop_empty(lines: pl.DataFrame) -> pl.DataFrame:
    """Usage lines with no quantity and no money (netted corrections), contract lines of 0.00."""
    is_usage = pl.col("kind") == "usage"
    keep = pl.when(is_usage).then(
        (pl.col("quantity") != 0) | (pl.col("exact_amount") != 0)
    ).otherwise(pl.col("amount") != 0)  # fmt: skip
    return lines.filter(keep)


def _account_wording(account: Any, lines: pl.DataFrame) -> pl.Expr:
    """Contract descriptions with the account's terms: `Discount (10% of usage)`."""
    currency = field(account, "currency") or ""
    words = dict(CONTRACT_LABELS)
    pct = field(account, "discount_pct")
    if pct:
        words["discount"] = f"Discount ({_plain(Decimal(str(pct)))}% of usage)"
    commit = field(account, "minimum_commit")
    if commit:
        commit_text = f"{Decimal(str(commit)):,.2f} {currency}".strip()
        words["minimum"] = f"Minimum commitment true-up (commitment {commit_text})"
    waiver = pl.col("unit").fill_null("").str.starts_with(WAIVER_RATE)
    contract = pl.col("kind").is_in(list(CONTRACT_KINDS)) & ~waiver
    wording = pl.col("kind").replace_strict(words, default=None, return_dtype=pl.String)
    return pl.when(contract).then(wording).otherwise(pl.col("description"))


def number_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """Sort lines into reading order and number them 1..n (conformed to INVOICE_LINES).

    A hard-stop waiver reads before the percentage discount: it is applied first."""
    ordered = lines.sort(
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
        nulls_last=True,
        maintain_order=True,
    )
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
    """
    lookup = _lookup(accounts)
    in_period = rated.filter(pl.col("period") == period)
    parts = {k[0]: v for k, v in in_period.partition_by("account_id", as_dict=True).items()}
    adj_parts: dict = {}
    if adjustments is not None and not adjustments.is_empty():
        adj_parts = {
            k[0]: v for k, v in adjustments.partition_by("account_id", as_dict=True).items()
        }
    invoices, lines = [], []
    for account_id in sorted(i for i in set(parts) | set(adj_parts) if i is not None):
        own = parts.get(account_id, in_period.clear())
        account = lookup(account_id) or _stand_in(account_id, own)
        acct_lines = build_invoice_lines(own, account, period, adj_parts.get(account_id))
        for doc_type, doc_lines in _split_documents(acct_lines):
            invoices.append(_invoice_row(doc_type, doc_lines, account, period, own))
            lines.append(doc_lines)
    return _frame(invoices, INVOICES), _concat(lines, INVOICE_LINES)


def _lookup(accounts: Any) -> Callable[[str], Any]:
    """`pricing.accounts.Accounts` (its `get` applies the defaults), a mapping, or a list."""
    if isinstance(accounts, Mapping):
        return accounts.get
    if callable(getattr(accounts, "get", None)):
        return accounts.get
    by_id = {field(a, "account_id"): a for a in accounts}
    return by_id.get


def _stand_in(account_id: str, rated: pl.DataFrame) -> SimpleNamespace:
    """Minimal account for ids the caller did not resolve (drafts only; name = id)."""
    currency = rated.filter(pl.col("account_id") == account_id).get_column("currency")
    return SimpleNamespace(
        account_id=account_id,
        name=account_id,
        currency=currency.drop_nulls().first() if currency.len() else None,
    )


def _split_documents(lines: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """[(invoice, lines)] or, when adjustments push the total below zero, also a credit note."""
    if lines.is_empty():
        return []
    is_adj = pl.col("kind") == "adjustment"
    total = lines.get_column("amount").sum()
    if total >= 0 or lines.filter(is_adj).is_empty():
        return [("invoice", lines)]
    docs = [("credit_note", number_lines(lines.filter(is_adj)))]
    rest = lines.filter(~is_adj)
    if not rest.is_empty():
        docs.insert(0, ("invoice", number_lines(rest)))
    return docs


def _invoice_row(
    doc_type: str, lines: pl.DataFrame, account: Any, period: str, rated: pl.DataFrame
) -> dict:
    amounts = lines.select("kind", "amount")
    subtotal = amounts.filter(pl.col("kind").is_in(list(PERIOD_KINDS)))["amount"].sum()
    total = amounts["amount"].sum()
    if doc_type == "credit_note":
        subtotal = total
    corrected = sorted(set(lines["adjusts_period"].drop_nulls().to_list()))
    account_id = field(account, "account_id")
    return {
        "account_id": account_id,
        "period": period,
        "document_type": doc_type,
        "currency": _currency(account, rated),
        "subtotal": Decimal(subtotal or 0),
        "total": Decimal(total or 0),
        "status": "draft",
        "pricebook_versions": _price_versions(rated, account_id),
        "template_version": TEMPLATE_VERSION,
        "notes": f"Corrects period(s) {', '.join(corrected)}" if corrected else None,
    }


def _currency(account: Any, rated: pl.DataFrame) -> str | None:
    """The rated rows' currency (what the amounts are in), else the account's."""
    own = rated.filter(pl.col("account_id") == field(account, "account_id"))["currency"]
    found = own.drop_nulls().unique().sort().to_list()
    return found[0] if found else field(account, "currency")


def _price_versions(rated: pl.DataFrame, account_id: str) -> str | None:
    """Pricebook@version list behind the invoice, e.g. `standard@2025-01-01,standard@…`."""
    own = rated.filter(pl.col("account_id") == account_id).drop_nulls("price_version")
    if own.is_empty():
        return None
    tags = own.select(
        pl.concat_str(pl.col("pricebook").fill_null("?"), pl.lit("@"), pl.col("price_version"))
    )
    return ",".join(sorted(set(tags.to_series().to_list())))


def _frame(rows: list[dict], schema: pl.Schema) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    money = {"subtotal": MONEY2, "total": MONEY2}
    df = pl.DataFrame(rows, infer_schema_length=None)
    return conform(df.with_columns(pl.col(c).cast(t) for c, t in money.items()), schema)


def _concat(frames: list[pl.DataFrame], schema: pl.Schema) -> pl.DataFrame:
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


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
