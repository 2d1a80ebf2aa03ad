"""`usagebox sql` for analysts: clean result names, time travel with --as-of, JSON access to
`dimensions`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENTS
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.sql import parse_as_of, run_sql
from usagebox_pipelines.storage import DeltaStore


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A home ingested twice: 2 events, then 3 more (so `events` has two versions)."""
    root = tmp_path_factory.mktemp("sql-history")
    home = str(root / "home")
    first = [
        event("e1", dimensions={"feature": "chat", "gpu": "h100"}),
        event("e2", dimensions={"feature": "search"}),
    ]
    assert cli_main(["ingest", str(write_jsonl(root / "a.jsonl", first)), "--home", home]) == 0
    store = DeltaStore(home)
    version = store.version(EVENTS)
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    more = [event(f"e{i}", dimensions={"feature": "chat"}) for i in range(3, 6)]
    assert cli_main(["ingest", str(write_jsonl(root / "b.jsonl", more)), "--home", home]) == 0
    return {"store": store, "home": home, "version": version, "between": between}


def test_count_star_is_called_count_and_other_columns_as_written(history) -> None:
    frame = run_sql(history["store"], "SELECT count(*), count(DISTINCT event_id) FROM events")
    assert frame.columns == ["count", "count(DISTINCT event_id)"]
    assert frame.row(0) == (5, 5)


def test_as_of_reads_the_tables_at_a_version_or_a_time(history) -> None:
    store, query = history["store"], "SELECT count(*) AS n FROM events"
    assert run_sql(store, query)["n"].item() == 5
    assert run_sql(store, query, str(history["version"]))["n"].item() == 2
    assert run_sql(store, query, history["between"].isoformat())["n"].item() == 2


def test_as_of_from_the_command_line_and_its_errors(history, capsys) -> None:
    argv = ["sql", "SELECT count(*) AS n FROM events", "--home", history["home"], "--format"]
    assert cli_main([*argv, "json", "--as-of", str(history["version"])]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 2}]
    assert cli_main([*argv, "json", "--as-of", "last tuesday"]) == 2
    assert "--as-of 'last tuesday'" in capsys.readouterr().err
    assert cli_main([*argv, "json", "--as-of", "999"]) == 2
    assert "events has no version as of 999" in capsys.readouterr().err
    with pytest.raises(Exception, match="RFC 3339"):
        parse_as_of("12a")


def test_json_functions_reach_into_dimensions(history) -> None:
    frame = run_sql(
        history["store"],
        "SELECT dimensions->>'$.feature' AS feature, count(*) AS n, "
        "max(json_extract_string(dimensions, '$.gpu')) AS gpu "
        "FROM events GROUP BY ALL ORDER BY feature",
    )
    assert frame.to_dicts() == [
        {"feature": "chat", "n": 4, "gpu": "h100"},
        {"feature": "search", "n": 1, "gpu": None},
    ]


def test_as_of_before_a_table_existed_is_refused(history, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no version as of 2000-01-01"):
        run_sql(history["store"], "SELECT * FROM events", "2000-01-01")


def test_duckdb_connection_sees_every_table_offline(history) -> None:
    from usagebox_pipelines.sql import duckdb_connection

    con = duckdb_connection(history["home"])
    rows = con.sql(
        "SELECT r.disposition, count(*) FROM events e JOIN raw_events r USING (event_id) "
        "GROUP BY ALL"
    ).fetchall()
    assert rows == [("accepted", 5)]
    extensions = con.sql(
        "SELECT extension_name FROM duckdb_extensions() "
        "WHERE installed AND extension_name = 'delta'"
    ).fetchall()
    assert extensions == []  # no delta extension was needed (or downloaded)
    old = duckdb_connection(history["home"], as_of=str(history["version"]))
    assert old.sql("SELECT count(*) FROM events").fetchall() == [(2,)]
