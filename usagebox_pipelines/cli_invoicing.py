"""`usagebox close | explain | invoices | invoice verify`: thin typer commands over
the close, explain, export and reproduce stages (CONTRACT §1).

cli.py mounts them: `app.command()(close)`, `app.command()(explain)`,
`app.command()(invoices)` and `app.add_typer(invoice_app, name="invoice")`. Each prints one
JSON object, but for the approver's review of `close` (without `--approve`), which prints
tables unless `--json` is given. A refused close raises InvariantError (exit 1, reason on
stderr); an invoice that does not reproduce prints its report and exits 1; unknown numbers
or months exit 2.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from usagebox_pipelines.cli_options import (
    Home,
    Pricebooks,
    open_home,
    parse_month,
    print_json,
    require_events,
)
from usagebox_pipelines.cli_progress import progress
from usagebox_pipelines.config import Settings
from usagebox_pipelines.decimals import grouped_text, to_decimal
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
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the review as one JSON object (for scripts)."),
    ] = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Month close: numbered, rendered, frozen invoices for the period.

    Without --approve it prints the control totals for the approver as tables (--json: the
    JSON object); an approved close prints one JSON object listing the invoices."""
    from usagebox_pipelines.stages.close import close_month
    from usagebox_pipelines.stages.results import Closed, NeedsApproval

    period = parse_month(month)
    store, settings = _open(home, pricebooks)
    require_events(store)
    # a bar over the PDFs on a terminal (2,000 documents take minutes); nothing for a review
    with progress(f"close {period}", None, "PDFs", verbose=False, shown=approve) as bar:

        def rendered(done: int, total: int) -> None:
            bar.set_total(total)
            bar.advance(1, f"close {period}: rendering")

        result = close_month(
            store,
            settings,
            period,
            approve=approve,
            run_id="cli-close",
            force=force,
            on_document=rendered,
        )
    if isinstance(result, Closed):  # the month's issued_invoices partition, in the Dagster UI
        from usagebox_pipelines.runner import report_close

        warning = report_close(settings, result)
        if warning:
            typer.echo(warning, err=True)
    if isinstance(result, NeedsApproval) and not json_out:
        typer.echo(review_text(result.to_dict()), nl=False)
    else:
        print_json(result.to_dict())


def review_text(review: dict, width: int = 110) -> str:
    """The approver's review of a close as plain-text tables: what was counted, the usage
    per meter, the invoice totals per currency and one row per draft document."""
    totals = review["control_totals"]
    events, ingest = totals["events"], totals["ingest"]
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(events["by_status"].items()))
    facts = [
        ("Events", f"{events['rows']:,} rows, {events['counted']:,} counted ({statuses}), "
                   f"late {events['late']:,}"),
        ("Rejected", f"duplicates {totals['duplicates']:,}, conflicts {totals['conflicts']:,}, "
                     f"quarantined {totals['quarantined']:,}, unrated {totals['unrated']:,}"),
        ("Ingest", f"{ingest['batches']:,} batch(es), {ingest['rows']:,} rows: accepted "
                   f"{ingest['accepted']:,}, late {ingest['late']:,}"),
    ]  # fmt: skip
    meters = [
        (meter, _num(r["sum"]), _num(r["billable_sum"]), f"{r['rows']:,}", f"{r['events']:,}")
        for meter, r in sorted(totals["rollup"].items())
    ]
    money = [
        (ccy, str(t["documents"]), str(t["credit_notes"]), t["subtotal"], t.get("tax", ""),
         t["adjustments"], t["credit"], t["total"])
        for ccy, t in sorted(totals["invoices"].items())
    ]  # fmt: skip
    docs = [
        (d["account_id"], d["document_type"].replace("_", " "), d["currency"] or "",
         d["subtotal"], d["total"], str(d["lines"]), ", ".join(d["adjusts_periods"]))
        for d in review["invoices"]
    ]  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False)
    version = review.get("events_table_version")
    console.print(f"Close {review['period']} · review (events table version {version})")
    console.print(_table("Control totals", ("", ""), facts, numeric=()))
    console.print(_table("Usage by meter", ("meter", "sum", "billable", "rows", "events"), meters))
    heads = ("currency", "documents", "credit notes", "net", "tax", "adjustments", "credit")
    console.print(_table("Invoices", (*heads, "total"), money))
    heads = ("account", "document", "currency", "net", "total", "lines", "adjusts")
    console.print(_table(f"Documents ({len(docs)})", heads, docs, numeric=(3, 4, 5)))
    console.print(review["message"])
    return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())


def _table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[int] | None = None,
) -> Table:
    """A borderless table; `numeric` columns (default: all but the first) align right."""
    right = range(1, len(headers)) if numeric is None else numeric
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_header=any(headers),
    )
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in right else "left", no_wrap=i > 0)
    for row in rows:
        table.add_row(*row)
    return table


def _num(text: str) -> str:
    """`254857.000000000000` → `254,857`; decimals keep their significant places."""
    return grouped_text(to_decimal(text))


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
