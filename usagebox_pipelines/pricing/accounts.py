"""Customers and contracts (`pricebooks/accounts.yaml`, CONTRACT.md §4).

An account not listed is billed under the `defaults:` block, so new customers are billable
before anyone edits the file. `parent` builds an org → team → user hierarchy: a child inherits
the `currency`, `pricebook`, `discount_pct` and `payment_terms_days` it does not set itself.
Commitments (`minimum_commit`, `prepaid_credit`, `credit_grants`, `maximum_spend`) and budgets
belong to the account that states them and are never inherited (each account is invoiced on its
own; see ADR 0002). `prepaid_credit: X` is the grant `prepaid_credit` of X (no dates, priority 0,
for everything): `Account.grants` lists it before the `credit_grants` (ADR 0016).

`time_zone` (an IANA name, inherited like `country`, UTC when nobody sets it) makes the account's
billing month its local month: `Accounts.period` is the UTC window of it (ADR 0017). Only zones
whose offset is a whole number of hours are accepted: usage_hourly is rolled up per UTC hour, so
a month boundary at +05:30 would fall inside an hour.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.months import Period, fractional_offset, shift_month, zone_period
from usagebox_pipelines.pricing import _yaml as y
from usagebox_pipelines.pricing.money import MINOR_UNITS
from usagebox_pipelines.pricing.tax import (
    TaxPolicy,
    TaxTreatment,
    country_code,
    parse_policy,
    tax_rate,
    treatment,
)

if TYPE_CHECKING:
    from usagebox_pipelines.pricing.pricebook import PricebookSet

ACCOUNTS_FILE = "accounts.yaml"
_TOP_KEYS = {"defaults", "accounts", "tax"}
_DEFAULT_KEYS = {"pricebook", "currency", "payment_terms_days", "country", "time_zone"}
_INHERITED = (
    "currency", "pricebook", "discount_pct", "payment_terms_days", "country", "time_zone",
)  # fmt: skip
_ACCOUNT_KEYS = {
    "name",
    "email",
    "address",
    "tax_id",
    "country",
    "tax_rate",
    "tax_note",
    "currency",
    "pricebook",
    "parent",
    "discount_pct",
    "minimum_commit",
    "prepaid_credit",
    "credit_grants",
    "maximum_spend",
    "coupons",
    "payment_terms_days",
    "budget",
    "after_hard_stop",
    "time_zone",
}
#: What the invoice does with usage after a guardrail hard stop: `bill` it (the note says how
#: much) or `waive` it (a discount line of exactly minus that amount, before the contract terms).
AFTER_HARD_STOP = ("bill", "waive")
_BUDGET_KEYS = {"monthly", "soft_pct", "hard_pct", "caps", "enforcement"}
_CAP_KEYS = {"meter_id", "model_id", "monthly"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HUNDRED = Decimal(100)
_COUPON_KEYS = {"id", "amount", "from", "months"}
_GRANT_KEYS = {"id", "amount", "effective", "expires", "priority", "applies_to"}
_APPLIES_KEYS = {"meters", "models"}
#: The grant id `prepaid_credit: X` stands for (its credit line keeps the old wording).
PREPAID_GRANT = "prepaid_credit"
_MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AccountsError(UsageboxError):
    """An invalid accounts file (named with file and field)."""


@dataclass(frozen=True)
class BudgetCap:
    """A monthly cap on one meter and/or model (used by guardrails, validated here)."""

    monthly: Decimal
    meter_id: str | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class Coupon:
    """A fixed amount off each monthly invoice for `months` periods from `start` (YYYY-MM)."""

    coupon_id: str
    amount: Decimal
    start: str
    months: int

    def applies_to(self, period: str) -> bool:
        """True for the `months` periods from `start` (half-open: start ≤ period < end)."""
        return self.start <= period < shift_month(self.start, self.months)

    @property
    def last(self) -> str:
        """The last period the coupon applies to."""
        return shift_month(self.start, self.months - 1)


@dataclass(frozen=True)
class CreditGrant:
    """Prepaid credit that pays invoices of the periods overlapping [effective, expires).

    `None` dates are open ends (always usable). Lower `priority` burns first. With `meters`
    and/or `models` the grant pays only usage lines of those meters/models (both: of both).
    """

    grant_id: str
    amount: Decimal
    effective: datetime | None = None
    expires: datetime | None = None
    priority: int = 0
    meters: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def usable_in(self, start: datetime, end: datetime) -> bool:
        """True when the half-open period [start, end) overlaps [effective, expires)."""
        begun = self.effective is None or self.effective < end
        return begun and (self.expires is None or self.expires > start)

    def expired_by(self, start: datetime) -> bool:
        """True when no period starting at or after `start` can use the grant any more."""
        return self.expires is not None and self.expires <= start

    @property
    def restricted(self) -> bool:
        """Whether the grant pays only some usage lines (`applies_to`)."""
        return bool(self.meters or self.models)

    def pays_for(self, meter_id: str | None, model_id: str | None) -> bool:
        """Whether usage of this meter × model is a line the grant may pay."""
        meter_ok = not self.meters or meter_id in self.meters
        return meter_ok and (not self.models or model_id in self.models)

    @property
    def burn_key(self) -> tuple:
        """The fixed burn order: priority, earliest expiry (none last), earliest effective
        (always-effective first), then id."""
        never = datetime.max.replace(tzinfo=UTC)
        always = datetime.min.replace(tzinfo=UTC)
        return (
            self.priority,
            self.expires or never,
            self.effective or always,
            self.grant_id,
        )


@dataclass(frozen=True)
class Budget:
    """Monthly spend budget: notify at `soft_pct`, act at `hard_pct` per `enforcement`."""

    monthly: Decimal
    soft_pct: Decimal = Decimal(80)
    hard_pct: Decimal = Decimal(100)
    caps: tuple[BudgetCap, ...] = ()
    enforcement: str = "SOFT"


@dataclass(frozen=True)
class Account:
    """A customer with its resolved (inherited/defaulted) billing settings."""

    account_id: str
    name: str
    currency: str
    pricebook: str
    payment_terms_days: int
    email: str | None = None
    address: tuple[str, ...] = ()
    tax_id: str | None = None
    parent: str | None = None
    discount_pct: Decimal = Decimal(0)
    minimum_commit: Decimal | None = None
    prepaid_credit: Decimal | None = None
    #: The `credit_grants` list (`grants` adds `prepaid_credit`).
    credit_grants: tuple[CreditGrant, ...] = ()
    maximum_spend: Decimal | None = None
    coupons: tuple[Coupon, ...] = ()
    budget: Budget | None = None
    listed: bool = True
    after_hard_stop: str = "bill"
    #: ISO country of the billing address; with `tax_id` it decides the tax treatment.
    country: str | None = None
    #: The resolved tax treatment (pricing.tax); None when accounts.yaml has no `tax:` block.
    tax: TaxTreatment | None = None
    #: IANA zone whose months are the account's billing months; None = UTC (ADR 0017).
    time_zone: str | None = None

    def period(self, month: str) -> Period:
        """The UTC window [local midnight of the 1st, local midnight of the next 1st) of
        `month` in the account's zone (the UTC month when it has none)."""
        return zone_period(month, self.time_zone)

    @property
    def grants(self) -> tuple[CreditGrant, ...]:
        """Every credit grant: `prepaid_credit` (as the grant PREPAID_GRANT) first, then the
        `credit_grants`."""
        if self.prepaid_credit is None:
            return self.credit_grants
        return (CreditGrant(PREPAID_GRANT, self.prepaid_credit), *self.credit_grants)


