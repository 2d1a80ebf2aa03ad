"""The invoicing tables every close stage reads: `period_closes`, issued documents, credit.

A row in `period_closes` is the commit marker of a close: it is written LAST, after the issued
invoices and their lines. So "issued" means: `status = 'issued'` AND the period has a
`period_closes` row. Issued rows of a period without one are leftovers of a close that crashed
half-way; every reader here ignores them, and the next close of that period deletes them and
issues again (so document numbers stay gapless). Ingest reads `period_closes.period` to mark
events of closed months late.

The numbering books (`books_problems`, `tampered_periods`) compare `period_closes` with the
issued invoices and its Delta history: a marker whose append is in the history but whose row is
gone, or leftovers numbered below a closed period's numbers (only the latest close can have
crashed), are tampering. `close` refuses to re-issue such a month; `verify` fails. Checked
too: numbers gapless and unique over all closed periods, and every row lists exactly its
invoices (count, first/last number, totals).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import polars as pl

from usagebox_pipelines import invariants as inv
from usagebox_pipelines.catalog import (
    CREDIT_GRANT_LEDGER,
    CREDIT_LEDGER,
    EVENTS,
    GUARDRAIL_DECISIONS,
    INVOICE_LINES,
    INVOICES,
    PERIOD_CLOSES,
    USAGE_HOURLY,
    Table,
)
from usagebox_pipelines.invoicing.credit import (
    balances,
    grant_ledger_rows,
    grant_totals,
    grants,
    ledger,
)
from usagebox_pipelines.invoicing.numbering import parse_number
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Accounts
from usagebox_pipelines.pricing.zones import local_month
from usagebox_pipelines.rollups.aggregate import rollup_hourly
from usagebox_pipelines.storage import DeltaStore, writes_tables

#: Commit metadata of a close: the `guardrail_decisions` version it read.
DECISIONS_VERSION_KEY = "guardrail_decisions_version"
#: ... the `usage_hourly` version it read, and a fingerprint of the pricebooks and accounts it
#: rated with: what a later close compares to skip closed months nothing has touched since.
HOURLY_VERSION_KEY = "usage_hourly_version"
INPUTS_KEY = "rating_inputs_sha256"
#: ... and the `events` version it rated at: the marker's, written by the close's last step.
EVENTS_VERSION_KEY = "events_table_version"
#: ... and, from its numbering on, how many documents it numbered, the first number, the
#: issue time and who approved it: what its last step checks and records with the marker
#: (stages.issue.finish_close).
DOCUMENTS_KEY = "documents_numbered"
FIRST_NUMBER_KEY = "first_number"
ISSUED_AT_KEY = "issued_at"
APPROVED_BY_KEY = "approved_by"
#: Every key a close's commits carry, from the numbering commit to the marker's.
CLOSE_META_KEYS = (
    DECISIONS_VERSION_KEY,
    HOURLY_VERSION_KEY,
    INPUTS_KEY,
    EVENTS_VERSION_KEY,
    DOCUMENTS_KEY,
    FIRST_NUMBER_KEY,
    ISSUED_AT_KEY,
    APPROVED_BY_KEY,
)


def closes(store: DeltaStore) -> pl.DataFrame:
    """Every `period_closes` row, oldest close first."""
    return store.read(PERIOD_CLOSES).sort("closed_at", "period")


def closed_periods(store: DeltaStore) -> dict[str, dict]:
    """period → its `period_closes` row (as a dict), for every month whose close committed."""
    return {row["period"]: row for row in closes(store).iter_rows(named=True)}


def all_invoices(store: DeltaStore) -> pl.DataFrame:
    return store.read(INVOICES)


def all_lines(store: DeltaStore) -> pl.DataFrame:
    return store.read(INVOICE_LINES)


def issued_invoices(store: DeltaStore, closed: dict[str, dict] | None = None) -> pl.DataFrame:
    """Issued documents of closed periods only (crashed closes are invisible)."""
    closed = closed_periods(store) if closed is None else closed
    return all_invoices(store).filter(
        (pl.col("status") == "issued") & pl.col("period").is_in(list(closed))
    )


def issued_lines(
    store: DeltaStore, invoices: pl.DataFrame | None = None, where: pl.Expr | None = None
) -> pl.DataFrame:
    """Lines of the issued documents of closed periods (only those matching `where`: the
    filter is pushed into the scan, so a caller that needs a few kinds or periods does not
    read every line ever issued)."""
    invoices = issued_invoices(store) if invoices is None else invoices
    numbers = invoices.get_column("invoice_number").to_list()
    lines = store.scan(INVOICE_LINES)
    if where is not None:
        lines = lines.filter(where)
    return lines.filter(pl.col("invoice_number").is_in(numbers)).collect()


CREDIT = pl.col("kind") == "credit"


def unfinished_periods(store: DeltaStore) -> list[str]:
    """Periods holding issued rows (or numbered lines) but no `period_closes` row: crashed."""
    closed = list(closed_periods(store))
    inv = store.scan(INVOICES).filter(pl.col("status") == "issued").select("period").unique()
    lines = store.scan(INVOICE_LINES).filter(pl.col("invoice_number").is_not_null())
    found = pl.concat([inv, lines.select("period").unique()]).collect()["period"]
    return sorted(p for p in set(found.to_list()) if p is not None and p not in closed)


def open_months_before(
    store: DeltaStore, month: str, closed: dict[str, dict], accounts: Accounts | None = None
) -> list[str]:
    """Months before `month` with billable usage in `usage_hourly` and no `period_closes` row.

    Closing past one of them would draw prepaid credit (and take numbers) out of issue order.
    With `accounts` in time zones an hour counts in its account's local month (ADR 0017).
    """
    hour = pl.col("hour")
    if accounts is not None and accounts.zoned:
        not_closed, label = hour < accounts.span(month).end, local_month(hour, accounts)
    else:
        not_closed, label = _utc_not_closed(month, closed), hour.dt.strftime("%Y-%m")
    months = (
        store.scan(USAGE_HOURLY)
        .filter(not_closed & pl.col("billable").fill_null(False))
        .group_by(label.alias("month"), "account_id", "meter_id")
        .agg(pl.col("sum").sum())
        .filter(pl.col("sum") != 0)
        .select("month")
        .unique()
        .collect()["month"]
        .to_list()
    )
    return sorted(m for m in months if m not in closed and m < month)


def _utc_not_closed(month: str, closed: dict[str, dict]) -> pl.Expr:
    """Hours before the UTC `month`, the closed months' hours skipped (file statistics prune
    them from the scan)."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    hour = pl.col("hour")
    not_closed = hour < start
    for q in closed:
        q_start, q_end = month_bounds(q)
        if q_start < start:
            not_closed &= (hour < q_start) | (hour >= q_end)
    return not_closed


