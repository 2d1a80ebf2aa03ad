"""Month close, store-facing: drafts, the approved close, and the audit trail of issued invoices.

The pure invoicing modules (lines, adjustments, numbering, render, register) know nothing of
Delta; this module reads the tables, calls them, and writes. The rules it enforces:

* **Drafts** of an open month are rebuilt from `rated_usage` plus the adjustments every earlier
  closed month now owes (re-rated with all events known); only draft rows are replaced.
* **A close** re-rates the month from `events` time-travelled to one stamped version (so
  `verify_invoice` can rebuild it exactly), refuses while anything would make the invoices
  wrong (failed invariants, unrated usage, a pricebook edited after it issued an invoice), and
  without approval only reports control totals. With approval it numbers gaplessly, renders
  PDFs, writes invoices + lines, and writes the `period_closes` row LAST: that row is the
  commit marker. A crash before it means the close did not happen; the next close deletes the
  leftovers and derives numbers only from closed periods, so no number is skipped.
* **Explain / verify / export** only ever look at issued documents of closed periods.

See docs/adr/0003-invoices-*.md and CONTRACT §3–§5.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from usagebox_pipelines import __version__, pipeline
from usagebox_pipelines import invariants as inv
from usagebox_pipelines.config import SOURCE_ROOT, Settings
from usagebox_pipelines.documents import format_quantity
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.events.raw import accepted_only
from usagebox_pipelines.guardrails.schemas import GUARDRAIL_DECISIONS
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing import tables as t
from usagebox_pipelines.invoicing.adjustments import billed_for_period, compute_adjustments
from usagebox_pipelines.invoicing.audit import close_commits, tampered_periods
from usagebox_pipelines.invoicing.credit import (
    opening_credit,
    with_current_credit,
    write_ledger,
)
from usagebox_pipelines.invoicing.hard_stop import apply_waivers, hard_stop_notes
from usagebox_pipelines.invoicing.lines import (
    build_draft_invoices,
    is_waiver,
    line_documents,
    rated_lines,
)
from usagebox_pipelines.invoicing.numbering import NUMBER_RE, issue_documents, last_sequence
from usagebox_pipelines.invoicing.register import write_register
from usagebox_pipelines.invoicing.render import (
    load_issuer,
    pdf_sha256,
    render_credit_note_pdf,
    render_invoice_pdf,
)
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Account, Accounts, load_accounts
from usagebox_pipelines.pricing.contract import WAIVER_RATE
from usagebox_pipelines.pricing.money import minor_units, round_decimal
from usagebox_pipelines.pricing.pricebook import (
    PricebookError,
    PricebookSet,
    PricebookVersion,
    Rate,
    load_pricebooks,
)
from usagebox_pipelines.pricing.rating import RatingResult, period_bounds, rate_usage
from usagebox_pipelines.rollups.aggregate import rollup_hourly
from usagebox_pipelines.schemas import (
    EVENTS,
    INGEST_LOG,
    INVOICE_LINES,
    INVOICES,
    RATED_USAGE,
    RAW_EVENTS,
    UNRATED_USAGE,
    USAGE_HOURLY,
    USAGE_MONTHLY,
    conform,
)
from usagebox_pipelines.storage import DeltaStore, sql_literal, writes_tables

DECISIONS_TABLE = "guardrail_decisions"
#: Commit metadata of a close: the `guardrail_decisions` version it read.
DECISIONS_VERSION_KEY = "guardrail_decisions_version"
#: Event ids listed per explained line at most (the count is always exact).
EVENT_LIMIT = 10_000
_NOTE_SEP = "\n"
_ZERO = Decimal(0)


# =========================================================================== drafts


@writes_tables("drafts")
def refresh_drafts(
    store: DeltaStore, pricebooks_dir: Path, month: str, run_id: str = "cli"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rebuild the draft invoices (and lines) of an OPEN month; a closed month is left alone.

    Drafts = the month's `rated_usage` + adjustment lines for every earlier closed month whose
    re-rating differs from what was billed for it (its invoice plus adjustments issued since),
    so each restatement is carried exactly once. Only rows with status `draft` (lines without
    a number) of this period are replaced: issued rows never change.
    """
    period_bounds(month)
    closed = t.closed_periods(store)
    if month in closed:
        return pl.DataFrame(schema=INVOICES), pl.DataFrame(schema=INVOICE_LINES)
    accounts = load_accounts(pricebooks_dir)
    rated = _rated_of_month(store, pricebooks_dir, month)
    # credit as it stands now: a close since `rated_usage` was built may have drawn some
    opening = opening_credit(store, accounts, closed)
    rated = with_current_credit(rated, accounts, month, opening)
    rated = apply_waivers(  # decisions recorded since `rated_usage` was built count too
        rated,
        store.scan("usage_hourly", USAGE_HOURLY).filter(
            pl.col("hour").is_between(*month_bounds(month), closed="left")
        ),
        store.read(DECISIONS_TABLE, GUARDRAIL_DECISIONS),
        month,
        load_pricebooks(pricebooks_dir),
        accounts,
        opening,
    )
    adjustments = pending_adjustments(store, pricebooks_dir, month, closed)
    invoices, lines = build_draft_invoices(rated, accounts, month, adjustments)
    _write_drafts(store, month, invoices, lines, run_id)
    return invoices, lines


def pending_adjustments(
    store: DeltaStore, pricebooks_dir: Path, month: str, closed: dict[str, dict] | None = None
) -> pl.DataFrame:
    """Adjustment lines the next invoice after the closed months before `month` must carry.

    Each closed month is re-rated from the current `usage_hourly` (pipeline.rate_month) and
    compared with everything issued for it so far (adjustments.compute_adjustments).
    """
    closed = t.closed_periods(store) if closed is None else closed
    issued = t.issued_lines(store, t.issued_invoices(store, closed))
    earlier = sorted(q for q in closed if q < month)
    rerated = {q: pipeline.rate_month(store, pricebooks_dir, q).rated for q in earlier}
    return _adjustments(issued, rerated)