@dataclass(frozen=True)
class AccountDefaults:
    """Settings for accounts the file does not list (and the base of inheritance)."""

    pricebook: str = "standard"
    currency: str = "USD"
    payment_terms_days: int = 30
    country: str | None = None
    time_zone: str | None = None


@dataclass(frozen=True)
class Accounts:
    """All listed accounts plus the defaults used for anyone else."""

    defaults: AccountDefaults = AccountDefaults()
    listed: Mapping[str, Account] = field(default_factory=dict)
    file: Path | None = None
    tax_policy: TaxPolicy | None = None

    def get(self, account_id: str) -> Account:
        """The account, or a default account for an id the file does not list."""
        found = self.listed.get(account_id)
        if found is not None:
            return found
        d = self.defaults
        return Account(
            account_id=account_id,
            name=account_id,
            currency=d.currency,
            pricebook=d.pricebook,
            payment_terms_days=d.payment_terms_days,
            listed=False,
            country=d.country,
            tax=treatment(self.tax_policy, d.country, None),
            time_zone=d.time_zone,
        )

    def ids(self) -> list[str]:
        """Listed account ids, sorted."""
        return sorted(self.listed)

    def children(self, account_id: str) -> list[str]:
        """Direct children, sorted."""
        return sorted(a.account_id for a in self.listed.values() if a.parent == account_id)

    def ancestors(self, account_id: str) -> list[str]:
        """Parent, grandparent, ... up to the root (empty for a root)."""
        chain: list[str] = []
        parent = self.get(account_id).parent
        while parent is not None:
            chain.append(parent)
            parent = self.get(parent).parent
        return chain

    def root(self, account_id: str) -> str:
        """The top of the account's hierarchy (itself when it has no parent)."""
        chain = self.ancestors(account_id)
        return chain[-1] if chain else account_id

    def period(self, account_id: str, month: str) -> Period:
        """The account's billing period `month` as a UTC window (its local month, ADR 0017).

        The zone was checked for whole-hour offsets over the years around today when the file
        was read; here it is checked again over `month` itself, so no month is ever cut
        inside a UTC hour."""
        account = self.get(account_id)
        zone = account.time_zone
        if zone is not None:
            _check_whole_hours(zone, month, self._zone_where(account))
        return account.period(month)

    @property
    def zoned(self) -> bool:
        """Whether any account (or the defaults) bills in a zone other than UTC: when none
        does, every stage reads and rates exactly the UTC month, as before time zones."""
        return bool(self.zones() - {None})

    def zones(self) -> set[str | None]:
        """Every zone an account may bill in (None: UTC), the defaults' included."""
        return {self.defaults.time_zone} | {a.time_zone for a in self.listed.values()}

    def span(self, month: str) -> Period:
        """The union of every account's period `month`: [earliest start, latest end). The
        hourly rows a month reads (each account then keeps its own window)."""
        periods = [zone_period(month, zone) for zone in self.zones()]
        return Period(min(p.start for p in periods), max(p.end for p in periods))

    def window(self, month: str, account_id: str | None = None) -> Period:
        """The account's period, or with no account the span of every account."""
        return self.span(month) if account_id is None else self.period(account_id, month)

    def _zone_where(self, account: Account) -> y.Where:
        where = y.Where(y.display(self.file or Path(ACCOUNTS_FILE)), AccountsError)
        if not account.listed:
            return where.key("defaults").key("time_zone")
        return where.key("accounts").key(account.account_id).key("time_zone")


