"""Invariant: a month processed as month shards (ADR 0019) holds exactly the rows of the month
processed whole, whether the shards run one after another or at once, and whatever shard
count the month was processed with before.

A month shard is the accounts whose hierarchy root hashes (CRC-32) to it; each sharded stage
replaces only its accounts' rows of the month (`stages.month_shards`). The month is the
scenario of `test_account_shards` (hierarchies, HARD budgets with waivers, hard stops, an idle
committed account), so what sharding could break is exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.conftest import USAGEBOX_SCRIPT, event, write_jsonl
from tests.test_account_shards import (  # noqa: F401 (month_home: the fixture)
    MONTH,
    MONTHLY_TABLES,
    NOW,
    _canonical,
    month_home,
)
from usagebox_pipelines.catalog import (
    INVOICE_LINES,
    INVOICES,
    USAGE_MONTHLY,
    Table,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.runner import execute_job
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard, month_shard_count
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.guardrails import refresh_guardrails
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rating import build_rated_usage
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow

TABLES: list[Table] = [USAGE_MONTHLY, *MONTHLY_TABLES]


def _tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    """Every table the monthly stages write; a decision's `seq` orders the decisions of one
    run (they share `decided_at`), so, like the run id, it depends on which run made it."""
    return {t.name: _canonical(store.read(t).drop("seq", strict=False)) for t in TABLES}


def _run_month(home: Path, books: Path, count: int) -> dict[str, pl.DataFrame]:
    """The monthly stages as `monthly_job` runs them, each over every shard of `count`."""
    store = DeltaStore(str(home))
    accounts = load_accounts(books)
    shards = [MonthShard(k, count) for k in range(count)]
    for shard in shards:
        build_usage_monthly(store, MONTH, shard=shard, accounts=accounts)
    for shard in shards:
        build_rated_usage(store, books, MONTH, shard=shard)
    for shard in shards:
        refresh_guardrails(store, books, MONTH, NOW, run_id="shards", shard=shard)
    for shard in shards:
        build_rated_usage(store, books, MONTH, shard=shard)  # waivers use the decisions
    for shard in shards:
        refresh_drafts(store, books, MONTH, run_id="shards", shard=shard)
    return _tables(store)


def _same(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    for name, rows in left.items():
        assert right[name].equals(rows), name


def test_month_shards_equal_the_whole_month(
    month_home: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    home, books = month_home
    for name in ("whole", "sharded"):
        shutil.copytree(home, tmp_path / name)
    whole = _run_month(tmp_path / "whole", books, 1)
    assert whole["invoices"].height == 61 and whole["guardrail_decisions"].height > 0
    _same(whole, _run_month(tmp_path / "sharded", books, 4))
    # the shard count changes: each shard also replaces the rows its accounts left under the
    # old layout (and the whole month replaces every shard's rows)
    _same(whole, _run_month(tmp_path / "sharded", books, 3))
    _same(whole, _run_month(tmp_path / "whole", books, 5))
    _same(whole, _run_month(tmp_path / "sharded", books, 1))


def test_a_shard_removes_its_accounts_stale_rows(
    month_home: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """An account whose usage went away loses its rows in its own shard's run, and no other
    shard's rows change."""
    home, books = month_home
    shutil.copytree(home, tmp_path / "h")
    store = DeltaStore(str(tmp_path / "h"))
    accounts = load_accounts(books)
    build_usage_monthly(store, MONTH, accounts=accounts)
    before = store.read(USAGE_MONTHLY)
    gone = before.get_column("account_id").unique().sort()[0]
    shard = MonthShard.of_root(accounts.root(gone), 4)
    stale = before.filter(pl.col("account_id") == gone).with_columns(pl.col("sum") * 2)
    store.append(USAGE_MONTHLY, stale)  # rows no hourly usage backs any more
    other = MonthShard((shard.index + 1) % 4, 4)
    build_usage_monthly(store, MONTH, shard=other, accounts=accounts)
    assert store.read(USAGE_MONTHLY).filter(pl.col("account_id") == gone).height == 2 * len(stale)
    build_usage_monthly(store, MONTH, shard=shard, accounts=accounts)
    assert _canonical(store.read(USAGE_MONTHLY)).equals(_canonical(before))