def hourly_at(
    store: DeltaStore,
    period: str,
    version: int | None,
    account_id: str | None = None,
    accounts: Accounts | None = None,
) -> pl.DataFrame:
    """`usage_hourly` of `period` rebuilt from `events` as of `version` (the stamped one):
    the hours of the account's period, or of every account's (`Accounts.window`, ADR 0017:
    rating keeps each account's own); the UTC month without `accounts`."""
    start, end = month_bounds(period)
    if accounts is not None:
        window = accounts.window(period, account_id)
        start, end = window.start, window.end
    events = store.scan(EVENTS, version=version)
    if account_id is not None:
        events = events.filter(pl.col("account_id") == account_id)
    return rollup_hourly(events, start, end)


def decisions_at(store: DeltaStore, version: int | None) -> pl.DataFrame:
    """`guardrail_decisions` as of `version` (none when the table did not exist)."""
    if version is None:
        return pl.DataFrame(schema=GUARDRAIL_DECISIONS.schema)
    return store.read(GUARDRAIL_DECISIONS, version=version)


def marker_history(store: DeltaStore) -> dict[str, int]:
    """period → the `period_closes` version whose commit appended its marker (stage `close`)."""
    table = store.table(PERIOD_CLOSES)
    if table is None:
        return {}
    out: dict[str, int] = {}
    for commit in table.history():
        if commit.get("stage") == "close" and commit.get("period"):
            out.setdefault(str(commit["period"]), int(commit.get("version", -1)))
    return out


def close_commits(store: DeltaStore, name: Table) -> dict[str, dict]:
    """period → the newest commit of table `name` written by a close of it (stage `close`):
    its `version`, `timestamp` and the close's metadata (e.g. the decisions version read)."""
    table = store.table(name)
    if table is None:
        return {}
    out: dict[str, dict] = {}
    for commit in table.history():  # newest first
        if commit.get("stage") == "close" and commit.get("period"):
            out.setdefault(str(commit["period"]), commit)
    return out


def tampered_periods(store: DeltaStore, closed: dict[str, dict] | None = None) -> list[dict]:
    """Periods with issued invoices but no marker that are NOT a crashed close's leftovers."""
    closed = closed_periods(store) if closed is None else closed
    unfinished = unfinished_periods(store)
    if not unfinished:
        return []
    history = marker_history(store)
    docs = all_invoices(store).filter(pl.col("status") == "issued")
    top = _max_seq(docs.filter(pl.col("period").is_in(list(closed)))["invoice_number"])
    out = []
    for period in unfinished:
        if period in history:
            out.append(
                {
                    "period": period,
                    "problem": f"period_closes row of {period} was deleted (appended at "
                    f"version {history[period]}) but its issued invoices remain",
                }
            )
            continue
        numbers = docs.filter(pl.col("period") == period)["invoice_number"]
        low = _min_seq(numbers)
        if low is not None and top is not None and low <= top:
            out.append(
                {
                    "period": period,
                    "problem": f"{period} has issued invoices numbered below closed periods' "
                    "numbers but no period_closes row: not a crashed close",
                }
            )
    return out