def load_accounts(folder: Path) -> Accounts:
    """Read `<folder>/accounts.yaml`; without that file every account gets the defaults.

    The result is cached per path and file content (Accounts is frozen): the stages of one run
    read the same file many times, and a changed file is always read again.
    """
    path = Path(folder) / ACCOUNTS_FILE
    if not path.exists():
        return Accounts()
    return _parse_accounts(path, y.read_bytes(path, AccountsError))


@functools.lru_cache(maxsize=8)
def _parse_accounts(path: Path, data: bytes) -> Accounts:
    where = y.Where(y.display(path), AccountsError)
    doc = y.parse_yaml(data, path, AccountsError)
    doc = y.mapping(doc if doc is not None else {}, where, _TOP_KEYS)
    defaults = _parse_defaults(doc.get("defaults") or {}, where.key("defaults"))
    policy = parse_policy(doc.get("tax"), where.key("tax"))
    raw_accounts = doc.get("accounts") or {}
    if not isinstance(raw_accounts, Mapping):
        where.key("accounts").fail("must be a mapping of account id to account")
    raw = {}
    for account_id, body in raw_accounts.items():
        at = where.key("accounts").key(str(account_id))
        y.text(account_id, at, pattern=_ID_RE)
        raw[account_id] = y.mapping(body if body is not None else {}, at, _ACCOUNT_KEYS)
    _check_parents(raw, where.key("accounts"))
    resolved: dict[str, Account] = {}
    for account_id in raw:
        _resolve(account_id, raw, defaults, resolved, where.key("accounts"), policy)
    return Accounts(defaults=defaults, listed=resolved, file=path, tax_policy=policy)


