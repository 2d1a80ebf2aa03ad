"""Pricebooks (CONTRACT.md §4): one immutable, strictly validated version per YAML file.

Everything is checked before anything is rated, and every error names the file and the field
path (`pricebooks/standard-2026-10-16.yaml: rates[3].tiers.steps[1].up_to: ...`), because a
pricebook mistake is a billing mistake. Versions are frozen once they issued an invoice:
`PricebookSet.check_frozen` compares content hashes. The content hash is the sha256 of the
parsed YAML as canonical JSON (`content_hash`), so a comment or whitespace edit of an issued
version changes nothing, while any changed value does. Invoices stamped before this rule hold
the sha256 of the file bytes (`file_sha256`); that stamp is still accepted while the bytes are
unchanged (ADR 0003).

Over 400 lines on purpose: the pricebook model and its validation are read together, each
field's check beside its type.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.pricing import _yaml as y
from usagebox_pipelines.pricing.markup import (
    ListRates,
    has_markup,
    load_list_rates,
    resolve_markups,
)
from usagebox_pipelines.pricing.money import MINOR_UNITS

PRICE_MODELS = (
    "per_unit", "markup", "percentage", "graduated", "volume", "package", "flat", "dynamic",
)  # fmt: skip
_TOP_KEYS = {"pricebook", "version", "effective_from", "currency", "rates", "description"}
_RATE_KEYS = {
    "id", "description", "meter_id", "model_id", "dimensions", "per", "free_units",
    "minimum", "maximum", "priority", "tier_by",
}  # fmt: skip
_PRICE_KEYS = ("unit_price", "markup", "percentage", "tiers", "package", "flat", "dynamic")
#: Price models that may start with free (included) units; volume and flat may not.
FREE_UNIT_MODELS = ("per_unit", "markup", "percentage", "graduated", "package")
#: Lago's percentage options priced per transaction from `events` (pricing.per_event, ADR 0018).
PER_EVENT_OPTIONS = (
    "fixed_amount", "free_units_per_events", "per_transaction_min", "per_transaction_max",
)  # fmt: skip
#: Lago's percentage options we do not take, and why (refused with the reason, never ignored).
_PERCENTAGE_UNSUPPORTED = {
    "free_units_per_total_aggregation": "write the rate's free_units (the first amount of the "
    "month that is not charged)",
}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIM_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_RATE_ID_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._:=*/@-]{0,127}$")


class PricebookError(UsageboxError):
    """An invalid pricebook file or set of files (named with file and field)."""


@dataclass(frozen=True)
class Tier:
    """One tier step: units up to `up_to` (inclusive; None = no upper bound). `flat_fee` is
    charged once a month when the position enters the tier (graduated, Lago/Orb/Stripe
    `flat_amount`) or when the month's total lands in it (volume). `block` (graduated only):
    the tier's units are billed in whole blocks of that size, a started block rounded up."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)
    block: Decimal | None = None


@dataclass(frozen=True)
class Markup:
    """Cost-plus: the vendor's list rate for the usage's model and meter × (1 + pct / 100).

    `list_price` per `list_per` units (from `vendors.yaml`, in effect on `list_from`) is filled
    in when the pricebook set resolves the rate (`pricing.markup`); a parsed, unresolved rate
    has None there.
    """

    vendor: str
    pct: Decimal
    list_price: Decimal | None = None
    list_per: Decimal | None = None
    list_from: str | None = None


