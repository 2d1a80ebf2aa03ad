"""Vendor bill/usage export loaders -> `vendor_costs` rows, the review list and ignored lines.

Formats: `json_exports` (OpenAI and Anthropic Admin API pages) and `focus` (FOCUS 1.0–1.2 CSV
or Parquet); `.gz` of any of them too. Every input line ends in exactly one table:
`vendor_costs` (mapped to our model × meter, or a day-level OpenAI total), `vendor_review`
(with a reason a person can act on) or `vendor_ignored` (unmapped, zero cost and quantity).

Money is exact from the literal digits and never rounded: a value with more than 12 decimals
(what `Decimal(38, 12)` holds) goes to review with the value in the reason.

A line's identity (`line_id`) is what it says, not the file's bytes: the vendor, source kind,
UTC day, scope (`vendor_scope`), the line's content with numbers normalized, and its occurrence
among identical lines of its file. Restatement rules are in `restatement`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.focus import focus_candidates
from usagebox_pipelines.reconciliation.json_exports import (
    anthropic_candidates,
    openai_candidates,
    parse_time,
    read_json,
    unfinished_page,
)
from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.reconciliation.restatement import (
    COSTS,
    IGNORED,
    LINES,
    REVIEW,
    resolve_lines,
    tag_lines,
)
from usagebox_pipelines.reconciliation.schemas import IGNORED_REASON, VENDORS
from usagebox_pipelines.schemas import MONEY, QTY, TS, conform, empty

_EXTENSIONS = {
    "openai": (".json", ".json.gz"),
    "anthropic": (".json", ".json.gz"),
    "focus": (".csv", ".csv.gz", ".parquet"),
}
_STAMP = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})T(\d{2})[-:]?(\d{2})[-:]?(\d{2})Z")
_MAX_PLACES = 12


@dataclass(frozen=True)
class LoadResult:
    """One load: the lines per table after the batch's own restatements, rows a newer export
    of the same batch superseded, the files, and warnings (an export that is incomplete)."""

    costs: pl.DataFrame
    review: pl.DataFrame
    ignored: pl.DataFrame
    superseded: pl.DataFrame
    files: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """False when an export's last page says more pages follow (`has_more`)."""
        return not self.warnings

    def lines(self) -> pl.DataFrame:
        """Every line of the load as LINES tagged with its table (for `merge_lines`)."""
        return pl.concat(
            [
                tag_lines(self.costs, COSTS),
                tag_lines(self.review, REVIEW),
                tag_lines(self.ignored, IGNORED),
            ]
        )


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
    """Load export files/folders of one vendor into normalized lines.

    Each path may be a JSON page, a JSON list of pages, a FOCUS CSV/Parquet file (`.gz` too),
    or a folder of them. Costs vs usage is detected from each result's `object` / fields.
    Within the batch, an older export of the same day and scope is superseded by the newer one.
    """
    if vendor not in VENDORS:
        raise UsageboxError(f"--vendor: unknown vendor {vendor!r} (use {', '.join(VENDORS)})")
    loaded_at = (loaded_at or datetime.now(UTC)).astimezone(UTC)
    files = _expand(vendor, paths)
    lines, unfinished = [], []
    for path in files:
        raw = path.read_bytes()
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        doc = read_json(path, text) if vendor != "focus" else None
        meta = _File(path, hashlib.sha256(raw).hexdigest(), _exported_at(path, doc))
        if vendor == "openai":
            cand = openai_candidates(path, doc, mapping)
        elif vendor == "anthropic":
            cand = anthropic_candidates(path, doc, mapping)
        else:
            cand = focus_candidates(path, text, mapping)
        lines.append(_finish(cand, vendor, meta, loaded_at, mapping))
        cursor = unfinished_page(path, doc) if doc is not None else None
        endpoint = ",".join(sorted(set(cand["source_kind"].drop_nulls())))
        unfinished.append(((meta.exported_at, endpoint), path, cursor))
    fresh = pl.concat(lines) if lines else empty(LINES)
    state, superseded = resolve_lines(
        empty(LINES).with_columns(_table=pl.lit("")), fresh, loaded_at
    )
    return LoadResult(
        state[COSTS],
        state[REVIEW],
        state[IGNORED],
        superseded,
        tuple(str(p) for p in files),
        _incomplete(unfinished),
    )


def merge_lines(
    existing: pl.DataFrame, new: pl.DataFrame, *, at: datetime | None = None
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """(rows per vendor table, change log) after loading `new` lines over the stored ones.

    Both are tagged LINES (`LoadResult.lines()`, `restatement.tag_lines`). Identical re-loads
    are no-ops whatever the bytes; a newer export of a day and scope replaces the older rows.
    """
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return resolve_lines(existing, new, at)


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
        return max(parse_time(path, str(m), "data_refreshed_at") for m in marks)
    stamp = _STAMP.search(path.name)
    if stamp:
        y, mo, d, h, mi, s = (int(x) for x in stamp.groups())
        return datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)


def _incomplete(pages: list[tuple[tuple[datetime, str], Path, str | None]]) -> tuple[str, ...]:
    """One warning per pull (files of one `exported_at` and endpoint: costs or usage) none of
    whose files ends its pages.

    Pages of one pull may sit in several files: the pull is complete when one of them ends
    with `has_more: false`."""
    pulls: dict[tuple[datetime, str], list[tuple[Path, str | None]]] = {}
    for at, path, cursor in pages:
        pulls.setdefault(at, []).append((path, cursor))
    warnings = []
    for files in pulls.values():
        if files and all(cursor is not None for _, cursor in files):
            path, cursor = files[-1]
            warnings.append(
                f"{path}: the last page says has_more=true (next_page {cursor}): the export is "
                "incomplete; fetch the remaining pages and load them with it"
            )
    return tuple(warnings)