def _adjustments(issued_lines: pl.DataFrame, rerated: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    parts = [compute_adjustments(rated, issued_lines, q) for q, rated in sorted(rerated.items())]
    parts = [p for p in parts if p.height]
    return pl.concat(parts) if parts else pl.DataFrame(schema=INVOICE_LINES)


def _rated_of_month(store: DeltaStore, pricebooks_dir: Path, month: str) -> pl.DataFrame:
    """The month's stored `rated_usage`; rated on the fly when the table has nothing for it.

    A rated month always has rows once built (contract lines for committed accounts), so no
    rows means "not built yet", not "no usage".
    """
    if store.exists("rated_usage"):
        rows = store.scan("rated_usage", RATED_USAGE).filter(pl.col("period") == month).collect()
        if rows.height:
            return rows
    return pipeline.rate_month(store, pricebooks_dir, month).rated


def _write_drafts(
    store: DeltaStore, month: str, invoices: pl.DataFrame, lines: pl.DataFrame, run_id: str
) -> None:
    """Replace exactly the draft rows of `month` (lines of drafts have no number yet)."""
    meta = {"run_id": run_id, "stage": "draft_invoices", "period": month}
    where = f"period = {sql_literal(month)}"
    store.replace_where(
        t.INVOICES_TABLE, invoices, f"{where} AND status = 'draft'", INVOICES, metadata=meta
    )
    store.replace_where(
        t.INVOICE_LINES_TABLE,
        lines,
        f"{where} AND invoice_number IS NULL",
        INVOICE_LINES,
        metadata=meta,
    )


def draft_lines_match_rated(
    store: DeltaStore, pricebooks_dir: Path, month: str
) -> inv.InvariantResult:
    """Invariant 4 over the stored drafts of an open month.

    (a) per account × meter × model, the quantity of draft usage lines = billable
    `usage_monthly` − unrated usage; (b) per account, usage amounts = `rated_usage` rounded
    per line; (c) per account and closed month Q, what was billed for Q + draft adjustments
    for Q = the rounded lines of Q re-rated now (prepaid credit is not restated, ADR 0003).
    """
    name = "4_invoice_lines_equal_rated_usage"
    closed = t.closed_periods(store)
    if month in closed:
        return inv.InvariantResult(name, True, f"{month} is closed: issued invoices never change")
    drafts = t.all_lines(store).filter(
        (pl.col("period") == month) & pl.col("invoice_number").is_null()
    )
    bad = pl.concat(
        [
            _quantity_mismatch(store, month, drafts),
            _amount_mismatch(store, pricebooks_dir, month, drafts),
            _restatement_mismatch(store, pricebooks_dir, month, drafts, closed),
        ],
        how="diagonal_relaxed",
    )
    return inv.InvariantResult(
        name,
        bad.height == 0,
        f"{drafts.height} draft lines of {month} checked; {bad.height} groups differ",
        [{k: None if v is None else str(v) for k, v in r.items()} for r in bad.head(5).to_dicts()],
    )


def _quantity_mismatch(store: DeltaStore, month: str, drafts: pl.DataFrame) -> pl.DataFrame:
    keys = ["account_id", "meter_id", "model_id"]
    monthly = store.scan("usage_monthly", USAGE_MONTHLY).filter(
        (pl.col("month") == month) & pl.col("billable").fill_null(False)
    )
    unrated = store.scan("unrated_usage", UNRATED_USAGE).filter(pl.col("period") == month)
    expected = pl.concat(
        [
            monthly.select(*keys, q=pl.col("sum")).collect(),
            unrated.select(*keys, q=-pl.col("quantity")).collect(),
        ]
    )
    billed = drafts.filter(pl.col("kind") == "usage").select(*keys, q=pl.col("quantity"))
    return _diff(expected, billed, keys, "q", "usage quantity")


def _amount_mismatch(
    store: DeltaStore, pricebooks_dir: Path, month: str, drafts: pl.DataFrame
) -> pl.DataFrame:
    rated = _rated_of_month(store, pricebooks_dir, month)
    expected = rated_lines(rated).filter(pl.col("kind") == "usage").select("account_id", "amount")
    billed = drafts.filter(pl.col("kind") == "usage").select("account_id", "amount")
    return _diff(expected, billed, ["account_id"], "amount", "usage amount")


def _restatement_mismatch(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    drafts: pl.DataFrame,
    closed: dict[str, dict],
) -> pl.DataFrame:
    issued = t.issued_lines(store, t.issued_invoices(store, closed))
    parts = []
    for q in sorted(p for p in closed if p < month):
        now = rated_lines(pipeline.rate_month(store, pricebooks_dir, q).rated)
        expected = now.filter(pl.col("kind") != "credit").select("account_id", "amount")
        before = billed_for_period(issued, q).filter(pl.col("kind") != "credit")
        carried = drafts.filter((pl.col("kind") == "adjustment") & (pl.col("adjusts_period") == q))
        billed = pl.concat([before, carried]).select("account_id", "amount")
        parts.append(_diff(expected, billed, ["account_id"], "amount", f"restatement of {q}"))
    return pl.concat(parts) if parts else pl.DataFrame()


def _diff(
    expected: pl.DataFrame, actual: pl.DataFrame, keys: list[str], col: str, what: str
) -> pl.DataFrame:
    """Groups where Σ expected[col] ≠ Σ actual[col], with `check` naming what differs."""
    a = expected.group_by(keys).agg(expected=pl.col(col).sum().cast(pl.Decimal(38, 12)))
    b = actual.group_by(keys).agg(actual=pl.col(col).sum().cast(pl.Decimal(38, 12)))
    zero = pl.lit(0).cast(pl.Decimal(38, 12))
    joined = a.join(b, on=keys, how="full", coalesce=True, nulls_equal=True)
    return (
        joined.with_columns(pl.col("expected").fill_null(zero), pl.col("actual").fill_null(zero))
        .filter(pl.col("expected") != pl.col("actual"))
        .with_columns(check=pl.lit(what))
    )


# =========================================================================== close


@dataclass
class _Plan:
    """Everything one close decides before it writes anything."""

    period: str
    events_version: int | None
    books: PricebookSet
    accounts: Accounts
    hourly: pl.DataFrame
    opening: dict[str, Decimal] | None
    invoices: pl.DataFrame
    lines: pl.DataFrame
    issued: pl.DataFrame
    decisions: pl.DataFrame
    decisions_version: int | None


@writes_tables("close")
def close_month(
    store: DeltaStore,
    settings: Settings,
    month: str,
    approve: bool = False,
    now: datetime | None = None,
    *,
    approved_by: str | None = None,
    run_id: str = "cli",
    force: bool = False,
) -> dict:
    """Close `month`: without `approve`, control totals and drafts (nothing written); with it,
    numbered, stamped, rendered invoices and the `period_closes` marker.

    Raises InvariantError naming every reason the month cannot be closed. Closing a closed
    month changes nothing and returns `status: already_closed`. `now` is the issue time
    printed on the documents (default: the clock), `approved_by` who approved (default: the
    user running it), both recorded. An earlier month with billable usage that is still open
    refuses the close (UsageboxError: prepaid credit is drawn in issue order) unless `force`.
    Holds the home's writer lease, so two approvals of one month issue each number once: the
    second finds the month closed.
    """
    period_bounds(month)
    closed = t.closed_periods(store)
    if month in closed:
        return _already_closed(store, settings, month, closed[month])
    tampered = tampered_periods(store, closed)
    if tampered:
        raise InvariantError(
            f"close {month} refused: "
            + "; ".join(p["problem"] for p in tampered)
            + "; issued invoices are never re-issued: restore the period_closes row "
            "(Delta time travel) and run `usagebox verify`"
        )
    open_before = t.open_months_before(store, month, closed)
    if open_before and not force:
        first = open_before[0]
        raise UsageboxError(
            f"close {month} refused: {', '.join(open_before)} still open with billable usage; "
            f"close it first (usagebox close {first} --approve) or pass --force to close "
            f"{month} before it"
        )
    plan = _plan_close(store, settings.pricebooks, month, closed)
    if not approve:
        return _needs_approval(store, plan)
    return _issue(store, settings, plan, now, approved_by, run_id)


def _plan_close(
    store: DeltaStore, pricebooks_dir: Path, month: str, closed: dict[str, dict]
) -> _Plan:
    """Rate the month (and re-rate earlier closed months) at one `events` version, or refuse."""
    books = load_pricebooks(pricebooks_dir)
    accounts = load_accounts(pricebooks_dir)
    issued = t.issued_invoices(store, closed)
    version = store.version("events")
    earlier = sorted(q for q in closed if q < month)
    problems = _table_problems(store, month, earlier) + _frozen_problems(books, issued)
    opening = opening_credit(store, accounts, closed)
    hourly = _hourly_at(store, month, version)
    rating = rate_usage(hourly, month, books, accounts, opening)
    rerated = {q: rate_usage(_hourly_at(store, q, version), q, books, accounts) for q in earlier}
    problems += _unrated_problems(store, month, rating, rerated)
    if problems:
        raise InvariantError(f"close {month} refused: " + "; ".join(problems))
    # the decisions this close reads, at one version (recorded in its commits for verify)
    decisions_version = store.version(DECISIONS_TABLE)
    decisions = decisions_at(store, decisions_version)
    rated = apply_waivers(rating.rated, hourly, decisions, month, books, accounts, opening)
    restated = {
        q: apply_waivers(r.rated, _hourly_at(store, q, version), decisions, q, books, accounts)
        for q, r in rerated.items()
    }
    lines_issued = t.issued_lines(store, issued)
    adjustments = _adjustments(lines_issued, restated)
    invoices, lines = build_draft_invoices(rated, accounts, month, adjustments)
    return _Plan(
        month,
        version,
        books,
        accounts,
        hourly,
        opening,
        invoices,
        lines,
        issued,
        decisions,
        decisions_version,
    )


def decisions_at(store: DeltaStore, version: int | None) -> pl.DataFrame:
    """`guardrail_decisions` as of `version` (none when the table did not exist)."""
    if version is None:
        return pl.DataFrame(schema=GUARDRAIL_DECISIONS)
    return store.read(DECISIONS_TABLE, GUARDRAIL_DECISIONS, version=version)


def _hourly_at(
    store: DeltaStore, period: str, version: int | None, account_id: str | None = None
) -> pl.DataFrame:
    """`usage_hourly` of `period` rebuilt from `events` as of `version` (the stamped one)."""
    start, end = month_bounds(period)
    events = store.scan("events", EVENTS, version=version)
    if account_id is not None:
        events = events.filter(pl.col("account_id") == account_id)
    return rollup_hourly(events, start, end)


def _table_problems(store: DeltaStore, month: str, earlier: list[str]) -> list[str]:
    """Failed invariants 1–3 for the month, and stale rollups of closed months re-rated now."""
    problems = [
        f"invariant {r.name} failed ({r.detail})"
        for r in pipeline.verify(store, month)
        if not r.passed
    ]
    events = pipeline.events_frame(store)
    hourly = store.scan("usage_hourly", USAGE_HOURLY)
    for q in earlier:
        result = inv.hourly_matches_events(events, hourly, *month_bounds(q))
        if not result.passed:
            problems.append(
                f"usage_hourly of closed month {q} does not match events ({result.detail}); "
                f"rebuild it (`usagebox run --month {q}`) so its restatement is reviewed"
            )
    return problems


def _frozen_problems(books: PricebookSet, issued: pl.DataFrame) -> list[str]:
    """A pricebook version edited (or removed) after it issued an invoice blocks every close."""
    try:
        books.check_frozen(t.recorded_fingerprints(issued))
    except PricebookError as exc:
        return [str(exc)]
    return []


def _unrated_problems(
    store: DeltaStore, month: str, rating: RatingResult, rerated: Mapping[str, RatingResult]
) -> list[str]:
    """Usage no rate prices is never billed as free: it blocks the close (CONTRACT §4)."""
    stored = store.scan("unrated_usage", UNRATED_USAGE).filter(pl.col("period") == month)
    frames = {month: pl.concat([stored.collect(), rating.unrated])}
    frames |= {q: r.unrated for q, r in rerated.items()}
    problems = []
    for period, frame in sorted(frames.items()):
        rows = frame.unique(["account_id", "meter_id", "model_id", "dimensions", "reason"])
        if rows.height:
            where = "" if period == month else f" (late usage of closed month {period})"
            problems.append(
                f"{rows.height} unrated usage group(s){where}, e.g. {_unrated_example(rows)}; "
                "add a rate (new pricebook version) or fix the events, then rebuild the month"
            )
    return problems


def _unrated_example(rows: pl.DataFrame) -> str:
    first = rows.sort("account_id", "meter_id", nulls_last=True).row(0, named=True)
    return f"account {first['account_id']}: {first['reason']}"


# --------------------------------------------------------------------------- needs approval


def _needs_approval(store: DeltaStore, plan: _Plan) -> dict:
    """What the approver checks before `--approve`; writes nothing. Costs about what the
    approved close costs before rendering: the same plan, plus a few aggregate scans."""
    n = plan.invoices.height
    return {
        "status": "needs_approval",
        "period": plan.period,
        "message": f"nothing written; review the control totals, then rerun with --approve to "
        f"issue {n} document(s) for {plan.period}",
        "events_table_version": plan.events_version,
        "control_totals": control_totals(store, plan.period, plan.events_version, plan),
        "invoices": _draft_summaries(plan.invoices, plan.lines),
    }


def control_totals(
    store: DeltaStore, period: str, events_version: int | None, plan: _Plan | None = None
) -> dict:
    """Events, ingest outcomes, rollup and invoice totals of the month, for the approver.

    `duplicates`, `conflicts` and `quarantined` are totals of the ingest batches that carried
    at least one accepted event counting in the period: a duplicate or a quarantined row has
    no trustworthy hour of its own, so it is attributed through its batch (`ingest.scope`).
    """
    hourly = plan.hourly if plan else _hourly_at(store, period, events_version)
    ingest = _ingest_totals(store, period)
    out = {
        "events": _event_totals(store, period, events_version),
        "duplicates": ingest["duplicates"],
        "conflicts": ingest["conflicts"],
        "quarantined": ingest["quarantined"],
        "ingest": ingest,
        "rollup": _rollup_totals(hourly),
        "unrated": 0,
    }
    if plan is not None:
        out["invoices"] = _invoice_totals(plan.invoices, plan.lines)
    return out


def _event_totals(store: DeltaStore, period: str, version: int | None) -> dict:
    start, end = month_bounds(period)
    events = store.scan("events", EVENTS, version=version).filter(
        (pl.col("hour") >= start) & (pl.col("hour") < end)
    )
    by_status = (  # one scan: counts and late events together
        events.group_by("status")
        .agg(n=pl.len(), late=pl.col("is_late").fill_null(False).sum())
        .collect()
        .sort("status")
    )
    counts = {s: int(n) for s, n in by_status.select("status", "n").iter_rows()}
    return {
        "rows": sum(counts.values()),
        "counted": counts.get("ok", 0),
        "by_status": counts,
        "late": int(by_status["late"].sum() or 0),
    }


def _ingest_totals(store: DeltaStore, period: str) -> dict:
    start, end = month_bounds(period)
    batches = (
        accepted_only(store.scan("raw_events", RAW_EVENTS))
        .filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        .select("batch_id")
        .unique()
    )
    log = store.scan("ingest_log", INGEST_LOG).join(batches, on="batch_id", how="semi").collect()
    names = ("rows", "accepted", "duplicates", "conflicts", "rejected", "late")
    sums = {k: int(log[k].sum() or 0) for k in names}
    return {
        "scope": "ingest batches with at least one accepted event in the period",
        "batches": log.height,
        **{k: v for k, v in sums.items() if k != "rejected"},
        "quarantined": sums["rejected"],
    }


def _rollup_totals(hourly: pl.DataFrame) -> dict:
    """Per meter: every event's quantity, the billable part, and rows/events counted."""
    billable = pl.col("billable").fill_null(False)
    per_meter = hourly.group_by("meter_id").agg(
        sum=pl.col("sum").sum(),
        billable_sum=pl.col("sum").filter(billable).sum(),
        rows=pl.len(),
        events=pl.col("count").sum(),
    )
    return {
        r["meter_id"]: {
            "sum": str(r["sum"]),
            "billable_sum": str(r["billable_sum"] or 0),
            "rows": r["rows"],
            "events": r["events"],
        }
        for r in per_meter.sort("meter_id", nulls_last=True).iter_rows(named=True)
    }


def _invoice_totals(invoices: pl.DataFrame, lines: pl.DataFrame) -> dict:
    """Per currency: documents, period charges (subtotal), adjustments, credit and total."""
    docs = line_documents(invoices, lines).join(
        invoices.select("account_id", "document_type", "currency"),
        on=["account_id", "document_type"],
    )
    out = {}
    for (currency,), part in sorted(invoices.group_by("currency"), key=lambda kv: str(kv[0])):
        own = docs.filter(pl.col("currency") == currency)
        out[currency] = {
            "documents": part.height,
            "credit_notes": part.filter(pl.col("document_type") == "credit_note").height,
            "subtotal": str(part["subtotal"].sum()),
            "adjustments": str(own.filter(pl.col("kind") == "adjustment")["amount"].sum()),
            "credit": str(own.filter(pl.col("kind") == "credit")["amount"].sum()),
            "total": str(part["total"].sum()),
        }
    return out


def _draft_summaries(invoices: pl.DataFrame, lines: pl.DataFrame) -> list[dict]:
    """One summary per draft document, from ONE pass over the lines (grouped by account and
    document type): a per-document join over all lines was quadratic (ADR 0003 note)."""
    keys = ["account_id", "document_type"]
    per_doc = (
        line_documents(invoices, lines)
        .group_by(keys)
        .agg(
            lines=pl.len(),
            adjusts_periods=pl.col("adjusts_period").drop_nulls().unique().sort(),
        )
    )
    joined = invoices.join(per_doc, on=keys, how="left", nulls_equal=True, maintain_order="left")
    return [
        {
            "account_id": row["account_id"],
            "document_type": row["document_type"],
            "currency": row["currency"],
            "subtotal": str(row["subtotal"]),
            "total": str(row["total"]),
            "lines": row["lines"] or 0,
            "adjusts_periods": list(row["adjusts_periods"] or []),
        }
        for row in joined.iter_rows(named=True)
    ]


# --------------------------------------------------------------------------- issue


def _issue(
    store: DeltaStore,
    settings: Settings,
    plan: _Plan,
    now: datetime | None,
    approved_by: str | None,
    run_id: str,
) -> dict:
    """Number, stamp, render and write; the `period_closes` row goes last (commit marker)."""
    issued_at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    remove_unfinished_closes(store, settings.documents_dir)
    _clear_documents(settings.documents_dir, plan.period)
    issuer = load_issuer()
    invoices, lines = issue_documents(
        plan.invoices,
        plan.lines,
        last_seq=last_sequence(plan.issued["invoice_number"].to_list(), issuer["invoice_prefix"]),
        prefix=issuer["invoice_prefix"],
        issued_at=issued_at,
        payment_terms_days=_terms(plan),
    )
    invoices = _stamp(store, plan, invoices, lines)
    invoices = _render_all(settings.documents_dir, plan, invoices, lines, issuer)
    close_row = _close_row(plan, invoices, approved_by, run_id)
    _commit(store, plan.period, invoices, lines, close_row, run_id, plan.decisions_version)
    write_ledger(store, plan.accounts, run_id)  # derived from issued draws; after the marker
    return {
        "status": "closed",
        "period": plan.period,
        "closed_at": close_row["closed_at"].isoformat(),
        "issued_at": issued_at.isoformat(),
        "events_table_version": plan.events_version,
        "invoices": _issued_summary(invoices, settings.documents_dir),
    }


def remove_unfinished_closes(store: DeltaStore, documents_dir: Path) -> list[str]:
    """Delete issued rows (and their PDFs) of periods whose close never wrote its marker.

    Such rows are invisible to every reader; removing them before numbering keeps the
    sequence gapless, since the next numbers derive from closed periods only.
    """
    periods = t.unfinished_periods(store)
    if not periods:
        return []
    stale = t.all_invoices(store).filter(
        (pl.col("status") == "issued") & pl.col("period").is_in(periods)
    )
    for period in periods:
        where = f"period = {sql_literal(period)}"
        store.delete_where(t.INVOICES_TABLE, f"{where} AND status = 'issued'")
        store.delete_where(t.INVOICE_LINES_TABLE, f"{where} AND invoice_number IS NOT NULL")
    for rel in stale["pdf_path"].drop_nulls().to_list():
        path = _document_file(documents_dir, rel)
        if path is not None:
            path.unlink(missing_ok=True)
    return periods


def _clear_documents(documents_dir: Path, period: str) -> None:
    """PDFs left in an open period's folder by a crash before any row was written: no issued
    row names them, and their numbers will be reissued, so they go before rendering."""
    for stale in (Path(documents_dir) / _period_folder(period)).glob("*.pdf"):
        stale.unlink()


def _terms(plan: _Plan) -> dict[str, int]:
    ids = plan.invoices["account_id"].unique().to_list()
    return {a: plan.accounts.get(a).payment_terms_days for a in ids}


def _stamp(
    store: DeltaStore, plan: _Plan, invoices: pl.DataFrame, lines: pl.DataFrame
) -> pl.DataFrame:
    """What every issued document records to be reproduced: events version, the content
    hashes of the pricebook versions its lines used, code and template version, notes."""
    decisions = plan.decisions
    fingerprints = plan.books.fingerprints()
    rows = []
    for row in invoices.iter_rows(named=True):
        account = plan.accounts.get(row["account_id"])
        own = lines.filter(pl.col("invoice_number") == row["invoice_number"])
        keys = {f"{account.pricebook}@{v}" for v in own["price_version"].drop_nulls().to_list()}
        used = {k: fingerprints[k] for k in sorted(keys) if k in fingerprints}
        rows.append(
            row
            | {
                "events_table_version": plan.events_version,
                "pricebook_versions": t.dump_json(used),
                "code_version": code_version(),
                "template_version": TEMPLATE_VERSION,
                "notes": _notes(row, decisions, plan),
            }
        )
    return pl.DataFrame(rows, schema=INVOICES)


def _notes(row: dict, decisions: pl.DataFrame, plan: _Plan) -> str | None:
    """The draft's note plus one note per guardrail hard stop (invoices only), one per line:
    what was billed after the stop (invoicing.hard_stop), no internal decision ids."""
    notes = [row["notes"]] if row["notes"] else []
    if row["document_type"] == "invoice":
        notes += hard_stop_notes(
            decisions, plan.hourly, row["account_id"], plan.period, plan.books, plan.accounts
        )
    return _NOTE_SEP.join(notes) if notes else None


def _render_all(
    documents_dir: Path, plan: _Plan, invoices: pl.DataFrame, lines: pl.DataFrame, issuer: dict
) -> pl.DataFrame:
    """Render every document to `<documents>/invoices/<period>/<number>.pdf`, record its hash."""
    paths, hashes = [], []
    for row in invoices.iter_rows(named=True):
        own = lines.filter(pl.col("invoice_number") == row["invoice_number"])
        corrects = _corrected_numbers(plan.issued, row, own)
        pdf = render_document(row, own, plan.accounts.get(row["account_id"]), issuer, corrects)
        rel = document_relpath(row["period"], row["invoice_number"])
        _write_atomic(documents_dir / rel, pdf)
        paths.append(rel)
        hashes.append(pdf_sha256(pdf))
    return invoices.with_columns(
        pdf_path=pl.Series(paths, dtype=pl.String), pdf_sha256=pl.Series(hashes, dtype=pl.String)
    )


def render_document(
    invoice: dict, lines: pl.DataFrame, account: Account, issuer: dict, corrects: list[str]
) -> bytes:
    """The one way a stored document is rendered (at issue and by verify_invoice).

    Stored `notes` hold one note per line; they are passed as a list so each prints apart.
    """
    notes = [n for n in (invoice.get("notes") or "").split(_NOTE_SEP) if n]
    doc = {**invoice, "notes": None}
    if invoice.get("document_type") == "credit_note":
        return render_credit_note_pdf(doc, lines, account, issuer, corrects=corrects, notes=notes)
    return render_invoice_pdf(doc, lines, account, issuer, notes=notes)


def _corrected_numbers(issued: pl.DataFrame, row: dict, lines: pl.DataFrame) -> list[str]:
    """For a credit note: the account's issued invoices of the periods it adjusts."""
    if row["document_type"] != "credit_note":
        return []
    periods = lines["adjusts_period"].drop_nulls().unique().to_list()
    hits = issued.filter(
        (pl.col("account_id") == row["account_id"])
        & pl.col("period").is_in(periods)
        & (pl.col("document_type") == "invoice")
    )
    return sorted(hits["invoice_number"].to_list())


def document_relpath(period: str, number: str) -> str:
    """`invoices/<period>/<number>.pdf`; both parts are validated, never account ids."""
    if not NUMBER_RE.match(number or ""):
        raise UsageboxError(f"refusing to name a document file after {number!r}")
    return f"{_period_folder(period)}/{number}.pdf"


def _period_folder(period: str) -> str:
    period_bounds(period)  # YYYY-MM only
    return f"invoices/{period}"


def _document_file(documents_dir: Path, rel: str) -> Path | None:
    """The stored relative path resolved under the documents folder (None if it escapes)."""
    root = Path(documents_dir).resolve()
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) else None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _close_row(plan: _Plan, invoices: pl.DataFrame, approved_by: str | None, run_id: str) -> dict:
    numbers = sorted(invoices["invoice_number"].to_list())
    totals = {str(c): str(part["total"].sum()) for (c,), part in invoices.group_by("currency")}
    opening = None if plan.opening is None else {k: str(v) for k, v in plan.opening.items()}
    return {
        "period": plan.period,
        "closed_at": datetime.now(UTC),
        "events_table_version": plan.events_version,
        "invoices": invoices.height,
        "first_number": numbers[0] if numbers else None,
        "last_number": numbers[-1] if numbers else None,
        "totals": t.dump_json(totals),
        "opening_credit": None if opening is None else t.dump_json(opening),
        "approved_by": approved_by or _whoami(),
        "code_version": code_version(),
        "run_id": run_id,
    }


