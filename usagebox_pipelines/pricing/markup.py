"""Cost-plus prices: a pricebook rate billed at the vendor's list rate × (1 + markup %).

Most AI resellers price this way (Stripe's LLM token billing, Amberflo markups): the customer
pays the model vendor's list price plus a percentage. The list rates are the ones
reconciliation already checks vendor bills against (`pricebooks/vendors.yaml`), so the price
and the cost it is marked up from are read from one place.

A pricebook version stays reproducible from files: a markup rate takes the list rate in effect
on the version's `effective_from` (UTC date), the list rates it used are part of the version's
content hash (editing them after an invoice was issued is caught by `check_frozen`), and a
vendor price change inside a version's span is refused, naming the pricebook version to publish
(prices change only by a new version, CONTRACT.md §4). `model_id: "*"` resolves to one rate per
model the vendor lists for the meter, each with the specificity of `*`, so an exact rate for a
model still wins and a model the vendor does not list stays unrated (never free).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from usagebox_pipelines.pricing import _yaml as y
from usagebox_pipelines.pricing.money import SCALE, exact_decimal
from usagebox_pipelines.reconciliation.mapping import MAPPING_FILE, load_vendor_mapping

if TYPE_CHECKING:
    from usagebox_pipelines.pricing.pricebook import PricebookVersion, Rate

ListKey = tuple[str, str, str]  # vendor, model_id, meter_id


@dataclass(frozen=True)
class ListRate:
    """One vendor list price: `price` per `per` units from `effective_from` (a UTC date)."""

    effective_from: date
    per: Decimal
    price: Decimal


@dataclass(frozen=True)
class ListRates:
    """Vendor list rates by (vendor, model, meter), each in effective order, plus currencies."""

    rates: Mapping[ListKey, tuple[ListRate, ...]] = field(default_factory=dict)
    currencies: Mapping[str, str] = field(default_factory=dict)
    source: str = "vendors.yaml"
    #: The pricebook folder, when the rates were not needed at load: a proposed markup version
    #: (`usagebox reprice`) loads them from there then.
    folder: Path | None = None

    def for_version(self, version: PricebookVersion) -> ListRates:
        """These rates, or the folder's once `version` needs them and none were loaded."""
        if self.rates or self.folder is None or not has_markup(version):
            return self
        return load_list_rates(self.folder)

    def models(self, vendor: str, meter_id: str) -> list[str]:
        """Models the vendor lists a price for on this meter, sorted."""
        return sorted({m for v, m, meter in self.rates if v == vendor and meter == meter_id})

    def at(self, key: ListKey, day: date) -> ListRate | None:
        """The list rate in effect on `day` (None when the vendor lists none yet)."""
        found = self.rates.get(key, ())
        pos = bisect_right([r.effective_from for r in found], day)
        return found[pos - 1] if pos else None

    def changes(self, key: ListKey, after: date, before: datetime | None) -> list[date]:
        """Dates the list rate changes strictly after `after` and before `before` (None: ever)."""
        return [
            r.effective_from
            for r in self.rates.get(key, ())
            if r.effective_from > after and (before is None or r.effective_from < before.date())
        ]


def load_list_rates(pricebooks_dir: Path) -> ListRates:
    """The standard list rates (no service tier, no context window) of `vendors.yaml`."""
    mapping = load_vendor_mapping(pricebooks_dir)
    standard = (pl.col("service_tier").fill_null("") == "") & (
        pl.col("context_window").fill_null("") == ""
    )
    frame = mapping.rates.filter(standard).sort("rate_effective_from")
    rates: dict[ListKey, list[ListRate]] = {}
    for vendor, model, meter, start, per, price in frame.select(
        "vendor", "model_id", "meter_id", "rate_effective_from", "rate_per", "unit_price"
    ).iter_rows():
        rates.setdefault((vendor, model, meter), []).append(ListRate(start, per, price))
    currencies = {name: spec.currency for name, spec in mapping.vendors.items()}
    source = y.display(Path(pricebooks_dir) / MAPPING_FILE)
    return ListRates({k: tuple(v) for k, v in rates.items()}, currencies, source)


def has_markup(version: PricebookVersion) -> bool:
    """True when the version has a markup rate still to resolve."""
    return any(r.price_model == "markup" and r.unit_price is None for r in version.rates)


