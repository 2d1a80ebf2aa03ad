"""Sales tax / VAT: which rate applies to a customer, and the exact tax of an invoice.

The seller is registered for VAT (`assets/issuer.yaml`), so every invoice states its tax
treatment even when no tax is charged. The rates live in `accounts.yaml` (`tax:`), per customer
country, with an account-level override (`tax_rate`, `tax_note`) for zero-rated or exempt
customers:

* a customer in the seller's country pays that country's rate;
* a business customer in a `reverse_charge` country with a VAT id (`tax_id`) is charged 0 %:
  it accounts for the VAT itself, and the invoice must say so (Art. 196, Directive 2006/112/EC);
* any other listed country pays its rate; an unlisted one gets `elsewhere` (by default 0 %,
  outside the scope of the seller's VAT).

The tax is computed once per invoice on the net charges (after discount and minimum true-up,
before prepaid credit, which is a payment and does not reduce the taxable amount), exactly,
and rounded half-up to the currency's minor unit (CONTRACT §4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from usagebox_pipelines.pricing import _yaml as y
from usagebox_pipelines.pricing.money import exact_decimal, round_decimal

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_COUNTRY_KEYS = {"rate", "reverse_charge", "note"}
_POLICY_KEYS = {"name", "seller_country", "countries", "elsewhere"}
REVERSE_CHARGE_NOTE = (
    "Reverse charge: the customer accounts for the VAT "
    "(Article 196, Council Directive 2006/112/EC)."
)

#: Treatment codes, stored in the description of the tax line and printed on the invoice.
STANDARD, REVERSE_CHARGE, ZERO_RATED, OUTSIDE_SCOPE = (
    "standard",
    "reverse_charge",
    "zero_rated",
    "outside_scope",
)


@dataclass(frozen=True)
class CountryRate:
    """The rate for customers in one country (percent, exact) and whether B2B reverses it."""

    rate: Decimal
    reverse_charge: bool = False
    note: str | None = None


@dataclass(frozen=True)
class TaxPolicy:
    """The `tax:` block of accounts.yaml."""

    name: str = "VAT"
    seller_country: str | None = None
    countries: Mapping[str, CountryRate] = field(default_factory=dict)
    elsewhere: CountryRate = CountryRate(_ZERO)


@dataclass(frozen=True)
class TaxTreatment:
    """How one account is taxed: the rate (percent), its kind and the wording the invoice needs."""

    name: str
    rate: Decimal
    code: str
    note: str | None = None

    @property
    def has_line(self) -> bool:
        """Whether invoices carry a tax line: a supply outside the scope of the seller's tax
        has none (its wording is printed); reverse-charge and zero-rated supplies keep a
        0.00 line, since the seller reports them."""
        return self.code != OUTSIDE_SCOPE

    @property
    def label(self) -> str:
        """`VAT 20%`, `VAT 0% (reverse charge)`: the tax line's description."""
        text = f"{self.name} {_plain(self.rate)}%"
        return text if self.code == STANDARD else f"{text} ({self.code.replace('_', ' ')})"


def treatment(
    policy: TaxPolicy | None,
    country: str | None,
    tax_id: str | None,
    rate_override: Decimal | None = None,
    note_override: str | None = None,
) -> TaxTreatment | None:
    """The treatment of a customer in `country` (None: no tax policy, so no tax line at all)."""
    if policy is None:
        return None
    if rate_override is not None:
        code = STANDARD if rate_override else ZERO_RATED
        return TaxTreatment(policy.name, rate_override, code, note_override)
    listed = policy.countries.get(country or "")
    if listed is not None and listed.reverse_charge and tax_id:
        note = note_override or REVERSE_CHARGE_NOTE
        return TaxTreatment(policy.name, _ZERO, REVERSE_CHARGE, note)
    chosen = listed or policy.elsewhere
    if chosen.rate:
        code = STANDARD
    else:
        domestic = country is not None and country == policy.seller_country
        code = ZERO_RATED if listed is not None or domestic else OUTSIDE_SCOPE
    return TaxTreatment(policy.name, chosen.rate, code, note_override or chosen.note)


def tax_of(base: Decimal, rate: Decimal, minor_units: int) -> Decimal:
    """`base × rate / 100`, exact, then half-up to the minor unit (20 % of 0.125 = 0.03)."""
    exact = exact_decimal(Fraction(base) * Fraction(rate) / 100)
    return round_decimal(exact, minor_units)


# --------------------------------------------------------------------------- parsing


def parse_policy(raw: Any, where: y.Where) -> TaxPolicy | None:
    """The `tax:` block (None when absent: invoices then carry no tax line)."""
    if raw is None:
        return None
    body = y.mapping(raw, where, _POLICY_KEYS)
    countries_raw = body.get("countries") or {}
    if not isinstance(countries_raw, Mapping):
        where.key("countries").fail("must map a country code to {rate, reverse_charge, note}")
    countries = {
        country_code(code, where.key("countries")): _country_rate(
            value, where.key("countries").key(str(code))
        )
        for code, value in countries_raw.items()
    }
    seller = body.get("seller_country")
    if seller is not None:
        seller = country_code(seller, where.key("seller_country"))
    return TaxPolicy(
        name=y.text(body.get("name", "VAT"), where.key("name")),
        seller_country=seller,
        countries=countries,
        elsewhere=_country_rate(body.get("elsewhere") or {"rate": "0"}, where.key("elsewhere")),
    )


def tax_rate(value: Any, where: y.Where) -> Decimal | None:
    """A rate in percent, 0–100, exact (`"20"`, `"8.875"`)."""
    if value is None:
        return None
    rate = y.decimal(value, where, minimum=_ZERO)
    if rate > _HUNDRED:
        where.fail(f"a tax rate is a percentage, at most 100; got {value!r}")
    return rate


def country_code(value: Any, where: y.Where) -> str:
    """An ISO 3166-1 alpha-2 code, upper case (`GB`, `DE`)."""
    code = y.text(value, where)
    if len(code) != 2 or not code.isalpha() or not code.isupper():
        where.fail(f"not an ISO country code (two capital letters): {code!r}")
    return code


def _country_rate(raw: Any, where: y.Where) -> CountryRate:
    body = y.mapping(raw, where, _COUNTRY_KEYS, required={"rate"})
    reverse = body.get("reverse_charge", False)
    if not isinstance(reverse, bool):
        where.key("reverse_charge").fail("must be true or false")
    note = body.get("note")
    rate = tax_rate(body["rate"], where.key("rate"))
    assert rate is not None
    return CountryRate(
        rate=rate,
        reverse_charge=reverse,
        note=None if note is None else y.text(note, where.key("note")),
    )


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")