@dataclass(frozen=True)
class Rate:
    """One price rule. `price_model` is per_unit, markup, percentage, graduated, volume, package
    or flat (`percentage` is priced per unit: `unit_price` is its rate / 100).

    `rate_id` (the `id` key, else derived from the selector, e.g. `gpu_seconds:*:gpu=h100`) is
    also the key that carries tier and package positions across versions of a month.
    `free_units`: the first units of the month per account × meter × model × rate id are
    included (priced 0) before the price model applies. `wildcard`: a `model_id: "*"` markup
    rate resolved to one concrete model keeps the specificity of `*`.
    """

    index: int
    rate_id: str
    meter_id: str
    model_id: str
    dimensions: tuple[tuple[str, str], ...]
    price_model: str
    per: Decimal = Decimal(1)
    unit_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    package_round: str = "up"
    flat: Decimal | None = None
    description: str | None = None
    free_units: Decimal = Decimal(0)
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    priority: int = 0
    tier_by: tuple[str, ...] = ()
    markup: Markup | None = None
    wildcard: bool = False
    fixed_amount: Decimal | None = None
    free_events: int = 0
    transaction_min: Decimal | None = None
    transaction_max: Decimal | None = None
    amount_key: str | None = None

    @property
    def per_event(self) -> bool:
        """Priced per transaction from `events`, not from hourly sums (ADR 0018): `dynamic`,
        and `percentage` with a fixed fee, free events or a per-transaction min / max."""
        if self.price_model == "dynamic":
            return True
        options = (self.fixed_amount, self.transaction_min, self.transaction_max)
        return self.price_model == "percentage" and (
            self.free_events > 0 or any(v is not None for v in options)
        )

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Exact model beats `*`; then more dimension keys beat fewer; then a higher
        `priority` (how two filters on different dimension keys, Lago's charge filters
        `{region: eu}` and `{country: de}`, say which wins for usage matching both)."""
        generic = self.model_id == "*" or self.wildcard
        return (0 if generic else 1, len(self.dimensions), self.priority)

    @property
    def selector(self) -> str:
        dims = "".join(f":{k}={v}" for k, v in self.dimensions)
        return f"{self.meter_id}:{self.model_id}{dims}"


@dataclass(frozen=True)
class PricebookVersion:
    """One pricebook file: a version of a named pricebook, in effect from `effective_from`."""

    file: Path
    pricebook: str
    version: str
    effective_from: datetime
    currency: str
    content_sha256: str
    rates: tuple[Rate, ...]
    description: str | None = None
    file_sha256: str | None = None

    def unchanged_since(self, recorded: str) -> bool:
        """True when `recorded` (stamped at issue) is this version's content hash, or its
        legacy stamp: the sha256 of the file bytes, from before content hashing."""
        return recorded in (self.content_sha256, self.file_sha256)

    @property
    def key(self) -> str:
        """`standard@2026-10-16`: the id stamped on invoices and used by `check_frozen`."""
        return f"{self.pricebook}@{self.version}"


@dataclass(frozen=True)
class PricebookSet:
    """All versions of all pricebooks in a folder, validated together."""

    versions: tuple[PricebookVersion, ...]
    list_rates: ListRates = field(default_factory=ListRates)
    _by_name: dict[str, tuple[PricebookVersion, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.versions, key=lambda v: (v.pricebook, v.effective_from)))
        _validate_set(ordered)
        ordered = tuple(
            resolve_markups(v, _next_start(ordered, i), self.list_rates, PricebookError)
            for i, v in enumerate(ordered)
        )
        by_name: dict[str, list[PricebookVersion]] = {}
        for version in ordered:
            by_name.setdefault(version.pricebook, []).append(version)
        object.__setattr__(self, "versions", ordered)
        object.__setattr__(self, "_by_name", {k: tuple(v) for k, v in by_name.items()})

    def names(self) -> list[str]:
        """Pricebook names, sorted."""
        return sorted(self._by_name)

    def versions_of(self, pricebook: str) -> tuple[PricebookVersion, ...]:
        """Versions of one pricebook in effective order (empty if unknown)."""
        return self._by_name.get(pricebook, ())

    def currency_of(self, pricebook: str) -> str | None:
        versions = self.versions_of(pricebook)
        return versions[0].currency if versions else None

    def get(self, key: str) -> PricebookVersion:
        """A version by its key `pricebook@version`."""
        for version in self.versions:
            if version.key == key:
                return version
        raise PricebookError(f"unknown pricebook version {key!r}")

    def version_at(self, pricebook: str, ts: datetime) -> PricebookVersion:
        """The version in effect at `ts` (latest effective_from <= ts)."""
        versions = self.versions_of(pricebook)
        if not versions:
            raise PricebookError(f"unknown pricebook {pricebook!r} (known: {self.names()})")
        if ts.tzinfo is None:
            raise PricebookError(f"version_at needs a timezone-aware timestamp, got {ts}")
        pos = bisect_right([v.effective_from for v in versions], ts)
        if pos == 0:
            first = versions[0].effective_from.isoformat()
            raise PricebookError(
                f"no version of pricebook {pricebook!r} in effect at {ts} "
                f"(first is effective {first})"
            )
        return versions[pos - 1]

    def fingerprints(self) -> dict[str, str]:
        """`{version key: content sha256}`: what to stamp on an invoice for `check_frozen`."""
        return {v.key: v.content_sha256 for v in self.versions}

    def check_frozen(self, issued: Mapping[str, str]) -> None:
        """Fail if a version that issued an invoice was edited or removed since.

        Keys are version keys (`standard@2026-10-16`, see `fingerprints`); a file name
        (`standard-2026-10-16.yaml`) is accepted too. Values are the sha256 recorded at issue.
        """
        by_key = {v.key: v for v in self.versions}
        by_file = {v.file.name: v for v in self.versions}
        for key, recorded in sorted(issued.items()):
            version = by_key.get(key) or by_file.get(key)
            if version is None:
                raise PricebookError(
                    f"{key}: pricebook version was used to issue an invoice but is missing"
                )
            if not version.unchanged_since(recorded):
                raise PricebookError(
                    f"{y.display(version.file)}: content_sha256: file was edited after it issued "
                    f"an invoice (recorded {recorded[:12]}…, now {version.content_sha256[:12]}…); "
                    "restore it and publish the change as a new version with a later "
                    "effective_from"
                )

    def with_version(self, proposed: PricebookVersion) -> PricebookSet:
        """A new set where `proposed` replaces the version with its key or effective_from."""
        kept = [
            v
            for v in self.versions
            if not (
                v.pricebook == proposed.pricebook
                and (v.version == proposed.version or v.effective_from == proposed.effective_from)
            )
        ]
        return PricebookSet(tuple([*kept, proposed]), self.list_rates.for_version(proposed))


def _next_start(ordered: tuple[PricebookVersion, ...], i: int) -> datetime | None:
    """`effective_from` of the version after `ordered[i]` in its pricebook (None: the last)."""
    after = ordered[i + 1] if i + 1 < len(ordered) else None
    if after is None or after.pricebook != ordered[i].pricebook:
        return None
    return after.effective_from


def load_pricebooks(folder: Path) -> PricebookSet:
    """Load and validate every pricebook file (`*.yaml`/`*.yml` with a top-level `pricebook:`).

    Other YAML files there (`accounts.yaml`, `vendors.yaml`) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PricebookError(f"{y.display(folder)}: pricebook folder not found")
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    versions = [v for v in (load_pricebook_file(f, required=False) for f in files) if v]
    if not versions:
        raise PricebookError(f"{y.display(folder)}: no pricebook files (YAML with `pricebook:`)")
    needs_list = any(has_markup(v) for v in versions)
    list_rates = load_list_rates(folder) if needs_list else ListRates(folder=folder)
    return PricebookSet(tuple(versions), list_rates)


