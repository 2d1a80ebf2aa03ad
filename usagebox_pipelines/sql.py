"""Read-only SQL for analysts over the home's Delta tables, and nothing else.

DuckDB runs the query in an in-memory database with external access disabled and its
configuration locked: no files, URLs, extensions or attached databases, only the Arrow
datasets of this home's tables registered as views. Before anything runs, the statement is
parsed and refused unless it is exactly one SELECT whose FROM items are those tables (or its
own CTEs): no table functions (`read_csv`, `glob`, `query`, ...) and no setting readers.
Decimals stay exact (Arrow decimal in, Arrow decimal out).
"""

from __future__ import annotations

import json
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


def run_sql(store: DeltaStore, query: str) -> pl.DataFrame:
    """Run one read-only SELECT over the home's tables; anything else is refused unexecuted."""
    import duckdb

    names = table_names(store)
    known = ", ".join(names) or "none yet"
    con = confined_connection()
    try:
        _check_statement(con, query, set(names), known)
        for name in names:
            con.register(name, store.table(TABLES[name]).to_pyarrow_dataset())
        result = con.sql(query)
        table = result.to_arrow_table() if result is not None else None
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageboxError(f"sql: {first} (tables: {known})") from None
    finally:
        con.close()
    if table is None:
        raise UsageboxError(f"sql: the statement returned no rows or columns (tables: {known})")
    return _tidy_names(pl.from_arrow(table))


def confined_connection():
    """An in-memory DuckDB that cannot touch files, URLs or extensions, settings locked."""
    import duckdb

    con = duckdb.connect(":memory:", config=dict(_LOCKED_CONFIG))
    con.execute("SET TimeZone = 'UTC'").fetchall()
    con.execute("SET lock_configuration = true").fetchall()
    return con


def _check_statement(con, query: str, tables: set[str], known: str) -> None:
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
        if kind == "SHOW_REF" and node.get("show_type") != "SHOW_SPECIAL":
            name = node.get("table_name") or ""
            if name and name not in tables and name not in ctes:
                raise UsageboxError(f"sql: no table {name!r} (tables: {known})")
        if node.get("class") == "FUNCTION" and node.get("function_name") in _REFUSED_FUNCTIONS:
            raise UsageboxError(f"sql: {node['function_name']}() is not allowed (tables: {known})")


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
