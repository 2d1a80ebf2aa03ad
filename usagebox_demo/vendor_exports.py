"""Demo vendor exports in the real formats, derived from the demo's own metered usage.

The vendors' "truth" is our metered usage per vendor × day × model × meter at the list rates of
`vendors.yaml`, with deliberate discrepancies planted so the reconciliation has something to find:

* a day of usage we never metered (OpenAI, the busiest model: one extra average day of input and
  output tokens) -> `under_metered`;
* a vendor price rise the mapping missed (Anthropic, busiest model's output tokens, +20% from a
  day in the second half of the month) -> `rate_mismatch` on each day from then;
* a promotional credit, a tax line and a correction of last month on the FOCUS (Bedrock) export;
* a restated day: the first Anthropic cost export understates one day by 10%, a later export
  restates it -> the loader supersedes the old rows (change log) and the day reconciles.

Writes OpenAI Costs + Usage pages (7 daily buckets per page, `has_more`/`next_page` chained),
Anthropic cost_report + usage_report pages, and one FOCUS 1.2 CSV. Money is written from exact
decimals: OpenAI `amount.value` as a JSON number literal, Anthropic `amount` as a cents string.

Over 400 lines on purpose: the three vendor formats are written from the same planted truth.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl

from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.reconciliation.reconcile import metered_daily, period_days
from usagebox_pipelines.schemas import MONEY, QTY

PAGE_DAYS = 7
_NUM = re.compile(r'"__num__(-?[0-9.]+)"')
_BEDROCK_SUFFIX = {
    "input_tokens": "input-tokens",
    "output_tokens": "output-tokens",
    "cached_input_tokens": "cache-read-input-token-count",
    "cache_write_5m_tokens": "cache-write-input-token-count",
    "cache_write_1h_tokens": "cache-write-input-token-count-1-hour",
}
_FOCUS_COLUMNS = [
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "ServiceName",
    "ServiceCategory",
    "RegionId",
    "SubAccountId",
    "SkuId",
    "SkuMeter",
    "x_ServiceCode",
]


def write_vendor_exports(
    usage_hourly: pl.DataFrame, out_dir: Path, period: str, mapping: VendorMapping, seed: int
) -> dict:
    """Write the month's vendor exports under `out_dir/<vendor>/`; return what was planted.

    Returns `{"period", "files": {vendor: [paths]}, "discrepancies": [...]}`; each discrepancy
    has kind, vendor, date, model_id, meter_id, expected_status and expected_amount (the
    reconciliation's `amount_variance`, or the billed amount for credit/tax/correction, or the
    restated delta for the restated day).
    """
    rng = random.Random(seed)
    start, end = period_days(period)
    truth = _truth(usage_hourly, mapping, start, end)
    truth, planted = _plant(truth, mapping, rng, start, end)
    first = datetime.combine(end, datetime.min.time(), UTC) + timedelta(hours=6)
    out_dir = Path(out_dir)
    files: dict[str, list[str]] = {"openai": [], "anthropic": [], "focus": []}
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    rows = truth.filter(pl.col("vendor") == "openai")
    files["openai"] += _write_openai(rows, mapping, days, out_dir / "openai", first)
    rows = truth.filter(pl.col("vendor") == "anthropic")
    files["anthropic"] += _write_anthropic(rows, mapping, days, out_dir / "anthropic", first)
    restate = [d for d in planted if d["kind"] == "restated_day"]
    if restate:
        day = date.fromisoformat(restate[0]["date"])
        files["anthropic"] += _write_pages(
            out_dir / "anthropic",
            f"cost_report_{_stamp(first + timedelta(days=4))}",
            _anthropic_cost_buckets(rows.filter(pl.col("date") == day), mapping, [day]),
            anthropic=True,
        )
    rows = truth.filter(pl.col("vendor") == "focus")
    focus_file = out_dir / "focus" / f"focus_bedrock_{period}_{_stamp(first)}.csv"
    files["focus"].append(_write_focus(rows, mapping, start, end, focus_file, planted))
    return {"period": period, "files": files, "discrepancies": planted}


# --------------------------------------------------------------------------- truth + plants


def _truth(usage_hourly, mapping: VendorMapping, start: date, end: date) -> pl.DataFrame:
    """Metered usage per vendor grain, billed at the list rate: what an honest vendor reports."""
    metered = metered_daily(usage_hourly, mapping).filter(
        (pl.col("date") >= start) & (pl.col("date") < end)
    )
    priced = mapping.with_rates(metered).filter(pl.col("unit_price").is_not_null())
    return priced.with_columns(
        billed_qty=pl.col("quantity"), billed_rate=pl.col("unit_price")
    ).with_columns(amount=_amount(pl.col("billed_qty"), pl.col("billed_rate")))


def _amount(qty: pl.Expr, rate: pl.Expr) -> pl.Expr:
    return (qty * rate / pl.lit(Decimal(1_000_000), dtype=QTY)).cast(MONEY)


def _busiest(truth: pl.DataFrame, vendor: str, meter: str, skip: str | None = None) -> str | None:
    rows = truth.filter(
        (pl.col("vendor") == vendor)
        & (pl.col("meter_id") == meter)
        & pl.col("model_id").ne_missing(pl.lit(skip, dtype=pl.String))
    )
    if rows.is_empty():
        return None
    top = rows.group_by("model_id").agg(q=pl.col("quantity").sum()).sort(["q", "model_id"])
    return top["model_id"][-1]


def _plant(truth: pl.DataFrame, mapping: VendorMapping, rng, start: date, end: date):
    """Apply the deliberate discrepancies; return (vendor truth, planted list)."""
    planted: list[dict] = []
    truth = truth.with_columns(first_amount=pl.col("amount"))
    truth = _plant_unmetered_day(truth, rng, start, planted)
    truth = _plant_rate_rise(truth, mapping, rng, start, planted)
    truth = _plant_restatement(truth, rng, start, planted)
    descriptions = {
        "credit": "Promotional credit",
        "tax": "Sales tax",
        "correction": "Correction of prior period usage",
    }
    for kind, day, amount in _other_charges(truth, start):
        planted.append(_plant_row(kind, "focus", day, None, None, kind, amount, descriptions[kind]))
    return truth, planted


def _other_charges(truth: pl.DataFrame, start: date) -> list[tuple[str, date, Decimal]]:
    """Credit (10%), tax (7.25%) and a prior-month correction sized to the FOCUS bill."""
    billed = sum(truth.filter(pl.col("vendor") == "focus")["amount"].to_list(), Decimal(0))
    cent = Decimal("0.01")

    def share(pct: str, fallback: str) -> Decimal:
        value = (billed * Decimal(pct)).quantize(cent)
        return max(value, cent) if billed else Decimal(fallback)

    return [
        ("credit", start + timedelta(days=14), -share("0.10", "25.00")),
        ("tax", start, share("0.0725", "1.75")),
        ("correction", start - timedelta(days=1), -share("0.015", "0.42")),
    ]


def _plant_row(kind, vendor, day, model, meter, status, amount, detail) -> dict:
    return {
        "kind": kind,
        "vendor": vendor,
        "date": day.isoformat(),
        "model_id": model,
        "meter_id": meter,
        "expected_status": status,
        "expected_amount": amount,
        "detail": detail,
    }


def _plant_unmetered_day(truth: pl.DataFrame, rng, start: date, planted: list) -> pl.DataFrame:
    """Vendor usage on one day exceeds ours by an average day (a day we failed to meter)."""
    model = _busiest(truth, "openai", "output_tokens")
    if model is None:
        return truth
    rows = truth.filter((pl.col("vendor") == "openai") & (pl.col("model_id") == model))
    days = sorted(set(rows["date"].to_list()))
    if not days:
        return truth
    quarter = len(days) // 4
    day = days[rng.randrange(quarter, max(quarter + 1, len(days) // 2))]
    for meter in ("input_tokens", "output_tokens"):
        sel = rows.filter(pl.col("meter_id") == meter)
        if sel.is_empty() or day not in sel["date"].to_list():
            continue
        extra = (sum(sel["quantity"].to_list(), Decimal(0)) / sel.height).to_integral_value()
        rate = sel["unit_price"][0]
        hit = _at("openai", day, model, meter)
        truth = truth.with_columns(
            billed_qty=pl.when(hit).then(pl.col("billed_qty") + extra).otherwise("billed_qty")
        )
        amount = (extra * rate / Decimal(1_000_000)).quantize(Decimal("1e-12"))
        detail = f"{extra} {meter} the vendor served that we never metered"
        planted.append(
            _plant_row(
                "unmetered_usage", "openai", day, model, meter, "under_metered", amount, detail
            )
        )
    return _reprice(truth)


def _plant_rate_rise(
    truth: pl.DataFrame, mapping: VendorMapping, rng, start: date, planted: list
) -> pl.DataFrame:
    """The vendor bills output tokens of one model 20% above the mapping's rate from a day on."""
    model = _busiest(truth, "anthropic", "output_tokens")
    if model is None:
        return truth
    since = start + timedelta(days=rng.randrange(17, 23))
    hit = (
        (pl.col("vendor") == "anthropic")
        & (pl.col("model_id") == model)
        & (pl.col("meter_id") == "output_tokens")
        & (pl.col("date") >= since)
    )
    truth = _reprice(
        truth.with_columns(
            billed_rate=pl.when(hit)
            .then(pl.col("unit_price") * pl.lit(Decimal("1.2"), dtype=QTY))
            .otherwise("billed_rate")
        )
    )
    tol = mapping.tolerances
    for row in truth.filter(hit).sort("date").iter_rows(named=True):
        delta = row["amount"] - row["quantity"] * row["unit_price"] / Decimal(1_000_000)
        allowed = max(tol.amount, abs(row["amount"]) * tol.amount_pct / 100)
        status = "rate_mismatch" if abs(delta) > allowed else "matched"
        vendor_rate, our_rate = row["billed_rate"].normalize(), row["unit_price"].normalize()
        planted.append(
            _plant_row(
                "missed_rate_change",
                "anthropic",
                row["date"],
                model,
                "output_tokens",
                status,
                delta.quantize(Decimal("1e-12")),
                f"vendor output rate {vendor_rate} vs mapping {our_rate}",
            )
        )
    return truth


