"""Vendor bill/usage export loaders -> `vendor_costs` rows (plus a review list), and restatements.

Formats (see /work/shared/vendor-formats.md): OpenAI Administration API pages (Costs: dollars as
JSON numbers; Usage completions: input_tokens INCLUDE input_cached_tokens), Anthropic Admin API
pages (cost_report: decimal-string CENTS; usage_report messages: uncached / cache read / cache
write / output), and FOCUS 1.x CSV or Parquet (AWS Bedrock, Azure OpenAI).

Money is exact from the literal digits: JSON is parsed with `parse_float=Decimal`, CSV is read as
text, and nothing passes through a float. JSON pages are small (daily buckets), so they are
flattened in Python; every mapping step after that is a Polars join or expression.

Restatement: vendors rewrite recent days for weeks. The unit of replacement is one
(vendor, provider, source_kind, billing_period, date); the export with the latest `exported_at`
wins (a payload watermark such as `data_refreshed_at`, else a `YYYYMMDDTHHMMSSZ` stamp in the file
name, else the file's mtime). Reloading an identical export changes nothing.

Over 400 lines on purpose: every format lands in the same candidate rows under the same
restatement rules; each format is one section.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.reconciliation.schemas import (
    CHARGE_CLASSES,
    RESTATEMENT_KEY,
    VENDOR_COST_CHANGES,
    VENDOR_COSTS,
    VENDOR_REVIEW,
    VENDORS,
)
from usagebox_pipelines.schemas import MONEY, QTY, TS, conform, empty

_EXTENSIONS = {
    "openai": (".json",),
    "anthropic": (".json",),
    "focus": (".csv", ".csv.gz", ".parquet"),
}
# One input line of one export file (a usage result fans out into one row per token field).
LINE_ID = ["export_sha256", "source_row", "vendor_line_item"]
_FINGERPRINT = [
    "model_id",
    "meter_id",
    "quantity",
    "amount",
    "currency",
    "charge_class",
    "service_tier",
    "vendor_model",
    "vendor_line_item",
    "vendor_scope",
]
_STAMP = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})T(\d{2})[-:]?(\d{2})[-:]?(\d{2})Z")
_SCALE = Decimal("1e-12")

# Columns of the intermediate "candidate" frame every vendor parser produces.
_CANDIDATE = pl.Schema(
    {
        "source_kind": pl.String(),
        "date": pl.Date(),
        "billing_period": pl.String(),
        "vendor_model": pl.String(),
        "vendor_line_item": pl.String(),
        "vocab_key": pl.String(),
        "quantity": pl.String(),
        "amount": pl.String(),
        "currency": pl.String(),
        "charge_class": pl.String(),
        "service_tier": pl.String(),
        "vendor_scope": pl.String(),
        "provider": pl.String(),
        "problem": pl.String(),
        "payload": pl.String(),
        "source_row": pl.Int64(),
    }
)


@dataclass(frozen=True)
class LoadResult:
    """One load: current vendor_costs rows, the review list, rows superseded within the batch."""

    costs: pl.DataFrame
    review: pl.DataFrame
    superseded: pl.DataFrame
    files: tuple[str, ...]


@dataclass(frozen=True)
class _File:
    """One export file's identity, stamped on every row it produces."""

    path: Path
    sha256: str
    exported_at: datetime


def load_vendor_exports(
    vendor: str,
    paths: list[Path],
    mapping: VendorMapping,
    *,
    loaded_at: datetime | None = None,
) -> LoadResult:
    """Load export files/folders of one vendor into normalized vendor_costs rows.

    Each path may be a JSON page, a JSON list of pages, a FOCUS CSV/Parquet file, or a folder of
    them. Costs vs usage is detected from each result's `object` / fields. Lines the mapping does
    not cover go to `review` with a reason. Within the batch, an older export of the same day is
    superseded by the newer one (returned in `superseded`).
    """
    if vendor not in VENDORS:
        raise UsageboxError(f"--vendor: unknown vendor {vendor!r} (use {', '.join(VENDORS)})")
    spec = mapping.vendor(vendor)
    loaded_at = (loaded_at or datetime.now(UTC)).astimezone(UTC)
    costs, review = [], []
    files = _expand(vendor, paths)
    for path in files:
        raw = path.read_bytes()
        doc = _read_json(path, raw) if vendor != "focus" else None
        meta = _File(path, hashlib.sha256(raw).hexdigest(), _exported_at(path, doc))
        if vendor == "openai":
            cand = _openai_candidates(path, doc, mapping)
        elif vendor == "anthropic":
            cand = _anthropic_candidates(path, doc, mapping)
        else:
            cand = _focus_candidates(path, raw, mapping)
        ok, bad = _finish(cand, vendor, spec.provider, spec.currency, meta, loaded_at, mapping)
        costs.append(ok)
        review.append(bad)
    all_costs = pl.concat(costs) if costs else empty(VENDOR_COSTS)
    state, superseded = _resolve(all_costs.with_columns(_old=pl.lit(False)), loaded_at)
    review_df = pl.concat(review) if review else empty(VENDOR_REVIEW)
    return LoadResult(state, review_df, superseded, tuple(str(p) for p in files))


