"""`WriteBehind`: commits in a background thread, in order, one at a time; a failed commit
stops every later one. Ingest and the `events` fold rely on this for exactly-once commits."""

from __future__ import annotations

import threading
import time

import pytest

from usagebox_pipelines.storage import WriteBehind


class _Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.overlaps = 0
        self.done: list[int] = []

    def commit(self, n: int, seconds: float = 0.01, fail: bool = False):
        def run() -> None:
            with self.lock:
                self.running += 1
                self.overlaps += self.running > 1
            time.sleep(seconds)
            with self.lock:
                self.running -= 1
            if fail:
                raise RuntimeError(f"commit {n} failed")
            self.done.append(n)

        return run


def test_commits_run_in_order_one_at_a_time_and_the_block_waits_for_the_last() -> None:
    """Invariant: commit order = submission order, never two in flight, all done at exit."""
    log = _Log()
    with WriteBehind() as writes:
        for n in range(8):
            writes.submit(log.commit(n, seconds=0.005 * (8 - n)))
    assert log.done == list(range(8))
    assert log.overlaps == 0


def test_the_caller_runs_while_a_commit_is_in_flight() -> None:
    log = _Log()
    with WriteBehind() as writes:
        writes.submit(log.commit(0, seconds=0.2))
        assert log.done == []  # submit returned before the commit finished
    assert log.done == [0]


def test_a_failed_commit_is_raised_at_the_next_submit_and_nothing_later_is_committed() -> None:
    """Invariant (exactly once): after a failed commit no later commit runs."""
    log = _Log()
    with pytest.raises(RuntimeError, match="commit 1 failed"):
        with WriteBehind() as writes:
            writes.submit(log.commit(0))
            writes.submit(log.commit(1, fail=True))
            writes.submit(log.commit(2))  # raises commit 1's error instead of running
            writes.submit(log.commit(3))
    assert log.done == [0]


def test_an_error_in_the_block_lets_the_commit_in_flight_finish_first() -> None:
    log = _Log()
    with pytest.raises(ValueError, match="producer"):
        with WriteBehind() as writes:
            writes.submit(log.commit(0, seconds=0.1))
            raise ValueError("producer failed")
    assert log.done == [0]  # finished before the error left the block