def _plant_restatement(truth: pl.DataFrame, rng, start: date, planted: list) -> pl.DataFrame:
    """The first cost export understates one Anthropic day by 10%; a later one restates it."""
    rate_model = next((p["model_id"] for p in planted if p["kind"] == "missed_rate_change"), None)
    model = _busiest(truth, "anthropic", "input_tokens", skip=rate_model) or rate_model
    if model is None:
        return truth
    rows = truth.filter((pl.col("vendor") == "anthropic") & (pl.col("model_id") == model))
    days = sorted(set(rows["date"].to_list()))
    if not days:
        return truth
    day = days[rng.randrange(0, min(len(days), 10))]
    hit = (
        (pl.col("vendor") == "anthropic") & (pl.col("model_id") == model) & (pl.col("date") == day)
    )
    truth = truth.with_columns(
        first_amount=pl.when(hit)
        .then((pl.col("amount") * pl.lit(Decimal("0.9"), dtype=QTY)).cast(MONEY))
        .otherwise("amount")
    )
    delta = sum(
        (r["amount"] - r["first_amount"] for r in truth.filter(hit).iter_rows(named=True)),
        Decimal(0),
    )
    planted.append(
        _plant_row(
            "restated_day",
            "anthropic",
            day,
            model,
            None,
            "matched",
            delta,
            "first cost export understated the day by 10%; a later export restates it",
        )
    )
    return truth


