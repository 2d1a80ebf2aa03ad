"""Benchmark the user's path: a generated month through the `usagebox` CLI, command by command.

Usage: python bench/month.py [--events 1000000] [--accounts 2000] [--seed 7] [--month 2026-10]
                             [--workdir DIR] [--keep] [--skip-close] [--no-nightly] [--jsonl]
                             [--max-rss-gib 20] [--price-models] [--profile]

1. Setup, in child processes (never measured): `bench/generate.py` writes `events.parquet`
   (N rows: retries, conflicts, corrections, 1 % late events of the previous month; see its
   docstring) plus the nightly day, and `bench/pricebooks.py` a pricebooks folder that prices
   every meter x model for all accounts.
2. Each command runs as its own subprocess, as a user types it (`--home H --pricebooks P`):
     ingest        usagebox ingest events.parquet
     run <prev>    usagebox run --month <previous month>   (the late events)
     run <month>   usagebox run --month <month>
     close <prev>  usagebox close <previous month> --approve (its late events; closes in order)
     close dry     usagebox close <month>
     close approve usagebox close <month> --approve
     nightly       usagebox ingest nightly.parquet; usagebox run --date <first day of next month>
     ingest jsonl  usagebox ingest events.jsonl into a scratch home (only with --jsonl)
     reference     bench/reference.py (plain Polars + deltalake) over the same events.parquet
   Wall time is measured around the subprocess; peak RSS is the kernel high-water mark of the
   child (`os.wait4` rusage, exact) and the sampled RSS of its process tree (psutil, every
   0.2 s). A command whose tree exceeds --max-rss-gib is killed and reported "killed at X GiB".
3. After each `run`, the Dagster instance under <home>/dagster is opened and the run's event log
   read: seconds per step key (STEP_START -> STEP_SUCCESS/STEP_FAILURE), summed per key, and
   "outside any step" = command wall - sum of step seconds (interpreter start, imports, loading
   Definitions, run launch and event-log writes).

ratio = (ingest + run <month>) / reference. Prints the tables, then the targets of issues 13
and 17 that this run measures (each with its figure and met / MISSED), then ONE JSON line.

--price-models prices the month with markup, free units, caps and credit grants on top
(`bench/pricebooks.py`): issue 17's target is `rated_usage` within 1.25x of `usage_hourly`.
--profile runs every usagebox command under cProfile (times inflate by about a third; use it
to see what bounds a MISSED target, not for the figures) and prints each command's top
functions by own time and by cumulative time; the `.prof` files stay in <workdir>/logs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment  # noqa: E402
from usagebox_pipelines.months import month_bounds, shift_month  # noqa: E402

GiB = 2**30
POLL_SECONDS = 0.2


@dataclass
class Measured:
    """One subprocess: wall seconds, peak RSS, exit code, parsed stdout JSON, step times."""

    label: str
    argv: list[str]
    seconds: float = 0.0
    cpu: float = 0.0  # user + system seconds of the child (and its reaped children)
    maxrss: int = 0  # bytes, kernel high-water mark (wait4)
    tree_rss: int = 0  # bytes, highest sampled RSS of the process tree
    exit_code: int | None = None
    killed_at: int | None = None
    stdout: object = None
    stderr_tail: str = ""
    events: int | None = None  # for events/s
    runs: list[dict] = field(default_factory=list)  # Dagster runs: job, seconds, steps
    stages: dict[str, float] = field(default_factory=dict)  # `usagebox ingest`: load, fold

    def parts(self) -> dict[str, float]:
        """Where the wall time went: Dagster steps (summed per asset over runs) or ingest's
        stages, and the rest (start-up, imports, Definitions, planning, reporting)."""
        named: dict[str, float] = dict(self.stages)
        for run in self.runs:
            for step, secs in run["steps"].items():
                named[step] = named.get(step, 0.0) + secs
        if not named:
            return {}
        named["outside any step (start, imports, Dagster)"] = self.seconds - sum(named.values())
        return named

    @property
    def peak_rss(self) -> int:
        return max(self.maxrss, self.tree_rss)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_at is None

    @property
    def step_seconds(self) -> float:
        return sum(sum(r["steps"].values()) for r in self.runs)

    @property
    def logged_seconds(self) -> float:
        """From each run's first event (planning) to its end: time Dagster accounts for."""
        return sum(r["logged_seconds"] or 0.0 for r in self.runs)

    def as_dict(self) -> dict:
        out = {
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu, 3),
            "peak_rss_gib": round(self.peak_rss / GiB, 3),
            "maxrss_gib": round(self.maxrss / GiB, 3),
            "tree_rss_sampled_gib": round(self.tree_rss / GiB, 3),
            "exit_code": self.exit_code,
        }
        if self.killed_at is not None:
            out["killed_at_gib"] = round(self.killed_at / GiB, 2)
        if self.events and self.seconds > 0:
            out["events_per_s"] = round(self.events / self.seconds)
        if self.stages:
            out["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        if self.runs:
            out["runs"] = self.runs
            out["step_seconds"] = round(self.step_seconds, 3)
            out["outside_steps_seconds"] = round(self.seconds - self.step_seconds, 3)
            out["outside_runs_seconds"] = round(self.seconds - self.logged_seconds, 3)
        if not self.ok:
            out["stderr_tail"] = self.stderr_tail
        return out


def _tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(m: Measured, logs: Path, env: dict[str, str], max_rss: int) -> Measured:
    """Run `m.argv` as a subprocess in its own session; fill in time, RSS, exit code, stdout."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{m.label}.out", logs / f"{m.label}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(m.argv, stdout=out, stderr=err, env=env, start_new_session=True)
        done = threading.Event()

        def poll() -> None:
            try:
                ps = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.wait(POLL_SECONDS):
                try:
                    rss = _tree_rss(ps)
                except psutil.Error:
                    return
                m.tree_rss = max(m.tree_rss, rss)
                if rss > max_rss and not done.is_set():
                    m.killed_at = rss
                    os.killpg(proc.pid, signal.SIGKILL)  # the session we started, by its id
                    return

        sampler = threading.Thread(target=poll, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        m.seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = m.exit_code = os.waitstatus_to_exitcode(status)
    m.maxrss = usage.ru_maxrss * 1024  # KiB on Linux
    m.cpu = usage.ru_utime + usage.ru_stime
    text = out_path.read_text(errors="replace").strip()
    try:
        m.stdout = json.loads(text.splitlines()[-1]) if text else None
    except json.JSONDecodeError:
        m.stdout = text[-2000:]
    m.stderr_tail = "\n".join(err_path.read_text(errors="replace").strip().splitlines()[-5:])
    return m


def dagster_steps(home: Path, run_ids: list[str]) -> list[dict]:
    """Per run, from its event log: planning (events written before RUN_START, e.g. one
    ASSET_MATERIALIZATION_PLANNED per partition), run seconds (RUN_START -> end), seconds per
    step key, and per step the compute part (STEP_START -> first materialization) and the number
    of materialization / check events it emitted before STEP_SUCCESS."""
    import dagster as dg
    from dagster._core.events import DagsterEventType as E

    ends = {E.RUN_SUCCESS.value, E.RUN_FAILURE.value}
    emitted = {E.ASSET_MATERIALIZATION.value, E.ASSET_CHECK_EVALUATION.value}
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = []
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            logs = instance.all_logs(run_id)
            first = logs[0].timestamp if logs else None
            run_start = run_end = None
            planned = 0
            open_steps: dict[str, dict] = {}
            steps: dict[str, dict] = {}
            for entry in logs:
                event = entry.dagster_event
                if event is None:
                    continue
                kind, key, ts = event.event_type_value, event.step_key, entry.timestamp
                if kind == E.RUN_START.value:
                    run_start = ts
                elif kind in ends:
                    run_end = ts
                elif kind.endswith("_PLANNED"):
                    planned += 1
                elif kind == E.STEP_START.value:
                    open_steps[key] = {"start": ts, "first_emit": None, "emitted": 0}
                elif kind in emitted and key in open_steps:
                    step = open_steps[key]
                    step["emitted"] += 1
                    step["first_emit"] = step["first_emit"] or ts
                elif kind in (E.STEP_SUCCESS.value, E.STEP_FAILURE.value) and key in open_steps:
                    step = open_steps.pop(key)
                    total = steps.setdefault(key, {"seconds": 0.0, "compute": 0.0, "emitted": 0})
                    total["seconds"] += ts - step["start"]
                    total["compute"] += (step["first_emit"] or ts) - step["start"]
                    total["emitted"] += step["emitted"]
            runs.append(
                {
                    "job": run.job_name if run else None,
                    "status": run.status.value if run else None,
                    "planning_seconds": _secs(first, run_start),
                    "planned_events": planned,
                    "run_seconds": _secs(run_start, run_end),
                    "logged_seconds": _secs(first, run_end),
                    "steps": {k: round(v["seconds"], 3) for k, v in steps.items()},
                    "step_detail": {
                        k: {"compute_seconds": round(v["compute"], 3), "events": v["emitted"]}
                        for k, v in steps.items()
                    },
                }
            )
    return runs


def _secs(a: float | None, b: float | None) -> float | None:
    return round(b - a, 3) if a is not None and b is not None else None


def hourly_check(work: Path, month: str) -> dict | None:
    """The month's `usage_hourly` of the pipeline vs the reference's: rows and total quantity."""
    import polars as pl

    start, end = month_bounds(month)
    try:
        frames = {
            "pipeline": pl.scan_delta(str(work / "home/tables/usage_hourly")).filter(
                (pl.col("hour") >= start) & (pl.col("hour") < end)
            ),
            "reference": pl.scan_delta(str(work / "reference/usage_hourly")),
        }
        out = {
            k: f.select(rows=pl.len(), sum=pl.col("sum").sum()).collect().row(0, named=True)
            for k, f in frames.items()
        }
    except Exception as exc:  # a failed command leaves no table: report, do not crash
        return {"error": str(exc).splitlines()[0]}
    out = {k: {"rows": v["rows"], "sum": str(v["sum"])} for k, v in out.items()}
    out["match"] = out["pipeline"] == out["reference"]
    return out


def _usagebox() -> list[str]:
    script = Path(sys.executable).parent / "usagebox"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from usagebox_pipelines.cli import main; main()"]


def profiled(m: Measured, logs: Path) -> Measured:
    """`m` run under cProfile (only a usagebox console script can be: it is a Python file)."""
    script = Path(sys.executable).parent / "usagebox"
    if not m.argv or m.argv[0] != str(script):
        return m
    out = logs / f"{m.label.replace(' ', '_')}.prof"
    m.argv = [sys.executable, "-m", "cProfile", "-o", str(out), *m.argv]
    return m


def print_profile(m: Measured, logs: Path, top: int = 12) -> None:
    """The command's top functions by own (tottime) and cumulative time."""
    path = logs / f"{m.label.replace(' ', '_')}.prof"
    if not path.exists():
        return
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        body = buf.getvalue()
        table = body[body.find("ncalls") :] if "ncalls" in body else body
        print(f"\n  profile of `{m.label}` by {order} ({path})")
        print("\n".join("    " + line for line in table.rstrip().splitlines()))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("USAGEBOX_HOME", None)
    env.pop("USAGEBOX_PRICEBOOKS", None)
    return env


def _setup(args: argparse.Namespace, work: Path, env: dict[str, str], max_rss: int):
    """Generate events and pricebooks in child processes; returns (manifest, setup figures)."""
    py = sys.executable
    gen = [py, str(ROOT / "bench/generate.py"), "--events", str(args.events), "--accounts",
           str(args.accounts), "--month", args.month, "--seed", str(args.seed),
           "--out", str(work / "input")]  # fmt: skip
    if args.nightly:
        gen += ["--nightly-events", str(max(1, args.events // 30))]
    if args.jsonl:
        gen.append("--jsonl")
    books = [py, str(ROOT / "bench/pricebooks.py"), "--out", str(work / "pricebooks"),
             "--accounts", str(args.accounts), "--month", args.month]  # fmt: skip
    if args.price_models:
        books.append("--price-models")
    setup = {}
    for label, argv in (("generate", gen), ("pricebooks", books)):
        m = measure(Measured(label, argv), work / "logs", env, max_rss)
        if not m.ok:
            raise SystemExit(f"{label} failed (exit {m.exit_code}): {m.stderr_tail}")
        print(f"  {label:<28} {m.seconds:7.2f} s  {m.peak_rss / GiB:5.2f} GiB  (setup)")
        setup[label] = {k: m.as_dict()[k] for k in ("seconds", "peak_rss_gib")}
    return json.loads((work / "input/manifest.json").read_text()), setup


def _commands(args: argparse.Namespace, work: Path, manifest: dict) -> list[Measured]:
    ub, home, books = _usagebox(), work / "home", work / "pricebooks"
    opts = ["--home", str(home), "--pricebooks", str(books)]
    prev = shift_month(args.month, -1)
    n = manifest["events"]["rows"]
    cmds = [
        Measured("ingest", [*ub, "ingest", str(work / "input/events.parquet"), *opts], events=n),
        Measured(f"run {prev}", [*ub, "run", "--month", prev, "--json", *opts]),
        Measured(
            f"run {args.month}", [*ub, "run", "--month", args.month, "--json", *opts], events=n
        ),
    ]
    if not args.skip_close:
        cmds += [  # the earlier month first, as a user must (close refuses out of order)
            Measured(f"close approve {prev}", [*ub, "close", prev, "--approve", *opts]),
            Measured("close dry", [*ub, "close", args.month, *opts]),
            Measured("close approve", [*ub, "close", args.month, "--approve", *opts]),
        ]
    if args.nightly:
        night = manifest["nightly"]
        k = night["events"]["rows"]
        cmds += [
            Measured(
                "nightly ingest",
                [*ub, "ingest", str(work / "input/nightly.parquet"), *opts],
                events=k,
            ),  # fmt: skip
            Measured(
                f"nightly run {night['date']}",
                [*ub, "run", "--date", night["date"], "--json", *opts],
                events=k,
            ),  # fmt: skip
        ]
    if args.jsonl:
        scratch = ["--home", str(work / "home-jsonl"), "--pricebooks", str(books)]
        cmds.append(
            Measured(
                "ingest jsonl",
                [*ub, "ingest", str(work / "input/events.jsonl"), *scratch],
                events=n,
            )  # fmt: skip
        )
    ref = [sys.executable, str(ROOT / "bench/reference.py"), str(work / "input/events.parquet"),
           "--rates", str(books / "rates.csv"), "--out", str(work / "reference"),
           "--month", args.month]  # fmt: skip
    cmds.append(Measured("reference", ref, events=n))
    return cmds


def ingest_stages(m: Measured) -> dict[str, float]:
    """The seconds `usagebox ingest` recorded in its runless materialisations of `raw_events`
    (loading the file) and `events` (the fold), in the home the command wrote to."""
    import dagster as dg

    if not m.ok or "ingest" not in m.argv:
        return {}
    home = Path(m.argv[m.argv.index("--home") + 1])
    stages = {}
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for asset, label in (("raw_events", "load (raw_events)"), ("events", "events fold")):
            entry = instance.get_latest_materialization_event(dg.AssetKey(asset))
            meta = (
                entry.asset_materialization.metadata
                if entry and entry.asset_materialization
                else {}
            )
            if "seconds" in meta:
                stages[label] = float(meta["seconds"].value)
    return stages


def _run_ids(m: Measured) -> list[str]:
    if isinstance(m.stdout, dict):
        return [r["run_id"] for r in m.stdout.get("runs", []) if r.get("run_id")]
    return []


def _print_tables(cmds: list[Measured], ratio: float | None, reference: Measured | None) -> None:
    print()
    print(f"  {'command':<28} {'wall s':>9} {'cpu s':>8} {'peak RSS GiB':>13} {'events/s':>10}  status")  # fmt: skip
    for m in cmds:
        rate = f"{m.events / m.seconds:>10,.0f}" if m.events and m.seconds > 0 else f"{'':>10}"
        status = "ok" if m.ok else f"exit {m.exit_code}"
        if m.killed_at is not None:
            status = f"killed at {m.killed_at / GiB:.1f} GiB"
        print(f"  {m.label:<28} {m.seconds:>9.2f} {m.cpu:>8.2f} {m.peak_rss / GiB:>13.2f} {rate}  {status}")  # fmt: skip
    if ratio is not None:
        print(f"  ratio (ingest + run month) / reference = {ratio:.2f}x")
    for m in cmds:
        if m.stages:
            print(f"\n  stages of `{m.label}` (seconds, from its materialisations' metadata)")
            for key, secs in m.parts().items():
                print(f"      {key:<42} {secs:>9.3f}")
    for m in cmds:
        if not m.runs:
            continue
        print(f"\n  steps of `{m.label}` (seconds, from the Dagster event log)")
        print(f"    {'':<44} {'seconds':>9} {'compute':>9} {'events':>7}")
        for run in m.runs:
            print(f"    job {run['job']} ({run['status']})")
            print(f"      {'(planning: ' + str(run['planned_events']) + ' planned events)':<42} {run['planning_seconds'] or 0:>9.3f}")  # fmt: skip
            for key, secs in sorted(run["steps"].items(), key=lambda kv: -kv[1]):
                d = run["step_detail"][key]
                print(f"      {key:<42} {secs:>9.3f} {d['compute_seconds']:>9.3f} {d['events']:>7}")  # fmt: skip
            between = (run["run_seconds"] or 0) - sum(run["steps"].values())
            print(f"      {'(in run, between steps)':<42} {between:>9.3f}")
        print(f"    {'outside any run (start, imports, Definitions)':<44} {m.seconds - m.logged_seconds:>9.3f}")  # fmt: skip
        print(f"    {'outside any step (wall - sum of steps)':<44} {m.seconds - m.step_seconds:>9.3f}")  # fmt: skip
    if reference is not None and isinstance(reference.stdout, dict):
        print("\n  steps of `reference` (seconds)")
        for key, secs in reference.stdout.get("steps", {}).items():
            print(f"      {key:<42} {secs:>9.3f}")
        print(f"    {'outside any step (start, imports)':<44} {reference.seconds - reference.stdout['seconds']:>9.3f}")  # fmt: skip


#: Issue 13's targets that one month run measures: (name, limit, unit, lower is better).
TARGETS = (
    ("(ingest + run month) / reference", 1.5, "x", True),
    ("peak RSS of every usagebox command", 4.0, "GiB", True),
    ("Parquet ingest", 1_000_000, "ev/s", False),
    ("JSONL ingest", 250_000, "ev/s", False),
    ("nightly (ingest + run --date) / (ingest + run month)", 1 / 20, "", True),
    ("close --approve", 300.0, "s", True),
    ("rated_usage / usage_hourly step (issue 17)", 1.25, "x", True),
)


def step_total(m: Measured, key: str) -> float:
    """Seconds of the Dagster steps named `key` (or `key[...]`) over the command's runs."""
    return sum(
        secs
        for run in m.runs
        for step, secs in run["steps"].items()
        if step == key or step.startswith(f"{key}[")
    )


def target_figures(by: dict[str, Measured], month: str, ratio: float | None) -> dict:
    """Each measured target's figure (None when this run did not measure it)."""
    ingest, run = by["ingest"], by[f"run {month}"]
    nightly = [m for label, m in by.items() if label.startswith("nightly")]
    jsonl = by.get("ingest jsonl")
    close = by.get("close approve")
    main_path = ingest.seconds + run.seconds
    return {
        TARGETS[0][0]: ratio,
        TARGETS[1][0]: max(m.peak_rss for k, m in by.items() if k != "reference") / GiB,
        TARGETS[2][0]: ingest.events / ingest.seconds if ingest.events else None,
        TARGETS[3][0]: jsonl.events / jsonl.seconds if jsonl and jsonl.events else None,
        TARGETS[4][0]: sum(m.seconds for m in nightly) / main_path if nightly else None,
        TARGETS[5][0]: close.seconds if close else None,
        TARGETS[6][0]: (
            step_total(run, "rated_usage") / step_total(run, "usage_hourly")
            if step_total(run, "usage_hourly")
            else None
        ),
    }


#: Per target, the commands whose parts bound it: labels (`{month}`: the measured month), or
#: prefixes ending in a space (every nightly command).
BOUNDED_BY = {
    TARGETS[0][0]: ("ingest", "run {month}"),
    TARGETS[2][0]: ("ingest",),
    TARGETS[3][0]: ("ingest jsonl",),
    TARGETS[4][0]: ("nightly ",),
}


def bounds(by: dict[str, Measured], month: str, targets: dict, top: int = 5) -> dict:
    """For each MISSED target, the largest parts of the commands that make its figure (this
    run's step and stage seconds): what to make faster, with the reference's own steps for
    the ratio. `--profile` adds each command's cProfile."""
    out = {}
    for name, labels in BOUNDED_BY.items():
        if targets.get(name, {}).get("met") is not False:
            continue
        wanted = [label.format(month=month) for label in labels]
        parts: dict[str, float] = {}
        for label, m in by.items():
            if any(label == w or (w.endswith(" ") and label.startswith(w)) for w in wanted):
                for part, secs in m.parts().items():
                    key = f"{label}: {part}"
                    parts[key] = parts.get(key, 0.0) + secs
        largest = sorted(parts.items(), key=lambda kv: -kv[1])[:top]
        out[name] = {k: round(v, 3) for k, v in largest}
    reference = by.get("reference")
    if out and reference is not None and isinstance(reference.stdout, dict):
        steps = reference.stdout.get("steps", {})
        out["reference (for the ratio)"] = dict(sorted(steps.items(), key=lambda kv: -kv[1])[:3])
    return out


def _print_bounds(found: dict) -> None:
    if not found:
        return
    print("\n  what bounds each missed target (largest parts, seconds, this run)")
    for name, parts in found.items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        print(f"    {name}: {shown}")


def _print_targets(figures: dict) -> dict:
    """The targets table; returns {target: {"figure", "limit", "met"}} for the JSON line."""
    print("\n  targets (issues 13 and 17)")
    out = {}
    for name, limit, unit, lower in TARGETS:
        figure = figures[name]
        met = None if figure is None else (figure <= limit if lower else figure >= limit)
        shown = "not measured" if figure is None else f"{figure:,.3f} {unit}".strip()
        bound = f"{'<=' if lower else '>='} {limit:,.3g} {unit}".strip()
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"    {name:<56} {shown:>18}  target {bound:<14} {verdict}")
        out[name] = {"figure": figure, "limit": limit, "met": met}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--month", default="2026-10")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where input, home and logs go (default: a temp dir)")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the workdir (home, input, logs) after the run")  # fmt: skip
    parser.add_argument("--skip-close", action="store_true")
    parser.add_argument("--no-nightly", dest="nightly", action="store_false")
    parser.add_argument("--jsonl", action="store_true", help="also time a JSONL ingest")
    parser.add_argument("--max-rss-gib", type=float, default=20.0)
    parser.add_argument("--price-models", action="store_true",
                        help="markup, free units, caps and credit grants (issue 17)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="run the usagebox commands under cProfile and print the top")  # fmt: skip
    args = parser.parse_args()
    month_bounds(args.month)
    max_rss = int(args.max_rss_gib * GiB)
    env = _env()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="usagebox-month-"))
    if args.workdir is not None:
        for sub in ("input", "home", "home-jsonl", "reference", "logs", "pricebooks"):
            shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    print(f"month benchmark: {args.events:,} events, {args.accounts} accounts, {args.month}, "
          f"seed {args.seed}, workdir {work}")  # fmt: skip
    try:
        manifest, setup = _setup(args, work, env, max_rss)
        cmds = _commands(args, work, manifest)
        for m in cmds:
            if args.profile:
                profiled(m, work / "logs")
            measure(m, work / "logs", env, max_rss)
            if _run_ids(m):
                m.runs = dagster_steps(work / "home", _run_ids(m))
            m.stages = ingest_stages(m)
            print(f"  {m.label:<28} {m.seconds:7.2f} s  {m.peak_rss / GiB:5.2f} GiB  "
                  f"{'ok' if m.ok else 'FAILED'}", flush=True)  # fmt: skip
        by = {m.label: m for m in cmds}
        reference = by.get("reference")
        main_path = [by["ingest"], by[f"run {args.month}"]]
        ratio = None
        if reference and reference.ok and all(m.ok for m in main_path):
            ratio = sum(m.seconds for m in main_path) / reference.seconds
        _print_tables(cmds, ratio, reference)
        targets = _print_targets(target_figures(by, args.month, ratio))
        bounded = bounds(by, args.month, targets)
        _print_bounds(bounded)
        if args.profile:
            for m in cmds:
                print_profile(m, work / "logs")
        ingest = by["ingest"].stdout if isinstance(by["ingest"].stdout, dict) else {}
        expected = manifest["expected_ingest"]
        matches = {k: ingest.get(k) == v for k, v in expected.items()}
        if not all(matches.values()):
            print(f"\n  WARNING: ingest summary {ingest} differs from planted {expected}")
        check = hourly_check(work, args.month)
        print(f"\n  usage_hourly of {args.month}, pipeline vs reference: {check}")
        result = {
            "bench": "month",
            "date": time.strftime("%Y-%m-%d"),
            "events": args.events,
            "accounts": args.accounts,
            "month": args.month,
            "seed": args.seed,
            "planted": manifest["events"],
            "setup": setup,
            "ingest_summary": ingest,
            "ingest_matches_planted": all(matches.values()),
            "commands": {m.label: m.as_dict() for m in cmds},
            "reference_steps": reference.stdout if reference else None,
            "hourly_vs_reference": check,
            "ratio": round(ratio, 3) if ratio is not None else None,
            "targets": targets,
            "bounds": bounded,
            "all_ok": all(m.ok for m in cmds),
            "max_rss_gib": args.max_rss_gib,
            "price_models": args.price_models,
            "profiled": args.profile,
            "env": environment(),
        }
        print(json.dumps(result, default=str), flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            for sub in ("home", "home-jsonl", "reference", "input"):
                shutil.rmtree(work / sub, ignore_errors=True)


if __name__ == "__main__":
    main()
