"""`usagebox sql` reads this home's tables and nothing else: no files, URLs, extensions,
settings or writes (issue 11, item 7). Every refusal is one line on stderr and exit 2."""

from __future__ import annotations

import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.sql import confined_connection, neutralise_formulas


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two small homes: the one queried, and another whose tables must stay out of reach."""
    root = tmp_path_factory.mktemp("sql")
    made = []
    for name, qty in (("mine", "1.25"), ("other", "7")):
        events = [event(f"{name}-1", qty=qty), event(f"{name}-2", qty="0.000000000001")]
        path = write_jsonl(root / f"{name}.jsonl", events)
        home = str(root / name)
        assert cli_main(["ingest", str(path), "--home", home]) == 0
        made.append(home)
    return made[0], made[1]


def sql(capsys: pytest.CaptureFixture[str], home: str, query: str, *extra: str):
    capsys.readouterr()
    code = cli_main(["sql", query, "--home", home, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, out: str, err: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("usagebox: sql: ")
    assert "Traceback" not in err
    assert "tables: " in err  # names the tables one may query


def other_parquet(other: str) -> str:
    return str(next((Path(other) / "tables" / "events").rglob("*.parquet")))


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd', has_header => false)",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM read_json('/etc/passwd')",
        "SELECT * FROM read_json_auto('/etc/passwd')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT (SELECT content FROM read_text('/etc/passwd'))",
        "SELECT * FROM events, LATERAL (SELECT * FROM read_text('/etc/passwd'))",
        "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
        "DESCRIBE '/etc/passwd'",
        "SUMMARIZE SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM duckdb_extensions()",
        "SELECT * FROM query('SELECT 1')",
        "SELECT current_setting('home_directory')",
        "SELECT getenv('HOME')",
        "SELECT * FROM nope",
        "SELECT * FROM other.main.events",
    ],
)
def test_files_and_table_functions_are_refused(capsys, homes, query: str) -> None:
    assert_refused(*sql(capsys, homes[0], query))


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_parquet('{parquet}')",
        "SELECT * FROM parquet_scan('{parquet}')",
        "SELECT * FROM '{parquet}'",
        "SELECT * FROM delta_scan('{table}')",
        "SELECT * FROM read_parquet('{table}/**/*.parquet')",
        "SELECT * FROM glob('{table}/*')",
    ],
)
def test_another_homes_tables_are_out_of_reach(capsys, homes, template: str) -> None:
    mine, other = homes
    query = template.format(parquet=other_parquet(other), table=f"{other}/tables/events")
    code, out, err = sql(capsys, mine, query)
    assert_refused(code, out, err)
    assert "other-1" not in out + err


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"a,b\n1,2\n")

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    _Recorder.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.hits
    server.shutdown()
    server.server_close()


def test_the_http_server_fixture_really_answers(http_server) -> None:
    import urllib.request

    url, hits = http_server
    assert urllib.request.urlopen(f"{url}/probe").read() == b"a,b\n1,2\n"
    assert hits == ["/probe"]


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_csv('{url}/x.csv')",
        "SELECT * FROM read_csv_auto('{url}/x.csv')",
        "SELECT * FROM read_json('{url}/x.json')",
        "SELECT * FROM read_parquet('{url}/x.parquet')",
        "SELECT * FROM read_text('{url}/x')",
        "SELECT * FROM '{url}/x.csv'",
        "SELECT * FROM events WHERE account_id IN (SELECT a FROM read_csv('{url}/x.csv'))",
    ],
)
def test_urls_are_refused_and_no_request_is_made(capsys, homes, http_server, template) -> None:
    url, hits = http_server
    assert_refused(*sql(capsys, homes[0], template.format(url=url)))
    assert hits == []


@pytest.mark.parametrize(
    "query",
    [
        "ATTACH '/tmp/usagebox-probe.duckdb' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "COPY events TO '/tmp/usagebox-probe.csv'",
        "COPY (SELECT 1) TO '/tmp/usagebox-probe.csv'",
        "EXPORT DATABASE '/tmp/usagebox-probe'",
        "PRAGMA version",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "CREATE TABLE x AS SELECT 1",
        "CREATE MACRO m(a) AS a",
        "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
        "INSERT INTO events SELECT * FROM events",
        "DELETE FROM events",
        "DROP TABLE events",
        "UPDATE events SET quantity = 0",
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP TABLE events",
        "CALL pragma_version()",
        "DETACH memory",
        "USE memory",
    ],
)
def test_statements_other_than_one_select_are_refused(capsys, homes, query: str) -> None:
    assert_refused(*sql(capsys, homes[0], query))
    assert not Path("/tmp/usagebox-probe.csv").exists()


def test_the_engine_itself_refuses_files_urls_and_settings(http_server) -> None:
    """Second layer: even a statement that slipped past the parser check gets nothing."""
    url, hits = http_server
    con = confined_connection()
    for query in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{url}/x.csv')",
        "ATTACH '/tmp/usagebox-probe.duckdb'",
        "LOAD httpfs",
    ):
        with pytest.raises(duckdb.PermissionException):
            con.sql(query)
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        con.execute("SET enable_external_access = true")
    assert hits == []


def test_select_with_join_over_tables_works(capsys, homes) -> None:
    query = (
        "WITH e AS (SELECT * FROM events) "
        "SELECT e.event_id, r.source_file IS NOT NULL AS has_file, e.quantity "
        "FROM e JOIN raw_events r USING (account_id, event_id) ORDER BY e.event_id"
    )
    code, out, err = sql(capsys, homes[0], query, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["event_id"] for r in rows] == ["mine-1", "mine-2"]
    assert rows[0]["has_file"] is True


def test_decimals_stay_exact_and_count_is_named(capsys, homes) -> None:
    query = "SELECT count(*), sum(quantity) AS q FROM events"
    code, out, err = sql(capsys, homes[0], query, "--format", "json")
    assert code == 0, err
    assert json.loads(out) == [{"count": 2, "q": "1.250000000001"}]
    code, out, _ = sql(capsys, homes[0], "SELECT sum(quantity) AS q FROM events", "--format", "csv")
    assert code == 0 and out.splitlines() == ["q", "1.250000000001"]


def test_table_format_and_describe(capsys, homes) -> None:
    code, out, err = sql(capsys, homes[0], "DESCRIBE events")
    assert code == 0, err
    assert "quantity" in out and "DECIMAL(38,12)" in out
    code, out, err = sql(capsys, homes[0], "SHOW TABLES")
    assert code == 0 and "raw_events" in out


def test_csv_neutralises_formulas_but_not_numbers(capsys, homes) -> None:
    query = (
        "SELECT '=HYPERLINK(\"http://x\",\"y\")' AS a, '+SUM(A1)' AS b, '@cmd' AS c, "
        "'-2+3' AS d, 'plain' AS e, -5 AS n, CAST('-1.50' AS DECIMAL(18,2)) AS amount, "
        "chr(9) || 'tab' AS t, chr(13) || 'cr' AS r FROM events LIMIT 1"
    )
    code, out, err = sql(capsys, homes[0], query, "--format", "csv")
    assert code == 0, err
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["a"] == '\'=HYPERLINK("http://x","y")'
    assert row["b"] == "'+SUM(A1)" and row["c"] == "'@cmd" and row["d"] == "'-2+3"
    assert row["e"] == "plain"
    assert row["n"] == "-5" and row["amount"] == "-1.50"
    assert row["t"] == "'\ttab" and row["r"] == "'\rcr"


def test_neutralise_formulas_touches_only_string_columns() -> None:
    frame = pl.DataFrame({"s": ["=1+1", "-x", "ok", None], "n": [-1, 2, 3, 4]})
    out = neutralise_formulas(frame)
    assert out["s"].to_list() == ["'=1+1", "'-x", "ok", None]
    assert out["n"].to_list() == [-1, 2, 3, 4]


def test_bad_sql_is_one_line_naming_the_tables(capsys, homes) -> None:
    for query in ("SELEC 1", "SELECT nope FROM events", "SELECT 1 +"):
        code, out, err = sql(capsys, homes[0], query)
        assert_refused(code, out, err)
        assert "events" in err