def books_problems(store: DeltaStore) -> list[dict]:
    """Every inconsistency between `period_closes` and the issued invoices (empty = sound)."""
    closed = closed_periods(store)
    problems = tampered_periods(store, closed)
    docs = issued_invoices(store, closed)
    problems += inv.numbering_problems([n for n in docs["invoice_number"].to_list() if n])
    for period, row in sorted(closed.items()):
        problems += inv.close_row_problems(period, row, docs.filter(pl.col("period") == period))
    return problems


def _max_seq(numbers: pl.Series) -> int | None:
    seqs = [parse_number(n)[2] for n in numbers.drop_nulls().to_list()]
    return max(seqs) if seqs else None


def _min_seq(numbers: pl.Series) -> int | None:
    seqs = [parse_number(n)[2] for n in numbers.drop_nulls().to_list()]
    return min(seqs) if seqs else None


# --------------------------------------------------------------------------- restatement


def rating_inputs_key(books: Any, accounts: Any) -> str:
    """A fingerprint of everything but usage that rates a month: the content hashes of every
    pricebook version and the resolved accounts (any edit changes it, comments of a
    pricebook excepted: its hash is of the parsed rates)."""
    listed = sorted(accounts.listed.items())
    payload = repr((sorted(books.fingerprints().items()), accounts.defaults, listed))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def restated_months(
    store: DeltaStore,
    closed: dict[str, dict],
    month: str,
    inputs_key: str,
    decisions: pl.DataFrame,
    accounts: Accounts | None = None,
) -> list[str]:
    """The closed months before `month` a close must re-rate: those whose inputs changed since
    the last close that looked at them. Every other one would restate to nothing.

    Why: the last close R since closed month q's own (q's own included) either re-rated q,
    issuing per comparable line `rounded re-rating − billed` for each nonzero difference, or
    found q's inputs unchanged since the close before it did. Either way what is billed for q
    equals q re-rated with R's inputs, so re-rated with the same inputs now every difference
    is zero and q adds no adjustment line. The inputs are: the `events` and `usage_hourly`
    rows of q's hours (data files added or removed since the versions R read, from the Delta
    log: no data is read), q's guardrail decisions, and the pricebooks and accounts
    (`rating_inputs_key`). A month whose R recorded no key (closed before it was recorded) is
    re-rated. So closing month N costs O(months with late data), not O(closed months).
    With `accounts` in time zones, q's hours are those of every account's month q
    (`Accounts.span`): an hour after UTC midnight of the 1st still touches New York's q.
    """
    commits = close_commits(store, PERIOD_CLOSES)
    ordered = sorted(closed.values(), key=lambda r: (r["closed_at"], r["period"]))
    files: dict[tuple[str, int | None], pl.DataFrame | None] = {}

    def hour_files(table: Table, version: int | None) -> pl.DataFrame | None:
        """Data files at `version` (None: latest), read once per table and version."""
        key = (table.name, version)
        if key not in files:
            files[key] = _hour_files(store, table, version)
        return files[key]

    def then(table: Table, version: int | None) -> pl.DataFrame | None:
        """Data files a close read; None as its version: the table did not exist yet."""
        return _NO_FILES if version is None else hour_files(table, version)

    read: dict[int | None, pl.DataFrame] = {}

    def decisions_then(raw: object) -> pl.DataFrame | None:
        """The decisions at a close's recorded version, read once per version (closes made
        while no decision changed share one); None when the close recorded none."""
        if raw is None:
            return None
        version = recorded_version(raw)
        if version not in read:
            read[version] = decisions_at(store, version)
        return read[version]

    out = []
    for q in sorted(p for p in closed if p < month):
        own = closed[q]["closed_at"]
        ref = [r for r in ordered if r["period"] == q or (r["period"] > q and r["closed_at"] > own)]
        meta = commits.get(ref[-1]["period"]) or {}
        if meta.get(INPUTS_KEY) != inputs_key or HOURLY_VERSION_KEY not in meta:
            out.append(q)
            continue
        start, end = month_bounds(q) if accounts is None else _span(accounts, q)
        versions = (
            (EVENTS, ref[-1]["events_table_version"]),
            (USAGE_HOURLY, recorded_version(meta[HOURLY_VERSION_KEY])),
        )
        if any(
            _files_changed(then(t, v), hour_files(t, None), start, end) for t, v in versions
        ) or not _same_decisions(decisions_then(meta.get(DECISIONS_VERSION_KEY)), decisions, q):
            out.append(q)
    return out