def _at(vendor: str, day: date, model: str, meter: str) -> pl.Expr:
    return (
        (pl.col("vendor") == vendor)
        & (pl.col("date") == day)
        & (pl.col("model_id") == model)
        & (pl.col("meter_id") == meter)
    )


def _reprice(truth: pl.DataFrame) -> pl.DataFrame:
    """Recompute billed amounts after a quantity/rate plant (first_amount follows)."""
    amount = _amount(pl.col("billed_qty"), pl.col("billed_rate"))
    return truth.with_columns(amount=amount, first_amount=amount)


# --------------------------------------------------------------------------- writers


def _stamp(ts: datetime) -> str:
    return ts.strftime("%Y%m%dT%H%M%SZ")


def _num(value: Decimal) -> str:
    """A placeholder that becomes a bare JSON number literal with these exact digits."""
    text = format(value.normalize(), "f")
    return f"__num__{text}"


def _dumps(page: dict) -> str:
    return _NUM.sub(r"\1", json.dumps(page, indent=1))


def _vendor_model(mapping: VendorMapping, vendor: str, model: str) -> str:
    """The vendor's name for our model: its newest listed alias (OpenAI), first (Anthropic)."""
    names = [a for a, m in mapping.vendor(vendor).model_aliases.items() if m == model]
    if not names:
        return model
    return names[-1] if vendor == "openai" else names[0]


