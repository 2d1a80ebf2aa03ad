"""Options every `usagebox` command shares (CONTRACT §1): one definition for all CLI modules."""

from typing import Annotated

import typer

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
