"""OpenAI and Anthropic Admin API pages -> candidate vendor lines (see `loaders`).

Formats (/work/shared/vendor-formats.md, README "Supported vendor exports"):

- OpenAI `/v1/organization/costs`: dollars as JSON numbers, lowercase currency; `quantity` in
  `quantity_unit` (`tokens`, `1000_tokens`, ...). Without `group_by=line_item` a result is the
  day's total of a scope: it lands as a day-level line (no model, no meter); a line item that
  names only a kind (`input`, `output`) lands as a day-level line of that meter (no model).
- OpenAI `/v1/organization/usage/completions`, 2024 format: `input_tokens` are text input
  INCLUDING cached; audio tokens are separate fields. 2026 format (`input_uncached_tokens`
  present): `input_tokens` = uncached + cached + cache writes, each counted over text, audio
  and image; the audio and image parts are subsets. Each result fans out into disjoint lines
  that add up to the result's input and output tokens, so no token is counted twice.
- Anthropic `cost_report` (decimal-string CENTS) and `usage_report/messages` (uncached input
  EXCLUDES cache reads and writes, which are sibling fields).

JSON is parsed with `parse_float=Decimal`, so amounts keep their literal digits; the pages are
small (daily buckets) and are flattened in Python, every mapping step after that is a join.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.schemas import empty

# Columns of the intermediate "candidate" frame every vendor parser produces.
CANDIDATE = pl.Schema(
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
        "context_window": pl.String(),
        "vendor_scope": pl.String(),
        "day_total": pl.Boolean(),
        "provider": pl.String(),
        "problem": pl.String(),
        "payload": pl.String(),
        "content": pl.String(),
        "source_row": pl.Int64(),
    }
)

OPENAI_SCOPE = ("project_id", "api_key_id", "user_id")
ANTHROPIC_SCOPE = ("workspace_id", "api_key_id", "account_id", "service_account_id")


def read_json(path: Path, raw: bytes) -> Any:
    """Parse JSON with every non-integer number as an exact Decimal from its literal digits."""
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageboxError(f"{path}: not valid JSON: {exc}") from exc


def pages(path: Path, doc: Any) -> list[dict]:
    """The pages of a file (one page or a list of pages), each checked for its envelope."""
    found = doc if isinstance(doc, list) else [doc]
    for i, page in enumerate(found):
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise UsageboxError(f"{path}: page {i}: expected an object with a 'data' list")
    return found


def unfinished_page(path: Path, doc: Any) -> str | None:
    """The `next_page` cursor when the file's last page says `has_more` (else None)."""
    last = pages(path, doc)[-1]
    return str(last.get("next_page") or "?") if last.get("has_more") is True else None


def _buckets(path: Path, doc: Any) -> Iterator[tuple[date, dict, int]]:
    """(UTC day of the bucket, result, running line number) for every result in the file."""
    line = 0
    for i, page in enumerate(pages(path, doc)):
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


def parse_time(path: Path, value: str, at: str) -> datetime:
    """An RFC 3339 time with an offset, as UTC."""
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageboxError(f"{path}: {at}: not an RFC 3339 time: {value!r}") from exc
    if ts.tzinfo is None:
        raise UsageboxError(f"{path}: {at}: time without offset: {value!r}")
    return ts.astimezone(UTC)


def _bucket_day(path: Path, bucket: dict, at: str) -> date:
    """UTC day of a bucket: OpenAI `start_time` (Unix s) or Anthropic `starting_at` (RFC 3339)."""
    if "start_time" in bucket:
        value = bucket["start_time"]
        if not isinstance(value, int):
            raise UsageboxError(f"{path}: {at}: start_time: expected Unix seconds, got {value!r}")
        return datetime.fromtimestamp(value, UTC).date()
    if "starting_at" in bucket:
        return parse_time(path, str(bucket["starting_at"]), f"{at}: starting_at").date()
    raise UsageboxError(f"{path}: {at}: bucket has neither start_time nor starting_at")


def _number(path: Path, line: int, field: str, value: Any, scale: int | Decimal = 1) -> str | None:
    """Exact decimal text of a JSON number/Decimal/string times `scale`, or None.

    Never rounded: a value with more than 12 decimals is sent to review by `loaders`."""
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
    return format(exact * scale, "f")


def _count(path: Path, line: int, field: str, value: Any) -> int:
    """A token count: a non-negative integer (null counts as 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageboxError(f"{path}: result {line}: {field}: expected a count, got {value!r}")
    return value


def _payload(result: dict) -> str:
    return json.dumps(result, sort_keys=True, separators=(",", ":"), default=str)


def _canonical(value: Any) -> Any:
    """The result with every number as its normalized decimal text: what a line says, the
    same whether the file wrote `0.060`, `0.06` or `6e-2`."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return format(Decimal(value).normalize(), "f")
    return value


