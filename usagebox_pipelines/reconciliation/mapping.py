"""The vendor mapping (`pricebooks/vendors.yaml`): names on vendor bills -> our model × meter.

Loaded once, validated up front (a bad file fails with the file and field named, never halfway
through a load), then used as small Polars lookup frames and expressions so every mapping step
stays a join, not a Python loop per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import polars as pl
import yaml

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.schemas import VENDORS
from usagebox_pipelines.schemas import MONEY, QTY

MAPPING_FILE = "vendors.yaml"
# A model snapshot's date suffix: `-20250514` (Anthropic) or `-2024-08-06` (OpenAI).
_DATE_SUFFIX = r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$"
ROUTE_KEYS = ("model_id", "account_id", "product_id")

RATES_SCHEMA = pl.Schema(
    {
        "vendor": pl.String(),
        "model_id": pl.String(),
        "meter_id": pl.String(),
        "service_tier": pl.String(),
        "context_window": pl.String(),
        "rate_effective_from": pl.Date(),
        "rate_per": QTY,
        "unit_price": MONEY,
    }
)
# A rate block's optional key beyond vendor × model × meter: "" = every tier / window.
RATE_KEYS = ("service_tier", "context_window")


@dataclass(frozen=True)
class MeterSpec:
    """A meter on vendor bills: whether we meter it, and which metered meter drives allocation."""

    meter_id: str
    metered: bool
    allocate_by: str


@dataclass(frozen=True)
class RouteRule:
    """One routing rule: usage matching every (column, globs) pair is billed by `vendor`."""

    vendor: str
    match: tuple[tuple[str, tuple[str, ...]], ...]
    specificity: int
    order: int

    def condition(self, columns: set[str]) -> pl.Expr:
        """Polars condition for this rule (a key the frame lacks never matches)."""
        cond = pl.lit(True)
        for col, globs in self.match:
            if col not in columns:
                return pl.lit(False)
            any_glob = pl.any_horizontal([_glob_expr(pl.col(col), g) for g in globs])
            cond = cond & any_glob.fill_null(False)
        return cond


@dataclass(frozen=True)
class VendorSpec:
    """Per-vendor names: model aliases and line-item / token-type / usage-type vocabularies."""

    vendor: str
    provider: str
    currency: str
    model_aliases: dict[str, str] = field(default_factory=dict)
    line_item_kinds: dict[str, str] = field(default_factory=dict)
    usage_fields: dict[str, str] = field(default_factory=dict)
    token_types: dict[str, str] = field(default_factory=dict)
    usage_type_columns: tuple[str, ...] = ()
    model_name_columns: tuple[str, ...] = ()
    model_tokens: tuple[tuple[str, str], ...] = ()
    meter_patterns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Tolerances:
    """Reconciliation defaults: quantity % of vendor qty; amount absolute and % of billed."""

    quantity_pct: Decimal
    amount: Decimal
    amount_pct: Decimal


@dataclass(frozen=True)
class VendorMapping:
    """The validated contents of `vendors.yaml`."""

    version: str
    source: Path
    models: tuple[str, ...]
    meters: dict[str, MeterSpec]
    routing: tuple[RouteRule, ...]
    tolerances: Tolerances
    vendors: dict[str, VendorSpec]
    rates: pl.DataFrame

    @property
    def metered_meters(self) -> list[str]:
        """Meters we meter ourselves (reconciled against usage_hourly)."""
        return [m.meter_id for m in self.meters.values() if m.metered]

    def vendor(self, name: str) -> VendorSpec:
        if name not in self.vendors:
            raise UsageboxError(f"{self.source}: vendors.{name}: not configured")
        return self.vendors[name]

    def alias_frame(self, vendor: str) -> pl.DataFrame:
        """(vendor_model, model_id) lookup for one vendor; each model_id maps to itself too."""
        spec = self.vendor(vendor)
        pairs = {m: m for m in self.models} | spec.model_aliases
        return pl.DataFrame(
            {"vendor_model": list(pairs), "model_id": list(pairs.values())},
            schema={"vendor_model": pl.String(), "model_id": pl.String()},
        )

    def with_model_ids(self, frame: pl.DataFrame, vendor: str) -> pl.DataFrame:
        """`frame` with `model_id` for its `vendor_model`: an alias, else the model the id
        names once its date suffix is cut (`claude-sonnet-4-20250514`, `gpt-4o-2024-08-06`),
        so a new dated snapshot of a known model needs no YAML change."""
        aliases = self.alias_frame(vendor)
        undated = pl.col("vendor_model").str.replace(_DATE_SUFFIX, "")
        return (
            frame.with_columns(_undated=undated)
            .join(aliases, on="vendor_model", how="left")
            .join(
                aliases.rename({"vendor_model": "_undated", "model_id": "_undated_model"}),
                on="_undated",
                how="left",
            )
            .with_columns(model_id=pl.coalesce("model_id", "_undated_model"))
            .drop("_undated", "_undated_model")
        )

    def lookup_frame(self, names: dict[str, str], key: str) -> pl.DataFrame:
        """(key, meter_id) lookup from a name -> meter dict."""
        return pl.DataFrame(
            {key: list(names), "meter_id": list(names.values())},
            schema={key: pl.String(), "meter_id": pl.String()},
        )

    def driver_frame(self) -> pl.DataFrame:
        """(meter_id, driver_meter): which metered quantity allocates each vendor meter."""
        return pl.DataFrame(
            {
                "meter_id": [m.meter_id for m in self.meters.values()],
                "driver_meter": [m.allocate_by for m in self.meters.values()],
            },
            schema={"meter_id": pl.String(), "driver_meter": pl.String()},
        )

    def route_expr(self, columns: set[str]) -> pl.Expr:
        """Vendor for each usage row: the most specific matching rule, else null."""
        rules = sorted(self.routing, key=lambda r: (-r.specificity, r.order))
        if not rules:
            return pl.lit(None, dtype=pl.String())
        chain: Any = pl.when(rules[0].condition(columns)).then(pl.lit(rules[0].vendor))
        for rule in rules[1:]:
            chain = chain.when(rule.condition(columns)).then(pl.lit(rule.vendor))
        return chain.otherwise(pl.lit(None, dtype=pl.String()))

    def with_rates(self, df: pl.DataFrame) -> pl.DataFrame:
        """Attach the vendor's standard list rate (no tier, no context window) in effect on
        each row's `date` (as-of join)."""
        return self._as_of(df, pl.lit(""), pl.lit("")).drop("_tier", "_window")

    def with_line_rates(self, df: pl.DataFrame) -> pl.DataFrame:
        """Attach the list rate of each vendor line's own `service_tier` and `context_window`
        (batch, priority, long context), falling back to the tier alone, the window alone,
        then the standard rate: `unit_price`, `rate_per`."""
        tier = pl.col("service_tier").fill_null("")
        window = pl.col("context_window").fill_null("")
        out = df.with_row_index("_line")
        tries = [(tier, window), (tier, pl.lit("")), (pl.lit(""), window), (pl.lit(""), pl.lit(""))]
        found = [self._as_of(out, t, w).select("_line", "unit_price", "rate_per") for t, w in tries]
        price = pl.coalesce([pl.col(f"unit_price_{i}") for i in range(len(found))])
        per = pl.coalesce([pl.col(f"rate_per_{i}") for i in range(len(found))])
        for i, rated in enumerate(found):
            out = out.join(
                rated.rename({"unit_price": f"unit_price_{i}", "rate_per": f"rate_per_{i}"}),
                on="_line",
            )
        extra = [f"{c}_{i}" for i in range(len(found)) for c in ("unit_price", "rate_per")]
        return out.with_columns(unit_price=price, rate_per=per).drop("_line", *extra)

    def _as_of(self, df: pl.DataFrame, tier: pl.Expr, window: pl.Expr) -> pl.DataFrame:
        keys = ["vendor", "model_id", "meter_id", "_tier", "_window"]
        rates = self.rates.with_columns(
            _tier=pl.col("service_tier").fill_null(""),
            _window=pl.col("context_window").fill_null(""),
        ).select(*keys, "rate_effective_from", "rate_per", "unit_price")
        left = df.with_columns(_tier=tier, _window=window).with_row_index("_ord").sort("date")
        joined = left.join_asof(
            rates.sort("rate_effective_from"),
            left_on="date",
            right_on="rate_effective_from",
            by=keys,
            strategy="backward",
            check_sortedness=False,
        )
        return joined.sort("_ord").drop("_ord")


