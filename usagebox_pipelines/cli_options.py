"""What every `usagebox` command shares (CONTRACT §1): options, the home check, month parsing,
JSON output.

`--home` and `--pricebooks` are accepted before the subcommand (`usagebox --home H ingest F`,
stored by the app callback in the click context) and after it (`usagebox ingest F --home H`,
which wins). `open_home` is the one place that decides whether a home exists.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

# typer >= 0.29 (the pinned minimum) vendors click as typer._click
from typer._click import exceptions as click_errors  # noqa: F401
from typer._click.globals import get_current_context

from usagebox_pipelines.config import Settings, is_object_store
from usagebox_pipelines.errors import HomeError, UsageboxError
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.storage import DeltaStore

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

_ROOT_HOME = "usagebox.home"
_ROOT_PRICEBOOKS = "usagebox.pricebooks"

#: The home the running command resolved, so the entry point can name it in error messages.
current_home: ContextVar[str | None] = ContextVar("current_home", default=None)


def remember_root_options(home: str | None, pricebooks: str | None) -> None:
    """Called by the app callback: options given before the subcommand become defaults."""
    ctx = get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_ROOT_HOME] = home
        ctx.meta[_ROOT_PRICEBOOKS] = pricebooks


def settings(home: str | None, pricebooks: str | None) -> Settings:
    """Locations for a command: its own options, else those before the subcommand, else env."""
    ctx = get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    resolved = Settings.resolve(
        home or meta.get(_ROOT_HOME), pricebooks or meta.get(_ROOT_PRICEBOOKS)
    )
    current_home.set(resolved.home)
    return resolved


def open_home(
    home: str | None, pricebooks: str | None, *, create: bool = False
) -> tuple[Settings, DeltaStore]:
    """Resolve and check the home: HomeError (exit 2) unless it holds tables, or `create`."""
    resolved = settings(home, pricebooks)
    if not resolved.pricebooks.is_dir():
        raise UsageboxError(
            f"--pricebooks {resolved.pricebooks}: no such folder (pass the folder of pricebook "
            "YAML files, or unset USAGEBOX_PRICEBOOKS)"
        )
    store = DeltaStore(resolved.home)
    if not is_object_store(resolved.home):
        path = Path(resolved.home)
        if path.exists() and not path.is_dir():
            raise HomeError(f"--home {path} is a file, not a folder: pass the home folder")
        if create:
            _check_creatable(path)
            return resolved, store
    if not create and not has_tables(store):
        raise HomeError(
            f"no usagebox home at {resolved.home}: run `usagebox ingest` or `usagebox demo` "
            "first, or pass --home"
        )
    return resolved, store


def has_tables(store: DeltaStore) -> bool:
    """A home exists when `<home>/tables` holds at least one Delta table."""
    from usagebox_pipelines.sql import table_names

    return bool(table_names(store, first_only=True))


def _check_creatable(path: Path) -> None:
    """The home (or its nearest existing parent) must be a writable folder; nothing is made."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise HomeError(f"cannot create the home {path}: {existing} is a file (check --home)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HomeError(
            f"cannot write under {path}: permission denied (fix its permissions or pass a "
            "writable --home)"
        )


def require_events(store: DeltaStore) -> None:
    """Refuse to bill a home that has never accepted an event."""
    from usagebox_pipelines.catalog import EVENTS

    table = store.table(EVENTS)
    if table is None or table.to_pyarrow_dataset().count_rows() == 0:
        raise UsageboxError(
            f"no events in {store.home}: ingest events first (`usagebox ingest FILE`) "
            "before closing a month"
        )


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
