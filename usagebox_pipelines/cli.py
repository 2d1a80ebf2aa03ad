"""`usagebox`: thin typer commands over the pipeline (CONTRACT.md §1).

Exit codes: 0 ok; 1 a check or invariant failed; 2 bad input (one line on stderr, no traceback).

`demo` is the one place the product reaches into `usagebox_demo` (the seeded generators, shipped
in the same distribution but not part of the product): it imports `usagebox_demo.run` lazily
inside the command, so nothing else in `usagebox_pipelines` loads or depends on it.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer

from usagebox_pipelines.cli_options import (
    Home,
    Pricebooks,
    click_errors,
    current_home,
    open_home,
    parse_month,
    print_json,
    remember_root_options,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError, environment_error

if TYPE_CHECKING:
    import dagster as dg

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Usage-based billing pipelines: events → Delta tables → rated usage → invoices.",
)


@app.callback()
def _root(home: Home = None, pricebooks: Pricebooks = None) -> None:
    """Usage-based billing pipelines: events → Delta tables → rated usage → invoices.

    --home and --pricebooks may come before the command or after it (after wins).
    """
    remember_root_options(home, pricebooks)


def _err(message: str) -> None:
    typer.echo(message, err=True)


Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Dagster's log and progress lines on stderr.")
]
Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout (for scripts).")]


def _instance_meanwhile(settings: Settings) -> Future[dg.DagsterInstance]:
    """The Dagster instance, opened on a thread while the command does its work: importing
    Dagster and opening the instance's SQLite storage take ~1.5 s, and ingest's Polars and
    Delta work releases the GIL, so on two cores most of it is hidden."""

    def open_instance() -> dg.DagsterInstance:
        from usagebox_pipelines.runner import dagster_instance

        return dagster_instance(settings)

    return ThreadPoolExecutor(1, thread_name_prefix="dagster-instance").submit(open_instance)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Event files: JSONL, CSV, Parquet, .gz.")],
    source: Annotated[str | None, typer.Option(help="Label stored with the rows.")] = None,
    verbose: Verbose = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Load event files; print {"files","accepted","duplicates","conflicts","rejected","late"}.

    The output stays the contract's one JSON object (CONTRACT §1); a progress bar with the
    rows' total and ETA shows on a terminal's stderr. The ingest is recorded in the Dagster
    instance as materialisations of `raw_events` and `events`."""
    from usagebox_pipelines.cli_progress import IngestProgress, estimated_rows, progress
    from usagebox_pipelines.stages.events import update_events
    from usagebox_pipelines.stages.ingest import ingest_files, late_accounts

    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # checked before anything is written
        raise UsageboxError(f"no such file or folder: {', '.join(missing)}")
    settings, store = open_home(home, pricebooks, create=True)
    instance = _instance_meanwhile(settings)
    rows = estimated_rows(paths) if sys.stderr.isatty() else None
    # One unit of work: the lease and the open tables are shared by both stages.
    with store.writer("ingest"), store.cached():
        started = time.monotonic()
        with progress("ingest", 2 * rows if rows else None, "rows × 2 passes", verbose) as bar:
            accounts = late_accounts(settings.pricebooks)
            summary = ingest_files(
                store, paths, source, progress=IngestProgress(bar), accounts=accounts
            )
        if summary.files == 0:
            raise UsageboxError("nothing could be read: " + "; ".join(summary.errors))
        for error in summary.errors:
            _err(error)
        loaded = time.monotonic()
        update = update_events(store, run_id="cli-ingest")
        seconds = (loaded - started, time.monotonic() - loaded)
    from usagebox_pipelines.runner import report_ingest

    warning = report_ingest(settings, summary, update, instance, seconds)
    if warning:
        _err(warning)
    print_json({k: v for k, v in summary.__dict__.items()})
    if summary.errors:  # the readable files are in; a scheduler must still see the bad ones
        _err(
            f"usagebox: {len(summary.errors)} input(s) not ingested (above), {summary.files} "
            "file(s) were: fix them and run the same command again (ingested files are skipped)"
        )
        raise typer.Exit(2)