def _base(day: date, line: int, result: dict, scope_fields: tuple[str, ...]) -> dict:
    scope = {f: result[f] for f in scope_fields if result.get(f) is not None}
    return {
        "date": day,
        "source_row": line,
        "payload": _payload(result),
        "content": json.dumps(_canonical(result), sort_keys=True, separators=(",", ":")),
        "vendor_scope": json.dumps(scope, sort_keys=True, separators=(",", ":")),
    }


def _frame(records: list[dict]) -> pl.DataFrame:
    """Candidate records -> a frame of the candidate schema (missing keys are null)."""
    if not records:
        return empty(CANDIDATE)
    cols = {name: [r.get(name) for r in records] for name in CANDIDATE.names()}
    return pl.DataFrame(cols, schema=CANDIDATE)


def _fan_out(base: dict, common: dict, quantities: dict[str, int]) -> list[dict]:
    """One usage line per token field of a result (the field names the line)."""
    return [
        base
        | common
        | {
            "source_kind": "usage",
            "vendor_line_item": field,
            "vocab_key": field,
            "quantity": str(qty),
            "charge_class": "usage",
            "content": f"{base['content']}|{field}",
        }
        for field, qty in quantities.items()
    ]


# --------------------------------------------------------------------------- OpenAI

_OPENAI_COSTS = "organization.costs.result"
_OPENAI_COMPLETIONS = "organization.usage.completions.result"
# Costs `quantity_unit` -> units per reported unit (token meters only; others stay as written).
_QUANTITY_UNITS = {"tokens": 1, "1000_tokens": 1000}


def openai_candidates(path: Path, doc: Any, mapping: VendorMapping) -> pl.DataFrame:
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
        base = _base(day, line, result, OPENAI_SCOPE)
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
    return map_by_vocab(frame, mapping, "openai", spec.line_item_kinds, spec.usage_fields)


def _openai_cost_record(path: Path, line: int, result: dict, base: dict) -> dict:
    """One Costs result: dollars as a JSON number (read exactly), lowercase currency."""
    amount = result.get("amount") or {}
    item = result.get("line_item")
    model, kind = (item.rsplit(", ", 1) + [None])[:2] if item else (None, None)
    if item is not None and kind is None:  # a kind with no model ("input"): a day-level line
        model, kind = None, item
    unit = result.get("quantity_unit")
    rec = base | {
        "source_kind": "costs",
        "vendor_line_item": item,
        "vendor_model": model,
        "vocab_key": kind,
        "amount": _number(path, line, "amount.value", amount.get("value")),
        "currency": str(amount.get("currency") or "").upper() or None,
        "quantity": _number(
            path, line, "quantity", result.get("quantity"), _QUANTITY_UNITS.get(str(unit), 1)
        ),
        "charge_class": "usage",
        "day_total": model is None,
    }
    if item is not None and unit is not None and unit not in _QUANTITY_UNITS:
        rec["problem"] = f"quantity_unit {unit!r} is not a token unit"
    return rec


# 2026 format: each input subset, by modality, and the text remainder (the mapped meter).
_OPENAI_INPUT_PARTS = {
    "input_uncached_tokens": ("input_audio_tokens", "input_image_tokens"),
    "input_cached_tokens": ("input_cached_audio_tokens", "input_cached_image_tokens"),
    "output_tokens": ("output_audio_tokens", "output_image_tokens"),
}
_OPENAI_TEXT_LINE = {
    "input_uncached_tokens": "uncached_input_tokens",
    "input_cached_tokens": "input_cached_tokens",
    "output_tokens": "output_tokens",
}


def _openai_usage_records(path: Path, line: int, result: dict, base: dict) -> list[dict]:
    """One completions result -> disjoint token lines (their sum is input + output tokens)."""

    def count(field: str) -> int:
        return _count(path, line, field, result.get(field))

    tier = "batch" if result.get("batch") else result.get("service_tier")
    common = {"vendor_model": result.get("model"), "service_tier": tier}
    if "input_uncached_tokens" in result:
        quantities, problem = _openai_2026_lines(count)
    else:
        quantities, problem = _openai_2024_lines(count)
    # A subset field the export does not carry (older spec versions) is no line at all.
    kept = {f: q for f, q in quantities.items() if f in result or f in _OPENAI_TEXT_LINE.values()}
    return [rec | {"problem": problem} for rec in _fan_out(base, common, kept)]


def _openai_2026_lines(count) -> tuple[dict[str, int], str | None]:
    """uncached + cached + cache writes = input_tokens; audio/image parts carved out of each."""
    lines: dict[str, int] = {}
    problem = None
    parts = count("input_uncached_tokens") + count("input_cached_tokens")
    if parts + count("input_cache_write_tokens") != count("input_tokens"):
        problem = (
            "input_uncached_tokens + input_cached_tokens + input_cache_write_tokens "
            "!= input_tokens: re-pull the export"
        )
    for total, subsets in _OPENAI_INPUT_PARTS.items():
        rest = count(total) - sum(count(s) for s in subsets)
        if rest < 0:
            problem = f"audio and image parts exceed {total}: re-pull the export"
        lines[_OPENAI_TEXT_LINE[total]] = max(rest, 0)
        lines |= {s: count(s) for s in subsets}
    lines["input_cache_write_tokens"] = count("input_cache_write_tokens")
    return lines, problem


