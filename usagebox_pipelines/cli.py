"""`usagebox`: thin typer commands over the pipeline (CONTRACT.md §1).

Exit codes: 0 ok; 1 a check or invariant failed; 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from usagebox_pipelines.cli_options import Home, Pricebooks, parse_month, print_json
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.storage import DeltaStore

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Usage-based billing pipelines: events → Delta tables → rated usage → invoices.",
)


def _settings(home: str | None, pricebooks: str | None) -> Settings:
    return Settings.resolve(home, pricebooks)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Event files: JSONL, CSV, Parquet, .gz.")],
    source: Annotated[str | None, typer.Option(help="Label stored with the rows.")] = None,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Load event files; print {"files","accepted","duplicates","conflicts","rejected","late"}."""
    from usagebox_pipelines.events.ingest import ingest_files
    from usagebox_pipelines.pipeline import update_events

    settings = _settings(home, pricebooks)
    store = DeltaStore(settings.home)
    summary = ingest_files(store, paths, source, progress=_progress())
    for error in summary.errors:
        _err(error)
    if summary.files == 0:
        raise UsageboxError("nothing could be read: " + "; ".join(summary.errors))
    update_events(store, run_id="cli-ingest")
    print_json({k: v for k, v in summary.__dict__.items()})


def _progress():
    """Progress lines on stderr when a person is watching; silent in pipes and tests."""
    if sys.stderr.isatty():
        return lambda msg: typer.echo(f"  {msg}", err=True)
    return None


