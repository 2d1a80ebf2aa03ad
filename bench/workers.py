"""Benchmark partition fan-out: the `usage_hourly` days of a month built by 1, 2 and 4 parallel
Dagster runs, on a local-disk home and on an S3 home (a local moto server).

Usage: python bench/workers.py [--events 1000000] [--accounts 2000] [--workers 1,2,4]
                               [--stores local,s3] [--days N] [--month 2026-10] [--seed 7]
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

Prints one table per store, then ONE JSON line. 2 cores give little speed-up: run it quiet.
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
from usagebox_pipelines.catalog import HOUR_BUILDS, USAGE_HOURLY  # noqa: E402
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


def _fan_out(home: str, days: list[str], workers: int, env: dict[str, str]) -> float:
    """Every day as one `hourly_job` run, at most `workers` at once; returns wall seconds."""
    dagster_home = Path(tempfile.mkdtemp(prefix="bench-dagster-"))
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = env | {"USAGEBOX_HOME": home, "DAGSTER_HOME": str(dagster_home),
                 "PYTHONPATH": str(ROOT), "USAGEBOX_PARTITION_START": days[0]}  # fmt: skip
    # the instance's SQLite schema, made once before runs race to create it
    subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().dispose()"],
                   env=env, check=True)  # fmt: skip
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "usagebox_pipelines.definitions",
           "-j", "hourly_job", "--tags"]  # fmt: skip
    pending, running = list(days), []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < workers:
            day = pending.pop(0)
            tags = json.dumps({"dagster/partition": day})
            running.append((day, subprocess.Popen([*cmd, tags], env=env, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE, text=True)))  # fmt: skip
        for day, proc in list(running):
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                if proc.returncode != 0:
                    raise RuntimeError(f"hourly_job {day} failed:\n{err[-3000:]}")
                running.remove((day, proc))
        time.sleep(0.05)
    return time.perf_counter() - t0


def _latency(home: str, since_ms: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per table: commits since `since_ms`, p50 / max `execution_time_ms`, retries summed."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from usagebox_pipelines.lease import LEASE_TABLE
    from usagebox_pipelines.storage import DeltaStore

    os.environ.update(env)
    store = DeltaStore(home)
    uris = {t.name: store.uri(t) for t in (USAGE_HOURLY, HOUR_BUILDS)}
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


def main() -> None:
    parser = base_parser(__doc__, accounts=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--stores", default="local,s3")
    parser.add_argument("--days", type=int, default=None, help="only the first N days")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    stores = args.stores.split(",")
    results: dict[str, list[dict]] = {}
    with workdir(args.workdir) as work:
        files, gen_s = generate_files(work / "input", "parquet", args.events, args.accounts,
                                      month=args.month, seed=args.seed)  # fmt: skip
        days = _days(args.month, args.days)
        for store in stores:
            server, env = (None, {}) if store == "local" else _moto(work)
            home = str(work / "local-home") if store == "local" else "s3://bench/usagebox"
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                _load(home, files)
                rows = []
                for w in workers:
                    since = int(time.time() * 1000)
                    wall = _fan_out(home, days, w, env)
                    rows.append({"workers": w, "wall_s": round(wall, 2),
                                 "commits": _latency(home, since, env)})  # fmt: skip
                for row in rows:
                    row["speedup"] = round(rows[0]["wall_s"] / row["wall_s"], 2)
                results[store] = rows
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
        f"\n{args.events:,} events, {len(days)} day partitions, generation {gen_s:.1f} s (not measured)"
    )
    for store, rows in results.items():
        print(f"\n{store}: hourly_job, one run per day")
        print(
            f"{'workers':>7} {'wall s':>8} {'speed-up':>8}  commit latency per table (p50 / max ms, retries)"
        )
        for row in rows:
            lat = "  ".join(
                f"{t} {c['p50_ms']:.0f}/{c['max_ms']:.0f} ms x{c['commits']} r{c['retries']}"
                for t, c in row["commits"].items()
            )
            print(f"{row['workers']:>7} {row['wall_s']:>8.2f} {row['speedup']:>7.2f}x  {lat}")
    result_line(
        "workers", events=args.events, accounts=args.accounts, days=len(days), stores=results
    )


if __name__ == "__main__":
    main()