def _reverse(vocab: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, meter in vocab.items():
        out.setdefault(meter, name)
    return out


def _write_pages(folder: Path, stem: str, buckets: list[dict], anthropic: bool) -> list[str]:
    """Chunk daily buckets into pages of PAGE_DAYS with has_more / next_page, one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [buckets[i : i + PAGE_DAYS] for i in range(0, len(buckets), PAGE_DAYS)] or [[]]
    paths = []
    for i, chunk in enumerate(chunks):
        more = i + 1 < len(chunks)
        cursor = None
        if more:
            nxt = chunks[i + 1][0]["starting_at" if anthropic else "start_time"]
            cursor = "page_" + base64.b64encode(str(nxt).encode()).decode()
        page = {"data": chunk, "has_more": more, "next_page": cursor}
        if not anthropic:
            page = {"object": "page"} | page
        path = folder / f"{stem}_page{i + 1}.json"
        path.write_text(_dumps(page), encoding="utf-8")
        paths.append(str(path))
    return paths


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time(), UTC)
    return start, start + timedelta(days=1)


def _write_openai(rows, mapping, days, folder: Path, stamp_at: datetime) -> list[str]:
    kinds = _reverse(mapping.vendor("openai").line_item_kinds)
    costs, usage = [], []
    for day in days:
        lo, hi = _day_bounds(day)
        sel = rows.filter(pl.col("date") == day).sort("model_id", "meter_id")
        bucket = {
            "object": "bucket",
            "start_time": int(lo.timestamp()),
            "end_time": int(hi.timestamp()),
        }
        results = [
            {
                "object": "organization.costs.result",
                "amount": {"value": _num(r["amount"]), "currency": "usd"},
                "line_item": f"{_vendor_model(mapping, 'openai', r['model_id'])}, "
                f"{kinds[r['meter_id']]}",
                "project_id": None,
            }
            for r in sel.iter_rows(named=True)
            if r["meter_id"] in kinds
        ]
        costs.append(bucket | {"results": results})
        usage.append(bucket | {"results": _openai_usage_results(sel, mapping)})
    stamp = _stamp(stamp_at)
    return _write_pages(folder, f"costs_{stamp}", costs, anthropic=False) + _write_pages(
        folder, f"usage_completions_{stamp}", usage, anthropic=False
    )


def _openai_usage_results(sel: pl.DataFrame, mapping: VendorMapping) -> list[dict]:
    """One completions result per model: input_tokens INCLUDE the cached ones (OpenAI's way)."""
    out = []
    for model in sorted(set(sel["model_id"].to_list())):
        q = {
            r["meter_id"]: int(r["billed_qty"])
            for r in sel.filter(pl.col("model_id") == model).iter_rows(named=True)
        }
        cached = q.get("cached_input_tokens", 0)
        out.append(
            {
                "object": "organization.usage.completions.result",
                "input_tokens": q.get("input_tokens", 0) + cached,
                "output_tokens": q.get("output_tokens", 0),
                "input_cached_tokens": cached,
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": max(1, q.get("output_tokens", 0) // 400),
                "project_id": None,
                "user_id": None,
                "api_key_id": None,
                "model": _vendor_model(mapping, "openai", model),
                "batch": None,
            }
        )
    return out


def _write_anthropic(rows, mapping, days, folder: Path, stamp_at: datetime) -> list[str]:
    stamp = _stamp(stamp_at)
    costs = _anthropic_cost_buckets(rows, mapping, days, first=True)
    usage = []
    for day in days:
        lo, hi = _day_bounds(day)
        sel = rows.filter(pl.col("date") == day)
        usage.append(
            {
                "starting_at": lo.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ending_at": hi.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "results": _anthropic_usage_results(sel, mapping),
            }
        )
    return _write_pages(folder, f"cost_report_{stamp}", costs, anthropic=True) + _write_pages(
        folder, f"usage_report_{stamp}", usage, anthropic=True
    )


def _anthropic_cost_buckets(rows, mapping, days, first: bool = False) -> list[dict]:
    """cost_report buckets grouped by description; `amount` is a cents decimal string."""
    token_types = _reverse(mapping.vendor("anthropic").token_types)
    buckets = []
    for day in days:
        lo, hi = _day_bounds(day)
        sel = rows.filter(pl.col("date") == day).sort("model_id", "meter_id")
        results = []
        for r in sel.iter_rows(named=True):
            amount = r["first_amount"] if first else r["amount"]
            token_type = token_types[r["meter_id"]]
            results.append(
                {
                    "currency": "USD",
                    "amount": format((amount * 100).normalize(), "f"),
                    "workspace_id": None,
                    "description": f"{r['model_id']} Usage - {token_type}",
                    "cost_type": "tokens",
                    "context_window": "0-200k",
                    "model": _vendor_model(mapping, "anthropic", r["model_id"]),
                    "service_tier": "standard",
                    "token_type": token_type,
                }
            )
        buckets.append(
            {
                "starting_at": lo.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ending_at": hi.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "results": results,
            }
        )
    return buckets


def _anthropic_usage_results(sel: pl.DataFrame, mapping: VendorMapping) -> list[dict]:
    out = []
    for model in sorted(set(sel["model_id"].to_list())):
        q = {
            r["meter_id"]: int(r["billed_qty"])
            for r in sel.filter(pl.col("model_id") == model).iter_rows(named=True)
        }
        out.append(
            {
                "api_key_id": None,
                "workspace_id": None,
                "model": _vendor_model(mapping, "anthropic", model),
                "service_tier": "standard",
                "context_window": "0-200k",
                "uncached_input_tokens": q.get("input_tokens", 0),
                "cache_creation": {
                    "ephemeral_1h_input_tokens": q.get("cache_write_1h_tokens", 0),
                    "ephemeral_5m_input_tokens": q.get("cache_write_5m_tokens", 0),
                },
                "cache_read_input_tokens": q.get("cached_input_tokens", 0),
                "output_tokens": q.get("output_tokens", 0),
                "server_tool_use": {"web_search_requests": 0},
            }
        )
    return out


def _bedrock_token(mapping: VendorMapping, model: str) -> str:
    """The shortest model token without spaces (e.g. `Claude3.5Haiku`) for a usage type."""
    names = [t for t, m in mapping.vendor("focus").model_tokens if m == model and " " not in t]
    return min(names, key=len) if names else model


def _write_focus(rows, mapping, start: date, end: date, path: Path, planted: list) -> str:
    """A FOCUS 1.2 (AWS Bedrock) CSV: daily usage per token type, credit, tax, correction."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    period_lo = datetime.combine(start, datetime.min.time(), UTC)
    period_hi = datetime.combine(end, datetime.min.time(), UTC)
    base = {
        "BillingAccountId": "111122223333",
        "BillingCurrency": "USD",
        "BillingPeriodStart": period_lo.strftime(fmt),
        "BillingPeriodEnd": period_hi.strftime(fmt),
        "ProviderName": "AWS",
        "InvoiceIssuerName": "Amazon Web Services, Inc.",
        "ServiceName": "Amazon Bedrock",
        "ServiceCategory": "AI and Machine Learning",
        "SubAccountId": "444455556666",
        "x_ServiceCode": "AmazonBedrock",
    }
    lines = []
    for r in rows.sort("date", "model_id", "meter_id").iter_rows(named=True):
        lo, hi = _day_bounds(r["date"])
        usage_type = (
            f"USE1-{_bedrock_token(mapping, r['model_id'])}-{_BEDROCK_SUFFIX[r['meter_id']]}"
        )
        per_k = r["billed_rate"] / 1000
        lines.append(
            base
            | {
                "ChargePeriodStart": lo.strftime(fmt),
                "ChargePeriodEnd": hi.strftime(fmt),
                "ChargeCategory": "Usage",
                "ChargeDescription": f"{r['model_id']} {r['meter_id']} on Amazon Bedrock",
                "ChargeFrequency": "Usage-Based",
                "BilledCost": _plain(r["amount"]),
                "EffectiveCost": _plain(r["amount"]),
                "ListCost": _plain(r["amount"]),
                "ListUnitPrice": _plain(per_k),
                "PricingQuantity": _plain(r["billed_qty"] / 1000),
                "PricingUnit": "1K tokens",
                "ConsumedQuantity": _plain(r["billed_qty"]),
                "ConsumedUnit": "Tokens",
                "PublisherName": "Anthropic",
                "RegionId": "us-east-1",
                "SkuId": usage_type,
                "SkuMeter": usage_type,
            }
        )
    for p in (p for p in planted if p["vendor"] == "focus"):
        lines.append(_focus_other_line(base, p, fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_FOCUS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return str(path)


def _focus_other_line(base: dict, planted: dict, fmt: str) -> dict:
    """A Credit, Tax or Correction (of last month's usage) FOCUS line."""
    day = date.fromisoformat(planted["date"])
    lo, hi = _day_bounds(day)
    amount = _plain(planted["expected_amount"])
    category = {"credit": "Credit", "tax": "Tax", "correction": "Usage"}[planted["kind"]]
    line = base | {
        "ChargePeriodStart": lo.strftime(fmt),
        "ChargePeriodEnd": hi.strftime(fmt),
        "ChargeCategory": category,
        "ChargeDescription": planted["detail"],
        "ChargeFrequency": "One-Time",
        "BilledCost": amount,
        "EffectiveCost": amount,
        "ListCost": "0",
        "PublisherName": "AWS",
    }
    if planted["kind"] == "correction":
        line["ChargeClass"] = "Correction"
    return line


def _plain(value: Decimal) -> str:
    """FOCUS numeric format: plain decimal, no exponent, no trailing zeros."""
    text = format(Decimal(value).normalize(), "f")
    return text