def _parse_defaults(raw: Any, where: y.Where) -> AccountDefaults:
    body = y.mapping(raw, where, _DEFAULT_KEYS)
    base = AccountDefaults()
    return AccountDefaults(
        pricebook=y.text(body.get("pricebook", base.pricebook), where.key("pricebook")),
        currency=_currency(body.get("currency", base.currency), where.key("currency")),
        payment_terms_days=y.integer(
            body.get("payment_terms_days", base.payment_terms_days),
            where.key("payment_terms_days"),
        ),
        country=_country(body.get("country"), where.key("country")),
        time_zone=_time_zone(body.get("time_zone"), where.key("time_zone")),
    )


def _check_parents(raw: Mapping[str, Mapping[str, Any]], where: y.Where) -> None:
    """Every parent is listed, and following parents never loops."""
    for account_id, body in raw.items():
        parent = body.get("parent")
        if parent is None:
            continue
        if parent not in raw:
            where.key(account_id).key("parent").fail(f"unknown parent account {parent!r}")
        seen = [account_id]
        while parent is not None:
            if parent in seen:
                cycle = " -> ".join([*seen, parent])
                where.key(account_id).key("parent").fail(f"cycle in parent chain: {cycle}")
            seen.append(parent)
            parent = raw[parent].get("parent")


def _resolve(
    account_id: str,
    raw: Mapping[str, Mapping[str, Any]],
    defaults: AccountDefaults,
    done: dict[str, Account],
    where: y.Where,
    policy: TaxPolicy | None = None,
) -> Account:
    """Parse one account after its parent, inheriting what it leaves unset."""
    if account_id in done:
        return done[account_id]
    body = raw[account_id]
    at = where.key(account_id)
    parent_id = body.get("parent")
    parent = _resolve(parent_id, raw, defaults, done, where, policy) if parent_id else None
    inherited: dict[str, Any] = {
        "currency": defaults.currency,
        "pricebook": defaults.pricebook,
        "discount_pct": Decimal(0),
        "payment_terms_days": defaults.payment_terms_days,
        "country": defaults.country,
        "time_zone": defaults.time_zone,
    }
    if parent is not None:
        inherited = {k: getattr(parent, k) for k in _INHERITED}
    currency = _currency(body.get("currency", inherited["currency"]), at.key("currency"))
    if parent is not None and currency != parent.currency:
        at.key("currency").fail(
            f"{currency} differs from parent {parent.account_id} ({parent.currency}); "
            "a hierarchy bills in one currency"
        )
    tax_id = None if body.get("tax_id") is None else y.text(body["tax_id"], at.key("tax_id"))
    country = _country(body.get("country"), at.key("country")) or inherited["country"]
    zone = inherited["time_zone"]
    if body.get("time_zone") is not None:  # an explicit UTC under a zoned parent is UTC
        zone = _time_zone(body["time_zone"], at.key("time_zone"))
    note = body.get("tax_note")
    prepaid = _money(body.get("prepaid_credit"), at.key("prepaid_credit"))
    account = Account(
        account_id=account_id,
        name=y.text(body.get("name", account_id), at.key("name")),
        email=_email(body.get("email"), at.key("email")),
        address=_address(body.get("address"), at.key("address")),
        tax_id=tax_id,
        currency=currency,
        pricebook=y.text(body.get("pricebook", inherited["pricebook"]), at.key("pricebook")),
        parent=parent_id,
        discount_pct=_pct(body, "discount_pct", inherited["discount_pct"], at),
        minimum_commit=_money(body.get("minimum_commit"), at.key("minimum_commit")),
        prepaid_credit=prepaid,
        credit_grants=_credit_grants(body.get("credit_grants"), prepaid, currency, at),
        maximum_spend=_maximum_spend(body, at),
        coupons=_coupons(body.get("coupons"), at.key("coupons")),
        payment_terms_days=y.integer(
            body.get("payment_terms_days", inherited["payment_terms_days"]),
            at.key("payment_terms_days"),
        ),
        budget=_budget(body.get("budget"), at.key("budget")),
        after_hard_stop=_after_hard_stop(body.get("after_hard_stop"), at.key("after_hard_stop")),
        country=country,
        tax=treatment(
            policy,
            country,
            tax_id,
            tax_rate(body.get("tax_rate"), at.key("tax_rate")),
            None if note is None else y.text(note, at.key("tax_note")),
        ),
        time_zone=zone,
    )
    done[account_id] = account
    return account


