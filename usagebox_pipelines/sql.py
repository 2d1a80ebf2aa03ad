"""Read-only SQL for analysts over the home's Delta tables, and nothing else.

DuckDB runs the query in an in-memory database with external access disabled and its
configuration locked: no files, URLs, extensions or attached databases, only the Arrow
datasets of this home's tables registered as views. Before anything runs, the statement is
parsed and refused unless it is exactly one SELECT whose FROM items are those tables (or its
own CTEs): no table functions (`read_csv`, `glob`, `query`, ...) and no setting readers.
Decimals stay exact (Arrow decimal in, Arrow decimal out).

`as_of` time-travels: every table the query names is read at that Delta version, or as it was
at that time (`--as-of 12` / `--as-of 2026-10-15T00:00:00Z`). DuckDB's JSON functions work on
the JSON text columns (`dimensions->>'$.feature'`, `json_extract_string(inputs, '$.spend')`).
A result column is named as written, except `count(*)`, which is called `count`.
"""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import TABLES
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.storage import DeltaStore

#: Every table a home can hold (the catalog): what `usagebox sql` may query.
KNOWN_TABLES = list(TABLES)

#: Scalar functions that read the environment or the engine's configuration.
_REFUSED_FUNCTIONS = {"current_setting", "getenv", "getvariable", "set_variable"}

_LOCKED_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "python_enable_replacements": False,
}


def table_names(store: DeltaStore, first_only: bool = False) -> list[str]:
    """Catalog tables present under the home (local folders or object-store prefixes)."""
    if store.storage_options is None:
        root = Path(store.home) / "tables"
        if not root.is_dir():
            return []
        return sorted(n for n in KNOWN_TABLES if (root / n / "_delta_log").is_dir())
    found = []
    for name in KNOWN_TABLES:
        if store.exists(TABLES[name]):
            found.append(name)
            if first_only:
                break
    return sorted(found)


def run_sql(store: DeltaStore, query: str, as_of: str | None = None) -> pl.DataFrame:
    """Run one read-only SELECT over the home's tables; anything else is refused unexecuted.

    `as_of`: a Delta version number, or an RFC 3339 time / `YYYY-MM-DD` (UTC), at which every
    table the query names is read."""
    import duckdb

    names = table_names(store)
    known = ", ".join(names) or "none yet"
    point = parse_as_of(as_of) if as_of is not None else None
    con = confined_connection()
    datasets = []
    try:
        used = _check_statement(con, query, set(names), known)
        for name in sorted(used):
            datasets.append(_dataset(store, name, point, as_of))
            con.register(name, datasets[-1])
        result = con.sql(query)
        table = result.to_arrow_table() if result is not None else None
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageboxError(f"sql: {first} (tables: {known})") from None
    finally:
        con.close()
        # Release the Arrow datasets (and their scanners' threads) now, while Arrow is alive:
        # left to the interpreter's final teardown, a scanner thread can outlive Arrow's
        # memory pools and abort the process after the result was printed ("terminate
        # called without an active exception", seen once in CI on `sql --as-of 0`).
        datasets.clear()
        gc.collect()
    if table is None:
        raise UsageboxError(f"sql: the statement returned no rows or columns (tables: {known})")
    return _tidy_names(pl.from_arrow(table))


