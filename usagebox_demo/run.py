"""`usagebox demo`: one realistic month through every stage, as an operator would run it.

generate inputs → ingest → Dagster month run (rollups, rating, guardrails, drafts) → vendor
exports loaded and reconciled → close with approval (numbered PDFs) → late events arrive →
rerun → next month's draft carries the adjustments.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from usagebox_demo.generate import write_demo_inputs
from usagebox_demo.guardrail_scenarios import plant_guardrail_scenarios
from usagebox_demo.vendor_exports import write_vendor_exports
from usagebox_pipelines.catalog import INVOICE_LINES, USAGE_HOURLY
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError
from usagebox_pipelines.months import month_bounds, shift_month
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.runner import RunOutcome, report_close, report_ingest, run_month
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.guardrails import raise_alerts
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.reconciliation import load_exports, reconcile_month
from usagebox_pipelines.stages.results import Closed, CloseResult
from usagebox_pipelines.storage import DeltaStore, DocumentStore

Say = Callable[[str], None]


def run_demo(settings: Settings, month: str, seed: int, events: int, say: Say) -> dict:
    """Run the whole demo into `settings.home`; returns where things went and headline totals."""
    store = DeltaStore(settings.home)
    inputs = settings.local_home / "demo-inputs"
    say(f"[1/7] generating {events:,} events for {month} (seed {seed}) into {inputs}")
    manifest = write_demo_inputs(inputs, month, seed, events)
    main_files = [
        *manifest.main_files,
        *plant_guardrail_scenarios(inputs / "events" / "main", month),
    ]
    say(f"[2/7] ingesting {len(main_files)} files")
    ingest = ingest_files(store, main_files, source="demo", progress=lambda m: say(f"      {m}"))
    _recorded(say, report_ingest(settings, ingest, update_events(store, run_id="demo")))
    previous = shift_month(month, -1)
    say(f"[3/7] materialising {previous} (its late events) and {month} through Dagster")
    _check_runs(run_month(settings, previous) + run_month(settings, month))
    say("[4/7] writing vendor exports and reconciling")
    recon = _reconcile(store, settings, month, seed)
    raise_alerts(store)
    say(f"[5/7] closing {month} (approved)")
    closed = _close(store, settings, month)
    if isinstance(closed, Closed):
        _recorded(say, report_close(settings, closed))
    nxt = shift_month(month, 1)
    say(f"[6/7] late events arrive after the close; re-running {month} and {nxt}")
    late = ingest_files(store, list(manifest.late_files), source="demo-late")
    _recorded(say, report_ingest(settings, late, update_events(store, run_id="demo-late")))
    _check_runs(run_month(settings, month) + run_month(settings, nxt))
    say(f"[7/7] next month's draft carries adjustments for {month}")
    return _report(settings, store, month, nxt, ingest, late, recon, closed)


def _recorded(say: Callable[[str], None], warning: str | None) -> None:
    """Ingests and the close show in the Dagster UI like the CLI's (runner.report_*)."""
    if warning:
        say(warning)


def _check_runs(outcomes: list[RunOutcome]) -> None:
    failed = [f for o in outcomes for f in o.failures] or [
        f"{o.job} {o.partitions} failed" for o in outcomes if not o.success
    ]
    if failed:
        raise InvariantError("demo pipeline run failed: " + "; ".join(failed))


def _reconcile(store: DeltaStore, settings: Settings, month: str, seed: int) -> dict:
    start, end = month_bounds(month)
    hourly = (
        store.scan(USAGE_HOURLY)
        .filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        .collect()
    )
    out = settings.local_home / "demo-inputs" / "vendor_exports"
    planted = write_vendor_exports(
        hourly, out, month, load_vendor_mapping(settings.pricebooks), seed
    )
    for vendor, files in planted["files"].items():
        load_exports(store, settings, vendor, [Path(f) for f in files])
    result = reconcile_month(store, settings, month)
    result["planted_discrepancies"] = planted["discrepancies"]
    return result


def _close(store: DeltaStore, settings: Settings, month: str) -> CloseResult:
    from usagebox_pipelines.stages.close import close_month

    # The previous month holds only the demo's late events (a stub of a history we did not
    # generate): it stays open, so the demo month is closed past it (`close --force`).
    return close_month(store, settings, month, approve=True, force=True)


def _report(settings, store, month, nxt, ingest, late, recon, closed) -> dict:
    invoices = closed.invoices
    totals: dict[str, str] = {}
    for inv in invoices:
        cur = inv.get("currency", "USD")
        totals[cur] = str(
            sum((_dec(i["total"]) for i in invoices if i.get("currency") == cur), _dec("0"))
        )
    adjustments = (
        store.scan(INVOICE_LINES)
        .filter((pl.col("period") == nxt) & (pl.col("kind") == "adjustment"))
        .select(pl.len(), pl.col("amount").sum())
        .collect()
        if store.exists(INVOICE_LINES)
        else None
    )
    return {
        "home": settings.home,
        "month": month,
        "ingest": {k: v for k, v in ingest.__dict__.items() if k != "errors"},
        "late_ingest": {k: v for k, v in late.__dict__.items() if k != "errors"},
        "invoices_issued": len(invoices),
        "invoice_totals": totals,
        "invoice_pdfs": DocumentStore(settings.home).uri(f"invoices/{month}"),
        "next_month_adjustment_lines": int(adjustments[0, 0]) if adjustments is not None else 0,
        "next_month_adjustment_total": str(adjustments[0, 1]) if adjustments is not None else "0",
        "reconciliation": recon["summary"],
        "reconciliation_statuses": recon["statuses"],
        "reports": recon["reports"],
        "dagster": f"DAGSTER_HOME={settings.local_home / 'dagster'} dagster dev -w workspace.yaml",
        "try": f'usagebox sql "select * from invoices" --home {settings.home}',
    }


def _dec(value: object):
    from decimal import Decimal

    return Decimal(str(value))
