"""The table catalog: every Delta table under `<home>/tables/` declared once.

An entry pairs a table's name with its column schema (from the pure schema modules), its
physical partition columns, the columns a stage replaces it by, a one-sentence description and
column comments. `storage.DeltaStore` takes these entries (never a bare name and a schema), writes
the description and comments into the Delta table metadata when it creates the table (so
Spark/Databricks/Unity Catalog show them), and builds every partition predicate from them.

Over 400 lines on purpose: it declares every table once, with its description and column
comments; that is all it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import polars as pl

from usagebox_pipelines import schemas as s
from usagebox_pipelines.guardrails import schemas as g
from usagebox_pipelines.reconciliation import schemas as r


@dataclass(frozen=True, eq=False)
class Table:
    """One Delta table: `<home>/tables/<name>`.

    `partition_by` is the physical partitioning (applied when the table is created);
    `replace_by` the columns whose values name the slice a stage rewrites (a partition, a
    month, a range of hours): `DeltaStore.replace_partition` only accepts those.
    """

    name: str
    schema: pl.Schema
    partition_by: tuple[str, ...]
    description: str
    comments: Mapping[str, str]
    replace_by: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = set(self.schema.names())
        unknown = (set(self.partition_by) | set(self.replace_by) | set(self.comments)) - names
        if unknown:
            raise ValueError(f"table {self.name!r}: no column(s) {sorted(unknown)} in its schema")
        object.__setattr__(self, "comments", MappingProxyType(dict(self.comments)))

    def __repr__(self) -> str:
        return f"Table({self.name!r})"


# Comments shared by several tables (one wording everywhere).
_QTY = "Quantity in the meter's own unit (tokens, seconds, calls); exact decimal(38, 12)."
_UTC = "UTC timestamp (microseconds)."
_HOUR = "UTC start of the hour; the hour is the half-open window [hour, hour + 1h)."
_MONTH = "Billing month `YYYY-MM` (UTC), the half-open window [first day, next first day)."
_MONEY = "Exact amount, decimal(38, 12), in `currency`; not rounded."
_MONEY2 = "Amount rounded half-up to the currency's minor unit, decimal(18, 2)."
_SCOPE = (
    "The vendor's scope columns of the line (project, workspace, billing/sub account) as "
    "canonical JSON, `{}` when the export is not grouped by any: part of the restatement unit."
)
_LINE_ID = "Identity of the vendor line from its content and scope (not the file's bytes)."
_BATCH = "Ingest batch: `b-` + the first 24 hex digits of the source file's SHA-256."
_ACCOUNT = "Customer account (pricebooks/accounts.yaml)."
_DIMENSIONS = 'Event dimensions as canonical JSON with sorted keys ("{}" when none).'
_RUN = "Run id of the Dagster run or CLI command that wrote the row."

_EVENT_COMMENTS = {
    "event_id": "Idempotency key of the event, unique per account.",
    "account_id": _ACCOUNT,
    "meter_id": "What was measured (input_tokens, gpu_seconds, tool_calls, ...).",
    "quantity": _QTY + " Signed delta when `correction_of` is set.",
    "timestamp": "Event time, " + _UTC,
    "dimensions": _DIMENSIONS,
    "billable": "False = counted but never billed (needs `reason_code`).",
    "correction_of": "event_id this event corrects; it counts in that event's hour and month.",
    "extra": "Input columns the contract does not name, as a JSON object: kept, never billed.",
    "hour": "UTC hour the event counts in (a correction counts in its original's hour).",
    "event_date": "UTC day of `hour`; the partition column.",
    "is_late": "Arrived after its hour was rolled up or its month was closed.",
    "ingested_at": "When the batch was ingested, " + _UTC,
    "batch_id": _BATCH,
}

RAW_EVENTS = Table(
    "raw_events",
    s.RAW_EVENTS,
    partition_by=("event_date",),
    description="Landing log: every valid input row as it arrived, append-only.",
    comments={
        **_EVENT_COMMENTS,
        "source_file": "Path of the input file the row came from.",
        "row_number": "1-based row (line) number in the source file.",
        "disposition": "accepted | duplicate (exact re-send) | conflict (re-send, other payload).",
    },
)

QUARANTINE = Table(
    "quarantine",
    s.QUARANTINE,
    partition_by=(),
    description="Every rejected input row, with its raw payload and a reason a person can act on.",
    comments={
        "source_file": "Path of the input file the row came from.",
        "row_number": "1-based row (line) number in the source file.",
        "payload": "The row exactly as read (text).",
        "reason": "Why the row was rejected, naming the field.",
        "ingested_at": "When the batch was ingested, " + _UTC,
        "batch_id": _BATCH,
    },
)

EVENT_CONFLICTS = Table(
    "event_conflicts",
    s.EVENT_CONFLICTS,
    partition_by=(),
    description="One row per arrival that reused an event_id with a different payload.",
    comments={
        "event_id": "The reused idempotency key.",
        "account_id": _ACCOUNT,
        "payload": "Canonical payload of the rejected arrival (JSON).",
        "kept_payload": "Canonical payload of the first accepted version, which stands (JSON).",
        "ingested_at": "When the batch was ingested, " + _UTC,
        "batch_id": _BATCH,
    },
)

INGEST_LOG = Table(
    "ingest_log",
    s.INGEST_LOG,
    partition_by=(),
    description="One row per ingested file, written last: a batch exists for readers once here.",
    comments={
        "batch_id": _BATCH,
        "content_sha256": "SHA-256 of the file's bytes; the same bytes are never ingested twice.",
        "rows": "Input rows = accepted + duplicates + conflicts + rejected (invariant 1).",
        "late": "Accepted rows that arrived late (subset of accepted).",
        "ingested_at": _UTC,
    },
)

EVENTS = Table(
    "events",
    s.EVENTS,
    partition_by=("event_date",),
    replace_by=("event_date", "batch_id"),
    description="Deduplicated usage events, one row per (account_id, event_id).",
    comments={
        **_EVENT_COMMENTS,
        "status": "ok | pending (correction without its original) | rejected (see status_reason).",
        "source_file": "Path of the input file the event came from.",
    },
)

EVENTS_BUILDS = Table(
    "events_builds",
    s.EVENTS_BUILDS,
    partition_by=(),
    description="Ingest batches already folded into `events` (written after the fold).",
    comments={"batch_id": _BATCH, "built_at": _UTC},
)

EVENT_KEYS = Table(
    "event_keys",
    s.EVENT_KEYS,
    partition_by=(),
    description="Lookup index of accepted event keys: where in `raw_events` a key can be found.",
    comments={
        "key": "64-bit hash of (account_id, event_id), or of (account_id, correction_of) with "
        "another seed for a correction's target (events/keys.py); equal keys hash equal.",
        "event_date": "The `raw_events` partition holding the accepted row.",
        "batch_id": _BATCH,
    },
)

USAGE_HOURLY = Table(
    "usage_hourly",
    s.USAGE_HOURLY,
    partition_by=(),
    replace_by=("hour",),
    description="Usage per account × meter × model × product × unit × dimensions × UTC hour.",
    comments={
        "account_id": _ACCOUNT,
        "dimensions": _DIMENSIONS,
        "hour": _HOUR,
        "sum": "Sum of event quantities in the hour, " + _QTY,
        "count": "Number of events (corrections included) in the hour.",
    },
)

HOUR_BUILDS = Table(
    "hour_builds",
    s.HOUR_BUILDS,
    partition_by=(),
    replace_by=("hour",),
    description="Hours whose `usage_hourly` rollup has been built, and when.",
    comments={"hour": _HOUR, "built_at": _UTC, "run_id": _RUN},
)

USAGE_MONTHLY = Table(
    "usage_monthly",
    s.USAGE_MONTHLY,
    partition_by=(),
    replace_by=("month", "account_id"),
    description="Usage per account × meter × model × product × unit × billing month.",
    comments={
        "account_id": _ACCOUNT,
        "month": _MONTH,
        "sum": "Sum of the month's hourly sums, " + _QTY,
        "count": "Number of events in the month.",
    },
)

RATED_USAGE = Table(
    "rated_usage",
    s.RATED_USAGE,
    partition_by=(),
    replace_by=("period", "account_id"),
    description="Monthly usage priced by the pricebook version in effect, plus contract rows.",
    comments={
        "period": _MONTH,
        "account_id": _ACCOUNT,
        "line_kind": "usage | minimum | discount | credit.",
        "price_version": "Pricebook version that priced the row (in effect at the event time).",
        "price_model": "per_unit | graduated | volume | package | flat.",
        "tier": "Tier number of tiered prices (null otherwise).",
        "quantity": _QTY,
        "per": "Quantity the unit price is quoted for (e.g. 1000000 tokens); decimal(38, 12).",
        "unit_price": "Price per `per` units, exact decimal(38, 12), in `currency`.",
        "amount": _MONEY,
        "first_hour": _HOUR,
        "last_hour": _HOUR,
    },
)

UNRATED_USAGE = Table(
    "unrated_usage",
    s.UNRATED_USAGE,
    partition_by=(),
    replace_by=("period", "account_id"),
    description="Usage no rate matched: reported and blocks the close, never billed as free.",
    comments={
        "period": _MONTH,
        "account_id": _ACCOUNT,
        "dimensions": _DIMENSIONS,
        "quantity": _QTY,
        "first_hour": _HOUR,
        "reason": "Why no rate matched.",
    },
)

CREDIT_LEDGER = Table(
    "credit_ledger",
    s.CREDIT_LEDGER,
    partition_by=(),
    replace_by=("period",),
    description="Prepaid credit per account and month: one month's closing opens the next.",
    comments={
        "account_id": _ACCOUNT,
        "period": _MONTH,
        "opening": "Balance at the start of the month; " + _MONEY,
        "drawn": "Credit drawn by the month's invoice; " + _MONEY,
        "closing": "Balance carried to the next month; " + _MONEY,
    },
)

CREDIT_GRANT_LEDGER = Table(
    "credit_grant_ledger",
    s.CREDIT_GRANT_LEDGER,
    partition_by=(),
    description="Credit grants, append-only: each grant, draw by an issued invoice and expiry.",
    comments={
        "account_id": _ACCOUNT,
        "grant_id": "Grant id in accounts.yaml (`prepaid_credit` for the prepaid_credit key).",
        "period": "Month of the drawing invoice; for grant/expiry rows the close that saw it.",
        "invoice_number": "The issued invoice that drew (draw rows only).",
        "kind": "grant | draw | expiry.",
        "amount": "Signed change of the grant's balance; " + _MONEY,
        "balance_after": "The grant's balance once this row applied; " + _MONEY,
        "recorded_at": "When the close appended the row; " + _UTC,
        "run_id": _RUN,
    },
)

INVOICES = Table(
    "invoices",
    s.INVOICES,
    partition_by=(),
    replace_by=("period", "status", "account_id"),
    description="One row per invoice or credit note; an issued one never changes.",
    comments={
        "invoice_number": "Gapless number assigned at issue (null on drafts).",
        "account_id": _ACCOUNT,
        "period": _MONTH,
        "document_type": "invoice | credit_note.",
        "subtotal": "Net charges of the period (usage, discount, minimum), before tax; " + _MONEY2,
        "total": "Sum of the rounded lines, tax included; " + _MONEY2,
        "status": "draft | issued.",
        "issued_at": _UTC,
        "events_table_version": "Delta version of `events` the invoice was rated from.",
        "pricebook_versions": "Pricebook versions (and file hashes) used, JSON.",
        "pdf_sha256": "SHA-256 of the issued PDF; identical on every rerun.",
    },
)

INVOICE_LINES = Table(
    "invoice_lines",
    s.INVOICE_LINES,
    partition_by=(),
    replace_by=("period", "invoice_number", "account_id"),
    description="One row per invoice line, rounded per line to the currency's minor unit.",
    comments={
        "invoice_number": "Invoice the line belongs to (null on drafts).",
        "line_no": "1-based position on the invoice.",
        "account_id": _ACCOUNT,
        "period": _MONTH,
        "kind": "usage | minimum | discount | tax | credit | adjustment.",
        "quantity": _QTY + " A tax line: the taxable base.",
        "unit_price": "Price per `per` units (a tax line: the rate in %), exact decimal(38, 12).",
        "per": "Quantity the unit price is quoted for; decimal(38, 12).",
        "amount": _MONEY2,
        "exact_amount": "The line before rounding; " + _MONEY,
        "adjusts_period": "For adjustment lines: the closed month the line restates.",
    },
)

PERIOD_CLOSES = Table(
    "period_closes",
    s.PERIOD_CLOSES,
    partition_by=(),
    replace_by=("period",),
    description="Commit marker of a month close, written after its invoices and lines.",
    comments={
        "period": _MONTH,
        "closed_at": _UTC,
        "events_table_version": "Delta version of `events` the month was rated from.",
        "opening_credit": "Grant balances the month drew from, JSON {account: {grant: decimal}} "
        "(closes before ADR 0016: {account: decimal}, the grant prepaid_credit).",
        "totals": "Invoice totals, JSON {currency: total}.",
    },
)

VENDOR_COSTS = Table(
    "vendor_costs",
    r.VENDOR_COSTS,
    partition_by=(),
    description="Vendor bill and usage lines normalized to our model_id × meter_id.",
    comments={
        "date": "UTC calendar day of the vendor's bucket.",
        "quantity": _QTY,
        "amount": _MONEY,
        "charge_class": "usage | credit | tax | correction | adjustment | purchase.",
        "source_kind": "costs | usage | focus: what the row came from.",
        "vendor_scope": _SCOPE,
        "line_id": _LINE_ID,
        "exported_at": _UTC,
        "loaded_at": _UTC,
    },
)

VENDOR_COST_CHANGES = Table(
    "vendor_cost_changes",
    r.VENDOR_COST_CHANGES,
    partition_by=(),
    description="Vendor cost rows a newer export replaced, as they were, append-only.",
    comments={
        "quantity": _QTY,
        "amount": _MONEY,
        "superseded_at": _UTC,
        "superseded_by_sha256": "SHA-256 of the export that replaced the row.",
        "from_table": "vendor_costs | vendor_review | vendor_ignored: where the row stood.",
    },
)

VENDOR_REVIEW = Table(
    "vendor_review",
    r.VENDOR_REVIEW,
    partition_by=(),
    description="Vendor lines the mapping does not cover, with the raw line and a reason.",
    comments={
        "date": "UTC calendar day of the vendor's bucket.",
        "quantity": _QTY,
        "amount": _MONEY,
        "reason": "Why the line could not be mapped, and what to add to the mapping.",
        "payload": "The vendor line as read (JSON).",
        "vendor_scope": _SCOPE,
        "line_id": _LINE_ID,
    },
)

VENDOR_IGNORED = Table(
    "vendor_ignored",
    r.VENDOR_IGNORED,
    partition_by=(),
    description="Unmapped vendor lines with zero cost and zero quantity: counted, not reviewed.",
    comments={
        "date": "UTC calendar day of the vendor's bucket.",
        "reason": r.IGNORED_REASON,
        "payload": "The vendor line as read (JSON).",
        "vendor_scope": _SCOPE,
        "line_id": _LINE_ID,
    },
)

RECONCILIATION = Table(
    "reconciliation",
    r.RECONCILIATION,
    partition_by=(),
    replace_by=("period",),
    description="Metered vs vendor quantity and cost per vendor × UTC day × model × meter.",
    comments={
        "period": _MONTH,
        "date": "UTC calendar day.",
        "status": "matched | under_metered | over_metered | rate_mismatch | vendor_only | "
        "meter_only (usage rows); other rows carry their charge class.",
        "metered_quantity": _QTY,
        "vendor_quantity": _QTY,
        "quantity_variance": "Vendor minus metered quantity; positive = unbilled usage.",
        "expected_amount": _MONEY,
        "billed_amount": _MONEY,
        "amount_variance": "Vendor billed minus expected; " + _MONEY,
    },
)

COST_ATTRIBUTION = Table(
    "cost_attribution",
    r.COST_ATTRIBUTION,
    partition_by=(),
    replace_by=("month",),
    description="Revenue, allocated vendor cost and margin per account × model × month.",
    comments={
        "month": _MONTH,
        "account_id": _ACCOUNT + " Null on unattributed and vendor adjustment rows.",
        "row_kind": "account | unattributed | vendor_adjustment.",
        "revenue": "Rated revenue; " + _MONEY,
        "allocated_cost": "Vendor cost allocated to the row; " + _MONEY,
        "margin": "revenue - allocated_cost; " + _MONEY,
        "margin_pct": "margin / revenue × 100.",
    },
)

SPEND_STATE = Table(
    "spend_state",
    g.SPEND_STATE,
    partition_by=(),
    replace_by=("period", "account_id"),
    description="Month-to-date spend against budgets and caps per account × scope × month.",
    comments={
        "period": _MONTH,
        "as_of": "Evaluation time inside the month, " + _UTC,
        "account_id": _ACCOUNT,
        "scope": "budget (the account's subtree) | cap (one limit).",
        "enforcement": "HARD | SOFT.",
        "budget": _MONEY,
        "spend": "Subtree month-to-date spend priced like the invoice; " + _MONEY,
        "own_spend": "The account's own share of `spend`; " + _MONEY,
        "billed": "`spend` rounded as the invoice rounds it; " + _MONEY2,
        "remaining": "Headroom to the hard threshold; " + _MONEY,
        "status": "ok | soft_alert | hard_alert | hard_stop.",
    },
)

USAGE_ANOMALIES = Table(
    "usage_anomalies",
    g.USAGE_ANOMALIES,
    partition_by=(),
    replace_by=("period", "account_id"),
    description="Flagged account × model × meter × hour against the same hour of earlier days.",
    comments={
        "period": _MONTH,
        "account_id": _ACCOUNT,
        "hour": _HOUR,
        "kind": "token_surge (token quantities) | spend_spike (hourly spend).",
        "value": "The hour's quantity or spend; decimal(38, 12).",
        "baseline_from": "Baseline window start [from, to), " + _UTC,
        "baseline_to": "Baseline window end (exclusive), " + _UTC,
    },
)

GUARDRAIL_DECISIONS = Table(
    "guardrail_decisions",
    g.GUARDRAIL_DECISIONS,
    partition_by=(),
    description="Append-only log of guardrail state changes, one row per change of one scope.",
    comments={
        "decision_id": "Hash of what changed (never of the run): a rerun finds it recorded.",
        "follows": "decision_id of the scope's previous decision (null for the first).",
        "period": _MONTH,
        "account_id": _ACCOUNT,
        "from_status": "ok | soft_alert | hard_alert | hard_stop | raised | cleared.",
        "to_status": "ok | soft_alert | hard_alert | hard_stop | raised | cleared.",
        "effective_at": _UTC,
        "window_from": "Window start [from, to), " + _UTC,
        "window_to": "Window end (exclusive), " + _UTC,
        "spend": _MONEY,
        "budget": _MONEY,
        "threshold": _MONEY,
        "inputs": "Every number the rule looked at, JSON.",
    },
)

GUARDRAIL_ALERTS = Table(
    "guardrail_alerts",
    g.GUARDRAIL_ALERTS,
    partition_by=(),
    description="One row per alert raised for an escalating decision (once per decision_id).",
    comments={
        "decision_id": "The decision alerted on; unique, which makes alerting idempotent.",
        "severity": "warning | error.",
        "effective_at": _UTC,
        "raised_at": _UTC,
    },
)

#: Every table, by name, in pipeline order.
TABLES: Mapping[str, Table] = MappingProxyType(
    {
        t.name: t
        for t in (
            RAW_EVENTS,
            QUARANTINE,
            EVENT_CONFLICTS,
            INGEST_LOG,
            EVENTS,
            EVENTS_BUILDS,
            EVENT_KEYS,
            USAGE_HOURLY,
            HOUR_BUILDS,
            USAGE_MONTHLY,
            RATED_USAGE,
            UNRATED_USAGE,
            CREDIT_LEDGER,
            CREDIT_GRANT_LEDGER,
            INVOICES,
            INVOICE_LINES,
            PERIOD_CLOSES,
            VENDOR_COSTS,
            VENDOR_COST_CHANGES,
            VENDOR_REVIEW,
            VENDOR_IGNORED,
            RECONCILIATION,
            COST_ATTRIBUTION,
            SPEND_STATE,
            USAGE_ANOMALIES,
            GUARDRAIL_DECISIONS,
            GUARDRAIL_ALERTS,
        )
    }
)


def table(name: str) -> Table:
    """The catalog entry called `name` (KeyError naming the known tables otherwise)."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no table {name!r} in the catalog (known: {', '.join(TABLES)})") from None