def _country(value: Any, where: y.Where) -> str | None:
    return None if value is None else country_code(value, where)


#: The years `_time_zone` probes for offsets that are not whole hours (a zone's rules change
#: rarely; `Accounts.period` checks each billed month itself, hour by hour).
_ZONE_CHECK_YEARS = range(datetime.now(UTC).year - 2, datetime.now(UTC).year + 3)


def _time_zone(value: Any, where: y.Where) -> str | None:
    """An IANA zone name whose UTC offsets are whole hours (None: UTC). "UTC" itself is None,
    so an explicit `time_zone: UTC` bills exactly as no zone."""
    if value is None:
        return None
    name = y.text(value, where)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        where.fail(f"unknown time zone {name!r}: use an IANA name like America/New_York")
    if name in ("UTC", "Etc/UTC"):
        return None
    month = _fractional_month(name)
    if month is not None:
        _check_whole_hours(name, month, where)
    return name


@functools.lru_cache(maxsize=512)
def _fractional_month(zone: str) -> str | None:
    """The first month of `_ZONE_CHECK_YEARS` in which `zone` is off whole hours at one of
    its noons or midnights (UTC), or None: a cheap probe (an offset lasts months, not
    hours) before the exact hour-by-hour check of that month."""
    tz = ZoneInfo(zone)
    cursor = datetime(_ZONE_CHECK_YEARS.start, 1, 1, tzinfo=UTC)
    end = datetime(_ZONE_CHECK_YEARS.stop, 1, 1, tzinfo=UTC)
    while cursor < end:
        if (cursor.astimezone(tz).utcoffset() or timedelta(0)) % timedelta(hours=1):
            return cursor.strftime("%Y-%m")
        cursor += timedelta(hours=12)
    return None


@functools.lru_cache(maxsize=4096)
def _fractional(zone: str, month: str) -> timedelta | None:
    return fractional_offset(zone, month)


def _check_whole_hours(zone: str, month: str, where: y.Where) -> None:
    offset = _fractional(zone, month)
    if offset is not None:
        sign = "-" if offset < timedelta(0) else "+"
        minutes = int(abs(offset).total_seconds()) // 60
        where.fail(
            f"time zone {zone!r} is at UTC{sign}{minutes // 60:02d}:{minutes % 60:02d} in "
            f"{month}, not a whole number of hours: usage_hourly is rolled up per UTC hour, "
            "so a month boundary would fall inside an hour; bill in UTC or a whole-hour zone"
        )


def _currency(value: Any, where: y.Where) -> str:
    code = y.text(value, where)
    if code not in MINOR_UNITS:
        where.fail(f"unknown currency {code!r}")
    return code


def _email(value: Any, where: y.Where) -> str | None:
    if value is None:
        return None
    email = y.text(value, where)
    if not _EMAIL_RE.match(email):
        where.fail(f"not an email address: {email!r}")
    return email


def _address(value: Any, where: y.Where) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        where.fail("must be a list of address lines")
    return tuple(y.text(line, where.item(i)) for i, line in enumerate(value))


def _pct(body: Mapping[str, Any], key: str, default: Decimal, where: y.Where) -> Decimal:
    if body.get(key) is None:
        return default
    value = y.decimal(body[key], where.key(key), minimum=Decimal(0))
    if value > _HUNDRED:
        where.key(key).fail(f"must be at most 100, got {body[key]!r}")
    return value


def _money(value: Any, where: y.Where) -> Decimal | None:
    return None if value is None else y.decimal(value, where, minimum=Decimal(0))


def _maximum_spend(body: Mapping[str, Any], where: y.Where) -> Decimal | None:
    """The monthly spend cap: usage after discount never bills above it. Below the account's
    `minimum_commit` it would contradict the commitment, so that is refused."""
    if body.get("maximum_spend") is None:
        return None
    cap = y.decimal(body["maximum_spend"], where.key("maximum_spend"), positive=True)
    commit = _money(body.get("minimum_commit"), where.key("minimum_commit"))
    if commit is not None and commit > cap:
        where.key("maximum_spend").fail(f"must be at least minimum_commit ({cap} < {commit})")
    return cap


