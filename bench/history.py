"""Benchmark a year of closes: does month 12 cost what month 1 costs (issue 13: within 1.2×)?

Usage: python bench/history.py [--months 12] [--events 100000] [--accounts 200]
                               [--first 2025-11] [--seed 7] [--workdir DIR] [--keep]

Setup, in child processes (never measured): `bench/generate.py` writes one file per month
(`--events` rows each, with its dirt: retries, conflicts, corrections and 1 % late events of
the month before, so every close after the first restates the previous month), and
`bench/pricebooks.py` one pricebooks folder for `--accounts` accounts.

Then, month after month, as a user types it, each command a subprocess:
    usagebox ingest <month>.parquet
    usagebox run --month <month before>       (its late events; not for the first month)
    usagebox run --month <month>
    usagebox close <month> --approve          (PDFs included; restates the month before)
Wall time and peak RSS per command (bench/month.py `measure`). Prints one row per month, the
ratios month N / month 1 for `run` and `close`, and ONE JSON line. What must not grow with
history is everything but the month's own work: a close of month 12 reads 11 closed months of
issued invoices, lines and credit, and re-rates only the months whose inputs changed (the late
events of the month before).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment  # noqa: E402
from bench.month import GiB, Measured, _env, _usagebox, measure  # noqa: E402
from usagebox_pipelines.months import month_bounds, shift_month  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.2
COMMANDS = ("ingest", "run", "close")  # compared month N / month 1 (`run before` has no month 1)


def _setup(args: argparse.Namespace, work: Path, months: list[str], env: dict) -> None:
    py = sys.executable
    for k, month in enumerate(months):
        gen = [py, str(ROOT / "bench/generate.py"), "--events", str(args.events),
               "--accounts", str(args.accounts), "--month", month, "--seed", str(args.seed + k),
               "--out", str(work / "input" / month)]  # fmt: skip
        m = measure(Measured(f"generate {month}", gen), work / "logs", env, 20 * GiB)
        if not m.ok:
            raise SystemExit(f"generate {month} failed: {m.stderr_tail}")
    books = [py, str(ROOT / "bench/pricebooks.py"), "--out", str(work / "pricebooks"),
             "--accounts", str(args.accounts), "--month", months[0]]  # fmt: skip
    m = measure(Measured("pricebooks", books), work / "logs", env, 20 * GiB)
    if not m.ok:
        raise SystemExit(f"pricebooks failed: {m.stderr_tail}")


def _month_commands(work: Path, month: str, first: bool) -> dict[str, Measured]:
    ub = _usagebox()
    opts = ["--home", str(work / "home"), "--pricebooks", str(work / "pricebooks")]
    data = work / "input" / month / "events.parquet"
    before = shift_month(month, -1)
    cmds = {"ingest": Measured(f"ingest {month}", [*ub, "ingest", str(data), *opts])}
    if not first:
        cmds["run before"] = Measured(
            f"run {before}", [*ub, "run", "--month", before, "--json", *opts]
        )
    cmds["run"] = Measured(f"run {month}", [*ub, "run", "--month", month, "--json", *opts])
    cmds["close"] = Measured(f"close {month}", [*ub, "close", month, "--approve", "--json", *opts])
    return cmds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--first", default="2025-11")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    month_bounds(args.first)
    months = [shift_month(args.first, k) for k in range(args.months)]
    env = _env()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="usagebox-history-"))
    if args.workdir is not None:
        for sub in ("input", "home", "logs", "pricebooks"):
            shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    print(f"history benchmark: {args.months} months of {args.events:,} events, "
          f"{args.accounts} accounts, from {args.first}, workdir {work}")  # fmt: skip
    rows: list[dict] = []
    try:
        _setup(args, work, months, env)
        print(f"  {'month':<8} {'ingest s':>9} {'run before s':>13} {'run s':>8} {'close s':>8} "
              f"{'close GiB':>10}")  # fmt: skip
        for k, month in enumerate(months):
            cmds = _month_commands(work, month, first=k == 0)
            for m in cmds.values():
                measure(m, work / "logs", env, 20 * GiB)
                if not m.ok:
                    raise SystemExit(f"{m.label} failed (exit {m.exit_code}): {m.stderr_tail}")
            rows.append({"month": month} | {c: m.as_dict() for c, m in cmds.items()})
            before = cmds["run before"].seconds if "run before" in cmds else 0.0
            print(f"  {month:<8} {cmds['ingest'].seconds:9.2f} {before:13.2f} "
                  f"{cmds['run'].seconds:8.2f} {cmds['close'].seconds:8.2f} "
                  f"{cmds['close'].peak_rss / GiB:10.2f}", flush=True)  # fmt: skip
        ratios = {c: round(rows[-1][c]["seconds"] / rows[0][c]["seconds"], 3) for c in COMMANDS}
        # month 1 has no closed month before it: the second month is the fair baseline for a
        # close that restates its predecessor's late events, so both are reported
        second = {c: round(rows[-1][c]["seconds"] / rows[1][c]["seconds"], 3) for c in COMMANDS}
        met = ratios["close"] <= TARGET
        print(f"\n  month {args.months} / month 1: {ratios}  (close target <= {TARGET}: "
              f"{'met' if met else 'MISSED'})")  # fmt: skip
        print(f"  month {args.months} / month 2: {second}")
        print(json.dumps({
            "bench": "history", "date": time.strftime("%Y-%m-%d"), "months": args.months,
            "events_per_month": args.events, "accounts": args.accounts, "first": args.first,
            "rows": rows, "last_over_first": ratios, "last_over_second": second,
            "close_target_met": met, "env": environment(),
        }, default=str), flush=True)  # fmt: skip
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