def load_pricebook_file(path: Path, *, required: bool = True) -> PricebookVersion | None:
    """Parse and validate one file; None if it is not a pricebook and not `required`.

    Cached per path and file content (versions are frozen): a changed file is read again.
    """
    path = Path(path)
    return _parse_pricebook_file(path, y.read_bytes(path, PricebookError), required)


@functools.lru_cache(maxsize=64)
def _parse_pricebook_file(path: Path, raw_bytes: bytes, required: bool) -> PricebookVersion | None:
    where = y.Where(y.display(path), PricebookError)
    doc = y.parse_yaml(raw_bytes, path, PricebookError)
    if not isinstance(doc, Mapping) or "pricebook" not in doc:
        if required:
            where.fail("not a pricebook (needs a top-level `pricebook:` key)")
        return None
    version = _parse_version(doc, path, content_hash(doc), where)
    return replace(version, file_sha256=hashlib.sha256(raw_bytes).hexdigest())


def content_hash(doc: Any) -> str:
    """sha256 of a parsed YAML document as canonical JSON (sorted keys, no whitespace; dates
    and times as ISO text): formatting and comments do not change it, values do."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_iso, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _iso(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _parse_version(doc: Any, path: Path, sha: str, where: y.Where) -> PricebookVersion:
    """Top-level keys of one pricebook file."""
    doc = y.mapping(doc, where, _TOP_KEYS, required=_TOP_KEYS - {"description"})
    currency = y.text(doc["currency"], where.key("currency"))
    if currency not in MINOR_UNITS:
        where.key("currency").fail(f"unknown currency {currency!r}")
    raw_rates = doc["rates"]
    if not isinstance(raw_rates, list) or not raw_rates:
        where.key("rates").fail("must be a non-empty list of rates")
    rates = tuple(_parse_rate(r, i, where.key("rates").item(i)) for i, r in enumerate(raw_rates))
    _check_rates(rates, where.key("rates"))
    _check_terms(rates, currency, where.key("rates"))
    description = doc.get("description")
    return PricebookVersion(
        file=path,
        pricebook=y.text(doc["pricebook"], where.key("pricebook"), pattern=_ID_RE),
        version=y.text(doc["version"], where.key("version"), pattern=_ID_RE),
        effective_from=y.utc_hour(doc["effective_from"], where.key("effective_from")),
        currency=currency,
        content_sha256=sha,
        rates=rates,
        description=None if description is None else str(description),
    )


def _parse_rate(raw: Any, index: int, where: y.Where) -> Rate:
    """One rate: selector, `per`, and exactly one price model key."""
    rate = y.mapping(raw, where, _RATE_KEYS | set(_PRICE_KEYS), required={"meter_id", "model_id"})
    given = [k for k in _PRICE_KEYS if k in rate]
    if len(given) != 1:
        where.fail(f"needs exactly one of {', '.join(_PRICE_KEYS)} (got {given or 'none'})")
    kind = given[0]
    meter_id = y.text(rate["meter_id"], where.key("meter_id"), pattern=_ID_RE)
    model_id = (
        str(rate["model_id"])
        if rate["model_id"] == "*"
        else y.text(rate["model_id"], where.key("model_id"), pattern=y.NAME_RE)
    )
    dimensions = _parse_dimensions(rate.get("dimensions"), where.key("dimensions"))
    if "per" in rate and kind in ("package", "flat"):
        where.key("per").fail(f"not used with {kind} (a {kind} price is per package/month)")
    if "per" in rate and kind == "markup":
        where.key("per").fail("not used with markup (the vendor list rate has its own per)")
    if "per" in rate and kind == "percentage":
        where.key("per").fail("not used with percentage (the rate is a percent of the amount)")
    if "per" in rate and kind == "dynamic":
        where.key("per").fail("not used with dynamic (each event carries its own amount)")
    per = y.decimal(rate.get("per", 1), where.key("per"), positive=True)
    price = _parse_price(kind, rate[kind], where.key(kind))
    free_units = Decimal(0)
    if rate.get("free_units") is not None:
        if price["price_model"] not in FREE_UNIT_MODELS:
            where.key("free_units").fail(
                f"not used with {price['price_model']} (allowed with {', '.join(FREE_UNIT_MODELS)})"
            )
        free_units = y.decimal(rate["free_units"], where.key("free_units"), positive=True)
    minimum = _term(rate, "minimum", where)
    maximum = _term(rate, "maximum", where)
    if minimum is not None and maximum is not None and minimum > maximum:
        where.key("minimum").fail(f"must not exceed maximum ({minimum} > {maximum})")
    selector_id = Rate(index, "", meter_id, model_id, dimensions, "per_unit").selector
    rate_id = selector_id
    if rate.get("id") is not None:
        rate_id = y.text(rate["id"], where.key("id"), pattern=_RATE_ID_RE)
    description = rate.get("description")
    return Rate(
        index=index,
        rate_id=rate_id,
        meter_id=meter_id,
        model_id=model_id,
        dimensions=dimensions,
        per=per,
        description=None if description is None else str(description),
        free_units=free_units,
        minimum=minimum,
        maximum=maximum,
        priority=y.integer(rate.get("priority", 0), where.key("priority")),
        tier_by=_tier_by(rate.get("tier_by"), price["price_model"], where.key("tier_by")),
        **price,
    )


def _tier_by(raw: Any, model: str, where: y.Where) -> tuple[str, ...]:
    """Dimension keys whose values each run their own tier / package position (flexprice
    prices each group separately); only for models that read positions."""
    if raw is None:
        return ()
    if model not in ("graduated", "volume", "package"):
        where.fail(f"not used with {model} (allowed with graduated, volume, package)")
    if not isinstance(raw, list) or not raw:
        where.fail("must be a non-empty list of dimension keys")
    for i, key in enumerate(raw):
        if not isinstance(key, str) or not _DIM_KEY_RE.match(key):
            where.item(i).fail(f"invalid dimension key {key!r}")
    return tuple(raw)


def _term(rate: Mapping[str, Any], key: str, where: y.Where) -> Decimal | None:
    """A per-price monthly `minimum` / `maximum` amount (positive, in the pricebook currency)."""
    if rate.get(key) is None:
        return None
    return y.decimal(rate[key], where.key(key), positive=True)


def _parse_dimensions(raw: Any, where: y.Where) -> tuple[tuple[str, str], ...]:
    """`{gpu: h100}` -> sorted (key, canonical text value) pairs."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        where.fail("must be a mapping of dimension key to value")
    pairs = []
    for key, value in raw.items():
        if not isinstance(key, str) or not _DIM_KEY_RE.match(key):
            where.fail(f"invalid dimension key {key!r}")
        pairs.append((key, y.scalar_text(value, where.key(key))))
    return tuple(sorted(pairs))


