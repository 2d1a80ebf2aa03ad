"""Shared helpers for the benchmarks: timing, peak RSS, stage breakdowns, data generation.

- `Measure`: wall time + peak RSS of one stage. Peak RSS is sampled by a background thread
  (psutil, every 20 ms) *and* read from `resource.getrusage` (the kernel's high-water mark of
  the whole process). Data generation runs in a separate process (`generate_files`), so the
  measuring process's high-water mark belongs to the measured stages only.
- `StageProfile`: wraps named functions (module attributes) so every call adds its wall time to a
  per-stage total; this is how the README's "stage -> seconds" tables are produced, without a
  sampling profiler. Nested stages are counted in both (they are inclusive times).
- `result_line`: the one JSON line each script prints last.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import json
import multiprocessing as mp
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MONTH = "2026-10"
SEED = 7
MiB = 2**20


def rss_now() -> int:
    return psutil.Process().memory_info().rss


def rss_hwm() -> int:
    """Kernel high-water mark of this process's RSS (bytes; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Sampler(threading.Thread):
    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss_now()
        self._halt = threading.Event()
        self._proc = psutil.Process()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, rss_now())
        return self.peak


class Measure:
    """`with Measure("ingest") as m: ...` then m.seconds, m.peak_rss (bytes), m.rss_before."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = 0.0
        self.peak_rss = 0
        self.rss_before = 0

    def __enter__(self) -> Measure:
        self.rss_before = rss_now()
        self._sampler = _Sampler()
        self._sampler.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.peak_rss = self._sampler.stop()

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss / MiB),
            "rss_before_mb": round(self.rss_before / MiB),
        }


class StageProfile:
    """Inclusive wall time and call count per wrapped function; generators are timed per item."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[object, str, object]] = []
        self._order: list[str] = []

    def wrap(self, target: str, label: str | None = None) -> None:
        """target: 'package.module:attr' or 'package.module:Class.attr'."""
        mod_name, attr_path = target.split(":")
        owner: object = importlib.import_module(mod_name)
        *parents, attr = attr_path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        original = inspect.getattr_static(owner, attr)
        func = original.__func__ if isinstance(original, classmethod | staticmethod) else original
        label = label or attr_path
        self._order.append(label)
        prof = self

        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def wrapper(*a, **kw):
                prof.calls[label] += 1
                gen = func(*a, **kw)
                while True:
                    t0 = time.perf_counter()
                    try:
                        item = next(gen)
                    except StopIteration:
                        prof.seconds[label] += time.perf_counter() - t0
                        return
                    prof.seconds[label] += time.perf_counter() - t0
                    yield item
        else:

            @functools.wraps(func)
            def wrapper(*a, **kw):
                prof.calls[label] += 1
                t0 = time.perf_counter()
                try:
                    return func(*a, **kw)
                finally:
                    prof.seconds[label] += time.perf_counter() - t0

        new = classmethod(wrapper) if isinstance(original, classmethod) else wrapper
        new = staticmethod(wrapper) if isinstance(original, staticmethod) else new
        setattr(owner, attr, new)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()

    def table(self) -> dict[str, dict]:
        return {
            k: {"seconds": round(v, 3), "calls": self.calls[k]}
            for k in self._order
            if (v := self.seconds.get(k)) is not None
        }

    def print(self, title: str = "stage breakdown (inclusive wall seconds)") -> None:
        print(f"  {title}:")
        for name, row in self.table().items():
            print(f"    {name:<44} {row['seconds']:>9.3f} s  ({row['calls']} calls)")


# --- data generation in a child process ---------------------------------------------------------


# Demo shapes: `canonical` is written as JSONL; the `parquet` shape (transaction_id/customer_id/
# meter/model/value aliases, decimal value, JSON dimensions) is the Parquet feed.
_SHAPE = {"jsonl": "canonical", "parquet": "parquet"}


def _generate(
    paths: list[str], fmt: str, n_events: int, n_accounts: int, month: str, seed: int
) -> None:
    """Write `n_events` demo events (canonical JSONL or parquet shape) split by UTC day over `paths` files."""
    from usagebox_demo import iter_usage, write_shape

    days = list(iter_usage(month, seed, n_events, n_accounts))
    per_file = -(-len(days) // len(paths))
    for i, path in enumerate(paths):
        part = days[i * per_file : (i + 1) * per_file]
        if part:
            write_shape(iter(part), Path(path), _SHAPE[fmt])


def _generate_day(path: str, day: str, n_events: int, n_accounts: int, month: str, seed: int):
    """`n_events` new events (their own id stream) on one UTC day, as Parquet or JSONL."""
    from datetime import UTC, datetime

    from usagebox_demo import catalog as cat
    from usagebox_demo import write_shape
    from usagebox_demo.ids import STREAM_LATE_MONTH
    from usagebox_demo.usage import Stream, iter_window

    stream = Stream.make(seed, STREAM_LATE_MONTH, month, cat.build_accounts(seed, n_accounts))
    first = datetime.fromisoformat(day).replace(tzinfo=UTC)
    fmt = "parquet" if path.endswith(".parquet") else "jsonl"
    write_shape(iter_window(stream, first, 1, n_events), Path(path), _SHAPE[fmt])


def in_child(func, *args) -> float:
    """Run `func(*args)` in a fresh process (keeps its memory out of our RSS); returns seconds."""
    t0 = time.perf_counter()
    proc = mp.get_context("spawn").Process(target=func, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"generation failed (exit {proc.exitcode})")
    return time.perf_counter() - t0


def generate_files(
    directory: Path, fmt: str, n_events: int, n_accounts: int, files: int = 1,
    month: str = MONTH, seed: int = SEED,
) -> tuple[list[Path], float]:  # fmt: skip
    """Write the input files in a child process; returns (paths, generation seconds)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = {"parquet": "parquet", "jsonl": "jsonl"}[fmt]
    paths = [directory / f"events-{i:03d}.{ext}" for i in range(files)]
    secs = in_child(_generate, [str(p) for p in paths], fmt, n_events, n_accounts, month, seed)
    return [p for p in paths if p.exists()], secs


# --- CLI plumbing -------------------------------------------------------------------------------


def base_parser(doc: str, accounts: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=accounts)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="kept after the run if given; default: a temp dir removed at the end")  # fmt: skip
    parser.add_argument("--month", default=MONTH)
    parser.add_argument("--seed", type=int, default=SEED)
    return parser


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="usagebox-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def environment() -> dict:
    import deltalake
    import polars

    return {
        "python": platform.python_version(),
        "polars": polars.__version__,
        "deltalake": deltalake.__version__,
        "cpus": psutil.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30),
    }


def result_line(bench: str, **fields: object) -> str:
    """The machine-readable result: one JSON object on one line (printed last)."""
    payload = {
        "bench": bench,
        "date": time.strftime("%Y-%m-%d"),
        **fields,
        "peak_rss_hwm_mb": round(rss_hwm() / MiB),
        "env": environment(),
    }
    line = json.dumps(payload, default=str)
    print(line, flush=True)
    return line


def rate(n: int, seconds: float) -> int:
    return round(n / seconds) if seconds > 0 else 0