def load_vendor_mapping(pricebooks_dir: Path) -> VendorMapping:
    """Read and validate `<pricebooks_dir>/vendors.yaml` (errors name the file and field)."""
    path = Path(pricebooks_dir) / MAPPING_FILE
    if not path.is_file():
        raise UsageboxError(f"{path}: vendor mapping file not found")
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise UsageboxError(f"{path}: not valid YAML: {exc}") from exc
    return _parse(doc, path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a second alias block must not win silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _parse(doc: Any, path: Path) -> VendorMapping:
    """Build the mapping from the YAML document, checking every cross-reference."""
    ctx = _Ctx(path)
    root = ctx.mapping(doc, "")
    version = ctx.text(root.get("version"), "version")
    models = tuple(ctx.text(m, f"models[{i}]") for i, m in enumerate(ctx.seq(root, "models")))
    meters = _parse_meters(ctx, ctx.mapping(root.get("meters"), "meters"))
    vendors = {
        name: _parse_vendor(ctx, name, spec, set(models), set(meters))
        for name, spec in ctx.mapping(root.get("vendors"), "vendors").items()
    }
    for name in vendors:
        if name not in VENDORS:
            ctx.fail(f"vendors.{name}", f"unknown vendor (expected one of {', '.join(VENDORS)})")
    routing = _parse_routing(ctx, ctx.seq(root, "routing"), vendors)
    tol = ctx.mapping(root.get("tolerances") or {}, "tolerances")
    tolerances = Tolerances(
        quantity_pct=ctx.decimal(tol.get("quantity_pct", "0.5"), "tolerances.quantity_pct"),
        amount=ctx.decimal(tol.get("amount", "0.01"), "tolerances.amount"),
        amount_pct=ctx.decimal(tol.get("amount_pct", "0.1"), "tolerances.amount_pct"),
    )
    rates = _parse_rates(ctx, ctx.seq(root, "rates"), vendors, set(models), set(meters))
    return VendorMapping(version, path, models, meters, routing, tolerances, vendors, rates)


def _parse_meters(ctx: _Ctx, raw: dict) -> dict[str, MeterSpec]:
    meters: dict[str, MeterSpec] = {}
    for name, spec in raw.items():
        spec = ctx.mapping(spec or {}, f"meters.{name}")
        metered = bool(spec.get("metered", True))
        driver = str(spec.get("allocate_by", name))
        meters[str(name)] = MeterSpec(str(name), metered, driver)
    for m in meters.values():
        target = meters.get(m.allocate_by)
        if target is None or not target.metered:
            ctx.fail(
                f"meters.{m.meter_id}.allocate_by", f"{m.allocate_by!r} is not a metered meter"
            )
    if not meters:
        ctx.fail("meters", "at least one meter is required")
    return meters


def _parse_vendor(ctx: _Ctx, name: str, raw: Any, models: set[str], meters: set[str]):
    at = f"vendors.{name}"
    spec = ctx.mapping(raw, at)
    aliases: dict[str, str] = {}
    for model, names in ctx.mapping(spec.get("model_aliases") or {}, f"{at}.model_aliases").items():
        ctx.member(model, models, f"{at}.model_aliases.{model}", "models")
        for alias in _as_list(names):
            aliases[str(alias)] = str(model)
    tokens = []
    for model, names in ctx.mapping(spec.get("model_tokens") or {}, f"{at}.model_tokens").items():
        ctx.member(model, models, f"{at}.model_tokens.{model}", "models")
        tokens += [(str(t), str(model)) for t in _as_list(names)]
    tokens.sort(key=lambda t: (-len(t[0]), t[0].lower()))
    patterns = []
    for i, item in enumerate(spec.get("meter_patterns") or []):
        item = ctx.mapping(item, f"{at}.meter_patterns[{i}]")
        pattern = ctx.text(item.get("pattern"), f"{at}.meter_patterns[{i}].pattern")
        try:
            re.compile(pattern)
        except re.error as exc:
            ctx.fail(f"{at}.meter_patterns[{i}].pattern", f"bad regex: {exc}")
        meter = ctx.text(item.get("meter_id"), f"{at}.meter_patterns[{i}].meter_id")
        ctx.member(meter, meters, f"{at}.meter_patterns[{i}].meter_id", "meters")
        patterns.append((pattern, meter))
    vocab = {}
    for key in ("line_item_kinds", "usage_fields", "token_types"):
        names = ctx.mapping(spec.get(key) or {}, f"{at}.{key}")
        for k, meter in names.items():
            ctx.member(meter, meters, f"{at}.{key}.{k}", "meters")
        vocab[key] = {str(k): str(v) for k, v in names.items()}
    currency = ctx.text(spec.get("currency", "USD"), f"{at}.currency").upper()
    return VendorSpec(
        vendor=name,
        provider=str(spec.get("provider", name)),
        currency=currency,
        model_aliases=aliases,
        usage_type_columns=tuple(str(c) for c in spec.get("usage_type_columns") or ()),
        model_name_columns=tuple(str(c) for c in spec.get("model_name_columns") or ()),
        model_tokens=tuple(tokens),
        meter_patterns=tuple(patterns),
        **vocab,
    )


def _parse_routing(ctx: _Ctx, raw: list, vendors: dict) -> tuple[RouteRule, ...]:
    rules = []
    for i, item in enumerate(raw):
        at = f"routing[{i}]"
        item = ctx.mapping(item, at)
        vendor = ctx.text(item.get("vendor"), f"{at}.vendor")
        ctx.member(vendor, set(vendors), f"{at}.vendor", "vendors")
        unknown = set(item) - {"vendor", *ROUTE_KEYS}
        if unknown:
            ctx.fail(f"{at}.{sorted(unknown)[0]}", f"unknown key (use {', '.join(ROUTE_KEYS)})")
        match = tuple(
            (key, tuple(str(g) for g in _as_list(item[key]))) for key in ROUTE_KEYS if key in item
        )
        if not match:
            ctx.fail(at, f"a rule needs at least one of {', '.join(ROUTE_KEYS)}")
        score = sum(1 if any(c in g for g in globs for c in "*?") else 2 for _, globs in match)
        rules.append(RouteRule(vendor, match, score, i))
    return tuple(rules)


def _parse_rates(ctx: _Ctx, raw: list, vendors: dict, models: set, meters: set) -> pl.DataFrame:
    rows = []
    for i, block in enumerate(raw):
        at = f"rates[{i}]"
        block = ctx.mapping(block, at)
        vendor = ctx.text(block.get("vendor"), f"{at}.vendor")
        ctx.member(vendor, set(vendors), f"{at}.vendor", "vendors")
        eff = ctx.day(block.get("effective_from"), f"{at}.effective_from")
        per = ctx.decimal(block.get("per", 1), f"{at}.per")
        if per <= 0:
            ctx.fail(f"{at}.per", "must be positive")
        unknown = set(block) - {"vendor", "effective_from", "per", "prices", *RATE_KEYS}
        if unknown:
            ctx.fail(
                f"{at}.{sorted(unknown)[0]}", f"unknown key (rate keys: {', '.join(RATE_KEYS)})"
            )
        tier, window = (str(block[k]) if block.get(k) is not None else None for k in RATE_KEYS)
        for model, prices in ctx.mapping(block.get("prices"), f"{at}.prices").items():
            ctx.member(model, models, f"{at}.prices.{model}", "models")
            for meter, price in ctx.mapping(prices, f"{at}.prices.{model}").items():
                ctx.member(meter, meters, f"{at}.prices.{model}.{meter}", "meters")
                value = ctx.decimal(price, f"{at}.prices.{model}.{meter}")
                rows.append((vendor, str(model), str(meter), tier, window, eff, per, value))
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in RATES_SCHEMA]
    return pl.DataFrame(dict(zip(RATES_SCHEMA.names(), cols, strict=True)), schema=RATES_SCHEMA)


