"""What every `usagebox` command shares (CONTRACT §1): options, month parsing, JSON output."""

import json
from datetime import date, datetime
from typing import Annotated

import typer

from usagebox_pipelines.months import month_bounds

Home = Annotated[
    str | None,
    typer.Option(
        "--home", help="Root of the tables (path or s3://bucket/prefix).", show_default=False
    ),
]
Pricebooks = Annotated[
    str | None,
    typer.Option("--pricebooks", help="Folder of pricebook YAML files.", show_default=False),
]


def parse_month(value: str) -> str:
    """A validated `YYYY-MM` (MonthError, a user error, otherwise)."""
    month_bounds(value)
    return value


def print_json(data: object) -> None:
    """One JSON document on stdout; dates as ISO text, decimals and the rest as strings."""
    typer.echo(json.dumps(data, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)
