"""`usagebox close | explain | invoices | invoice verify`: thin typer commands over
the close, explain, export and reproduce stages (CONTRACT §1).

cli.py mounts them: `app.command()(close)`, `app.command()(explain)`,
`app.command()(invoices)` and `app.add_typer(invoice_app, name="invoice")`. Each prints one
JSON object. A refused close raises InvariantError (exit 1, reason on stderr); an invoice that
does not reproduce prints its report and exits 1; unknown numbers or months exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from usagebox_pipelines.cli_options import (
    Home,
    Pricebooks,
    open_home,
    parse_month,
    print_json,
    require_events,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.storage import DeltaStore

Month = Annotated[str, typer.Argument(help="Month YYYY-MM.")]
Number = Annotated[str, typer.Argument(help="Invoice number, e.g. UBX-2026-000001.")]

invoice_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Issued invoices: reproduce one from its stamped versions.",
)


def _open(home: str | None, pricebooks: str | None) -> tuple[DeltaStore, Settings]:
    settings, store = open_home(home, pricebooks)
    return store, settings


def close(
    month: Month,
    approve: Annotated[
        bool, typer.Option("--approve", help="Issue the invoices (else: control totals only).")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Close even though an earlier month with billable usage is open."
        ),
    ] = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Month close: numbered, rendered, frozen invoices for the period."""
    from usagebox_pipelines.stages.close import close_month
    from usagebox_pipelines.stages.results import Closed

    period = parse_month(month)
    store, settings = _open(home, pricebooks)
    require_events(store)
    result = close_month(store, settings, period, approve=approve, run_id="cli-close", force=force)
    if isinstance(result, Closed):  # the month's issued_invoices partition, in the Dagster UI
        from usagebox_pipelines.runner import report_close

        warning = report_close(settings, result)
        if warning:
            typer.echo(warning, err=True)
    print_json(result.to_dict())


def explain(
    invoice_number: Number,
    line: Annotated[int | None, typer.Option("--line", help="Only this line number.")] = None,
    events: Annotated[
        bool, typer.Option("--events", help="List the event ids behind each usage line.")
    ] = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """The audit trail of an invoice line: price rule and version, rollup rows, event ids."""
    from usagebox_pipelines.stages.explain import explain_invoice

    store, settings = _open(home, pricebooks)
    print_json(explain_invoice(store, settings, invoice_number, line, events).to_dict())


def invoices(
    out: Annotated[Path, typer.Option("--out", help="Folder for the PDFs and register.csv.")],
    month: Annotated[
        str | None, typer.Argument(help="Month YYYY-MM (or --month).", show_default=False)
    ] = None,
    month_option: Annotated[
        str | None, typer.Option("--month", help="Month YYYY-MM.", show_default=False)
    ] = None,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Copy a closed month's invoice and credit-note PDFs and write a register.csv."""
    from usagebox_pipelines.stages.export import export_invoices

    if month and month_option and month != month_option:
        raise UsageboxError(f"month given twice ({month} and --month {month_option})")
    if not (month or month_option):
        raise UsageboxError("give the month: `usagebox invoices --month YYYY-MM --out DIR`")
    period = parse_month(month or month_option)
    store, settings = _open(home, pricebooks)
    print_json(export_invoices(store, settings, period, out).to_dict())


@invoice_app.command("verify")
def verify_invoice_command(
    invoice_number: Number,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Rebuild an issued invoice from its stamps; exit 1 on any difference."""
    from usagebox_pipelines.stages.reproduce import verify_invoice

    store, settings = _open(home, pricebooks)
    report = verify_invoice(store, settings, invoice_number)
    print_json(report.to_dict())
    if not report.reproduced:
        raise typer.Exit(1)