def _openai_2024_lines(count) -> tuple[dict[str, int], str | None]:
    """Text input INCLUDES cached (uncached = input − cached); audio fields are separate."""
    problem = None
    if count("input_cached_tokens") > count("input_tokens"):
        problem = "input_cached_tokens exceeds input_tokens (cached is a subset of input)"
    uncached = count("input_tokens") - count("input_cached_tokens")
    return {
        "uncached_input_tokens": uncached,
        "input_cached_tokens": count("input_cached_tokens"),
        "output_tokens": count("output_tokens"),
        "input_audio_tokens": count("input_audio_tokens"),
        "output_audio_tokens": count("output_audio_tokens"),
    }, problem


# --------------------------------------------------------------------------- Anthropic

_ANTHROPIC_TOKEN_FIELDS = {
    "uncached_input_tokens": ("uncached_input_tokens",),
    "cache_read_input_tokens": ("cache_read_input_tokens",),
    # Nested in the documented report; flat in some client schemas.
    "cache_creation.ephemeral_5m_input_tokens": (
        "cache_creation.ephemeral_5m_input_tokens",
        "cache_creation_5m_input_tokens",
    ),
    "cache_creation.ephemeral_1h_input_tokens": (
        "cache_creation.ephemeral_1h_input_tokens",
        "cache_creation_1h_input_tokens",
    ),
    "output_tokens": ("output_tokens",),
    "server_tool_use.web_search_requests": ("server_tool_use.web_search_requests",),
}


def anthropic_candidates(path: Path, doc: Any, mapping: VendorMapping) -> pl.DataFrame:
    """cost_report (cents as decimal strings) and usage_report/messages results as candidates."""
    spec = mapping.vendor("anthropic")
    records: list[dict] = []
    for day, result, line in _buckets(path, doc):
        base = _base(day, line, result, ANTHROPIC_SCOPE) | {
            "service_tier": result.get("service_tier"),
            "context_window": result.get("context_window"),
        }
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
    return map_by_vocab(_frame(records), mapping, "anthropic", spec.token_types, spec.token_types)


def _anthropic_cost_record(path: Path, line: int, result: dict, base: dict) -> dict:
    """One cost_report result: `amount` is in CENTS (fractional) -> divided by 100, exactly."""
    token_type = result.get("token_type")
    cost_type = result.get("cost_type")
    rec = base | {
        "source_kind": "costs",
        "vendor_model": result.get("model"),
        "vendor_line_item": result.get("description") or token_type or cost_type,
        "vocab_key": token_type,
        "amount": _number(path, line, "amount", result.get("amount"), Decimal("0.01")),
        "currency": str(result.get("currency") or "").upper() or None,
        "charge_class": "usage",
    }
    if token_type is None and cost_type is None and result.get("description") is None:
        rec["problem"] = "cost not itemised: export cost_report with group_by=description"
    elif token_type is None:
        rec["problem"] = f"no meter for non-token cost {cost_type or rec['vendor_line_item']!r}"
    return rec


def _anthropic_usage_records(path: Path, line: int, result: dict, base: dict) -> list[dict]:
    """One messages usage result, one line per token field (nested fields flattened)."""
    quantities = {}
    for field, spellings in _ANTHROPIC_TOKEN_FIELDS.items():
        found = [_dig(result, s.split(".")) for s in spellings]
        value = next((v for v in found if v is not None), None)
        if value is not None or field in ("uncached_input_tokens", "output_tokens"):
            quantities[field] = _count(path, line, field, value)
    return _fan_out(base, {"vendor_model": result.get("model")}, quantities)


def _dig(obj: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def map_by_vocab(
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
    out = mapping.with_model_ids(frame, vendor).join(
        vocab, on=["source_kind", "vocab_key"], how="left"
    )
    day_total = pl.col("day_total").fill_null(False)
    reason = (
        pl.when(pl.col("problem").is_not_null())
        .then(pl.col("problem"))
        .when(day_total & pl.col("vocab_key").is_not_null() & pl.col("meter_id").is_null())
        .then(pl.format("line_item '{}' is neither '<model>, <kind>' nor a kind", "vocab_key"))
        .when(day_total)
        .then(None)
        .when(pl.col("vendor_model").is_null())
        .then(pl.lit("model is null: export with group_by model/description"))
        .when(pl.col("model_id").is_null())
        .then(pl.format("unknown vendor model '{}': add it to model_aliases", "vendor_model"))
        .when(pl.col("meter_id").is_null())
        .then(pl.format("no meter mapped for '{}'", pl.coalesce("vocab_key", "vendor_line_item")))
    )
    return out.with_columns(problem=reason)
