"""The home lease's two modes (ADR 0012): shared holders (partition rebuilds) hold it together,
an exclusive holder (ingest, the events fold, a close) holds it alone; on a local home (flock,
holders in other processes) and on a moto S3 home (the Delta lease table)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.lease import EXCLUSIVE, SHARED, Holder, _DeltaLease, writer_lease
from usagebox_pipelines.storage import DeltaStore

_HOLD = """
import sys, time
from usagebox_pipelines.lease import writer_lease
with writer_lease(sys.argv[1], "holder", mode=sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@contextmanager
def _held_elsewhere(home: str, mode: str) -> Iterator[None]:
    """The lease held in `mode` by another process for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, home, mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow  # holder subprocesses
def test_local_shared_holders_hold_together_and_keep_exclusive_out(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    with _held_elsewhere(home, SHARED):
        with writer_lease(home, "second shared", wait=1, mode=SHARED):
            pass
        with pytest.raises(UsageboxError, match="busy"):
            with writer_lease(home, "ingest", wait=0.5):
                pass
    with writer_lease(home, "ingest", wait=5):  # the shared holder is gone
        pass


@pytest.mark.slow  # holder subprocesses
def test_local_exclusive_holder_keeps_shared_out(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    with _held_elsewhere(home, EXCLUSIVE):
        with pytest.raises(UsageboxError, match=r"busy: pid \d+ .*\(holder, since"):
            with writer_lease(home, "usage_hourly", wait=0.5, mode=SHARED):
                pass


def test_an_exclusive_writer_cannot_nest_inside_a_shared_hold(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    with writer_lease(home, "usage_hourly", mode=SHARED):
        with writer_lease(home, "another day", mode=SHARED):
            pass
        with pytest.raises(RuntimeError, match="exclusive lease inside a shared one"):
            with writer_lease(home, "ingest"):
                pass
    with writer_lease(home, "run"):  # exclusive outside: everything nests
        with writer_lease(home, "usage_hourly", mode=SHARED):
            pass


@pytest.mark.slow  # a local moto S3 server
def test_object_store_lease_admits_shared_holders_together_and_exclusive_alone(
    s3_home: str,
) -> None:
    options = DeltaStore(s3_home).storage_options
    assert options is not None
    first, second = _DeltaLease(s3_home, options), _DeltaLease(s3_home, options)
    first.acquire(Holder.me("day 1", SHARED), wait=5)
    second.acquire(Holder.me("day 2", SHARED), wait=5)
    ingest = _DeltaLease(s3_home, options)
    with pytest.raises(UsageboxError, match=r"busy: pid \d+ .*shared"):
        ingest.acquire(Holder.me("ingest"), wait=0.5)
    first.release()
    with pytest.raises(UsageboxError, match=r"day 2, shared"):
        ingest.acquire(Holder.me("ingest"), wait=0.5)
    second.release()
    ingest.acquire(Holder.me("ingest"), wait=5)
    late = _DeltaLease(s3_home, options)
    with pytest.raises(UsageboxError, match=r"\(ingest, since"):
        late.acquire(Holder.me("day 3", SHARED), wait=0.5)
    ingest.release()
    late.acquire(Holder.me("day 3", SHARED), wait=5)
    late.release()
    assert late._read()[1] == []  # noqa: SLF001 - every holder released its row
