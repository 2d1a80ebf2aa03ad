"""Benchmark partition fan-out: the `usage_hourly` days of a month, then the month's shards
of `monthly_job` (ADR 0019), built by 1, 2 and 4 parallel Dagster runs, on a local-disk home
and on an S3 home (a local moto server).

Usage: python bench/workers.py [--events 1000000] [--accounts 2000] [--workers 1,2,4]
                               [--stores local,s3] [--days N] [--shards 4]
                               [--stages hourly,monthly] [--month 2026-10] [--seed 7]
                               [--workdir DIR]

1. Setup (not measured): the demo generator that `bench/month.py` uses writes the month
   (`bench.common.generate_files`, Parquet shape, in a child process); each home ingests it and
   folds `events` once (`ingest_files`, `update_events`).
2. For each store and each worker count W: every day of the month (or the first `--days`) is one
   `dagster job execute -j hourly_job --tags {"dagster/partition": DAY}` subprocess (the
   multiprocess executor, the shared lease of ADR 0012), at most W at once. Wall time is from
   the first launch to the last exit; speed-up = wall(W=1) / wall(W). Every W rebuilds the same
   days (a predicate overwrite per day), so the tables end identical whatever W.
3. Commit latency per table comes from the Delta history of the commits made during that W:
   `operationMetrics.execution_time_ms` of each commit (the write and its commit, retries
   included) as p50 / max, plus `num_retries` summed (conflicts retried, ADR 0012). Tables:
   `usage_hourly`, `hour_builds` and, on S3, `_writer_lease` (the shared-lease rows).

4. `monthly` (after the days are built): the month as `--shards` month shards
   (`USAGEBOX_MONTH_SHARDS`), one `dagster job execute -j monthly_job` run per shard
   (`dagster/partition` = `MONTH-01|k`, the shared lease), at most W at once; and, as the
   baseline, the whole month as one run of one shard. Every run replaces the same slices, so
   the tables end identical. Commit latency for `rated_usage`, `spend_state` and `invoices`.

Prints one table per store and stage, then ONE JSON line. 2 cores give little speed-up: run
it quiet.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import base_parser, generate_files, result_line, workdir  # noqa: E402
from usagebox_pipelines.catalog import (  # noqa: E402
    HOUR_BUILDS,
    INVOICES,
    RATED_USAGE,
    SPEND_STATE,
    USAGE_HOURLY,
    Table,
)
from usagebox_pipelines.months import month_bounds  # noqa: E402


def _moto(work: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """A moto S3 server in its own process, with bucket `bench`; returns it and its AWS_* env."""
    import socket

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = (work / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket="bench")  # fmt: skip
    return server, env


def _load(home: str, files: list[Path]) -> None:
    from usagebox_pipelines.stages.events import update_events
    from usagebox_pipelines.stages.ingest import ingest_files
    from usagebox_pipelines.storage import DeltaStore

    store = DeltaStore(home)
    ingest_files(store, files)
    update_events(store)


def _days(month: str, limit: int | None) -> list[str]:
    from datetime import timedelta

    first, end = month_bounds(month)
    days, day = [], first
    while day < end:
        days.append(day.strftime("%Y-%m-%d"))
        day += timedelta(days=1)
    return days[:limit] if limit else days


def _fan_out(
    home: str, job: str, partitions: list[str], workers: int, env: dict[str, str]
) -> float:
    """Every partition as one run of `job`, at most `workers` at once; returns wall seconds."""
    dagster_home = Path(tempfile.mkdtemp(prefix="bench-dagster-"))
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = env | {"USAGEBOX_HOME": home, "DAGSTER_HOME": str(dagster_home),
                 "PYTHONPATH": str(ROOT), "USAGEBOX_PARTITION_START": partitions[0][:10]}  # fmt: skip
    # the instance's SQLite schema, made once before runs race to create it
    subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().dispose()"],
                   env=env, check=True)  # fmt: skip
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "usagebox_pipelines.definitions",
           "-j", job, "--tags"]  # fmt: skip
    pending, running = list(partitions), []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < workers:
            key = pending.pop(0)
            tags = json.dumps({"dagster/partition": key})
            running.append((key, subprocess.Popen([*cmd, tags], env=env, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE, text=True)))  # fmt: skip
        for key, proc in list(running):
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                if proc.returncode != 0:
                    raise RuntimeError(f"{job} {key} failed:\n{err[-3000:]}")
                running.remove((key, proc))
        time.sleep(0.05)
    return time.perf_counter() - t0


def _latency(
    home: str, since_ms: int, env: dict[str, str], tables: tuple[Table, ...]
) -> dict[str, dict[str, float]]:
    """Per table: commits since `since_ms`, p50 / max `execution_time_ms`, retries summed."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from usagebox_pipelines.lease import LEASE_TABLE
    from usagebox_pipelines.storage import DeltaStore

    os.environ.update(env)
    store = DeltaStore(home)
    uris = {t.name: store.uri(t) for t in tables}
    uris[LEASE_TABLE] = f"{home}/{LEASE_TABLE}"
    out: dict[str, dict[str, float]] = {}
    for table, uri in uris.items():
        try:
            history = DeltaTable(uri, storage_options=store.storage_options).history()
        except TableNotFoundError:  # the lease table exists only on object stores
            continue
        commits = [h for h in history if h["timestamp"] >= since_ms]
        ms = [float(h.get("operationMetrics", {}).get("execution_time_ms", 0)) for h in commits]
        retries = sum(int(h.get("operationMetrics", {}).get("num_retries", 0)) for h in commits)
        if ms:
            out[table] = {"commits": len(ms), "p50_ms": statistics.median(ms), "max_ms": max(ms),
                          "retries": retries}  # fmt: skip
    return out