def merge_vendor_costs(
    existing: pl.DataFrame, new: pl.DataFrame, *, superseded_at: datetime | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(new full current state, change log of superseded rows) after loading `new`.

    Identical re-loads are no-ops (same export line already present; or a newer export whose
    rows for a day equal the current ones). Otherwise, per (vendor, provider, source_kind,
    billing_period, date) the export with the latest `exported_at` replaces the older rows,
    which go to the change log with what replaced them. An older export loaded late is ignored.
    """
    old = conform(existing, VENDOR_COSTS).with_columns(_old=pl.lit(True))
    fresh = conform(new, VENDOR_COSTS).with_columns(_old=pl.lit(False))
    at = (superseded_at or datetime.now(UTC)).astimezone(UTC)
    return _resolve(pl.concat([old, fresh]), at)


def merge_review(existing: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """The review list after a load: a re-loaded export adds no duplicate review lines."""
    rows = pl.concat([conform(existing, VENDOR_REVIEW), conform(new, VENDOR_REVIEW)])
    return rows.unique(LINE_ID, keep="first", maintain_order=True)


# --------------------------------------------------------------------------- restatement


def _resolve(rows: pl.DataFrame, at: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the winning export generation per restatement key; log what it superseded."""
    rows = rows.unique(LINE_ID, keep="first", maintain_order=True)
    if rows.is_empty():
        return empty(VENDOR_COSTS), empty(VENDOR_COST_CHANGES)
    tagged = rows.join(_winners(rows), on=RESTATEMENT_KEY, how="left", nulls_equal=True)
    keep = pl.col("exported_at") == pl.col("_win_exported_at")
    older = pl.col("exported_at") < pl.col("_win_exported_at")
    # Log rows that were current (old) or lost to a newer export in the same batch; an old
    # export re-loaded after a newer one never became current, so it is not a change.
    logged = older & (pl.col("_old") | ~pl.col("_win_old"))
    state = conform(tagged.filter(keep), VENDOR_COSTS)
    changes = tagged.filter(~keep & logged).with_columns(
        superseded_at=pl.lit(at).cast(TS),
        superseded_by_sha256=pl.col("_win_sha"),
        superseded_by_file=pl.col("_win_file"),
    )
    order = [*RESTATEMENT_KEY, "source_file", "source_row", "vendor_line_item"]
    return (
        state.sort(order, nulls_last=True),
        conform(changes, VENDOR_COST_CHANGES).sort(order, nulls_last=True),
    )


def _winners(rows: pl.DataFrame) -> pl.DataFrame:
    """Per restatement key: the generation (exported_at) that stands, and its files.

    The content of the latest export wins; of the generations with exactly that content the
    earliest stands, so a newer export that restates nothing changes nothing.
    """
    text = [pl.col(c).cast(pl.String).fill_null("\x00") for c in _FINGERPRINT]
    gens = rows.group_by([*RESTATEMENT_KEY, "exported_at"]).agg(
        fp=pl.concat_str(text, separator="\x1f").sort().str.join("\x1e"),
        has_old=pl.col("_old").any(),
        sha=pl.col("export_sha256").unique().sort().str.join(","),
        file=pl.col("source_file").unique().sort().str.join(","),
    )
    latest = gens.sort("exported_at").group_by(RESTATEMENT_KEY).agg(_latest_fp=pl.col("fp").last())
    return (
        gens.join(latest, on=RESTATEMENT_KEY, nulls_equal=True)
        .filter(pl.col("fp") == pl.col("_latest_fp"))
        .sort("exported_at")
        .group_by(RESTATEMENT_KEY)
        .agg(
            _win_exported_at=pl.col("exported_at").first(),
            _win_sha=pl.col("sha").first(),
            _win_file=pl.col("file").first(),
            _win_old=pl.col("has_old").first(),
        )
    )


# --------------------------------------------------------------------------- files


def _expand(vendor: str, paths: Iterable[Path]) -> list[Path]:
    """Files to load, in a stable order: folders expand to their export files (recursively)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and not f.name.startswith(".")
                and f.name.lower().endswith(_EXTENSIONS[vendor])
            ]
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UsageboxError(f"{p}: no such file or folder")
    if not out:
        raise UsageboxError(f"no {vendor} export files found in {', '.join(map(str, paths))}")
    return out


def _read_json(path: Path, raw: bytes) -> Any:
    """Parse JSON with every non-integer number as an exact Decimal from its literal digits."""
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageboxError(f"{path}: not valid JSON: {exc}") from exc


def _exported_at(path: Path, doc: Any) -> datetime:
    """When the export was pulled: payload watermark, else a stamp in the name, else mtime."""
    marks = [
        page.get(key)
        for page in (doc if isinstance(doc, list) else [doc])
        if isinstance(page, dict)
        for key in ("data_refreshed_at", "exported_at")
        if page.get(key)
    ]
    if marks:
        return max(_parse_ts(path, str(m), "data_refreshed_at") for m in marks)
    stamp = _STAMP.search(path.name)
    if stamp:
        y, mo, d, h, mi, s = (int(x) for x in stamp.groups())
        return datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)


def _parse_ts(path: Path, value: str, at: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageboxError(f"{path}: {at}: not an RFC 3339 time: {value!r}") from exc
    if ts.tzinfo is None:
        raise UsageboxError(f"{path}: {at}: time without offset: {value!r}")
    return ts.astimezone(UTC)


def _pages(path: Path, doc: Any) -> Iterator[tuple[int, dict]]:
    """The pages of a file (one page or a list of pages), each checked for its envelope."""
    pages = doc if isinstance(doc, list) else [doc]
    for i, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise UsageboxError(f"{path}: page {i}: expected an object with a 'data' list")
        yield i, page


def _buckets(path: Path, doc: Any) -> Iterator[tuple[date, dict, int]]:
    """(UTC day of the bucket, result, running line number) for every result in the file."""
    line = 0
    for i, page in _pages(path, doc):
        for j, bucket in enumerate(page["data"]):
            at = f"page {i} bucket {j}"
            if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
                raise UsageboxError(f"{path}: {at}: expected a bucket with a 'results' list")
            day = _bucket_day(path, bucket, at)
            for result in bucket["results"]:
                line += 1
                if not isinstance(result, dict):
                    raise UsageboxError(f"{path}: {at} result {line}: expected an object")
                yield day, result, line


def _bucket_day(path: Path, bucket: dict, at: str) -> date:
    """UTC day of a bucket: OpenAI `start_time` (Unix s) or Anthropic `starting_at` (RFC 3339)."""
    if "start_time" in bucket:
        value = bucket["start_time"]
        if not isinstance(value, int):
            raise UsageboxError(f"{path}: {at}: start_time: expected Unix seconds, got {value!r}")
        return datetime.fromtimestamp(value, UTC).date()
    if "starting_at" in bucket:
        return _parse_ts(path, str(bucket["starting_at"]), f"{at}: starting_at").date()
    raise UsageboxError(f"{path}: {at}: bucket has neither start_time nor starting_at")


def _money(path: Path, line: int, field: str, value: Any, divide: int = 1) -> str | None:
    """Exact decimal text (12 places, half-up) from a JSON number/Decimal/string, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise UsageboxError(f"{path}: result {line}: {field}: not a number: {value!r}")
    try:
        exact = Decimal(value) if not isinstance(value, str) else Decimal(value.strip())
    except InvalidOperation as exc:
        raise UsageboxError(f"{path}: result {line}: {field}: not a number: {value!r}") from exc
    if not exact.is_finite():
        raise UsageboxError(f"{path}: result {line}: {field}: not a finite number: {value!r}")
    return str((exact / divide).quantize(_SCALE, rounding=ROUND_HALF_UP))


def _count(path: Path, line: int, field: str, value: Any) -> int:
    """A token count: a non-negative integer (null counts as 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageboxError(f"{path}: result {line}: {field}: expected a count, got {value!r}")
    return value


def _payload(result: dict) -> str:
    return json.dumps(result, sort_keys=True, separators=(",", ":"), default=str)


def _frame(records: list[dict]) -> pl.DataFrame:
    """Candidate records -> a frame of the candidate schema (missing keys are null)."""
    if not records:
        return empty(_CANDIDATE)
    cols = {name: [r.get(name) for r in records] for name in _CANDIDATE.names()}
    return pl.DataFrame(cols, schema=_CANDIDATE)


# --------------------------------------------------------------------------- OpenAI

_OPENAI_COSTS = "organization.costs.result"
_OPENAI_COMPLETIONS = "organization.usage.completions.result"
_OPENAI_TOKEN_FIELDS = (
    "uncached_input_tokens",
    "input_cached_tokens",
    "output_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
)


def _openai_candidates(path: Path, doc: Any, mapping: VendorMapping) -> pl.DataFrame:
    """Costs and completions-usage results of OpenAI pages as candidate lines."""
    spec = mapping.vendor("openai")
    records: list[dict] = []
    for day, result, line in _buckets(path, doc):
        obj = result.get("object") or (
            _OPENAI_COSTS
            if "amount" in result
            else _OPENAI_COMPLETIONS
            if "input_tokens" in result
            else None
        )
        base = {"date": day, "source_row": line, "payload": _payload(result)}
        base["vendor_scope"] = result.get("project_id")
        if obj == _OPENAI_COSTS:
            records.append(_openai_cost_record(path, line, result, base))
        elif obj == _OPENAI_COMPLETIONS:
            records += _openai_usage_records(path, line, result, base)
        else:
            records.append(
                base
                | {
                    "source_kind": "usage",
                    "vendor_line_item": str(obj),
                    "problem": f"unsupported OpenAI result object {obj!r}",
                }
            )
    frame = _frame(records)
    return _map_by_vocab(frame, mapping, "openai", spec.line_item_kinds, spec.usage_fields)


def _openai_cost_record(path: Path, line: int, result: dict, base: dict) -> dict:
    """One Costs result: dollars as a JSON number (read exactly), lowercase currency."""
    amount = result.get("amount") or {}
    item = result.get("line_item")
    model, kind = (item.rsplit(", ", 1) + [None])[:2] if item else (None, None)
    rec = base | {
        "source_kind": "costs",
        "vendor_line_item": item,
        "vendor_model": model,
        "vocab_key": kind,
        "amount": _money(path, line, "amount.value", amount.get("value")),
        "currency": str(amount.get("currency") or "").upper() or None,
        "quantity": _money(path, line, "quantity", result.get("quantity")),
        "charge_class": "usage",
    }
    if item is None:
        rec["problem"] = "line_item is null: export costs with group_by=line_item"
    elif kind is None:
        rec["problem"] = f"line_item {item!r} is not '<model>, <kind>'"
    return rec


def _openai_usage_records(path: Path, line: int, result: dict, base: dict) -> list[dict]:
    """One completions result, one record per token field; input minus cached = uncached."""
    counts = {
        f: _count(path, line, f, result.get(f))
        for f in ("input_tokens", "input_cached_tokens", "output_tokens") + _OPENAI_TOKEN_FIELDS[3:]
    }
    problem = None
    if counts["input_cached_tokens"] > counts["input_tokens"]:
        problem = "input_cached_tokens exceeds input_tokens (cached is a subset of input)"
    counts["uncached_input_tokens"] = counts["input_tokens"] - counts["input_cached_tokens"]
    tier = "batch" if result.get("batch") else result.get("service_tier")
    return [
        base
        | {
            "source_kind": "usage",
            "vendor_model": result.get("model"),
            "vendor_line_item": field,
            "vocab_key": field,
            "quantity": str(counts[field]),
            "charge_class": "usage",
            "service_tier": tier,
            "problem": problem,
        }
        for field in _OPENAI_TOKEN_FIELDS
    ]


# --------------------------------------------------------------------------- Anthropic

_ANTHROPIC_TOKEN_FIELDS = (
    "uncached_input_tokens",
    "cache_read_input_tokens",
    "cache_creation.ephemeral_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens",
    "output_tokens",
    "server_tool_use.web_search_requests",
)


def _anthropic_candidates(path: Path, doc: Any, mapping: VendorMapping) -> pl.DataFrame:
    """cost_report (cents as decimal strings) and usage_report/messages results as candidates."""
    spec = mapping.vendor("anthropic")
    records: list[dict] = []
    for day, result, line in _buckets(path, doc):
        base = {"date": day, "source_row": line, "payload": _payload(result)}
        base["vendor_scope"] = result.get("workspace_id")
        if "amount" in result:
            records.append(_anthropic_cost_record(path, line, result, base))
        elif "uncached_input_tokens" in result:
            records += _anthropic_usage_records(path, line, result, base)
        else:
            records.append(
                base
                | {
                    "source_kind": "usage",
                    "problem": "unrecognised Anthropic result (neither cost nor usage)",
                }
            )
    return _map_by_vocab(_frame(records), mapping, "anthropic", spec.token_types, spec.token_types)


def _anthropic_cost_record(path: Path, line: int, result: dict, base: dict) -> dict:
    """One cost_report result: `amount` is in CENTS (fractional) -> divide by 100."""
    token_type = result.get("token_type")
    cost_type = result.get("cost_type")
    rec = base | {
        "source_kind": "costs",
        "vendor_model": result.get("model"),
        "vendor_line_item": result.get("description") or token_type or cost_type,
        "vocab_key": token_type,
        "amount": _money(path, line, "amount", result.get("amount"), divide=100),
        "currency": str(result.get("currency") or "").upper() or None,
        "charge_class": "usage",
        "service_tier": result.get("service_tier"),
    }
    if token_type is None and cost_type is None and result.get("description") is None:
        rec["problem"] = "cost not itemised: export cost_report with group_by=description"
    elif token_type is None:
        rec["problem"] = f"no meter for non-token cost {cost_type or rec['vendor_line_item']!r}"
    return rec


def _anthropic_usage_records(path: Path, line: int, result: dict, base: dict) -> list[dict]:
    """One messages usage result, one record per token field (nested fields flattened)."""
    flat = {f: _count(path, line, f, _dig(result, f.split("."))) for f in _ANTHROPIC_TOKEN_FIELDS}
    return [
        base
        | {
            "source_kind": "usage",
            "vendor_model": result.get("model"),
            "vendor_line_item": field,
            "vocab_key": field,
            "quantity": str(flat[field]),
            "charge_class": "usage",
            "service_tier": result.get("service_tier"),
        }
        for field in _ANTHROPIC_TOKEN_FIELDS
    ]


def _dig(obj: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _map_by_vocab(
    frame: pl.DataFrame,
    mapping: VendorMapping,
    vendor: str,
    cost_vocab: dict[str, str],
    usage_vocab: dict[str, str],
) -> pl.DataFrame:
    """Resolve model (alias join) and meter (vocabulary join, per source kind) for JSON lines."""
    vocab = pl.concat(
        [
            mapping.lookup_frame(cost_vocab, "vocab_key").with_columns(source_kind=pl.lit("costs")),
            mapping.lookup_frame(usage_vocab, "vocab_key").with_columns(
                source_kind=pl.lit("usage")
            ),
        ]
    )
    out = frame.join(mapping.alias_frame(vendor), on="vendor_model", how="left").join(
        vocab, on=["source_kind", "vocab_key"], how="left"
    )
    reason = (
        pl.when(pl.col("problem").is_not_null())
        .then(pl.col("problem"))
        .when(pl.col("vendor_model").is_null())
        .then(pl.lit("model is null: export with group_by model/description"))
        .when(pl.col("model_id").is_null())
        .then(pl.format("unknown vendor model '{}': add it to model_aliases", "vendor_model"))
        .when(pl.col("meter_id").is_null())
        .then(pl.format("no meter mapped for '{}'", pl.coalesce("vocab_key", "vendor_line_item")))
    )
    return out.with_columns(problem=reason)


# --------------------------------------------------------------------------- FOCUS

_FOCUS_REQUIRED = ("BilledCost", "BillingCurrency", "ChargePeriodStart", "ChargeCategory")


def _focus_candidates(path: Path, raw: bytes, mapping: VendorMapping) -> pl.DataFrame:
    """FOCUS rows as candidates: BilledCost exact from text, tokens from Consumed/Pricing."""
    df = _read_focus(path, raw)
    missing = [c for c in _FOCUS_REQUIRED if c not in df.columns]
    if missing:
        raise UsageboxError(f"{path}: missing FOCUS column(s): {', '.join(missing)}")
    spec = mapping.vendor("focus")
    col = _focus_col(df)
    usage_type = pl.coalesce([col(c) for c in spec.usage_type_columns] or [pl.lit(None)])
    df = df.with_row_index("source_row", offset=1).with_columns(
        _usage_type=usage_type, payload=pl.struct(pl.all()).struct.json_encode()
    )
    start = _focus_ts(path, df, "ChargePeriodStart")
    period_start = _focus_ts(path, df, "BillingPeriodStart") if "BillingPeriodStart" in df else None
    cand = df.select(
        source_kind=pl.lit("focus"),
        date=start.dt.date(),
        billing_period=(period_start if period_start is not None else start).dt.strftime("%Y-%m"),
        vendor_model=pl.col("_usage_type"),
        vendor_line_item=pl.col("_usage_type"),
        quantity=_focus_quantity(col),
        amount=pl.col("BilledCost").str.strip_chars(),
        currency=pl.col("BillingCurrency").str.strip_chars().str.to_uppercase(),
        charge_class=_focus_charge_class(col),
        service_tier=pl.col("_usage_type").str.extract(r"-(batch|priority|flex)(?:-|$)", 1),
        vendor_scope=col("SubAccountId"),
        provider=col("ProviderName"),
        model_id=_first_match(pl.col("_usage_type").str.to_lowercase(), spec.model_tokens, True),
        meter_id=_first_match(pl.col("_usage_type"), spec.meter_patterns, False),
        payload=pl.col("payload"),
        source_row=pl.col("source_row").cast(pl.Int64),
    )
    return cand.with_columns(problem=_focus_problem())


def _read_focus(path: Path, raw: bytes) -> pl.DataFrame:
    """All columns as text, so decimals keep their literal digits (Parquet doubles: shortest)."""
    try:
        if path.name.lower().endswith(".parquet"):
            df = pl.read_parquet(path)
            return df.with_columns(pl.all().cast(pl.String))
        return pl.read_csv(raw, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UsageboxError(f"{path}: cannot read FOCUS export: {exc}") from exc


def _focus_col(df: pl.DataFrame):
    """A text column if present (empty strings as null), else a null literal."""

    def col(name: str) -> pl.Expr:
        if name not in df.columns:
            return pl.lit(None, dtype=pl.String())
        text = pl.col(name).str.strip_chars()
        return pl.when(text == "").then(None).otherwise(text)

    return col


def _focus_ts(path: Path, df: pl.DataFrame, name: str) -> pl.Expr:
    """A FOCUS DateTime column (`YYYY-MM-DDTHH:mm:ssZ`, ms or space variants) as UTC."""
    text = pl.col(name).str.strip_chars().str.replace("T", " ").str.slice(0, 19)
    parsed = text.str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC", strict=False)
    bad = df.with_row_index("_r", offset=1).filter(parsed.is_null() & pl.col(name).is_not_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise UsageboxError(f"{path}: row {row['_r']}: {name}: not a UTC DateTime: {row[name]!r}")
    return parsed.dt.cast_time_unit("us")


def _unit_multiplier(unit: pl.Expr) -> pl.Expr:
    """Tokens per unit: '1K tokens' -> 1000, '1M Tokens' -> 1e6, 'Tokens' -> 1."""
    number = unit.str.extract(r"^\s*(\d+(?:\.\d+)?)", 1).fill_null("1").cast(QTY)
    suffix = unit.str.extract(r"^\s*\d*(?:\.\d+)?\s*([KkMm])\b", 1).str.to_uppercase()
    scale = pl.when(suffix == "K").then(1000).when(suffix == "M").then(1_000_000).otherwise(1)
    return number * scale.cast(QTY)


def _focus_quantity(col) -> pl.Expr:
    """Tokens: ConsumedQuantity (in ConsumedUnit), else PricingQuantity × its block size."""
    consumed = col("ConsumedQuantity").cast(QTY, strict=False) * _unit_multiplier(
        col("ConsumedUnit").fill_null("1")
    )
    priced = col("PricingQuantity").cast(QTY, strict=False) * _unit_multiplier(
        col("PricingUnit").fill_null("1")
    )
    return pl.coalesce(consumed, priced).cast(pl.String)


def _focus_charge_class(col) -> pl.Expr:
    """ChargeClass 'Correction' wins; else ChargeCategory lower-cased (Usage, Credit, Tax...)."""
    category = col("ChargeCategory").str.to_lowercase()
    return (
        pl.when(col("ChargeClass").str.to_lowercase() == "correction")
        .then(pl.lit("correction"))
        .otherwise(category)
    )


def _first_match(text: pl.Expr, table: tuple[tuple[str, str], ...], literal: bool) -> pl.Expr:
    """The value of the first (needle, value) whose needle is in `text` (literal or regex)."""
    if not table:
        return pl.lit(None, dtype=pl.String())
    chain = None
    for needle, value in table:
        hit = (
            text.str.contains(needle.lower(), literal=True)
            if literal
            else text.str.contains(f"(?i){needle}")
        )
        chain = (pl.when(hit) if chain is None else chain.when(hit)).then(pl.lit(value))
    return chain.otherwise(pl.lit(None, dtype=pl.String()))


def _focus_problem() -> pl.Expr:
    """Why a FOCUS row cannot be used; only usage rows need a model and meter."""
    usage = pl.col("charge_class") == "usage"
    return (
        pl.when(~pl.col("charge_class").is_in(list(CHARGE_CLASSES)))
        .then(pl.format("unknown ChargeCategory '{}'", "charge_class"))
        .when(usage & pl.col("vendor_line_item").is_null())
        .then(pl.lit("usage row without a usage type (SkuMeter / x_UsageType / x_SkuMeterName)"))
        .when(usage & pl.col("model_id").is_null())
        .then(pl.format("no model token matches usage type '{}'", "vendor_line_item"))
        .when(usage & pl.col("meter_id").is_null())
        .then(pl.format("no meter pattern matches usage type '{}'", "vendor_line_item"))
        .when(usage & pl.col("quantity").is_null())
        .then(pl.lit("usage row without ConsumedQuantity or PricingQuantity"))
    )


# --------------------------------------------------------------------------- common


def _finish(
    cand: pl.DataFrame,
    vendor: str,
    provider: str,
    currency: str,
    meta: _File,
    loaded_at: datetime,
    mapping: VendorMapping,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Stamp identity columns, type the numbers exactly, split mapped rows from review rows."""
    cand = _exact_numbers(cand, meta.path)
    wrong_currency = pl.col("currency").is_not_null() & (pl.col("currency") != currency)
    stamped = cand.with_columns(
        vendor=pl.lit(vendor),
        provider=pl.coalesce("provider", pl.lit(provider)),
        billing_period=pl.coalesce("billing_period", pl.col("date").dt.strftime("%Y-%m")),
        currency=pl.coalesce("currency", pl.lit(currency)),
        problem=pl.coalesce(
            "problem",
            pl.when(wrong_currency).then(
                pl.format("currency '{}' is not the vendor's {}", "currency", pl.lit(currency))
            ),
        ),
        source_file=pl.lit(str(meta.path)),
        export_sha256=pl.lit(meta.sha256),
        exported_at=pl.lit(meta.exported_at).cast(TS),
        loaded_at=pl.lit(loaded_at).cast(TS),
        mapping_version=pl.lit(mapping.version),
    )
    ok = conform(stamped.filter(pl.col("problem").is_null()), VENDOR_COSTS)
    # A zero line nobody can map carries nothing to bill; everything else is reviewed
    # (including lines with no numbers at all, e.g. an unsupported result object).
    q, a = pl.col("quantity"), pl.col("amount")
    material = (q.fill_null(0) != 0) | (a.fill_null(0) != 0) | (q.is_null() & a.is_null())
    bad = stamped.filter(pl.col("problem").is_not_null() & material).rename({"problem": "reason"})
    return ok, conform(bad, VENDOR_REVIEW)


def _exact_numbers(cand: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Quantity and amount text -> Decimal(38, 12); a non-number is an error naming the row."""
    out = cand.with_columns(
        quantity=pl.col("quantity").cast(QTY, strict=False),
        amount=pl.col("amount").cast(MONEY, strict=False),
    )
    for name in ("quantity", "amount"):
        bad = cand.filter(out[name].is_null() & cand[name].is_not_null())
        if bad.height:
            row = bad.row(0, named=True)
            raise UsageboxError(
                f"{path}: row {row['source_row']}: {name}: not a decimal: {row[name]!r}"
            )
    return out