def resolve_markups(
    version: PricebookVersion, until: datetime | None, list_rates: ListRates, error: type
) -> PricebookVersion:
    """`version` with each markup rate priced from the list rate in effect at its start.

    `until` is the next version's `effective_from` (None for the last): a list-rate change in
    `[effective_from, until)` would silently change this version's prices, so it is refused.
    """
    if not has_markup(version):
        return version
    where = y.Where(y.display(version.file), error).key("rates")
    day = version.effective_from.date()
    resolved: list[Rate] = []
    used: dict[str, list[str]] = {}
    for rate in version.rates:
        if rate.price_model != "markup" or rate.markup is None:
            resolved.append(rate)
            continue
        at = where.item(rate.index).key("markup")
        vendor = rate.markup.vendor
        if vendor not in list_rates.currencies:
            at.key("vendor").fail(f"unknown vendor {vendor!r} in {list_rates.source}")
        if list_rates.currencies[vendor] != version.currency:
            at.key("vendor").fail(
                f"{vendor} lists prices in {list_rates.currencies[vendor]}, the pricebook bills "
                f"in {version.currency}; a markup never converts currency"
            )
        models = [rate.model_id]
        if rate.model_id == "*":
            models = list_rates.models(vendor, rate.meter_id)
        if not models:
            at.fail(f"{vendor} lists no {rate.meter_id} price in {list_rates.source}")
        for model in models:
            resolved.append(_priced(rate, model, day, until, list_rates, at, used))
    _check_overlap(resolved, where)
    extra = json.dumps(used, sort_keys=True, separators=(",", ":"))
    content = hashlib.sha256(f"{version.content_sha256}:{extra}".encode()).hexdigest()
    return replace(version, rates=tuple(resolved), content_sha256=content)


def _check_overlap(rates: list[Rate], where: y.Where) -> None:
    """Two vendors' `*` markups on one meter must not both list a model (an equal tie)."""
    seen: dict[tuple, Rate] = {}
    for rate in rates:
        if not rate.wildcard or rate.markup is None:
            continue
        key = (rate.meter_id, rate.model_id, rate.dimensions)
        other = seen.setdefault(key, rate)
        if other is not rate:
            theirs = other.markup.vendor if other.markup else "?"
            where.item(rate.index).key("markup").fail(
                f"{rate.markup.vendor} and rates[{other.index}] ({theirs}) both "
                f"list {rate.model_id} {rate.meter_id}; give that model an exact rate"
            )


def _priced(
    rate: Rate,
    model: str,
    day: date,
    until: datetime | None,
    list_rates: ListRates,
    at: y.Where,
    used: dict[str, list[str]],
) -> Rate:
    """One concrete per-model rate of a markup rule (exact; at most 12 decimal places)."""
    assert rate.markup is not None
    key = (rate.markup.vendor, model, rate.meter_id)
    found = list_rates.at(key, day)
    if found is None:
        at.fail(
            f"{rate.markup.vendor} has no list rate for {model} {rate.meter_id} in effect on "
            f"{day} ({list_rates.source})"
        )
    changes = list_rates.changes(key, day, until)
    if changes:
        at.fail(
            f"the {rate.markup.vendor} list rate for {model} {rate.meter_id} changes on "
            f"{changes[0]} inside this version; publish a pricebook version effective "
            f"{changes[0]}T00:00:00Z so invoices keep reproducible prices"
        )
    price = Fraction(found.price) * (1 + Fraction(rate.markup.pct) / 100)
    unit_price = Decimal(price.numerator) / Decimal(price.denominator)
    if price != Fraction(unit_price) or unit_price.as_tuple().exponent < -SCALE:  # type: ignore[operator]
        at.key("pct").fail(
            f"{found.price} × (1 + {rate.markup.pct}%) is not exact at {SCALE} decimal places"
        )
    used[f"{model}:{rate.meter_id}"] = [str(found.effective_from), str(found.per), str(found.price)]
    markup = replace(
        rate.markup, list_price=found.price, list_per=found.per, list_from=str(found.effective_from)
    )
    wildcard = rate.model_id == "*"
    per = Decimal(int(found.per)) if found.per == found.per.to_integral_value() else found.per
    return replace(
        rate,
        model_id=model,
        rate_id=f"{rate.rate_id}@{model}" if wildcard else rate.rate_id,
        per=per,
        unit_price=unit_price.normalize() if unit_price else Decimal(0),
        markup=markup,
        wildcard=wildcard,
    )


def markup_earned(quantity: Decimal, rate: Rate) -> tuple[Decimal, Decimal]:
    """(list cost, markup earned) of `quantity` units billed by a resolved markup rate, exact
    at 12 places: what the invoice and `explain` show the reseller earned over list."""
    assert rate.markup is not None and rate.markup.list_price is not None
    assert rate.markup.list_per is not None and rate.unit_price is not None
    cost = Fraction(quantity) * Fraction(rate.markup.list_price) / Fraction(rate.markup.list_per)
    billed = Fraction(quantity) * Fraction(rate.unit_price) / Fraction(rate.per)
    return exact_decimal(cost), exact_decimal(billed - cost)