def parse_as_of(value: str) -> int | datetime:
    """`--as-of`: a version (`12`) or a time (`2026-10-15T00:00:00Z`, `2026-10-15`; UTC)."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageboxError(
            f"--as-of {value!r}: expected a Delta version (e.g. 12) or an RFC 3339 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _dataset(store: DeltaStore, name: str, point: int | datetime | None, as_of: str | None):
    """The table's Arrow dataset, now or at `point` (UsageboxError when it did not exist)."""
    from deltalake.exceptions import DeltaError

    table = TABLES[name]
    if point is None:
        return store.table(table).to_pyarrow_dataset()
    try:
        if isinstance(point, int):
            dt = store.table(table, version=point)
        else:
            dt = store.table(table)
            created = min(c["timestamp"] for c in dt.history()) / 1000
            if created > point.timestamp():  # delta-rs would load version 0 silently
                raise ValueError(f"created {datetime.fromtimestamp(created, UTC):%Y-%m-%d %H:%M}")
            dt.load_as_version(point)
    except (DeltaError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageboxError(f"sql: {name} has no version as of {as_of} ({first})") from None
    return dt.to_pyarrow_dataset()


def duckdb_connection(home: str, as_of: str | None = None):
    """A DuckDB connection of your own with every table of `home` registered by name (Arrow
    datasets read through deltalake, at `as_of` when given): DuckDB access that needs no
    `delta` extension download, with any DuckDB version the project installs.

    Unlike `run_sql` it is not confined: it is for a notebook or script, where the analyst can
    read files anyway. `import usagebox_pipelines.sql as s; con = s.duckdb_connection("data/demo")`
    then `con.sql("SELECT ... FROM usage_hourly")`.
    """
    import duckdb

    store = DeltaStore(home)
    point = parse_as_of(as_of) if as_of is not None else None
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for name in table_names(store):
        con.register(name, _dataset(store, name, point, as_of))
    return con


def confined_connection():
    """An in-memory DuckDB that cannot touch files, URLs or extensions, settings locked."""
    import duckdb

    con = duckdb.connect(":memory:", config=dict(_LOCKED_CONFIG))
    con.execute("SET TimeZone = 'UTC'").fetchall()
    con.execute("SET lock_configuration = true").fetchall()
    return con


def _check_statement(con, query: str, tables: set[str], known: str) -> set[str]:
    """Refuse anything but one SELECT over the home's tables; the tables it names."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise UsageboxError(f"sql: {str(exc).strip().splitlines()[0]} (tables: {known})") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise UsageboxError(
            f"sql: only a single read-only SELECT/WITH statement is allowed (tables: {known})"
        )
    ast = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    if ast.get("error"):
        raise UsageboxError(f"sql: {ast.get('error_message')} (tables: {known})")
    ctes: set[str] = set()
    _collect_ctes(ast, ctes)
    used: set[str] = set()
    for node in _walk(ast):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = _function_name(node.get("function")) or "a table function"
            raise UsageboxError(
                f"sql: {name}() is not allowed: query the tables by name (tables: {known})"
            )
        if kind == "BASE_TABLE":
            name = node.get("table_name", "")
            schema = node.get("schema_name") or "main"
            catalog = node.get("catalog_name") or "memory"
            if (schema, catalog) != ("main", "memory") or (name not in tables and name not in ctes):
                raise UsageboxError(f"sql: no table {name!r} (tables: {known})")
            if name in tables:
                used.add(name)
        if kind == "SHOW_REF" and node.get("show_type") == "SHOW_SPECIAL":
            used |= tables  # SHOW TABLES lists every table
        elif kind == "SHOW_REF":
            name = node.get("table_name") or ""
            if name and name not in tables and name not in ctes:
                raise UsageboxError(f"sql: no table {name!r} (tables: {known})")
            if name in tables:
                used.add(name)
        if node.get("class") == "FUNCTION" and node.get("function_name") in _REFUSED_FUNCTIONS:
            raise UsageboxError(f"sql: {node['function_name']}() is not allowed (tables: {known})")
    return used


def _walk(node: object):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _collect_ctes(ast: object, out: set[str]) -> None:
    for node in _walk(ast):
        for entry in (node.get("cte_map") or {}).get("map", []) if "cte_map" in node else []:
            out.add(entry.get("key", ""))


def _function_name(function: object) -> str | None:
    if isinstance(function, dict):
        return function.get("function_name")
    return None


def _tidy_names(frame: pl.DataFrame) -> pl.DataFrame:
    """`count(*)` comes back from DuckDB as `count_star()`: call it `count` when free."""
    if "count_star()" in frame.columns and "count" not in frame.columns:
        frame = frame.rename({"count_star()": "count"})
    return frame


_FORMULA_START = r"^[=+\-@\t\r]"


def neutralise_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Text cells a spreadsheet would run as formulas get a leading `'` (OWASP CSV injection).

    Only string columns: numbers (negative amounts included) stay numbers.
    """
    exprs = [
        pl.when(pl.col(name).str.contains(_FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name, dtype in frame.schema.items()
        if dtype == pl.String
    ]
    return frame.with_columns(exprs) if exprs else frame


def to_csv(frame: pl.DataFrame) -> str:
    """CSV safe to open in a spreadsheet; nested values as JSON text."""
    nested = [n for n, t in frame.schema.items() if isinstance(t, pl.Struct | pl.List | pl.Array)]
    if nested:
        frame = frame.with_columns(
            pl.Series(n, [json.dumps(v, default=str) for v in frame[n].to_list()]) for n in nested
        )
    return neutralise_formulas(frame).write_csv()