def _commit(
    store: DeltaStore,
    period: str,
    invoices: pl.DataFrame,
    lines: pl.DataFrame,
    close_row: dict,
    run_id: str,
    decisions_version: int | None = None,
) -> None:
    """Three commits: lines, invoices (each replacing the period's drafts), then the marker.
    Each records the `guardrail_decisions` version the close read (hard-stop waivers and
    notes; "none": no table yet), so verify rebuilds from the same decisions."""
    meta = {
        "run_id": run_id,
        "stage": "close",
        "period": period,
        DECISIONS_VERSION_KEY: "none" if decisions_version is None else str(decisions_version),
    }
    where = f"period = {sql_literal(period)}"
    store.replace_where(t.INVOICE_LINES_TABLE, lines, where, INVOICE_LINES, metadata=meta)
    store.replace_where(t.INVOICES_TABLE, invoices, where, INVOICES, metadata=meta)
    marker = pl.DataFrame([close_row], schema=t.PERIOD_CLOSES)
    store.append(t.PERIOD_CLOSES_TABLE, marker, t.PERIOD_CLOSES, metadata=meta)


def _whoami() -> str:
    try:
        return os.environ.get("USAGEBOX_APPROVER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version, plus `git describe` when the code runs from a checkout."""
    if SOURCE_ROOT is None:
        return __version__
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=SOURCE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    described = out.stdout.strip()
    return f"{__version__}+{described}" if out.returncode == 0 and described else __version__


def _already_closed(store: DeltaStore, settings: Settings, month: str, row: dict) -> dict:
    docs = t.issued_invoices(store).filter(pl.col("period") == month)
    return {
        "status": "already_closed",
        "period": month,
        "closed_at": row["closed_at"].isoformat(),
        "message": f"{month} was already closed at {row['closed_at']:%Y-%m-%d %H:%M:%S} UTC; "
        "nothing changed (issued invoices never change; later usage becomes adjustments)",
        "events_table_version": row["events_table_version"],
        "invoices": _issued_summary(docs, settings.documents_dir),
    }


def _issued_summary(invoices: pl.DataFrame, documents_dir: Path) -> list[dict]:
    return [
        {
            "invoice_number": r["invoice_number"],
            "document_type": r["document_type"],
            "account_id": r["account_id"],
            "total": str(r["total"]),
            "currency": r["currency"],
            "pdf": str(Path(documents_dir) / r["pdf_path"]) if r["pdf_path"] else None,
            "pdf_sha256": r["pdf_sha256"],
        }
        for r in invoices.sort("invoice_number").iter_rows(named=True)
    ]


# =========================================================================== reproduce


@dataclass
class _Issued:
    """One issued document with what is needed to rebuild it as it was issued."""

    invoice: dict
    lines: pl.DataFrame
    closed: dict[str, dict]
    books: PricebookSet
    accounts: Accounts

    @property
    def period(self) -> str:
        return self.invoice["period"]

    @property
    def version(self) -> int | None:
        return self.invoice["events_table_version"]

    @property
    def account(self) -> Account:
        return self.accounts.get(self.invoice["account_id"])

    def closed_before(self) -> dict[str, dict]:
        """Closes committed before this document's close: what it was compared against."""
        mine = self.closed[self.period]["closed_at"]
        return {p: r for p, r in self.closed.items() if r["closed_at"] < mine}


def _load_issued(store: DeltaStore, settings: Settings, number: str) -> _Issued:
    """An issued document of a closed period by number, or a UsageboxError naming it."""
    if not NUMBER_RE.match(number or ""):
        raise UsageboxError(f"{number!r} is not an invoice number (like UBX-2026-000001)")
    closed = t.closed_periods(store)
    docs = t.issued_invoices(store, closed).filter(pl.col("invoice_number") == number)
    if docs.height == 0:
        raise UsageboxError(f"invoice {number} not found: no issued invoice has that number")
    if docs.height > 1:
        raise InvariantError(f"invoice {number} is stored {docs.height} times")
    lines = t.all_lines(store).filter(pl.col("invoice_number") == number).sort("line_no")
    return _Issued(
        docs.row(0, named=True),
        lines,
        closed,
        load_pricebooks(settings.pricebooks),
        load_accounts(settings.pricebooks),
    )


def _rate_as_issued(store: DeltaStore, doc: _Issued) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(hourly, rated) of the document's account and period at its stamped events version,
    with the hard-stop waivers of the decisions its close read."""
    account_id = doc.invoice["account_id"]
    hourly = _hourly_at(store, doc.period, doc.version, account_id)
    opening = t.decimal_map(doc.closed[doc.period]["opening_credit"])
    rated = rate_usage(hourly, doc.period, doc.books, doc.accounts, opening).rated
    decisions = decisions_of_close(store, doc.period)
    rated = apply_waivers(rated, hourly, decisions, doc.period, doc.books, doc.accounts, opening)
    return hourly, rated.filter(pl.col("account_id") == account_id)


def decisions_of_close(
    store: DeltaStore, period: str, commits: Mapping[str, dict] | None = None
) -> pl.DataFrame:
    """The `guardrail_decisions` rows the close of `period` read (the version its commits
    record); a close from before that was recorded gets every decision (append-only)."""
    commits = close_commits(store, t.INVOICES_TABLE) if commits is None else commits
    raw = (commits.get(period) or {}).get(DECISIONS_VERSION_KEY)
    if raw is None:
        return store.read(DECISIONS_TABLE, GUARDRAIL_DECISIONS)
    return decisions_at(store, None if raw == "none" else int(raw))


def rebuild_period(
    store: DeltaStore,
    period: str,
    version: int | None,
    closed: dict[str, dict],
    books: PricebookSet,
    accounts: Accounts,
    decisions: pl.DataFrame,
    account_id: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The documents of a closed period (of one account, or all) rebuilt from time-travelled
    events, the pricebooks, the decisions its close read and the issued history, as drafts
    (INVOICES, INVOICE_LINES with `document_type`). Rating is per account, so rebuilding all
    accounts at once gives each the same documents as alone (one pass per period in verify).

    Adjustment lines are recomputed as at the close: earlier closed months re-rated at the
    same events version, compared with what had been issued before this close.
    """
    mine = pl.lit(True) if account_id is None else pl.col("account_id") == account_id
    hourly = _hourly_at(store, period, version, account_id)
    opening = t.decimal_map(closed[period]["opening_credit"])
    rated = rate_usage(hourly, period, books, accounts, opening).rated
    rated = apply_waivers(rated, hourly, decisions, period, books, accounts, opening)
    before = {p: r for p, r in closed.items() if r["closed_at"] < closed[period]["closed_at"]}
    issued_before = t.issued_lines(store, t.issued_invoices(store, before)).filter(mine)
    rerated = {}
    for q in sorted(p for p in before if p < period):
        q_hourly = _hourly_at(store, q, version, account_id)
        q_rated = rate_usage(q_hourly, q, books, accounts).rated
        q_rated = apply_waivers(q_rated, q_hourly, decisions, q, books, accounts)
        rerated[q] = q_rated.filter(mine)
    adjustments = _adjustments(issued_before, rerated).filter(mine)
    invoices, lines = build_draft_invoices(rated.filter(mine), accounts, period, adjustments)
    return invoices, line_documents(invoices, lines)


def rebuilt_document(
    invoice: dict, invoices: pl.DataFrame, lines: pl.DataFrame
) -> tuple[dict | None, pl.DataFrame]:
    """The stored document `invoice` as `rebuild_period` rebuilt it: priced header fields
    from the rebuild, the rest (number, dates, notes, stamps) from the stored row."""
    kind = invoice["document_type"]
    which = (pl.col("account_id") == invoice["account_id"]) & (pl.col("document_type") == kind)
    match = invoices.filter(which)
    if match.height != 1:
        return None, pl.DataFrame(schema=INVOICE_LINES)
    own = lines.filter(which).with_columns(invoice_number=pl.lit(invoice["invoice_number"]))
    priced = match.row(0, named=True)
    header = {k: priced[k] for k in ("currency", "subtotal", "total", "document_type")}
    return invoice | header, conform(own, INVOICE_LINES)


def _rebuild(store: DeltaStore, doc: _Issued) -> tuple[dict | None, pl.DataFrame]:
    """One issued document rebuilt from its stamps (rebuild_period for its account)."""
    invoices, lines = rebuild_period(
        store,
        doc.period,
        doc.version,
        doc.closed,
        doc.books,
        doc.accounts,
        decisions_of_close(store, doc.period),
        doc.invoice["account_id"],
    )
    return rebuilt_document(doc.invoice, invoices, lines)


# --------------------------------------------------------------------------- verify


def verify_invoice(store: DeltaStore, settings: Settings, invoice_number: str) -> dict:
    """Rebuild an issued document from its stamps and compare lines, totals and PDF bytes.

    `reproduced` is true only when the pricebook versions are unchanged, every line and total
    equals the rebuilt one, and the re-rendered PDF has the stored sha256 (and so does the
    stored file). Byte-identical PDFs also need the same accounts.yaml details, issuer,
    template, WeasyPrint and fonts as at issue (ADR 0003).
    """
    doc = _load_issued(store, settings, invoice_number)
    differences = _fingerprint_differences(doc)
    rebuilt, lines = _rebuild(store, doc)
    rerendered = None
    if rebuilt is None:
        differences.append({"what": "document", "detail": "re-rating gives no such document"})
    else:
        differences += _line_differences(doc.lines, lines)
        differences += _total_differences(doc.invoice, doc.lines, rebuilt)
        corrects = _corrected_numbers(t.issued_invoices(store, doc.closed), rebuilt, lines)
        pdf = render_document(rebuilt, lines, doc.account, load_issuer(), corrects)
        rerendered = pdf_sha256(pdf)
    stored_file = _file_sha(settings.documents_dir, doc.invoice["pdf_path"])
    differences += _pdf_differences(doc.invoice["pdf_sha256"], rerendered, stored_file)
    return {
        "invoice_number": invoice_number,
        "reproduced": not differences,
        "period": doc.period,
        "account_id": doc.invoice["account_id"],
        "events_table_version": doc.version,
        "pricebook_versions": t.json_or_none(doc.invoice["pricebook_versions"]),
        "lines": doc.lines.height,
        "total": str(doc.invoice["total"]),
        "pdf_sha256": {
            "stored": doc.invoice["pdf_sha256"],
            "rerendered": rerendered,
            "file": stored_file,
        },
        "differences": differences,
    }


def _fingerprint_differences(doc: _Issued) -> list[dict]:
    recorded = t.recorded_fingerprints(pl.DataFrame([doc.invoice], schema=INVOICES))
    now = doc.books.fingerprints()
    out = []
    for key, sha in sorted(recorded.items()):
        if key not in now:
            out.append({"what": "pricebook", "version": key, "detail": "version file is gone"})
        elif not doc.books.get(key).unchanged_since(sha):
            out.append(
                {
                    "what": "pricebook",
                    "version": key,
                    "file": doc.books.get(key).file.name,
                    "detail": "file edited after it issued this invoice",
                    "stored": sha,
                    "now": now[key],
                }
            )
    return out


def _line_differences(stored: pl.DataFrame, rebuilt: pl.DataFrame) -> list[dict]:
    """Column by column, per line_no; missing or extra lines are named too."""
    a = {r["line_no"]: r for r in conform(stored, INVOICE_LINES).iter_rows(named=True)}
    b = {r["line_no"]: r for r in conform(rebuilt, INVOICE_LINES).iter_rows(named=True)}
    out: list[dict] = []
    for no in sorted(set(a) | set(b), key=lambda n: (n is None, n or 0)):
        if no not in b:
            out.append({"what": "line", "line_no": no, "detail": "stored line not reproduced"})
        elif no not in a:
            out.append({"what": "line", "line_no": no, "detail": "rebuilt line is not stored"})
        else:
            out += [
                {
                    "what": "line",
                    "line_no": no,
                    "column": col,
                    "stored": _text(a[no][col]),
                    "rebuilt": _text(b[no][col]),
                }
                for col in INVOICE_LINES.names()
                if a[no][col] != b[no][col]
            ]
    return out


def _total_differences(stored: dict, stored_lines: pl.DataFrame, rebuilt: dict) -> list[dict]:
    out = [
        {
            "what": "invoice",
            "column": col,
            "stored": _text(stored[col]),
            "rebuilt": _text(rebuilt[col]),
        }
        for col in ("currency", "subtotal", "total", "document_type")
        if stored[col] != rebuilt[col]
    ]
    line_sum = stored_lines["amount"].sum() if stored_lines.height else _ZERO
    if stored["total"] != line_sum:
        out.append(
            {
                "what": "invoice",
                "column": "total",
                "detail": f"stored total {stored['total']} is not the sum of its lines {line_sum}",
            }
        )
    return out


def _pdf_differences(stored: str | None, rerendered: str | None, file: str | None) -> list[dict]:
    out = []
    if rerendered is not None and rerendered != stored:
        out.append(
            {
                "what": "pdf",
                "detail": "re-rendered PDF differs from the stored sha256",
                "stored": stored,
                "rerendered": rerendered,
            }
        )
    if file != stored:
        detail = "stored PDF file is missing" if file is None else "stored PDF file was changed"
        out.append({"what": "pdf_file", "detail": detail, "stored": stored, "file": file})
    return out


def _file_sha(documents_dir: Path, rel: str | None) -> str | None:
    path = _document_file(documents_dir, rel) if rel else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- explain


def explain_invoice(
    store: DeltaStore,
    settings: Settings,
    invoice_number: str,
    line_no: int | None = None,
    with_events: bool = False,
) -> dict:
    """The audit trail of an issued document, per line.

    Usage lines: the pricebook file, version and rate rule with the tier arithmetic, and the
    hourly rollup rows behind the line (rebuilt from `events` at the stamped version); with
    `with_events`, the event ids. Contract lines: the account term and its arithmetic.
    Adjustment lines: the late events of the adjusted month that arrived since the previous
    close. Unknown numbers or lines raise UsageboxError.
    """
    doc = _load_issued(store, settings, invoice_number)
    lines = doc.lines
    if line_no is not None:
        lines = lines.filter(pl.col("line_no") == line_no)
        if lines.height == 0:
            raise UsageboxError(
                f"invoice {invoice_number} has no line {line_no} (lines 1..{doc.lines.height})"
            )
    hourly, rated = _rate_as_issued(store, doc)
    events = store.scan("events", EVENTS, version=doc.version)
    explained = [
        _explain_line(store, doc, line, hourly, rated, events, with_events)
        for line in lines.iter_rows(named=True)
    ]
    inv_row = doc.invoice
    return {
        "invoice_number": invoice_number,
        "document_type": inv_row["document_type"],
        "account_id": inv_row["account_id"],
        "period": doc.period,
        "currency": inv_row["currency"],
        "subtotal": str(inv_row["subtotal"]),
        "total": str(inv_row["total"]),
        "issued_at": inv_row["issued_at"].isoformat(),
        "events_table_version": doc.version,
        "pricebook_versions": t.json_or_none(inv_row["pricebook_versions"]),
        "code_version": inv_row["code_version"],
        "template_version": inv_row["template_version"],
        "lines": explained,
    }


def _explain_line(
    store: DeltaStore,
    doc: _Issued,
    line: dict,
    hourly: pl.DataFrame,
    rated: pl.DataFrame,
    events: pl.LazyFrame,
    with_events: bool,
) -> dict:
    base = {
        k: _plain(line[k])
        for k in (
            "line_no",
            "kind",
            "description",
            "meter_id",
            "model_id",
            "quantity",
            "unit",
            "unit_price",
            "per",
            "amount",
            "exact_amount",
            "price_version",
            "tier",
            "adjusts_period",
        )
    }
    kind = line["kind"]
    if kind == "usage":
        return base | _explain_usage(doc, line, hourly, rated, events, with_events)
    if kind == "adjustment":
        return base | _explain_adjustment(store, doc, line, events)
    return base | _explain_contract(doc, line)


def _line_rated_rows(line: dict, rated: pl.DataFrame) -> pl.DataFrame:
    """The rated rows a usage line sums (dimensions that do not change the price summed away)."""
    cond = (
        (pl.col("line_kind") == "usage")
        & (pl.col("meter_id") == line["meter_id"])
        & pl.col("model_id").eq_missing(line["model_id"])
        & pl.col("price_version").eq_missing(line["price_version"])
        & pl.col("tier").eq_missing(line["tier"])
        & (pl.col("unit_price") == line["unit_price"])
    )
    if line["per"] is not None:
        cond &= pl.col("per") == line["per"]
    return rated.filter(cond)


def _explain_usage(
    doc: _Issued,
    line: dict,
    hourly: pl.DataFrame,
    rated: pl.DataFrame,
    events: pl.LazyFrame,
    with_events: bool,
) -> dict:
    rows = _line_rated_rows(line, rated)
    if rows.height == 0:
        return {"rule": None, "detail": "no rated usage at the stamped version matches this line"}
    first = rows.row(0, named=True)
    version = doc.books.get(f"{first['pricebook']}@{first['price_version']}")
    rate = next(r for r in version.rates if r.rate_id == first["rate_id"])
    family = rated.filter(
        (pl.col("line_kind") == "usage")
        & (pl.col("meter_id") == line["meter_id"])
        & pl.col("model_id").eq_missing(line["model_id"])
        & (pl.col("rate_id") == rate.rate_id)
    )
    behind = _rollup_behind(rows, hourly)
    out = {
        "rule": _rate_rule(version, rate),
        "arithmetic": _family_arithmetic(family, rate, line),
        "line_arithmetic": _line_arithmetic(line),
        "rollup": {
            "rows": [
                _plain_row(r) for r in behind.sort("hour", "dimensions").iter_rows(named=True)
            ],
            "sum": _plain(behind["sum"].sum() if behind.height else _ZERO),
            "events": int(behind["count"].sum() or 0),
            "note": _rollup_note(rate),
        },
    }
    if with_events:
        out["events"] = _events_behind(events, doc.invoice["account_id"], line, behind)
    return out


def _rollup_behind(rows: pl.DataFrame, hourly: pl.DataFrame) -> pl.DataFrame:
    """Billable hourly rows of the line's dimensions inside each rated row's hour span."""
    parts = []
    for r in rows.iter_rows(named=True):
        parts.append(
            hourly.filter(
                (pl.col("meter_id") == r["meter_id"])
                & pl.col("model_id").eq_missing(r["model_id"])
                & (pl.col("dimensions").fill_null("{}") == (r["dimensions"] or "{}"))
                & pl.col("billable").fill_null(False)
                & pl.col("hour").is_between(r["first_hour"], r["last_hour"])
            )
        )
    return pl.concat(parts).unique(maintain_order=True) if parts else hourly.clear()


def _rollup_note(rate: Rate) -> str | None:
    if rate.price_model in ("graduated", "volume", "package"):
        return (
            f"{rate.price_model} pricing runs over the month's cumulative quantity in hour "
            "order; an hour that crosses a tier boundary appears under both tiers"
        )
    return None


def _events_behind(events: pl.LazyFrame, account_id: str, line: dict, behind: pl.DataFrame) -> dict:
    """Counted events (status ok) in the rollup rows behind a line, oldest first."""
    keys = ["meter_id", "model_id", "product_id", "unit", "billable", "dimensions", "hour"]
    hits = (
        events.filter((pl.col("account_id") == account_id) & (pl.col("status") == "ok"))
        .join(behind.lazy().select(keys), on=keys, how="semi", nulls_equal=True)
        .select("event_id", "timestamp", "quantity", "correction_of")
        .sort("timestamp", "event_id")
        .collect()
    )
    return {
        "count": hits.height,
        "truncated": hits.height > EVENT_LIMIT,
        "ids": hits["event_id"].head(EVENT_LIMIT).to_list(),
    }


def _explain_adjustment(store: DeltaStore, doc: _Issued, line: dict, events: pl.LazyFrame) -> dict:
    """Late events of the adjusted month (same account, meter, model) since the last close."""
    period = line["adjusts_period"]
    before = doc.closed_before()
    previous = max(before.values(), key=lambda r: r["closed_at"]) if before else None
    start, end = month_bounds(period)
    cond = (
        (pl.col("account_id") == doc.invoice["account_id"])
        & (pl.col("hour") >= start)
        & (pl.col("hour") < end)
        & pl.col("is_late").fill_null(False)
        & (pl.col("status") == "ok")
    )
    if line["meter_id"] is not None:
        cond &= (pl.col("meter_id") == line["meter_id"]) & pl.col("model_id").eq_missing(
            line["model_id"]
        )
    late = events.filter(cond)
    if previous is not None:
        known = store.scan("events", EVENTS, version=previous["events_table_version"])
        late = late.join(
            known.select("account_id", "event_id"), on=["account_id", "event_id"], how="anti"
        )
    rows = (
        late.select(
            "event_id", "timestamp", "quantity", "correction_of", "ingested_at", "source_file"
        )
        .sort("timestamp", "event_id")
        .collect()
    )
    return {
        "late_events": {
            "since_close_of": previous["period"] if previous else None,
            "count": rows.height,
            "quantity": _plain(rows["quantity"].sum() if rows.height else _ZERO),
            "events": [_plain_row(r) for r in rows.head(EVENT_LIMIT).iter_rows(named=True)],
            "truncated": rows.height > EVENT_LIMIT,
        }
    }


def _explain_contract(doc: _Issued, line: dict) -> dict:
    """The account term behind a discount, minimum true-up or prepaid credit line."""
    account = doc.account
    kind = line["kind"]
    waivers = doc.lines.filter(pl.col("unit").fill_null("").str.starts_with(WAIVER_RATE))
    usage = _sum_kind(doc.lines, "usage") + _sum_kind(waivers, "discount")  # billed usage
    if is_waiver(line["unit"]):
        text = f"usage billed after the hard stop ({line['description']}) waived"
        term = {"after_hard_stop": account.after_hard_stop}
    elif kind == "discount":
        text = f"{_plain(account.discount_pct)}% of usage {usage} = {_plain(line['exact_amount'])}"
        if waivers.height:
            text += " (usage after the hard-stop waiver)"
        term = {"discount_pct": _plain(account.discount_pct)}
    elif kind == "minimum":
        after = _sum_kind(doc.lines, "usage") + _sum_kind(doc.lines, "discount")
        text = f"commitment {_plain(account.minimum_commit)} − usage after discount {after}"
        term = {"minimum_commit": _plain(account.minimum_commit)}
    else:
        opening = (t.decimal_map(doc.closed[doc.period]["opening_credit"]) or {}).get(
            account.account_id, account.prepaid_credit
        )
        text = f"prepaid balance {_plain(opening)} applied"
        term = {
            "opening_balance": _plain(opening),
            "prepaid_credit": _plain(account.prepaid_credit),
        }
    return {
        "rule": {"source": "accounts.yaml", "account_id": account.account_id, **term},
        "arithmetic": f"{text} → {line['amount']}",
    }


def _sum_kind(lines: pl.DataFrame, kind: str) -> Decimal:
    part = lines.filter(pl.col("kind") == kind)["amount"]
    return part.sum() if part.len() else _ZERO


def _rate_rule(version: PricebookVersion, rate: Rate) -> dict:
    rule: dict[str, Any] = {
        "pricebook": version.pricebook,
        "version": version.version,
        "file": version.file.name,
        "effective_from": version.effective_from.isoformat(),
        "content_sha256": version.content_sha256,
        "rate_id": rate.rate_id,
        "selector": rate.selector,
        "price_model": rate.price_model,
        "per": _plain(rate.per),
        "description": rate.description,
    }
    if rate.unit_price is not None:
        rule["unit_price"] = _plain(rate.unit_price)
    if rate.tiers:
        rule["tiers"] = [
            {"up_to": _plain(s.up_to), "unit_price": _plain(s.unit_price)} for s in rate.tiers
        ]
    if rate.package_size is not None:
        rule["package"] = {"size": _plain(rate.package_size), "price": _plain(rate.package_price)}
    if rate.flat is not None:
        rule["flat"] = _plain(rate.flat)
    return rule


def _family_arithmetic(family: pl.DataFrame, rate: Rate, line: dict) -> str:
    """All steps of this meter × model × rate in the month, one per invoice line:
    `first 100,000,000 × 8.00/1M = 800.00; next 23,456 × 6.00/1M = 0.14`."""
    steps = (
        family.group_by("price_version", "tier", "unit_price", "per", "currency")
        .agg(pl.col("quantity").sum(), pl.col("amount").sum())
        .sort("tier", "price_version", nulls_last=True)
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
    if rate.price_model == "package" and s["unit_price"]:
        packages = (s["amount"] / s["unit_price"]).to_integral_value()
        text = f"{packages:,} package(s) of {_plain(s['per'])} × {_price(s['unit_price'])}"
    elif rate.price_model == "flat":
        text = f"flat fee {_price(s['unit_price'])}"
    else:
        word = ("first " if first else "next ") if rate.price_model == "graduated" else ""
        text = f"{word}{qty} × {_price(s['unit_price'])}/{_per(s['per'])}"
    if many_versions:
        tier = f"tier {s['tier']}, " if s["tier"] is not None else ""
        text += f" ({tier}prices from {s['price_version']})"
    return f"{text} = {amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) else text


def _line_arithmetic(line: dict) -> str:
    if line["per"] is None or line["unit_price"] is None:
        return f"{_plain(line['exact_amount'])} → {line['amount']}"
    return (
        f"{format_quantity(line['quantity'])} × {_price(line['unit_price'])}/{_per(line['per'])}"
        f" = {_plain(line['exact_amount'])} → {line['amount']}"
    )


def _per(per: Decimal) -> str:
    n = int(per) if per == per.to_integral_value() else per
    return {1: "1", 1_000: "1K", 1_000_000: "1M", 1_000_000_000: "1B"}.get(n, f"{n:,}")


def _price(value: Decimal) -> str:
    """Unit prices with at least two decimals and no trailing noise: 8.00, 3.125, 0.0000025."""
    p = value.normalize()
    places = max(2, -p.as_tuple().exponent) if p != 0 else 2
    return f"{value:,.{places}f}"


# --------------------------------------------------------------------------- invariant 5


def issued_intact(
    store: DeltaStore, settings: Settings, month: str | None = None, render: bool = False
) -> inv.InvariantResult:
    """Invariant 5 for `usagebox verify` (invoicing.verify_books): the numbering books are
    sound (audit.books_problems), every issued document (of `month`, or all) is as its close
    committed it (Delta time travel: rows, lines, PDF hash and file) and its lines and totals
    rebuild from its stamps. `render` also re-renders every PDF (`verify --render`)."""
    from usagebox_pipelines.invoicing.verify_books import issued_intact as check

    return check(store, settings, month, render)


# --------------------------------------------------------------------------- export


def export_invoices(store: DeltaStore, settings: Settings, month: str, out_dir: Path) -> dict:
    """Copy a closed month's issued PDFs (invoices and credit notes) and write `register.csv`.

    Every stored file is checked against its recorded sha256 first: a changed file stops the
    export (InvariantError) instead of being handed to finance.
    """
    period_bounds(month)
    closed = t.closed_periods(store)
    if month not in closed:
        raise UsageboxError(f"{month} is not closed: nothing issued to export")
    docs = t.issued_invoices(store, closed).filter(pl.col("period") == month)
    docs = docs.sort("invoice_number")
    sources = _checked_sources(settings.documents_dir, docs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for number, source in sources:
        target = out_dir / f"{number}.pdf"
        shutil.copyfile(source, target)
        files.append(str(target))
    register = write_register(docs, out_dir / "register.csv", load_accounts(settings.pricebooks))
    return {
        "period": month,
        "out": str(out_dir),
        "documents": len(files),
        "credit_notes": docs.filter(pl.col("document_type") == "credit_note").height,
        "files": files,
        "register": str(register),
    }


def _checked_sources(documents_dir: Path, docs: pl.DataFrame) -> list[tuple[str, Path]]:
    out, bad = [], []
    for row in docs.iter_rows(named=True):
        sha = _file_sha(documents_dir, row["pdf_path"])
        if sha is None or sha != row["pdf_sha256"]:
            bad.append(row["invoice_number"])
            continue
        out.append((row["invoice_number"], _document_file(documents_dir, row["pdf_path"])))
    if bad:
        raise InvariantError(
            f"stored PDF missing or changed for {', '.join(bad)}; "
            "run `usagebox invoice verify` on them"
        )
    return out


# --------------------------------------------------------------------------- JSON helpers


def _plain(value: object) -> object:
    """JSON-friendly scalar: Decimals as exact strings, times as ISO text."""
    if isinstance(value, Decimal):
        # exact Decimal(38, 12) values lose their padding; money and YAML terms keep theirs
        exponent = value.as_tuple().exponent
        exact = isinstance(exponent, int) and exponent <= -12
        return f"{value.normalize():f}" if exact else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _plain_row(row: dict) -> dict:
    return {k: _plain(v) for k, v in row.items()}


def _text(value: object) -> str | None:
    plain = _plain(value)
    return None if plain is None else str(plain)