def _parse_price(kind: str, raw: Any, where: y.Where) -> dict[str, Any]:
    """The fields of one price model."""
    if kind == "unit_price":
        return {"price_model": "per_unit", "unit_price": y.decimal(raw, where, minimum=Decimal(0))}
    if kind == "flat":
        return {"price_model": "flat", "flat": y.decimal(raw, where, minimum=Decimal(0))}
    if kind == "percentage":
        return _parse_percentage(raw, where)
    if kind == "dynamic":
        body = y.mapping(raw, where, {"amount_key"}, required={"amount_key"})
        key = body["amount_key"]
        if not isinstance(key, str) or not _DIM_KEY_RE.match(key):
            where.key("amount_key").fail(f"must be a dimension key, got {key!r}")
        return {"price_model": "dynamic", "amount_key": key}
    if kind == "markup":
        body = y.mapping(raw, where, {"vendor", "pct"}, required={"vendor", "pct"})
        vendor = y.text(body["vendor"], where.key("vendor"), pattern=_ID_RE)
        pct = y.decimal(body["pct"], where.key("pct"), minimum=Decimal(-100))
        return {"price_model": "markup", "markup": Markup(vendor, pct)}
    if kind == "package":
        pkg = y.mapping(raw, where, {"size", "price", "round"}, required={"size", "price"})
        rounding = pkg.get("round", "up")
        if rounding not in ("up", "down"):
            where.key("round").fail(f"must be up or down, got {rounding!r}")
        return {
            "price_model": "package",
            "package_size": y.decimal(pkg["size"], where.key("size"), positive=True),
            "package_price": y.decimal(pkg["price"], where.key("price"), minimum=Decimal(0)),
            "package_round": rounding,
        }
    return _parse_tiers(raw, where)