@app.command()
def run(
    day: Annotated[str | None, typer.Option("--date", help="UTC day YYYY-MM-DD.")] = None,
    month: Annotated[str | None, typer.Option("--month", help="Month YYYY-MM.")] = None,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Materialise every stage for a UTC day (default: yesterday) or a month, through Dagster."""
    from usagebox_pipelines.runner import run_day, run_month

    settings = _settings(home, pricebooks)
    if day and month:
        raise UsageboxError("give --date or --month, not both")
    if month:
        outcomes = run_month(settings, parse_month(month))
    else:
        outcomes = run_day(settings, parse_day(day) if day else _yesterday())
    print_json({"runs": [o.as_dict() for o in outcomes]})
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


def _yesterday() -> date:
    return (datetime.now(UTC) - timedelta(days=1)).date()


def parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageboxError(f"--date {value!r}: expected YYYY-MM-DD") from None


@app.command()
def usage(
    account: Annotated[str, typer.Argument(help="Account id.")],
    start: Annotated[str, typer.Option("--from", help="Window start (inclusive), RFC 3339.")],
    end: Annotated[str, typer.Option("--to", help="Window end (exclusive), RFC 3339.")],
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="Columns, comma-separated (default meter_id).")
    ] = None,
    source: Annotated[str, typer.Option(help="rollup | raw | auto.")] = "auto",
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Usage of one account over [from, to)."""
    from usagebox_pipelines.pipeline import events_frame
    from usagebox_pipelines.rollups.usage_query import parse_group_by, parse_time, usage_query
    from usagebox_pipelines.schemas import HOUR_BUILDS, USAGE_HOURLY

    store = DeltaStore(_settings(home, pricebooks).home)
    answer = usage_query(
        events_frame(store),
        store.scan("usage_hourly", USAGE_HOURLY),
        store.read("hour_builds", HOUR_BUILDS),
        account,
        parse_time(start, "--from"),
        parse_time(end, "--to"),
        parse_group_by(group_by, source),
        source,
    )
    print_json(answer)


@app.command()
def verify(
    month: Annotated[str | None, typer.Option(help="Only this month (YYYY-MM).")] = None,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Check the invariants of CONTRACT.md §5; exit 1 naming any that fail."""
    from usagebox_pipelines.invoicing.close import issued_intact
    from usagebox_pipelines.pipeline import verify as verify_tables

    settings = _settings(home, pricebooks)
    store = DeltaStore(settings.home)
    period = parse_month(month) if month else None
    results = [*verify_tables(store, period), issued_intact(store, settings, period)]
    failed = [r.name for r in results if not r.passed]
    print_json({"passed": not failed, "failed": failed, "checks": [r.as_dict() for r in results]})
    if failed:
        raise InvariantError("invariants failed: " + ", ".join(failed))


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A SELECT over the tables of CONTRACT.md §3.")],
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json.")] = "table",
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Read-only SQL (Polars SQL) over every Delta table under <home>/tables."""
    from usagebox_pipelines.sql import run_sql

    frame = run_sql(DeltaStore(_settings(home, pricebooks).home), query)
    if fmt == "csv":
        typer.echo(frame.write_csv(), nl=False)
    elif fmt == "json":
        print_json(frame.to_dicts())
    elif fmt == "table":
        with pl.Config(tbl_rows=200, tbl_cols=50, fmt_str_lengths=80, tbl_width_chars=200):
            typer.echo(str(frame))
    else:
        raise UsageboxError(f"--format {fmt!r}: choose table, csv or json")


@app.command()
def reconcile(
    vendor: Annotated[str, typer.Option(help="openai | anthropic | focus.")],
    paths: Annotated[list[Path], typer.Argument(help="Export files or folders.")],
    month: Annotated[
        str | None, typer.Option(help="Month YYYY-MM (default: months loaded).")
    ] = None,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Load vendor bill/usage exports and reconcile them against metered usage."""
    from usagebox_pipelines.reconciliation.stages import load_exports, reconcile_month

    settings = _settings(home, pricebooks)
    store = DeltaStore(settings.home)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageboxError(f"no such file or folder: {', '.join(missing)}")
    loaded = load_exports(store, settings, vendor, paths)
    months = [parse_month(month)] if month else loaded["months"]
    results = [reconcile_month(store, settings, m) for m in months]
    print_json({"loaded": loaded, "months": results})


@app.command()
def reprice(
    pricebook: Annotated[Path, typer.Option("--pricebook", help="Proposed pricebook YAML.")],
    month: Annotated[str, typer.Option(help="Month YYYY-MM.")],
    fmt: Annotated[str, typer.Option("--format", help="table | json.")] = "table",
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Dry run of a price change: the month under the proposed version vs now (writes nothing)."""
    from usagebox_pipelines.pricing.accounts import load_accounts
    from usagebox_pipelines.pricing.pricebook import load_pricebooks
    from usagebox_pipelines.pricing.reprice import reprice_impact
    from usagebox_pipelines.schemas import USAGE_HOURLY

    settings = _settings(home, pricebooks)
    if not pricebook.exists():
        raise UsageboxError(f"{pricebook}: no such pricebook file")
    store = DeltaStore(settings.home)
    impact = reprice_impact(
        store.scan("usage_hourly", USAGE_HOURLY),
        parse_month(month),
        load_pricebooks(settings.pricebooks),
        pricebook,
        load_accounts(settings.pricebooks),
    )
    if fmt == "json":
        print_json(impact.to_dicts())
        return
    with pl.Config(tbl_rows=500, tbl_cols=20, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        typer.echo(f"Price change impact for {month} (proposed: {pricebook.name})")
        typer.echo(str(impact))


@app.command()
def demo(
    month: Annotated[str, typer.Option(help="Demo month YYYY-MM.")] = "2026-10",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 7,
    events: Annotated[int, typer.Option(help="Clean events to generate.")] = 20_000,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Generate a realistic month and run every stage: ingest, rollups, prices, invoices, recon."""
    from usagebox_pipelines.demo.run import run_demo

    settings = _settings(home, pricebooks)
    report = run_demo(settings, parse_month(month), seed, events, say=lambda m: _err(m))
    print_json(report)


def _mount_subcommands() -> None:
    """Commands and groups that live in their own modules."""
    from usagebox_pipelines.cli_guardrails import guardrails_app
    from usagebox_pipelines.cli_invoicing import close, explain, invoice_app, invoices

    app.command()(close)
    app.command()(explain)
    app.command()(invoices)
    app.add_typer(invoice_app, name="invoice", help="Issued invoices: verify.")
    app.add_typer(guardrails_app, name="guardrails", help="Budgets, caps and the policy export.")


_mount_subcommands()


def main() -> None:
    """Entry point: user errors become one line on stderr and exit 2 (1 for failed checks)."""
    try:
        app(standalone_mode=False)
    except InvariantError as exc:
        _err(f"usagebox: {exc}")
        sys.exit(1)
    except UsageboxError as exc:
        _err(f"usagebox: {exc}")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _err("usagebox: aborted")
        sys.exit(1)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