HOURLY_TABLES = (USAGE_HOURLY, HOUR_BUILDS)
MONTHLY_TABLES = (RATED_USAGE, SPEND_STATE, INVOICES)


def _pricebooks(work: Path, accounts: int, month: str) -> Path:
    """The bench's pricebooks for the generated accounts (`bench/pricebooks.py`)."""
    books = work / "pricebooks"
    subprocess.run(
        [sys.executable, str(ROOT / "bench/pricebooks.py"), "--out", str(books),
         "--accounts", str(accounts), "--month", month],
        check=True, capture_output=True,
    )  # fmt: skip
    return books


def _stage_rows(
    home: str,
    job: str,
    runs: list[tuple[int, list[str], dict[str, str]]],
    tables: tuple[Table, ...],
) -> list[dict]:
    """(workers, partitions, env) per row: wall time, speed-up against the first row, and the
    commit latency of `tables` during that row."""
    rows = []
    for w, partitions, env in runs:
        since = int(time.time() * 1000)
        wall = _fan_out(home, job, partitions, w, env)
        rows.append({"workers": w, "runs": len(partitions), "wall_s": round(wall, 2),
                     "commits": _latency(home, since, env, tables)})  # fmt: skip
    for row in rows:
        row["speedup"] = round(rows[0]["wall_s"] / row["wall_s"], 2)
    return rows


def main() -> None:
    parser = base_parser(__doc__, accounts=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--stores", default="local,s3")
    parser.add_argument("--stages", default="hourly,monthly")
    parser.add_argument("--days", type=int, default=None, help="only the first N days")
    parser.add_argument("--shards", type=int, default=4, help="month shards of monthly_job")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    stores, stages = args.stores.split(","), args.stages.split(",")
    results: dict[str, dict[str, list[dict]]] = {}
    with workdir(args.workdir) as work:
        files, gen_s = generate_files(work / "input", "parquet", args.events, args.accounts,
                                      month=args.month, seed=args.seed)  # fmt: skip
        books = _pricebooks(work, args.accounts, args.month)
        days = _days(args.month, args.days)
        shards = [f"{args.month}-01|{k}" for k in range(args.shards)]
        for store in stores:
            server, env = (None, {}) if store == "local" else _moto(work)
            home = str(work / "local-home") if store == "local" else "s3://bench/usagebox"
            env = env | {"USAGEBOX_PRICEBOOKS": str(books)}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                _load(home, files)
                results[store] = {}
                hourly = [(w, days, env) for w in workers]
                if "hourly" in stages or "monthly" in stages:  # the month needs its days
                    results[store]["hourly"] = _stage_rows(
                        home, "hourly_job", hourly if "hourly" in stages else hourly[-1:],
                        HOURLY_TABLES,
                    )  # fmt: skip
                if "monthly" in stages:
                    sharded = env | {"USAGEBOX_MONTH_SHARDS": str(args.shards)}
                    whole = env | {"USAGEBOX_MONTH_SHARDS": "1"}
                    runs = [(1, [f"{args.month}-01|0"], whole)]
                    runs += [(w, shards, sharded) for w in workers]
                    results[store]["monthly"] = _stage_rows(
                        home, "monthly_job", runs, MONTHLY_TABLES
                    )
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                if server is not None:
                    server.terminate()
                    server.wait(timeout=10)
    print(
        f"\n{args.events:,} events, {args.accounts:,} accounts, {len(days)} day partitions, "
        f"{args.shards} month shards, generation {gen_s:.1f} s (not measured)"
    )
    for store, by_stage in results.items():
        for stage, rows in by_stage.items():
            what = (
                "one run per day"
                if stage == "hourly"
                else ("the whole month in one run (first row), then one run per month shard")
            )
            print(f"\n{store}: {stage}_job, {what}")
            print(f"{'workers':>7} {'runs':>5} {'wall s':>8} {'speed-up':>8}  "
                  "commit latency per table (p50 / max ms, commits, retries)")  # fmt: skip
            for row in rows:
                lat = "  ".join(
                    f"{t} {c['p50_ms']:.0f}/{c['max_ms']:.0f} ms x{c['commits']} r{c['retries']}"
                    for t, c in row["commits"].items()
                )
                print(f"{row['workers']:>7} {row['runs']:>5} {row['wall_s']:>8.2f} "
                      f"{row['speedup']:>7.2f}x  {lat}")  # fmt: skip
    result_line(
        "workers", events=args.events, accounts=args.accounts, days=len(days),
        shards=args.shards, stores=results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