def _parse_percentage(raw: Any, where: y.Where) -> dict[str, Any]:
    """Lago's percentage charge: the usage quantity is a transaction amount (in the pricebook's
    currency) and is charged `rate` percent of it: a per-unit price of rate / 100, exact.

    With `fixed_amount`, `free_units_per_events`, `per_transaction_min` or
    `per_transaction_max` each transaction is priced on its own from `events`
    (pricing.per_event): `rate`% × amount + fixed_amount, clamped to [min, max]."""
    allowed = {"rate", *PER_EVENT_OPTIONS, *_PERCENTAGE_UNSUPPORTED}
    body = y.mapping(raw, where, allowed, required={"rate"})
    for key in sorted(set(body) & set(_PERCENTAGE_UNSUPPORTED)):
        where.key(key).fail(f"not supported: {_PERCENTAGE_UNSUPPORTED[key]}")
    rate = y.decimal(body["rate"], where.key("rate"), minimum=Decimal(0))
    if rate > 100:
        where.key("rate").fail(f"must be at most 100 (percent), got {rate}")

    def money(key: str) -> Decimal | None:
        if body.get(key) is None:
            return None
        return y.decimal(body[key], where.key(key), minimum=Decimal(0))

    low, high = money("per_transaction_min"), money("per_transaction_max")
    if low is not None and high is not None and low > high:
        where.key("per_transaction_min").fail(
            f"must not exceed per_transaction_max ({low} > {high})"
        )
    free_events = 0
    if body.get("free_units_per_events") is not None:
        free_events = y.integer(body["free_units_per_events"], where.key("free_units_per_events"))
    return {
        "price_model": "percentage",
        "unit_price": rate.scaleb(-2),
        "fixed_amount": money("fixed_amount"),
        "free_events": free_events,
        "transaction_min": low,
        "transaction_max": high,
    }