class _Ctx:
    """Validation helpers that raise UsageboxError naming the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, at: str, problem: str) -> NoReturn:
        raise UsageboxError(f"{self.path}: {at or '(top level)'}: {problem}")

    def mapping(self, value: Any, at: str) -> dict:
        if not isinstance(value, dict):
            self.fail(at, "expected a mapping")
        return value

    def seq(self, parent: dict, key: str) -> list:
        value = parent.get(key)
        if not isinstance(value, list):
            self.fail(key, "expected a list")
        return value

    def text(self, value: Any, at: str) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            self.fail(at, "required")
        return str(value)

    def member(self, value: Any, allowed: set, at: str, where: str) -> None:
        if str(value) not in allowed:
            self.fail(at, f"{value!r} is not listed under `{where}`")

    def decimal(self, value: Any, at: str) -> Decimal:
        if isinstance(value, float):
            self.fail(at, f"write money as a quoted decimal string, not the float {value!r}")
        try:
            return Decimal(str(value))
        except (InvalidOperation, ValueError):
            self.fail(at, f"not a decimal: {value!r}")
            raise  # unreachable, for type checkers

    def day(self, value: Any, at: str) -> date:
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(at, f"not a date (YYYY-MM-DD): {value!r}")
            raise


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _glob_expr(col: pl.Expr, glob: str) -> pl.Expr:
    """Exact equality for plain values, an anchored regex for `*` / `?` globs."""
    if not any(c in glob for c in "*?"):
        return col == glob
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob]
    return col.str.contains("^" + "".join(parts) + "$")