def _span(accounts: Accounts, month: str) -> tuple[datetime, datetime]:
    span = accounts.span(month)
    return span.start, span.end


def _files_changed(
    then: pl.DataFrame | None, now: pl.DataFrame | None, start: datetime, end: datetime
) -> bool:
    """Whether a data file with rows in hours [start, end) was added or removed between two
    file lists; an unknown list, or a file without `hour` statistics, counts as a change."""
    if then is None or now is None:
        return True
    changed = pl.concat(
        [now.join(then, on="path", how="anti"), then.join(now, on="path", how="anti")]
    )
    lo, hi = pl.col("lo"), pl.col("hi")
    hits = changed.filter(lo.is_null() | hi.is_null() | ((lo < end) & (hi >= start)))
    return hits.height > 0


_NO_FILES = pl.DataFrame(
    schema={"path": pl.String, "lo": pl.Datetime("us", "UTC"), "hi": pl.Datetime("us", "UTC")}
)


def _hour_files(store: DeltaStore, table: Table, version: int | None) -> pl.DataFrame | None:
    """path, min and max `hour` of every data file of `table` at `version` (None: latest),
    from the Delta log; an empty list when the table does not exist yet; None when unknown
    (no statistics, or a version the log no longer has)."""
    try:
        dt = store.table(table, version=version)
    except Exception:  # noqa: BLE001 - a version vacuumed from the log: unknown
        return None
    if dt is None:
        return _NO_FILES if version is None else None
    actions = pl.DataFrame(dt.get_add_actions(flatten=True))
    if actions.height == 0:
        return _NO_FILES
    if "min.hour" not in actions.columns or "max.hour" not in actions.columns:
        return None
    return actions.select("path", lo=pl.col("min.hour"), hi=pl.col("max.hour")).cast(
        _NO_FILES.schema
    )


def _same_decisions(then: pl.DataFrame | None, decisions: pl.DataFrame, q: str) -> bool:
    """Whether `q`'s guardrail decisions as a close read them (`then`; None: not recorded)
    are today's."""
    if then is None:
        return False
    return _same_rows(then.filter(pl.col("period") == q), decisions.filter(pl.col("period") == q))


def _same_rows(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    if a.height != b.height or a.columns != b.columns:
        return False
    return a.sort(a.columns, nulls_last=True).equals(b.sort(b.columns, nulls_last=True))


def recorded_version(raw: object) -> int | None:
    """A table version as a close's commit metadata records it ("none": no table yet)."""
    return None if raw in (None, "none") else int(str(raw))


def carried_meta(numbering: dict, period: str, run_id: str) -> dict[str, str]:
    """Commit metadata of a close's later steps (documents, marker): the numbering commit's
    (what the close read and numbered), with this run's id, so the newest `stage: close`
    commit of each table still says what the close read (`close_commits`)."""
    meta = {k: str(numbering[k]) for k in CLOSE_META_KEYS if numbering.get(k) is not None}
    return meta | {"run_id": run_id, "stage": "close", "period": period}


# --------------------------------------------------------------------------- credit


def opening_credit(
    store: DeltaStore, accounts: object, closed: dict[str, dict] | None = None
) -> dict[str, dict[str, Decimal]]:
    """Balances the next close (and every draft) applies, per account and grant: amount −
    drawn by issued invoices."""
    return balances(grants(accounts), issued_lines(store, issued_invoices(store, closed), CREDIT))


@writes_tables("credit_ledger")
def write_ledger(
    store: DeltaStore, accounts: object, period: str, run_id: str = "cli"
) -> pl.DataFrame:
    """After the close of `period`: append to `credit_grant_ledger` the rows the issued
    history implies and it lacks (invoicing.credit.grant_ledger_rows; a rerun appends
    nothing), and rewrite the per-account `credit_ledger` from the issued invoices."""
    closed = closed_periods(store)  # oldest close first
    lines = issued_lines(store, issued_invoices(store, closed), CREDIT)
    grant = grants(accounts)
    meta = {"run_id": run_id, "stage": "credit_ledger", "period": period}
    starts = {a: accounts.period(a, period).start for a in grant}  # type: ignore[attr-defined]
    stored = store.read(CREDIT_GRANT_LEDGER)
    new = grant_ledger_rows(grant, list(closed), lines, stored, period, starts)
    if new.height:
        stamp = {"recorded_at": pl.lit(datetime.now(UTC)), "run_id": pl.lit(run_id)}
        store.append(CREDIT_GRANT_LEDGER, new.with_columns(**stamp), metadata=meta)
    rows = ledger(grant_totals(grant), list(closed), lines)
    store.overwrite(CREDIT_LEDGER, rows, metadata={"run_id": run_id, "stage": "credit_ledger"})
    return rows