def _coupons(raw: Any, where: y.Where) -> tuple[Coupon, ...]:
    """`[{id, amount, from: YYYY-MM, months}]`: fixed-amount coupons with a duration."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        where.fail("must be a list of {id, amount, from, months}")
    out, seen = [], set()
    for i, item in enumerate(raw):
        at = where.item(i)
        body = y.mapping(item, at, _COUPON_KEYS, required=_COUPON_KEYS)
        coupon_id = y.text(body["id"], at.key("id"), pattern=_ID_RE)
        if coupon_id in seen:
            at.key("id").fail(f"duplicate coupon id {coupon_id!r}")
        seen.add(coupon_id)
        start = y.text(body["from"], at.key("from"), pattern=_MONTH_RE)
        out.append(
            Coupon(
                coupon_id=coupon_id,
                amount=y.decimal(body["amount"], at.key("amount"), positive=True),
                start=start,
                months=y.integer(body["months"], at.key("months"), minimum=1),
            )
        )
    return tuple(out)


def _credit_grants(
    raw: Any, prepaid: Decimal | None, currency: str, where: y.Where
) -> tuple[CreditGrant, ...]:
    """Each `credit_grants` item; ids are unique, and `prepaid_credit` is taken when the
    account sets `prepaid_credit` (that is the grant of that id)."""
    if raw is None:
        return ()
    at = where.key("credit_grants")
    if not isinstance(raw, list):
        at.fail("must be a list of {id, amount, effective, expires, priority, applies_to}")
    out: list[CreditGrant] = []
    seen = set() if prepaid is None else {PREPAID_GRANT}
    for i, item in enumerate(raw):
        grant = _credit_grant(item, currency, at.item(i))
        if grant.grant_id in seen:
            why = "also set by prepaid_credit" if grant.grant_id == PREPAID_GRANT else "duplicate"
            at.item(i).key("id").fail(f"{why} grant id {grant.grant_id!r}")
        seen.add(grant.grant_id)
        out.append(grant)
    return tuple(out)


def _credit_grant(raw: Any, currency: str, where: y.Where) -> CreditGrant:
    """One grant: whole minor units of the account's currency (a draw is), dates UTC."""
    body = y.mapping(raw, where, _GRANT_KEYS, required={"id", "amount"})
    amount = y.decimal(body["amount"], where.key("amount"), minimum=Decimal(0))
    places = MINOR_UNITS[currency]
    if amount.as_tuple().exponent < -places:  # type: ignore[operator]
        where.key("amount").fail(f"at most {places} decimal places in {currency}, got {amount}")
    effective = _instant(body.get("effective"), where.key("effective"))
    expires = _instant(body.get("expires"), where.key("expires"))
    if effective is not None and expires is not None and expires <= effective:
        where.key("expires").fail(
            f"must be after effective ({expires.isoformat()} <= {effective.isoformat()})"
        )
    meters, models = _applies_to(body.get("applies_to"), where.key("applies_to"))
    return CreditGrant(
        grant_id=y.text(body["id"], where.key("id"), pattern=_ID_RE),
        amount=amount,
        effective=effective,
        expires=expires,
        priority=_priority(body.get("priority", 0), where.key("priority")),
        meters=meters,
        models=models,
    )


def _priority(value: Any, where: y.Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"must be an integer, got {value!r}")
    return value


def _instant(value: Any, where: y.Where) -> datetime | None:
    """A UTC instant from a YAML date (its UTC midnight) or a timestamp with an offset."""
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str) and _DATE_RE.match(value.strip()):
        value = date.fromisoformat(value.strip())  # a date written as text: its UTC midnight
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            where.fail(f"not a date or RFC 3339 timestamp: {value!r}")
    if not isinstance(value, datetime):
        where.fail("must be a date (2026-07-01) or a timestamp with offset")
    if value.tzinfo is None or value.utcoffset() is None:
        where.fail("needs a UTC offset or Z, e.g. 2026-07-01T00:00:00Z")
    return value.astimezone(UTC)


