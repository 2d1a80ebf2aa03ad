"""`usagebox verify`: the invariants of CONTRACT.md §5 over the stored tables.

Every invariant reads the tables here and calls the pure checks of `invariants`: 1–3 (ingest
counts, events, rollups), 4 (drafts equal rated usage) and 5 (`issued_intact`, ADR 0007; the
numbering books are read by `books.books_problems`). `verify_report` is what `usagebox
verify` prints. Invariant 5 is cheap by default; per closed period, with no PDF rendering:

* **Committed.** The close's own commits of `invoices` and `invoice_lines` are found in the
  tables' Delta history (stage `close`, the period; books.close_commits) and read by time
  travel. Every issued row must still equal what its close committed, column by column (so a
  `pdf_sha256`, a note or a total rewritten later fails), its lines likewise, and the stored
  file's sha256 must equal both the stored and the committed hash. A PDF replaced together
  with its stored hash therefore fails: the committed hash still names the original.
* **Reproduced.** Lines and totals of every document are rebuilt from the stamped events
  version, pricebooks and the decisions the close read, one rating pass per period
  (reproduce.rebuild_period) instead of one per document, and compared with the stored ones.

`render=True` (`usagebox verify --render`) also re-renders each rebuilt document and compares
the bytes' sha256 with the stored one, in a process pool when there are several (stages.pdfs,
shared with the close); `usagebox invoice verify N` always renders its one document. Rewriting
`_delta_log` itself is out of reach of these checks.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from usagebox_pipelines import invariants as inv
from usagebox_pipelines.catalog import (
    EVENT_CONFLICTS,
    EVENTS_BUILDS,
    INGEST_LOG,
    INVOICE_LINES,
    INVOICES,
    QUARANTINE,
    RAW_EVENTS,
    UNRATED_USAGE,
    USAGE_HOURLY,
    USAGE_MONTHLY,
    Table,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.events.raw import accepted_only, with_disposition
from usagebox_pipelines.invoicing.compare import line_differences, total_differences
from usagebox_pipelines.invoicing.lines import (
    rated_lines,
)
from usagebox_pipelines.invoicing.render import (
    load_issuer,
    pdf_sha256,
    render_args,
    render_document,
)
from usagebox_pipelines.invoicing.stamps import credit_map, frozen_problems
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Accounts, load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.pricing.zones import own_period_rows
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard
from usagebox_pipelines.stages.books import (
    all_lines,
    books_problems,
    close_commits,
    closed_periods,
    issued_invoices,
    issued_lines,
)
from usagebox_pipelines.stages.drafts import month_rated_lines, months_to_restate
from usagebox_pipelines.stages.events import (
    FIRST_HOUR,
    committed_raw_events,
    events_frame,
)
from usagebox_pipelines.stages.month_shards import shard_rows
from usagebox_pipelines.stages.pdfs import render_each
from usagebox_pipelines.stages.rating import month_hourly, rate_month
from usagebox_pipelines.stages.reproduce import decisions_of_close, rebuild_period, rebuilt_document
from usagebox_pipelines.stages.results import VerifyReport
from usagebox_pipelines.storage import DeltaStore, DocumentStore


def verify(store: DeltaStore, month: str | None = None) -> list[inv.InvariantResult]:
    """Check the stored tables against CONTRACT.md §5 (invariants 1–3; 4–5 once invoices exist)."""
    start, end = month_bounds(month) if month else (None, None)
    events = events_frame(store)
    hourly = store.scan(USAGE_HOURLY)
    if month:
        months = [month]
    else:
        months = store.scan(USAGE_MONTHLY).select("month").unique().collect()["month"].to_list()
    folded = store.scan(EVENTS_BUILDS).select("batch_id")
    accepted = committed_raw_events(store).join(folded, on="batch_id", how="semi")
    return [
        verify_ingest(store),
        inv.events_hold_accepted(accepted, events),
        inv.events_unique(events),
        inv.hourly_matches_events(events, hourly, start, end),
        inv.monthly_matches_hourly(hourly, store.scan(USAGE_MONTHLY), months),
        inv.events_inside_partitions(events, FIRST_HOUR),
    ]


def verify_report(
    store: DeltaStore, settings: Settings, month: str | None = None, render: bool = False
) -> VerifyReport:
    """`usagebox verify`: invariants 1–3 (`verify`) and 5 (`issued_intact`) in one report."""
    return VerifyReport((*verify(store, month), issued_intact(store, settings, month, render)))


def verify_month(store: DeltaStore, month: str) -> list[inv.InvariantResult]:
    """Invariants 1–3 as the close of `month` checks them, at the cost of the month rather
    than of all history: ingest counts of the batches that carried an accepted event of the
    month, no duplicate key among the month's events (in the month or anywhere else), events
    = `usage_hourly` = `usage_monthly` over the month, no event before the first partition.
    `verify` (and `usagebox verify`) still checks every batch and every key."""
    start, end = month_bounds(month)
    events = events_frame(store)
    hourly = store.scan(USAGE_HOURLY)
    batches = (
        accepted_only(store.scan(RAW_EVENTS))
        .filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        .select("batch_id")
        .unique()
        .collect()["batch_id"]
    )
    return [
        verify_ingest(store, batches.to_list()),
        inv.month_events_unique(events, start, end),
        inv.hourly_matches_events(events, hourly, start, end),
        inv.monthly_matches_hourly(hourly, store.scan(USAGE_MONTHLY), [month]),
        inv.events_inside_partitions(events, FIRST_HOUR),
    ]


def verify_ingest(store: DeltaStore, batches: list[str] | None = None) -> inv.InvariantResult:
    """Invariant 1 alone (cheap: per-batch counts), for the ingest asset's blocking check;
    only over `batches` when given."""
    log = store.scan(INGEST_LOG)
    if batches is not None:
        log = log.filter(pl.col("batch_id").is_in(batches))
    return inv.ingest_counts_add_up(log.collect(), _stored_counts_per_batch(store, batches))


def _stored_counts_per_batch(store: DeltaStore, batches: list[str] | None = None) -> pl.DataFrame:
    """Per batch, rows really stored: raw arrivals by disposition, quarantined, conflicts.

    `legacy` counts raw rows written before `disposition` existed (duplicates were not stored
    then, so only the accepted count can be checked for those batches).
    """

    def scan(table: Table) -> pl.LazyFrame:
        frame = store.scan(table)
        return frame if batches is None else frame.filter(pl.col("batch_id").is_in(batches))

    raw = scan(RAW_EVENTS)
    legacy = (
        pl.col("disposition").is_null().sum()
        if "disposition" in raw.collect_schema().names()
        else pl.len()
    )
    counts = [
        with_disposition(raw)
        .group_by("batch_id")
        .agg(
            raw=(pl.col("disposition") == "accepted").sum(),
            raw_duplicates=(pl.col("disposition") == "duplicate").sum(),
            raw_conflicts=(pl.col("disposition") == "conflict").sum(),
            legacy=legacy,
        )
        .collect()
    ]
    for table, name in ((QUARANTINE, "quarantined"), (EVENT_CONFLICTS, "conflicted")):
        counts.append(scan(table).group_by("batch_id").agg(pl.len().alias(name)).collect())
    out = counts[0]
    for frame in counts[1:]:
        out = out.join(frame, on="batch_id", how="full", coalesce=True)
    names = ["raw", "raw_duplicates", "raw_conflicts", "legacy", "quarantined", "conflicted"]
    return out.with_columns(pl.col(names).cast(pl.Int64))


def draft_lines_match_rated(
    store: DeltaStore,
    pricebooks_dir: Path,
    month: str,
    shard: MonthShard = WHOLE_MONTH,
    *,
    rerate_every_closed_month: bool = False,
) -> inv.InvariantResult:
    """Invariant 4 over the stored drafts of an open month (of the accounts of `shard`: the
    other shards' drafts may be older or newer than this shard's run).

    (a) per account × meter × model, the quantity of draft usage lines = billable
    `usage_monthly` − unrated usage; (b) per account, usage amounts = `rated_usage` rounded
    per line; (c) per account and closed month Q, what was billed for Q + draft adjustments
    for Q = the rounded lines of Q re-rated now (prepaid credit is not restated, ADR 0003).

    (c) re-rates only the closed months whose inputs changed since a close last restated them
    (drafts.months_to_restate, as the drafts find them); every other closed
    month owes nothing, so the drafts must carry no adjustment line for it. A monthly run's
    check so costs O(months with late data), not O(closed months). `rerate_every_closed_month`
    re-rates every closed month as an independent audit would, not relying on restated_months.
    """
    closed = closed_periods(store)
    if month in closed:
        return inv.month_closed(month)
    accounts = load_accounts(pricebooks_dir)
    drafts = all_lines(store).filter(
        (pl.col("period") == month) & pl.col("invoice_number").is_null()
    )
    monthly = _billable_month(store, month, accounts)
    unrated = store.scan(UNRATED_USAGE).filter(pl.col("period") == month).collect()
    rated = month_rated_lines(store, pricebooks_dir, month, shard, accounts.root)
    issued = issued_lines(store, issued_invoices(store, closed))
    frames = (drafts, monthly, unrated, rated, issued)
    mine = shard_rows([f.lazy() for f in frames], shard, accounts.root)
    drafts, monthly, unrated, rated, issued = (f.filter(mine) for f in frames)
    mismatches = [
        inv.usage_quantity_mismatch(monthly, unrated, drafts),
        inv.usage_amount_mismatch(rated, drafts),
    ]
    earlier = sorted(p for p in closed if p < month)
    if rerate_every_closed_month:
        restated = set(earlier)
    else:
        restated = set(months_to_restate(store, pricebooks_dir, month, closed, accounts))
    for q in earlier:
        if q not in restated:
            mismatches.append(inv.unowed_adjustments(q, drafts))
            continue
        now = rated_lines(rate_month(store, pricebooks_dir, q, shard).rated).filter(mine)
        mismatches.append(inv.restatement_mismatch(q, now, issued, drafts))
    return inv.draft_lines_equal_rated(month, drafts, mismatches)


def _billable_month(store: DeltaStore, month: str, accounts: Accounts) -> pl.DataFrame:
    """Billable usage of the month per account: `usage_monthly` (UTC months), or with
    accounts in time zones each account's own month summed from `usage_hourly` (ADR 0017:
    `usage_monthly` stays a table of UTC months)."""
    billable = pl.col("billable").fill_null(False)
    if not accounts.zoned:
        return store.scan(USAGE_MONTHLY).filter((pl.col("month") == month) & billable).collect()
    hourly = month_hourly(store, month, accounts).filter(billable).collect()
    return own_period_rows(hourly, month, accounts)


def issued_intact(
    store: DeltaStore, settings: Settings, month: str | None = None, render: bool = False
) -> inv.InvariantResult:
    """Invariant 5: sound numbering books, every issued document (of `month`, or all) as its
    close committed it and reproduced from its stamps; with `render`, its PDF re-rendered."""
    closed = closed_periods(store)
    docs = issued_invoices(store, closed)
    if month is not None:
        docs = docs.filter(pl.col("period") == month)
    books = load_pricebooks(settings.pricebooks)
    accounts = load_accounts(settings.pricebooks)
    bad = [{"problem": p} for p in frozen_problems(books, docs)]
    bad += [p for p in books_problems(store) if month is None or p.get("period") in (None, month)]
    commits = close_commits(store, INVOICES)
    line_commits = close_commits(store, INVOICE_LINES)
    lines = all_lines(store).filter(pl.col("invoice_number").is_not_null())
    to_render = []
    for (period,), part in sorted(docs.group_by("period"), key=lambda kv: str(kv[0])):
        own_lines = lines.filter(pl.col("period") == period)
        bad += committed_problems(
            store, period, part, own_lines, commits, line_commits, DocumentStore(settings.home)
        )
        decisions = decisions_of_close(store, period, commits)
        for (version,), same in part.group_by("events_table_version"):
            invoices, rebuilt_lines = rebuild_period(
                store, period, version, closed, books, accounts, decisions
            )
            for row in same.sort("invoice_number").iter_rows(named=True):
                number = row["invoice_number"]
                stored = own_lines.filter(pl.col("invoice_number") == number).sort("line_no")
                rebuilt, rlines = rebuilt_document(row, invoices, rebuilt_lines)
                if rebuilt is None:
                    diffs = [{"what": "document", "detail": "re-rating gives no such document"}]
                else:
                    diffs = line_differences(stored, rlines)
                    diffs += total_differences(row, stored, rebuilt)
                    to_render.append((rebuilt, rlines, row["pdf_sha256"]))
                if diffs:
                    bad.append(inv.unreproduced(number, diffs))
    rendered = 0
    if render:
        bad += render_problems(store, closed, to_render, accounts)
        rendered = len(to_render)
    return inv.issued_unchanged(docs.height, render, rendered, bad)


# --------------------------------------------------------------------------- committed


def committed_problems(
    store: DeltaStore,
    period: str,
    docs: pl.DataFrame,
    lines: pl.DataFrame,
    commits: dict[str, dict],
    line_commits: dict[str, dict],
    documents: DocumentStore,
) -> list[dict]:
    """Issued rows, lines and files of `period` against what its close committed."""
    if period not in commits or period not in line_commits:
        return [{"period": period, "problem": "no close commit in the invoices' Delta history"}]
    then = store.read(INVOICES, version=int(commits[period]["version"]))
    then = then.filter((pl.col("period") == period) & (pl.col("status") == "issued"))
    then_by = {r["invoice_number"]: r for r in then.iter_rows(named=True)}
    then_lines = store.read(INVOICE_LINES, version=int(line_commits[period]["version"])).filter(
        (pl.col("period") == period) & pl.col("invoice_number").is_not_null()
    )
    out: list[dict] = []
    for row in docs.iter_rows(named=True):
        number = row["invoice_number"]
        committed = then_by.get(number)
        out += inv.committed_row_problems(number, row, committed, INVOICES.schema.names())
        if committed is None:
            continue
        mine = pl.col("invoice_number") == number
        out += inv.committed_lines_problems(
            number, lines.filter(mine), then_lines.filter(mine), INVOICE_LINES.schema
        )
        file = documents.sha256(row["pdf_path"]) if row["pdf_path"] else None
        out += inv.file_problems(number, file, row["pdf_sha256"], committed["pdf_sha256"])
    return out


# --------------------------------------------------------------------------- render


def render_problems(
    store: DeltaStore, closed: dict[str, dict], docs: list[tuple], accounts: Accounts
) -> list[dict]:
    """Re-render each rebuilt document; a problem per sha256 that differs from the stored one."""
    issued = issued_invoices(store, closed)
    issuer = load_issuer()
    jobs = (
        render_args(
            issued,
            doc,
            lines,
            accounts.get(doc["account_id"]),
            issuer,
            credit_map(closed[doc["period"]]["opening_credit"]),
        )
        for doc, lines, _ in docs
    )
    hashes = list(render_each(_render_sha, jobs, len(docs)))
    return [
        {
            "invoice_number": doc["invoice_number"],
            "problem": "re-rendered PDF differs from the stored sha256",
            "stored": stored,
            "rerendered": sha,
        }
        for (doc, _, stored), sha in zip(docs, hashes, strict=True)
        if sha != stored
    ]


def _render_sha(job: tuple) -> str:
    """One document's PDF sha256 (top level: the process pool pickles it)."""
    return pdf_sha256(render_document(*job))
