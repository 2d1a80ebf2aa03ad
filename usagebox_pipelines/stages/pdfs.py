"""Render many documents at once: a process pool of one worker per usable CPU, results in order.

A PDF costs about half a second of CPU in WeasyPrint, so a close of 2,000 accounts renders in
parallel, and so does `verify --render`. `render_each` runs a top-level function over jobs and
yields its results in the jobs' order, whatever order the workers finish in, so what a caller
writes (and numbers) never depends on scheduling: every result is a pure function of its job.

Memory stays bounded: jobs are taken from the iterator lazily, a few per worker at a time, and
each job carries one document's row and lines only (never a whole frame). Workers are spawned,
not forked (polars' thread pool does not survive a fork). Below `POOL_FROM` jobs, or on one
CPU, everything runs in this process: a pool costs about a second to start. A worker that dies
raises `BrokenProcessPool` here; the caller has written nothing for the documents not yet
yielded, and the close's commit marker goes last (stages/issue.py), so a rerun redoes it.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")

#: Render in a process pool from this many documents on (a pool costs ~1 s to start).
POOL_FROM = 4
#: Jobs per task sent to a worker (fewer round trips; small enough to balance the tail).
CHUNK = 4
#: Tasks in flight per worker: enough to keep it busy, few enough to bound memory.
IN_FLIGHT = 3


#: Where the kernel shows this process's cgroup (v2: `cpu.max`; v1: `cpu/cpu.cfs_*`).
CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota rounded
    up. In a Kubernetes pod with `limits.cpu: 2` on a 64-core node `os.cpu_count()` says 64;
    a pool that size would be throttled to 2 CPUs and hold 64 renderers' memory."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, quota)) if quota else cpus


def _cgroup_quota(cgroup: Path) -> int | None:
    """The CPU quota in whole CPUs (rounded up), or None when there is none or it is unreadable."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        return None


def workers(count: int) -> int:
    """How many processes render `count` documents: 0 = in this process."""
    cpus = usable_cpus()
    if count < POOL_FROM or cpus < 2:
        return 0
    return min(cpus, count)


def chunk_size(count: int, n: int) -> int:
    """Jobs per task: up to CHUNK, fewer when there are only a few per worker."""
    return max(1, min(CHUNK, count // (n * IN_FLIGHT)))


def render_each(fn: Callable[[J], R], jobs: Iterable[J], count: int) -> Iterator[R]:
    """`fn(job)` for every job, in order; in a process pool when `workers(count)` > 0.

    `fn` must be a module-level function (the pool pickles it); `count` is the number of
    jobs (for sizing the pool; `jobs` may be a generator).
    """
    n = workers(count)
    if n == 0:
        yield from map(fn, jobs)
        return
    spawn = multiprocessing.get_context("spawn")  # polars' threads do not survive a fork
    chunks = _chunks(iter(jobs), chunk_size(count, n))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=spawn, initializer=_worker_init)
    try:
        pending: deque[Future[list[R]]] = deque()
        for chunk in islice(chunks, n * IN_FLIGHT):
            pending.append(pool.submit(_run_chunk, fn, chunk))
        while pending:
            done = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(_run_chunk, fn, nxt))
            yield from done
    finally:  # also when the caller stops early: queued work is dropped, not rendered
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(jobs: Iterator[J], size: int) -> Iterator[list[J]]:
    while chunk := list(islice(jobs, size)):
        yield chunk


def _run_chunk(fn: Callable[[J], R], chunk: list[J]) -> list[R]:
    out = []
    for job in chunk:
        out.append(fn(job))
        gc.collect()  # one document's garbage, once (see _worker_init)
    return out


def _worker_init() -> None:
    """Import the renderer once and take it out of the collector's sight (a worker keeps its
    imports for life); then collect once per document instead of automatically: WeasyPrint
    allocates so much that the automatic collections, each rescanning what is alive, cost
    about a fifth of a render. Memory stays bounded by one document's garbage."""
    import usagebox_pipelines.invoicing.render  # noqa: F401  (templates, charts)
    import usagebox_pipelines.pdf_writer  # noqa: F401  (WeasyPrint: imported only to make a PDF)

    gc.freeze()
    gc.disable()
