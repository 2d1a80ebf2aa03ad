"""Stage `close`: plan a month close, refuse it while anything would make the invoices wrong.

A close re-rates the month from `events` time-travelled to one stamped version (so
`reproduce.verify_invoice` can rebuild it exactly) and refuses while anything would make the
invoices wrong (failed invariants, unrated usage, a pricebook edited after it issued an
invoice). Without approval it only reports control totals; with approval `issue` numbers,
renders and commits. See docs/adr/0003-invoices-*.md and CONTRACT §3–§5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl

from usagebox_pipelines import invariants as inv
from usagebox_pipelines.catalog import (
    EVENTS,
    GUARDRAIL_DECISIONS,
    INGEST_LOG,
    RAW_EVENTS,
    UNRATED_USAGE,
    USAGE_HOURLY,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.events.raw import accepted_only
from usagebox_pipelines.invoicing.adjustments import adjustments_for, bills
from usagebox_pipelines.invoicing.hard_stop import apply_waivers
from usagebox_pipelines.invoicing.lines import (
    build_draft_invoices,
)
from usagebox_pipelines.invoicing.stamps import (
    frozen_problems,
)
from usagebox_pipelines.invoicing.summaries import (
    draft_summaries,
    invoice_totals,
    issued_summary,
    rollup_totals,
)
from usagebox_pipelines.months import month_bounds, zone_period
from usagebox_pipelines.pricing.accounts import Accounts, check_grant_scopes, load_accounts
from usagebox_pipelines.pricing.pricebook import PricebookSet, load_pricebooks
from usagebox_pipelines.pricing.rating import RatingResult, rate_usage
from usagebox_pipelines.pricing.zones import in_own_period, own_period_rows
from usagebox_pipelines.stages.books import (
    closed_periods,
    decisions_at,
    hourly_at,
    issued_invoices,
    issued_lines,
    open_months_before,
    opening_credit,
    rating_inputs_key,
    restated_months,
    tampered_periods,
)
from usagebox_pipelines.stages.close_documents import DocumentProgress
from usagebox_pipelines.stages.events import (
    events_frame,
)
from usagebox_pipelines.stages.issue import finish_close, issue_close, number_close
from usagebox_pipelines.stages.per_event import month_events
from usagebox_pipelines.stages.reconciliation import render_month_reports
from usagebox_pipelines.stages.results import AlreadyClosed, Closed, CloseResult, NeedsApproval
from usagebox_pipelines.stages.verify import verify_month
from usagebox_pipelines.storage import DeltaStore, DocumentStore, writes_tables


@dataclass
class ClosePlan:
    """Everything one close decides before it writes anything."""

    period: str
    events_version: int | None
    books: PricebookSet
    accounts: Accounts
    hourly: pl.DataFrame
    opening: dict[str, dict[str, Decimal]] | None
    invoices: pl.DataFrame
    lines: pl.DataFrame
    issued: pl.DataFrame
    decisions: pl.DataFrame
    decisions_version: int | None
    hourly_version: int | None = None
    inputs_key: str | None = None


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
    on_document: DocumentProgress | None = None,
    number_only: bool = False,
) -> CloseResult:
    """Close `month`: without `approve`, control totals and drafts (nothing written); with it,
    numbered, stamped, rendered invoices and the `period_closes` marker, then the month's
    reconciliation reports (PDFs included) from the stored reconciliation tables.

    Returns NeedsApproval, Closed or AlreadyClosed (stages.results). Raises InvariantError
    naming every reason the month cannot be closed. Closing a closed month changes nothing
    and returns `status: already_closed`. `now` is the issue time printed on the documents
    (default: the clock), `approved_by` who approved (default: the user running it), both
    recorded. An earlier month with billable usage that is still open refuses the close
    (UsageboxError: prepaid credit is drawn in issue order) unless `force`. Holds the home's
    writer lease, so two approvals of one month issue each number once: the second finds the
    month closed. `on_document(done, total)` follows the rendering (a progress bar).
    """
    month_bounds(month)
    closed = closed_periods(store)
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
    accounts = load_accounts(settings.pricebooks)
    refuse_unfinished_month(accounts, month, now)
    open_before = open_months_before(store, month, closed, accounts)
    if open_before and not force:
        first = open_before[0]
        raise UsageboxError(
            f"close {month} refused: {', '.join(open_before)} still open with billable usage; "
            f"close it first (usagebox close {first} --approve) or pass --force to close "
            f"{month} before it"
        )
    plan = plan_close(store, settings.pricebooks, month, closed)
    if not approve:
        return _needs_approval(store, plan)
    if number_only:
        return number_close(store, settings, plan, now, approved_by, run_id)
    result = issue_close(store, settings, plan, now, approved_by, run_id, on_document)
    # finance's reconciliation PDFs of the month go with its invoices (`run` skips them)
    return dataclasses.replace(result, reports=render_month_reports(store, settings, month))


@writes_tables("close")
def finish_month(
    store: DeltaStore, settings: Settings, month: str, run_id: str
) -> Closed | AlreadyClosed:
    """The last step of a close run per month shard: the marker once every numbered document
    is rendered (issue.finish_close), then the month's reconciliation reports; a month
    already closed is a no-op (AlreadyClosed)."""
    closed = closed_periods(store)
    if month in closed:
        return _already_closed(store, settings, month, closed[month])
    result = finish_close(store, settings, month, run_id)
    return dataclasses.replace(result, reports=render_month_reports(store, settings, month))


def refuse_unfinished_month(accounts: Accounts, month: str, now: datetime | None) -> None:
    """With accounts in time zones (ADR 0017), refuse to close `month` before the latest
    account's period has ended at `now` (default: the clock): usage of its last local hours
    may still arrive. Books without zones close as they always did."""
    if not accounts.zoned:
        return
    clock = (now or datetime.now(UTC)).astimezone(UTC)
    zone, end = max(
        ((z or "UTC", zone_period(month, z).end) for z in accounts.zones()),
        key=lambda pair: (pair[1], pair[0]),
    )
    if clock < end:
        raise UsageboxError(
            f"close {month} refused: the month is not over yet for accounts billed in {zone} "
            f"(their period ends {end:%Y-%m-%dT%H:%M:%SZ}); close it after that"
        )


def plan_close(
    store: DeltaStore, pricebooks_dir: Path, month: str, closed: dict[str, dict]
) -> ClosePlan:
    """Rate the month (and re-rate the earlier closed months whose inputs changed since they
    were last restated: books.restated_months) at one `events` version, or refuse."""
    books = load_pricebooks(pricebooks_dir)
    accounts = load_accounts(pricebooks_dir)
    check_grant_scopes(accounts, books)
    issued = issued_invoices(store, closed)
    version = store.version(EVENTS)
    hourly_version = store.version(USAGE_HOURLY)
    inputs_key = rating_inputs_key(books, accounts)
    # the decisions this close reads, at one version (recorded in its commits for verify)
    decisions_version = store.version(GUARDRAIL_DECISIONS)
    decisions = decisions_at(store, decisions_version)
    earlier = restated_months(store, closed, month, inputs_key, decisions, accounts)
    problems = _table_problems(store, month, earlier, accounts) + frozen_problems(books, issued)
    opening = opening_credit(store, accounts, closed)
    hourly = hourly_at(store, month, version, accounts=accounts)
    events = month_events(store, month, books, accounts, version=version).collect()
    rating = rate_usage(hourly, month, books, accounts, opening, events=events)
    earlier_hourly = {q: hourly_at(store, q, version, accounts=accounts) for q in earlier}
    rerated = {
        q: rate_usage(
            h, q, books, accounts, events=month_events(store, q, books, accounts, version=version)
        )
        for q, h in earlier_hourly.items()
    }
    problems += _unrated_problems(store, month, rating, rerated)
    if problems:
        raise InvariantError(f"close {month} refused: " + "; ".join(problems))
    rated = apply_waivers(rating.rated, hourly, decisions, month, books, accounts, opening)
    restated = {
        q: apply_waivers(r.rated, earlier_hourly[q], decisions, q, books, accounts)
        for q, r in rerated.items()
    }
    lines_issued = issued_lines(store, issued, bills(earlier))  # what restating compares
    adjustments = adjustments_for(lines_issued, restated)
    invoices, lines = build_draft_invoices(rated, accounts, month, adjustments)
    return ClosePlan(
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
        hourly_version,
        inputs_key,
    )


def _table_problems(
    store: DeltaStore, month: str, earlier: list[str], accounts: Accounts
) -> list[str]:
    """Failed invariants 1–3 for the month, and stale rollups of closed months re-rated now
    (over the hours of every account's month: `Accounts.span`)."""
    problems = [
        f"invariant {r.name} failed ({r.detail})"
        for r in verify_month(store, month)
        if not r.passed
    ]
    events = events_frame(store)
    hourly = store.scan(USAGE_HOURLY)
    for q in earlier:
        span = accounts.span(q)
        result = inv.hourly_matches_events(events, hourly, span.start, span.end)
        if not result.passed:
            problems.append(
                f"usage_hourly of closed month {q} does not match events ({result.detail}); "
                f"rebuild it (`usagebox run --month {q}`) so its restatement is reviewed"
            )
    return problems


def _unrated_problems(
    store: DeltaStore, month: str, rating: RatingResult, rerated: Mapping[str, RatingResult]
) -> list[str]:
    """Usage no rate prices is never billed as free: it blocks the close (CONTRACT §4)."""
    stored = store.scan(UNRATED_USAGE).filter(pl.col("period") == month)
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


def _needs_approval(store: DeltaStore, plan: ClosePlan) -> NeedsApproval:
    """What the approver checks before `--approve`; writes nothing. Costs about what the
    approved close costs before rendering: the same plan, plus a few aggregate scans."""
    n = plan.invoices.height
    return NeedsApproval(
        period=plan.period,
        message=f"nothing written; review the control totals, then rerun with --approve to "
        f"issue {n} document(s) for {plan.period}",
        events_table_version=plan.events_version,
        control_totals=control_totals(store, plan.period, plan.events_version, plan),
        invoices=draft_summaries(plan.invoices, plan.lines),
    )


def control_totals(
    store: DeltaStore, period: str, events_version: int | None, plan: ClosePlan | None = None
) -> dict:
    """Events, ingest outcomes, rollup and invoice totals of the month, for the approver.

    `duplicates`, `conflicts` and `quarantined` are totals of the ingest batches that carried
    at least one accepted event counting in the period: a duplicate or a quarantined row has
    no trustworthy hour of its own, so it is attributed through its batch (`ingest.scope`).
    """
    hourly = plan.hourly if plan else hourly_at(store, period, events_version)
    if plan is not None and plan.accounts.zoned:  # each account's own month (ADR 0017)
        hourly = own_period_rows(hourly, period, plan.accounts)
    accounts = plan.accounts if plan else None
    ingest = _ingest_totals(store, period, accounts)
    out = {
        "events": _event_totals(store, period, events_version, accounts),
        "duplicates": ingest["duplicates"],
        "conflicts": ingest["conflicts"],
        "quarantined": ingest["quarantined"],
        "ingest": ingest,
        "rollup": rollup_totals(hourly),
        "unrated": 0,
    }
    if plan is not None:
        out["invoices"] = invoice_totals(plan.invoices, plan.lines)
    return out


def _in_period(rows: pl.LazyFrame, period: str, accounts: Accounts | None) -> pl.LazyFrame:
    """Rows of the period: each account's own month when accounts bill in time zones
    (ADR 0017), else the UTC month."""
    if accounts is not None and accounts.zoned:
        return in_own_period(rows, period, accounts)
    start, end = month_bounds(period)
    return rows.filter((pl.col("hour") >= start) & (pl.col("hour") < end))


def _event_totals(
    store: DeltaStore, period: str, version: int | None, accounts: Accounts | None = None
) -> dict:
    events = _in_period(store.scan(EVENTS, version=version), period, accounts)
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


def _ingest_totals(store: DeltaStore, period: str, accounts: Accounts | None = None) -> dict:
    raw = accepted_only(store.scan(RAW_EVENTS))
    batches = _in_period(raw, period, accounts).select("batch_id").unique()
    log = store.scan(INGEST_LOG).join(batches, on="batch_id", how="semi").collect()
    names = ("rows", "accepted", "duplicates", "conflicts", "rejected", "late")
    sums = {k: int(log[k].sum() or 0) for k in names}
    return {
        "scope": "ingest batches with at least one accepted event in the period",
        "batches": log.height,
        **{k: v for k, v in sums.items() if k != "rejected"},
        "quarantined": sums["rejected"],
    }


def _already_closed(store: DeltaStore, settings: Settings, month: str, row: dict) -> AlreadyClosed:
    docs = issued_invoices(store).filter(pl.col("period") == month)
    return AlreadyClosed(
        period=month,
        closed_at=row["closed_at"].isoformat(),
        message=f"{month} was already closed at {row['closed_at']:%Y-%m-%d %H:%M:%S} UTC; "
        "nothing changed (issued invoices never change; later usage becomes adjustments)",
        events_table_version=row["events_table_version"],
        invoices=issued_summary(docs, DocumentStore(settings.home).root),
    )