@app.command()
def run(
    day: Annotated[str | None, typer.Option("--date", help="UTC day YYYY-MM-DD.")] = None,
    month: Annotated[str | None, typer.Option("--month", help="Month YYYY-MM.")] = None,
    as_json: Json = False,
    verbose: Verbose = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Materialise every stage for a UTC day (default: yesterday) or a month, through Dagster.

    Prints one line per run (job, partitions, ok/FAILED); `--json` prints `{"runs": [...]}`
    instead. Each failure is one line on stderr; Dagster's own log stays off stdout
    (`--verbose`: on stderr)."""
    from usagebox_pipelines.cli_progress import progress
    from usagebox_pipelines.runner import RUN_JOBS, job_steps, run_day, run_month

    if day and month:
        raise UsageboxError("give --date or --month, not both")
    period = parse_month(month) if month else None
    when = parse_day(day) if day else _yesterday()
    settings, _ = open_home(home, pricebooks)
    total = sum(job_steps(j) for j in RUN_JOBS)
    with progress(f"run {period or when}", total, "steps", verbose) as bar:
        step = lambda name: bar.advance(1, name)  # noqa: E731
        if period:
            outcomes = run_month(settings, period, verbose, step)
        else:
            outcomes = run_day(settings, when, verbose, step)
    if as_json:
        print_json({"runs": [o.as_dict() for o in outcomes]})
    else:
        for o in outcomes:
            state = "ok" if o.success else f"FAILED ({len(o.failures)} failure(s))"
            typer.echo(f"{o.job} {o.partitions}: {state} (run {o.run_id})")
    for o in outcomes:  # one line on stderr per failure (CONTRACT §1)
        for failure in o.failures:
            _err(f"usagebox: {o.job} {o.partitions}: {failure}")
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
    from usagebox_pipelines.catalog import HOUR_BUILDS, USAGE_HOURLY
    from usagebox_pipelines.rollups.usage_query import (
        SOURCES,
        parse_group_by,
        parse_time,
        usage_query,
    )
    from usagebox_pipelines.stages.events import events_frame

    window = parse_time(start, "--from"), parse_time(end, "--to")
    columns = parse_group_by(group_by, source)
    if window[0] >= window[1]:  # the request is checked before the home is opened
        raise UsageboxError(f"--from {start} must be before --to {end}")
    if source not in SOURCES:
        raise UsageboxError(f"--source {source!r}: choose rollup, raw or auto")
    _, store = open_home(home, pricebooks)
    answer = usage_query(
        events_frame(store),
        store.scan(USAGE_HOURLY),
        store.read(HOUR_BUILDS),
        account,
        *window,
        columns,
        source,
    )
    print_json(answer)


@app.command()
def verify(
    month: Annotated[str | None, typer.Option(help="Only this month (YYYY-MM).")] = None,
    render: Annotated[
        bool,
        typer.Option(
            "--render",
            help="Also re-render every issued PDF and compare its bytes (slow: ~1 s CPU each, "
            "in a process pool); by default PDFs are checked against the hash their close "
            "committed.",
        ),
    ] = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Check the invariants of CONTRACT.md §5; exit 1 naming any that fail."""
    from usagebox_pipelines.stages.verify import verify_report

    period = parse_month(month) if month else None
    settings, store = open_home(home, pricebooks)
    report = verify_report(store, settings, period, render)
    print_json(report.to_dict())
    if report.failed:
        raise InvariantError("invariants failed: " + ", ".join(report.failed))


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A SELECT over the tables of CONTRACT.md §3.")],
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json.")] = "table",
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Time travel: read every table at this Delta version (12) or as it was at "
            "this UTC time (2026-10-15T00:00:00Z).",
        ),
    ] = None,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Read-only SQL (DuckDB, confined to this home's tables) over <home>/tables."""
    from usagebox_pipelines.sql import run_sql, to_csv

    if fmt not in ("table", "csv", "json"):
        raise UsageboxError(f"--format {fmt!r}: choose table, csv or json")
    _, store = open_home(home, pricebooks)
    frame = run_sql(store, query, as_of)
    if fmt == "csv":
        typer.echo(to_csv(frame), nl=False)
    elif fmt == "json":
        print_json(frame.to_dicts())
    else:
        with pl.Config(tbl_rows=200, tbl_cols=50, fmt_str_lengths=80, tbl_width_chars=200):
            typer.echo(str(frame))


@app.command()
def maintain(
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="Also delete data files older versions no longer need (keeps every version "
            "an issued invoice was rated from).",
        ),
    ] = False,
    retention_hours: Annotated[
        int, typer.Option("--retention-hours", help="Vacuum: keep files younger than this.")
    ] = 168,
    as_json: Json = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Table upkeep: catalog names, descriptions and column comments onto older tables,
    compaction of small files, and with --vacuum removal of unreferenced files."""
    from usagebox_pipelines.stages.maintenance import maintain as maintain_tables

    if retention_hours < 0:
        raise UsageboxError(f"--retention-hours {retention_hours}: must not be negative")
    _, store = open_home(home, pricebooks)
    report = maintain_tables(store, vacuum, retention_hours)
    if as_json:
        print_json(report)
        return
    for name, entry in report.items():
        done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in entry.items())
        typer.echo(f"{name}: {done}")


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
    from usagebox_pipelines.stages.reconciliation import load_exports, reconcile_month

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageboxError(f"no such file or folder: {', '.join(missing)}")
    period = parse_month(month) if month else None
    settings, store = open_home(home, pricebooks)
    loaded = load_exports(store, settings, vendor, paths)
    for warning in loaded["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    months = [period] if period else loaded["months"]
    results = [
        reconcile_month(store, settings, m, pdf_reports=True) | {"status": loaded["status"]}
        for m in months
    ]
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
    from usagebox_pipelines.catalog import EVENTS, USAGE_HOURLY
    from usagebox_pipelines.pricing.accounts import load_accounts
    from usagebox_pipelines.pricing.pricebook import load_pricebooks
    from usagebox_pipelines.pricing.reprice import reprice_impact

    if not pricebook.is_file():
        raise UsageboxError(f"{pricebook}: no such pricebook file")
    parse_month(month)
    settings, store = open_home(home, pricebooks)
    impact = reprice_impact(
        store.scan(USAGE_HOURLY),
        parse_month(month),
        load_pricebooks(settings.pricebooks),
        pricebook,
        load_accounts(settings.pricebooks),
        events=store.scan(EVENTS),
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
    from usagebox_demo.run import run_demo  # the one allowed product -> demo edge (see top)

    period = parse_month(month)
    settings, _ = open_home(home, pricebooks, create=True)
    report = run_demo(settings, period, seed, events, say=lambda m: _err(m))
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


def cli_main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (CONTRACT §1).

    0 ok; 1 a check or invariant failed; 2 bad input or usage, with one line on stderr and no
    traceback. Exit codes raised by commands (`typer.Exit`) are returned as they are.
    """
    current_home.set(None)
    try:
        code = app(args=argv, prog_name="usagebox", standalone_mode=False)
    except InvariantError as exc:
        return _fail(str(exc), 1)
    except UsageboxError as exc:
        return _fail(str(exc), 2)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "")
        return _fail(f"missing command (try '{_command_path(exc)} --help')", 2)
    except click_errors.UsageError as exc:
        return _fail(f"{exc.format_message()} (try '{_command_path(exc)} --help')", 2)
    except click_errors.ClickException as exc:
        return _fail(exc.format_message(), 2)
    except typer.Abort:
        return _fail("aborted", 1)
    except BrokenPipeError:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the reader went away (`| head`)
        return 1
    except Exception as exc:
        reason = environment_error(exc, current_home.get())
        if reason is None:
            raise
        return _fail(str(reason), 2)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int) -> int:
    from usagebox_pipelines.errors import one_line

    _err(f"usagebox: {one_line(message, limit=1000)}")
    return code


def _command_path(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    return ctx.command_path if ctx is not None else "usagebox"


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli_main())


if __name__ == "__main__":
    main()