def test_shards_cut_whole_hierarchies_stably() -> None:
    """Invariant: every account is in exactly one month shard, with its whole hierarchy, and
    the shard is a pure function of the root id (CRC-32, the same in every process)."""
    roots = {"team-a": "org", "team-b": "org", "user-1": "team-a", "org": "org", "solo": "solo"}

    def root(account: str) -> str:
        while roots[account] != account:
            account = roots[account]
        return account

    for count in (1, 2, 3, 7):
        cut = [MonthShard(k, count).owned(roots, root) for k in range(count)]
        assert sorted(a for ids in cut for a in ids) == sorted(roots)
        (family,) = [ids for ids in cut if "org" in ids]
        assert {"team-a", "team-b", "user-1"} <= set(family)
    assert MonthShard.of_root("acct-001", 4) == MonthShard(3114579573 % 4, 4)  # crc32, fixed
    assert WHOLE_MONTH.owned(["b", "a", "a"], root=str) == ["a", "b"]
    with pytest.raises(ValueError):
        MonthShard(4, 4)


@pytest.mark.parametrize("text", ["0", "-1", "x", "257", "1.5"])
def test_a_bad_shard_count_is_refused_naming_the_variable(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USAGEBOX_MONTH_SHARDS", text)
    with pytest.raises(Exception, match="USAGEBOX_MONTH_SHARDS"):
        month_shard_count()


def _launch(home: str, books: Path, shard: int, dagster_home: Path) -> subprocess.Popen:
    """`dagster job execute` of one month shard (multiprocess executor), as a deployment's
    run launcher starts it."""
    tags = {"dagster/partition": f"{MONTH}-01|{shard}"}
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "usagebox_pipelines.definitions"]
        + ["-j", "monthly_job", "--tags", json.dumps(tags)],
        env=os.environ
        | {
            "USAGEBOX_HOME": home,
            "USAGEBOX_PRICEBOOKS": str(books),
            "DAGSTER_HOME": str(dagster_home),
            "USAGEBOX_MONTH_SHARDS": "4",
            "USAGEBOX_PARTITION_START": MONTH,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_month_shards_run_at_once_on_s3_equal_the_whole_month(
    month_home: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
    s3_home: str,
) -> None:
    """Four `monthly_job` runs, one month shard each, launched together against a moto S3
    home (shared lease, commits of disjoint account slices retried on conflict), give the
    tables of one in-process run of the whole month on a local copy."""
    home, books = month_home
    shutil.copytree(home, tmp_path / "whole")
    parallel = DeltaStore(s3_home)
    ingest_files(parallel, [home.parent / "input/events.parquet"])
    update_events(parallel)
    build_usage_hourly(parallel, *month_bounds(MONTH))
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()  # its SQLite schema, made once

    runs = [_launch(s3_home, books, k, dagster_home) for k in range(4)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]

    settings = Settings.resolve(str(tmp_path / "whole"), str(books))
    outcome = execute_job(
        settings,
        "monthly_job",
        partition_key=f"{MONTH}-01|0",
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert outcome.success, outcome.failures
    whole, sharded = _tables(DeltaStore(settings.home)), _tables(parallel)
    # decisions and drafts depend on "now" only through the month's end (the month is over)
    _same(whole, sharded)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records()
        assert len(records) == 4 and all(r.dagster_run.is_success for r in records)
        spans = sorted((r.start_time, r.end_time) for r in records)
        assert spans[1][0] < spans[0][1], spans  # runs overlapped: they did not queue


def test_usagebox_run_takes_every_shard_of_the_month_in_one_run(
    month_home: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """`usagebox run --month` with `USAGEBOX_MONTH_SHARDS=3` launches one `monthly_job` run
    for the month's three shards, and the tables equal those of the default single shard."""
    home, books = month_home
    tables = {}
    for count in ("1", "3"):
        target = tmp_path / f"shards-{count}"
        shutil.copytree(home, target)
        out = subprocess.run(
            [USAGEBOX_SCRIPT, "run", "--month", MONTH, "--home", str(target)]
            + ["--pricebooks", str(books), "--json"],
            capture_output=True, text=True, timeout=600,
            env=os.environ | {"USAGEBOX_MONTH_SHARDS": count},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        runs = json.loads(out.stdout)["runs"]
        assert [r["job"] for r in runs] == ["daily_job", "monthly_job", "reconcile_job"]
        last = int(count) - 1
        assert runs[1]["partitions"] == (
            f"{MONTH}-01|0" if last == 0 else f"{MONTH}-01|0..{MONTH}-01|{last}"
        )
        tables[count] = _tables(DeltaStore(str(target)))
        # each partition's row count is its own accounts' rows: they add up to the month
        counted = _row_counts(target / "dagster", "rated_usage", int(count))
        assert len(counted) == int(count) and all(n > 0 for n in counted.values())
        assert sum(counted.values()) == tables[count]["rated_usage"].height
    _same(tables["1"], tables["3"])


def _row_counts(dagster_home: Path, asset: str, count: int) -> dict[str, int]:
    """`dagster/row_count` of the latest materialisation of each shard of the month."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        out = {}
        for shard in range(count):
            key = f"{MONTH}-01|{shard}"
            (record,) = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]),
                limit=1,
            ).records
            meta = record.asset_materialization.metadata  # type: ignore[union-attr]
            out[key] = int(meta["dagster/row_count"].value)
        return out


def test_usage_not_rolled_up_yet_is_found_by_its_own_shard(
    month_home: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """Guardrails see accounts whose only usage is in `events` (no hourly rows yet) in
    exactly one month shard: the same spend state as the whole month."""
    home, books = month_home
    strays = write_jsonl(
        tmp_path / "strays.jsonl",
        [
            event(
                f"s{n}", account=f"stray-{n % 5}", qty=10**7, ts=f"2026-10-20T{n % 24:02d}:10:00Z"
            )
            for n in range(40)
        ],
    )
    states = {}
    for count in (1, 4):
        target = tmp_path / f"h{count}"
        shutil.copytree(home, target)
        store = DeltaStore(str(target))
        ingest_files(store, [strays])
        update_events(store)  # not rolled up: the strays have events but no hourly rows
        for k in range(count):
            refresh_guardrails(store, books, MONTH, NOW, "strays", shard=MonthShard(k, count))
        states[count] = _tables(store)
    assert states[1]["spend_state"].filter(pl.col("account_id").str.starts_with("stray")).height
    for table in ("spend_state", "usage_anomalies", "guardrail_decisions"):
        assert states[4][table].equals(states[1][table]), table


def test_month_shards_carry_the_adjustments_of_a_closed_month(tmp_path: Path) -> None:
    """November's drafts carry adjustments for late October events (October is closed): per
    month shard, each re-rating only its own accounts of October, they equal the whole
    month's drafts, and each shard's invariant 4 check passes on its own."""
    from tests.test_close_scenario import NOV, scenario
    from usagebox_pipelines.stages.verify import draft_lines_match_rated

    drafts = {}
    for count in (1, 3):
        store, settings = scenario().home_at("nov_built", tmp_path / f"h{count}")
        for k in range(count):
            shard = MonthShard(k, count)
            refresh_drafts(store, settings.pricebooks, NOV, shard=shard)
            check = draft_lines_match_rated(store, settings.pricebooks, NOV, shard)
            assert check.passed, (shard, check.detail, check.examples)
        drafts[count] = {t.name: _canonical(store.read(t)) for t in (INVOICES, INVOICE_LINES)}
    lines = drafts[1]["invoice_lines"]
    assert lines.filter(pl.col("kind") == "adjustment").height > 0
    _same(drafts[1], drafts[3])