def _parse_tiers(raw: Any, where: y.Where) -> dict[str, Any]:
    """`{mode, steps}`: strictly increasing `up_to`, only the last one open (null)."""
    tiers = y.mapping(raw, where, {"mode", "steps"}, required={"mode", "steps"})
    mode = tiers["mode"]
    if mode not in ("graduated", "volume"):
        where.key("mode").fail(f"must be graduated or volume, got {mode!r}")
    raw_steps = tiers["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        where.key("steps").fail("must be a non-empty list of {up_to, unit_price}")
    steps: list[Tier] = []
    for i, raw_step in enumerate(raw_steps):
        at = where.key("steps").item(i)
        allowed = {"up_to", "unit_price", "flat_fee", "block"}
        step = y.mapping(raw_step, at, allowed, required={"unit_price"})
        if "up_to" not in step:
            at.key("up_to").fail("required (null for the last, open-ended step)")
        up_to = step["up_to"]
        last = i == len(raw_steps) - 1
        if up_to is None and not last:
            at.key("up_to").fail("only the last step may be open-ended (null)")
        if up_to is not None and last:
            at.key("up_to").fail(f"the last step must be open-ended (up_to: null), got {up_to}")
        bound = None if up_to is None else y.decimal(up_to, at.key("up_to"), positive=True)
        if bound is not None and steps and bound <= steps[-1].up_to:  # type: ignore[operator]
            at.key("up_to").fail(f"tiers must be increasing (got {bound} after {steps[-1].up_to})")
        price = y.decimal(step["unit_price"], at.key("unit_price"), minimum=Decimal(0))
        fee = y.decimal(step.get("flat_fee", 0), at.key("flat_fee"), minimum=Decimal(0))
        block = None
        if step.get("block") is not None:
            if mode != "graduated":
                at.key("block").fail("only graduated tiers bill in blocks")
            block = y.decimal(step["block"], at.key("block"), positive=True)
        steps.append(Tier(bound, price, fee, block))
    return {"price_model": mode, "tiers": tuple(steps)}


def _check_rates(rates: tuple[Rate, ...], where: y.Where) -> None:
    """No duplicate ids or selectors, and no two rates that could tie on specificity."""
    for i, a in enumerate(rates):
        for b in rates[i + 1 :]:
            if _may_tie(a, b):
                same = a.dimensions == b.dimensions
                what = "duplicates" if same else "is ambiguous with"
                where.item(b.index).fail(
                    f"{what} rates[{a.index}] ({a.selector} vs {b.selector}): usage could match "
                    "both with equal specificity"
                    + ("" if same else "; give one a higher `priority` to say which wins")
                )
    seen_ids: dict[str, int] = {}
    for rate in rates:
        if rate.rate_id in seen_ids:
            where.item(rate.index).key("id").fail(
                f"duplicate rate id {rate.rate_id!r} (also rates[{seen_ids[rate.rate_id]}])"
            )
        seen_ids[rate.rate_id] = rate.index


def _check_terms(rates: tuple[Rate, ...], currency: str, where: y.Where) -> None:
    """Per-price minimums and maximums are whole minor units of the currency (they land on the
    invoice exactly, like `minimum_commit`)."""
    places = MINOR_UNITS[currency]
    for rate in rates:
        for key, value in (("minimum", rate.minimum), ("maximum", rate.maximum)):
            if value is not None and value.as_tuple().exponent < -places:  # type: ignore[operator]
                where.item(rate.index).key(key).fail(
                    f"at most {places} decimal places in {currency}, got {value}"
                )


def _may_tie(a: Rate, b: Rate) -> bool:
    """Could one usage key match both rates with the same specificity?"""
    if a.meter_id != b.meter_id or a.model_id != b.model_id:
        return False
    if a.specificity[0] != b.specificity[0]:  # a resolved `*` markup vs an exact model
        return False
    if a.markup and b.markup and a.model_id == "*" and a.markup.vendor != b.markup.vendor:
        return False  # `*` markups of two vendors: their models are checked once resolved
    if len(a.dimensions) != len(b.dimensions):
        return False
    if a.priority != b.priority and a.dimensions != b.dimensions:
        return False  # overlapping filters on different keys: the higher priority wins
    da, db = dict(a.dimensions), dict(b.dimensions)
    return all(da[k] == db[k] for k in da.keys() & db.keys())


def _validate_set(versions: Iterable[PricebookVersion]) -> None:
    """Across files: unique keys, one currency per pricebook, distinct effective_from."""
    by_key: dict[str, PricebookVersion] = {}
    by_start: dict[tuple[str, datetime], PricebookVersion] = {}
    currency: dict[str, PricebookVersion] = {}
    for v in versions:
        where = y.Where(y.display(v.file), PricebookError)
        if v.key in by_key:
            where.key("version").fail(
                f"version {v.version!r} of {v.pricebook!r} also in {y.display(by_key[v.key].file)}"
            )
        by_key[v.key] = v
        start = (v.pricebook, v.effective_from)
        if start in by_start:
            where.key("effective_from").fail(
                f"{v.effective_from.isoformat()} is also the effective_from of "
                f"{y.display(by_start[start].file)}; each version needs its own start"
            )
        by_start[start] = v
        first = currency.setdefault(v.pricebook, v)
        if first.currency != v.currency:
            where.key("currency").fail(
                f"{v.currency} differs from {first.currency} in {y.display(first.file)}; "
                "one pricebook bills in one currency (make a new pricebook for another)"
            )