def _applies_to(raw: Any, where: y.Where) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(meters, models) a restricted grant pays for; ((), ()) = everything."""
    if raw is None:
        return (), ()
    body = y.mapping(raw, where, _APPLIES_KEYS)
    lists = []
    for key in ("meters", "models"):
        items = body.get(key)
        if items is None:
            lists.append(())
            continue
        if not isinstance(items, list) or not items:
            where.key(key).fail("must be a non-empty list of ids")
        lists.append(tuple(y.text(v, where.key(key).item(i)) for i, v in enumerate(items)))
    if not any(lists):
        where.fail("needs meters and/or models")
    return lists[0], lists[1]


def check_grant_scopes(accounts: Accounts, books: PricebookSet) -> None:
    """Refuse an `applies_to` meter or model no rate of the account's pricebook prices (such a
    grant could never pay anything: a typo). Models count among the rates of the grant's
    meters (all rates without `meters`) and are not checked when one of those is a `*` rate;
    an unknown pricebook is reported by rating itself."""
    where = y.Where(y.display(accounts.file or Path(ACCOUNTS_FILE)), AccountsError)
    for account_id in accounts.ids():
        account = accounts.get(account_id)
        rates = [r for v in books.versions_of(account.pricebook) for r in v.rates]
        if not rates:
            continue
        at = where.key("accounts").key(account_id).key("credit_grants")
        for i, grant in enumerate(account.credit_grants):
            mine = [r for r in rates if not grant.meters or r.meter_id in grant.meters]
            known = {"meters": {r.meter_id for r in rates}, "models": {r.model_id for r in mine}}
            for key, ids in (("meters", grant.meters), ("models", grant.models)):
                if key == "models" and "*" in known["models"]:
                    continue
                for j, value in enumerate(ids):
                    if value not in known[key]:
                        at.item(i).key("applies_to").key(key).item(j).fail(
                            f"unknown {key[:-1]} {value!r}: no rate of pricebook "
                            f"{account.pricebook!r} prices it"
                        )


def _after_hard_stop(raw: Any, where: y.Where) -> str:
    """`bill` (default): usage after a hard stop is billed and the invoice note says how much;
    `waive`: it is taken off the bill by a discount line (invoicing.hard_stop)."""
    if raw is None:
        return "bill"
    value = y.text(raw, where)
    if value not in AFTER_HARD_STOP:
        where.fail(f"must be one of {', '.join(AFTER_HARD_STOP)}, got {value!r}")
    return value


def _budget(raw: Any, where: y.Where) -> Budget | None:
    """Validate and store a budget (a later issue enforces it)."""
    if raw is None:
        return None
    body = y.mapping(raw, where, _BUDGET_KEYS, required={"monthly"})
    soft = y.decimal(body.get("soft_pct", 80), where.key("soft_pct"), positive=True)
    hard = y.decimal(body.get("hard_pct", 100), where.key("hard_pct"), positive=True)
    if soft > hard:
        where.key("soft_pct").fail(f"must not exceed hard_pct ({soft} > {hard})")
    enforcement = body.get("enforcement", "SOFT")
    if enforcement not in ("HARD", "SOFT"):
        where.key("enforcement").fail(f"must be HARD or SOFT, got {enforcement!r}")
    raw_caps = body.get("caps") or []
    if not isinstance(raw_caps, list):
        where.key("caps").fail("must be a list of {meter_id, model_id, monthly}")
    return Budget(
        monthly=y.decimal(body["monthly"], where.key("monthly"), positive=True),
        soft_pct=soft,
        hard_pct=hard,
        caps=tuple(_cap(c, where.key("caps").item(i)) for i, c in enumerate(raw_caps)),
        enforcement=enforcement,
    )


def _cap(raw: Any, where: y.Where) -> BudgetCap:
    body = y.mapping(raw, where, _CAP_KEYS, required={"monthly"})
    if body.get("meter_id") is None and body.get("model_id") is None:
        where.fail("a cap needs meter_id and/or model_id")
    meter = body.get("meter_id")
    model = body.get("model_id")
    return BudgetCap(
        monthly=y.decimal(body["monthly"], where.key("monthly"), positive=True),
        meter_id=None if meter is None else y.text(meter, where.key("meter_id")),
        model_id=None if model is None else y.text(model, where.key("model_id")),
    )
