"""The arithmetic `explain` prints for a line: rate rules, tier steps, amounts. Pure."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl

from usagebox_pipelines.decimals import plain, price_text
from usagebox_pipelines.documents import format_quantity
from usagebox_pipelines.pricing.markup import markup_earned
from usagebox_pipelines.pricing.money import minor_units, round_decimal
from usagebox_pipelines.pricing.pricebook import (
    PricebookVersion,
    Rate,
)

_ZERO = Decimal(0)


def sum_kind(lines: pl.DataFrame, kind: str) -> Decimal:
    part = lines.filter(pl.col("kind") == kind)["amount"]
    return part.sum() if part.len() else _ZERO


def rate_rule(version: PricebookVersion, rate: Rate) -> dict:
    rule: dict[str, Any] = {
        "pricebook": version.pricebook,
        "version": version.version,
        "file": version.file.name,
        "effective_from": version.effective_from.isoformat(),
        "content_sha256": version.content_sha256,
        "rate_id": rate.rate_id,
        "selector": rate.selector,
        "price_model": rate.price_model,
        "per": plain(rate.per),
        "description": rate.description,
    }
    if rate.unit_price is not None:
        rule["unit_price"] = plain(rate.unit_price)
    if rate.tiers:
        rule["tiers"] = [
            {"up_to": plain(s.up_to), "unit_price": plain(s.unit_price)}
            | ({"flat_fee": plain(s.flat_fee)} if s.flat_fee else {})
            | ({"block": plain(s.block)} if s.block else {})
            for s in rate.tiers
        ]
    if rate.package_size is not None:
        rule["package"] = {
            "size": plain(rate.package_size),
            "price": plain(rate.package_price),
            "round": rate.package_round,
        }
    if rate.flat is not None:
        rule["flat"] = plain(rate.flat)
    if rate.free_units:
        rule["free_units"] = plain(rate.free_units)
    if rate.tier_by:
        rule["tier_by"] = list(rate.tier_by)
    if rate.minimum is not None:
        rule["minimum"] = plain(rate.minimum)
    if rate.maximum is not None:
        rule["maximum"] = plain(rate.maximum)
    if rate.per_event:
        rule["priced"] = "per transaction, from events (ADR 0018)"
    for key, value in (
        ("fixed_amount", rate.fixed_amount),
        ("per_transaction_min", rate.transaction_min),
        ("per_transaction_max", rate.transaction_max),
    ):
        if value is not None:
            rule[key] = plain(value)
    if rate.free_events:
        rule["free_units_per_events"] = rate.free_events
    if rate.amount_key is not None:
        rule["amount_key"] = rate.amount_key
    if rate.markup is not None:
        rule["markup"] = {
            "vendor": rate.markup.vendor,
            "pct": plain(rate.markup.pct),
            "list_price": plain(rate.markup.list_price),
            "list_per": plain(rate.markup.list_per),
            "list_effective_from": rate.markup.list_from,
            "source": "vendors.yaml",
        }
    return rule


def markup_arithmetic(rate: Rate, line: dict, price_model: str) -> dict | None:
    """What a cost-plus line earned over the vendor's list price (None for other rates):
    list cost = quantity × list price / per, earned = the line's exact amount − list cost."""
    if rate.markup is None or price_model != "markup":
        return None
    cost, _ = markup_earned(line["quantity"], rate)
    earned = line["exact_amount"] - cost
    return {
        "list_cost": plain(cost),
        "markup_earned": plain(earned),
        "text": (
            f"{format_quantity(line['quantity'])} × list {price_text(rate.markup.list_price)}"
            f"/{_per(rate.markup.list_per)} = {plain(cost)}; + {plain(rate.markup.pct)}% "
            f"markup = {plain(line['exact_amount'])} (earned {plain(earned)})"
        ),
    }


