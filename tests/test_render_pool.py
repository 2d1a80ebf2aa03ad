"""stages.pdfs: documents rendered in a process pool come back in the jobs' order."""

from __future__ import annotations

import time

import pytest

from usagebox_pipelines.stages import pdfs


def slow_square(n: int) -> int:
    """Later jobs finish first, so the pool's completion order is not the jobs' order."""
    time.sleep(0.02 * (12 - n) if n < 12 else 0)
    return n * n


def test_results_keep_the_jobs_order_in_a_pool_and_in_process(monkeypatch):
    jobs = list(range(24))
    expected = [n * n for n in jobs]
    monkeypatch.setattr(pdfs, "usable_cpus", lambda: 2)
    assert pdfs.workers(len(jobs)) == 2
    assert list(pdfs.render_each(slow_square, iter(jobs), len(jobs))) == expected
    monkeypatch.setattr(pdfs, "usable_cpus", lambda: 1)
    assert pdfs.workers(len(jobs)) == 0
    assert list(pdfs.render_each(slow_square, iter(jobs), len(jobs))) == expected


@pytest.mark.parametrize(
    ("count", "cpus", "workers"), [(0, 8, 0), (3, 8, 0), (4, 8, 4), (2000, 2, 2)]
)
def test_pool_size_is_at_most_the_cpus_and_never_for_a_few_documents(
    monkeypatch, count, cpus, workers
):
    monkeypatch.setattr(pdfs, "usable_cpus", lambda: cpus)
    assert pdfs.workers(count) == workers
    if workers:
        assert 1 <= pdfs.chunk_size(count, workers) <= pdfs.CHUNK


def test_a_worker_error_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(pdfs, "usable_cpus", lambda: 2)
    with pytest.raises(ZeroDivisionError):
        list(pdfs.render_each(_inverse, [3, 2, 1, 0, 5, 6], 6))


def _inverse(n: int) -> float:
    return 1 / n


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, `limits.cpu: 2`
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),  # no cgroup files at all (macOS, a sandbox)
    ],
)
def test_the_pool_is_capped_by_the_cgroup_cpu_quota(tmp_path, monkeypatch, files, cpus):
    """A pod's CPU limit caps the pool, not the node's core count."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(pdfs.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    assert pdfs.usable_cpus(tmp_path) == (cpus or 64)