# --------------------------------------------------------------------------- common


def _finish(
    cand: pl.DataFrame,
    vendor: str,
    meta: _File,
    loaded_at: datetime,
    mapping: VendorMapping,
) -> pl.DataFrame:
    """Stamp identity columns, type the numbers exactly, tag each line with its table."""
    spec = mapping.vendor(vendor)
    cand = _exact_numbers(cand, meta.path)
    wrong_currency = pl.col("currency").is_not_null() & (pl.col("currency") != spec.currency)
    stamped = cand.with_columns(
        vendor=pl.lit(vendor),
        provider=pl.coalesce("provider", pl.lit(spec.provider)),
        billing_period=pl.coalesce("billing_period", pl.col("date").dt.strftime("%Y-%m")),
        currency=pl.coalesce("currency", pl.lit(spec.currency)),
        problem=_joined(
            pl.coalesce(
                "problem",
                pl.when(wrong_currency).then(
                    pl.format(
                        "currency '{}' is not the vendor's {}", "currency", pl.lit(spec.currency)
                    )
                ),
            ),
            pl.col("_precision"),
        ),
        source_file=pl.lit(str(meta.path)),
        export_sha256=pl.lit(meta.sha256),
        exported_at=pl.lit(meta.exported_at).cast(TS),
        loaded_at=pl.lit(loaded_at).cast(TS),
        mapping_version=pl.lit(mapping.version),
    )
    stamped = stamped.with_columns(line_id=_line_ids(stamped))
    # A zero line nobody can map carries nothing to bill or review: it is counted as ignored.
    # Lines with no numbers at all (e.g. an unsupported result object) are reviewed.
    q, a = pl.col("quantity"), pl.col("amount")
    zero = (q.fill_null(0) == 0) & (a.fill_null(0) == 0) & (q.is_not_null() | a.is_not_null())
    table = (
        pl.when(pl.col("problem").is_null())
        .then(pl.lit(COSTS))
        .when(zero)
        .then(pl.lit(IGNORED))
        .otherwise(pl.lit(REVIEW))
    )
    reason = (
        pl.when(pl.col("_table") == IGNORED)
        .then(pl.format("{} ({})", pl.lit(IGNORED_REASON), "problem"))
        .otherwise("problem")
    )
    tagged = stamped.with_columns(_table=table).with_columns(reason=reason)
    return conform(tagged, LINES).with_columns(_table=tagged["_table"])


def _joined(*reasons: pl.Expr) -> pl.Expr:
    """The non-null reasons joined with '; ' (null when there are none)."""
    text = pl.concat_str(list(reasons), separator="; ", ignore_nulls=True)
    return pl.when(text == "").then(None).otherwise(text)


def _line_ids(lines: pl.DataFrame) -> pl.Series:
    """`line_id` of every line: SHA-256 of what the line says, plus its occurrence among
    identical lines of the file (two identical FOCUS rows are two charges).

    hashlib, not Polars' hash: the id is stored and must stay the same across versions."""
    text = lines.select(
        pl.concat_str(
            [
                pl.col(c).cast(pl.String).fill_null("\x00")
                for c in ("vendor", "source_kind", "date", "vendor_scope", "content")
            ],
            separator="\x1f",
        )
    ).to_series()
    digests = pl.Series([hashlib.sha256(t.encode()).hexdigest()[:32] for t in text.to_list()])
    nth = pl.int_range(pl.len()).over(digests)
    frame = pl.DataFrame({"d": digests}).with_columns(n=nth)
    ids = (
        pl.when(frame["n"] == 0)
        .then(frame["d"])
        .otherwise(pl.format("{}#{}", frame["d"], frame["n"]))
    )
    return frame.select(ids.alias("line_id")).to_series()


def _exact_numbers(cand: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Quantity and amount text -> Decimal(38, 12).

    A non-number is an error naming the row; a number with more than 12 decimals is kept out
    (null) with a reason naming the value, never rounded."""
    checks = {}
    for name in ("quantity", "amount"):
        text = pl.col(name).str.strip_chars()
        places = text.str.extract(r"\.(\d*?)0*$", 1).str.len_chars().fill_null(0)
        checks[name] = places > _MAX_PLACES
    precision = pl.coalesce(
        [
            pl.when(checks[n]).then(
                pl.format(
                    "{} {} has more than 12 decimal places: not rounded; ask the vendor for an "
                    "export at 12 places or fewer",
                    pl.lit(n),
                    pl.col(n),
                )
            )
            for n in ("amount", "quantity")
        ]
    )
    out = cand.with_columns(
        _precision=precision,
        quantity=pl.when(checks["quantity"]).then(None).otherwise(pl.col("quantity")),
        amount=pl.when(checks["amount"]).then(None).otherwise(pl.col("amount")),
    ).with_columns(
        quantity=pl.col("quantity").cast(QTY, strict=False),
        amount=pl.col("amount").cast(MONEY, strict=False),
    )
    for name in ("quantity", "amount"):
        bad = cand.filter(
            out[name].is_null() & cand[name].is_not_null() & ~out["_precision"].is_not_null()
        )
        if bad.height:
            row = bad.row(0, named=True)
            raise UsageboxError(
                f"{path}: row {row['source_row']}: {name}: not a decimal: {row[name]!r}"
            )
    return out