def family_arithmetic(family: pl.DataFrame, rate: Rate, line: dict) -> str:
    """All steps of this meter × model × rate in the month, one per invoice line:
    `first 100,000,000 × 8.00/1M = 800.00; next 23,456 × 6.00/1M = 0.14`."""
    steps = (
        family.group_by("price_version", "tier", "price_model", "unit_price", "per", "currency")
        .agg(pl.col("quantity").sum(), pl.col("amount").sum())
        .sort(pl.col("price_model") != "included", "tier", "price_version", nulls_last=True)
    )
    versions = steps["price_version"].n_unique()
    texts = []
    for i, s in enumerate(steps.iter_rows(named=True)):
        amount = round_decimal(s["amount"], minor_units(s["currency"]))
        texts.append(_step_text(rate, s, amount, i == 0, versions > 1))
    if rate.price_model == "volume":
        total = family["quantity"].sum()
        return f"month total {format_quantity(total)} sets the tier for all units: " + "; ".join(
            texts
        )
    return "; ".join(texts)


def _step_text(rate: Rate, s: dict, amount: Decimal, first: bool, many_versions: bool) -> str:
    qty = format_quantity(s["quantity"])
    per_event = _PER_EVENT_STEPS.get(s["price_model"])
    if per_event is not None:
        count = (s["amount"] / s["unit_price"]).to_integral_value() if s["unit_price"] else 0
        text = per_event.format(count=f"{count:,}", price=price_text(s["unit_price"]), qty=qty)
    elif s["price_model"] == "dynamic":
        text = f"{qty} unit(s) at each event's own {rate.amount_key}"
    elif s["price_model"] in ("price_minimum", "price_cap"):
        what = "minimum" if s["price_model"] == "price_minimum" else "maximum"
        text = f"{what} {price_text(s['unit_price'])} a month for this price"
    elif s["price_model"] == "tier_flat":
        text = f"tier {s['tier']} flat fee {price_text(s['unit_price'])}"
    elif s["price_model"] == "included":
        text = f"{qty} included (free_units {format_quantity(rate.free_units)})"
    elif rate.price_model == "package" and s["unit_price"]:
        packages = (s["amount"] / s["unit_price"]).to_integral_value()
        text = f"{packages:,} package(s) of {plain(s['per'])} × {price_text(s['unit_price'])}"
    elif rate.price_model == "flat":
        text = f"flat fee {price_text(s['unit_price'])}"
    elif rate.price_model == "percentage":
        word = "next " if rate.free_units else ""
        text = f"{(s['unit_price'] * 100).normalize():f}% of {word}{qty}"
    else:
        word = ("first " if first else "next ") if rate.price_model == "graduated" else ""
        if s["price_model"] != "included" and rate.free_units:
            word = "next "
        text = f"{word}{qty} × {price_text(s['unit_price'])}/{_per(s['per'])}"
        tier = rate.tiers[s["tier"] - 1] if rate.tiers and s["tier"] else None
        if tier is not None and tier.block:
            text += f" in started blocks of {format_quantity(tier.block)}"
    if many_versions:
        tier = f"tier {s['tier']}, " if s["tier"] is not None else ""
        text += f" ({tier}prices from {s['price_version']})"
    return f"{text} = {amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) else text


#: Steps of a per-event percentage (pricing.per_event) beside its rate share.
_PER_EVENT_STEPS = {
    "transaction_fee": "{count} transaction(s) × fixed fee {price}",
    "transaction_min": "{count} transaction(s) of {qty} at the minimum {price}",
    "transaction_max": "{count} transaction(s) of {qty} at the maximum {price}",
}


def line_arithmetic(line: dict) -> str:
    if line["per"] is None or line["unit_price"] is None:
        return f"{plain(line['exact_amount'])} → {line['amount']}"
    return (
        f"{format_quantity(line['quantity'])} × {price_text(line['unit_price'])}"
        f"/{_per(line['per'])}"
        f" = {plain(line['exact_amount'])} → {line['amount']}"
    )


def _per(per: Decimal) -> str:
    n = int(per) if per == per.to_integral_value() else per
    return {1: "1", 1_000: "1K", 1_000_000: "1M", 1_000_000_000: "1B"}.get(n, f"{n:,}")
