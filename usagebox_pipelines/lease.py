"""One writer at a time per home, or many partition rebuilds together: a lease that dies with
its holder.

Every command and Dagster step that writes tables holds the home's writer lease for its whole
unit of work (an ingest batch loop, a run, a close), so two writers never interleave: an ingest
cannot delete another ingest's half-written batch, the same file is never loaded twice, and
invoice numbers are issued exactly once. Readers never take it (Delta gives them snapshots).

The lease is taken in one of two modes (ADR 0012). `exclusive` (the default) admits one holder.
`shared` admits any number of holders together, but never beside an exclusive one: it is for
steps that only replace their own partition of a derived table from tables no shared holder
writes (`usage_hourly` per day), whose commits are partition-scoped and retried on conflict.

* **Local homes**: a `flock` on `<home>/.writer.lock` (`LOCK_EX` or `LOCK_SH`). The kernel
  releases it the moment the holder dies, so a crashed writer never blocks the next one, and
  whoever holds it exclusively knows any uncommitted batch it finds belongs to a dead writer.
* **Object-store homes** (`s3://`): a Delta table `<home>/_writer_lease`, one row per live
  holder. Taking, renewing or releasing the lease is an overwrite of the rows read at version N;
  Delta's conditional-put commit lets exactly one of two concurrent overwrites of version N win
  (the loser reads again). Holders renew their row from a heartbeat thread; a holder that dies
  stops renewing and its row expires after `ttl`.

The lease is re-entrant within a process (a CLI command that launches Dagster in-process holds
it once for everything), and waiting for it is bounded: after `wait` seconds the command fails
with a one-line reason naming the holder, never a silent skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from usagebox_pipelines.errors import UsageboxError

LOCK_FILE = ".writer.lock"
LEASE_TABLE = "_writer_lease"
DEFAULT_WAIT_SECONDS = 900.0
DEFAULT_TTL_SECONDS = 60.0
_POLL_SECONDS = 0.2

LeaseMode = Literal["exclusive", "shared"]
EXCLUSIVE: LeaseMode = "exclusive"
SHARED: LeaseMode = "shared"

# home -> (mode held by this process, nesting depth)
_held: dict[str, tuple[LeaseMode, int]] = {}
_held_guard = threading.RLock()


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a home's lease, as shown to a waiting person."""

    holder_id: str
    pid: int
    host: str
    purpose: str
    since: str
    mode: str = EXCLUSIVE

    @classmethod
    def me(cls, purpose: str, mode: LeaseMode = EXCLUSIVE) -> Holder:
        return cls(
            holder_id=uuid.uuid4().hex,
            pid=os.getpid(),
            host=socket.gethostname(),
            purpose=purpose,
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            mode=mode,
        )

    def describe(self) -> str:
        shared = ", shared" if self.mode == SHARED else ""
        return f"pid {self.pid} on {self.host} ({self.purpose}{shared}, since {self.since})"


def wait_seconds() -> float:
    """How long to wait for a busy home: $USAGEBOX_LEASE_WAIT seconds (default 900)."""
    raw = os.environ.get("USAGEBOX_LEASE_WAIT")
    try:
        return float(raw) if raw else DEFAULT_WAIT_SECONDS
    except ValueError:
        raise UsageboxError(f"USAGEBOX_LEASE_WAIT={raw!r}: expected a number of seconds") from None


@contextlib.contextmanager
def writer_lease(
    home: str,
    purpose: str,
    storage_options: dict[str, str] | None = None,
    wait: float | None = None,
    mode: LeaseMode = EXCLUSIVE,
) -> Iterator[None]:
    """Hold the home's writer lease in `mode` for the block (re-entrant per process).

    Inside an exclusive hold anything nests; inside a shared hold only shared nests (an
    exclusive writer inside a shared one would wait for itself, so it is refused)."""
    key = home.rstrip("/")
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            if held[0] == SHARED and mode == EXCLUSIVE:
                raise RuntimeError(f"{purpose}: needs the exclusive lease inside a shared one")
            _held[key] = (held[0], held[1] + 1)
            try:
                yield
            finally:
                _held[key] = held
            return
        lease = (
            _DeltaLease(key, storage_options)
            if storage_options is not None
            else _FileLease(Path(key))
        )
        lease.acquire(Holder.me(purpose, mode), wait_seconds() if wait is None else wait)
        _held[key] = (mode, 1)
        try:
            yield
        finally:
            del _held[key]
            lease.release()


def holds_lease(home: str, mode: LeaseMode = EXCLUSIVE) -> bool:
    """True while this process holds the home's lease in `mode` or stronger (stages assert
    the exclusive lease before destructive work)."""
    with _held_guard:
        held = _held.get(home.rstrip("/"))
        return held is not None and (mode == SHARED or held[0] == EXCLUSIVE)


def _busy(home: str, holder: Holder | None, waited: float) -> UsageboxError:
    who = holder.describe() if holder else "another usagebox process"
    return UsageboxError(
        f"home {home} is busy: {who} is writing; waited {waited:.0f} s "
        "(retry when it finishes, or raise USAGEBOX_LEASE_WAIT)"
    )


def _say_waiting(home: str, holder: Holder | None) -> None:
    if sys.stderr.isatty():
        who = holder.describe() if holder else "another process"
        print(f"  waiting for {home}: {who} is writing", file=sys.stderr)


class _FileLease:
    """`flock` on `<home>/.writer.lock` (exclusive or shared); the latest holder's details are
    written into the file for whoever waits."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.fd: int | None = None

    def acquire(self, me: Holder, wait: float) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageboxError(
                f"home {self.home}: cannot create the writer lock ({exc.strerror})"
            ) from None
        deadline = time.monotonic() + wait
        announced = False
        how = fcntl.LOCK_SH if me.mode == SHARED else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(fd, how | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._holder(fd)
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise _busy(str(self.home), holder, wait) from None
                if not announced:
                    _say_waiting(str(self.home), holder)
                    announced = True
                time.sleep(_POLL_SECONDS)
        if me.mode == EXCLUSIVE:  # shared holders leave the file alone (they hold it together)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        self.fd = fd

    @staticmethod
    def _holder(fd: int) -> Holder | None:
        try:
            return Holder(**json.loads(os.pread(fd, 4096, 0) or b"null"))
        except (TypeError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _DeltaLease:
    """A Delta table of live holders whose overwrite commits serialise takers on object storage."""

    def __init__(
        self, home: str, storage_options: dict[str, str], ttl: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.uri = f"{home}/{LEASE_TABLE}"
        self.home = home
        self.options = storage_options
        self.ttl = ttl
        self.me: Holder | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self, me: Holder, wait: float) -> None:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            table, live = self._read()
            blocking = [r for r in live if me.mode == EXCLUSIVE or r.holder.mode == EXCLUSIVE]
            if not blocking:
                if self._write(table, [*live, _LeaseRow.fresh(me, self.ttl)]):
                    break
                continue
            if time.monotonic() >= deadline:
                raise _busy(self.home, blocking[0].holder, wait)
            if not announced:
                _say_waiting(self.home, blocking[0].holder)
                announced = True
            time.sleep(_POLL_SECONDS)
        self.me = me
        self._heartbeat = threading.Thread(target=self._renew, name="usagebox-lease", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        self._update(keep_mine=False)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            self._update(keep_mine=True)

    def _update(self, keep_mine: bool) -> None:
        """Rewrite the live rows with this holder's renewed (or dropped); again after losing a
        race to another holder's commit. Nothing to do once this holder's row is gone."""
        me = self.me
        assert me is not None, "renewing or releasing a lease that was never taken"
        while True:
            table, live = self._read()
            others = [r for r in live if r.holder.holder_id != me.holder_id]
            if len(others) == len(live):
                return  # not ours any more (expired and dropped by another taker)
            rows = [*others, _LeaseRow.fresh(me, self.ttl)] if keep_mine else others
            if self._write(table, rows):
                return

    def _read(self) -> tuple[DeltaTable | None, list[_LeaseRow]]:
        """The table (None before the first holder) and its live rows: no released or
        expired holder."""
        try:
            table = DeltaTable(self.uri, storage_options=self.options)
        except TableNotFoundError:
            return None, []
        rows = [_LeaseRow.parse(r) for r in table.to_pyarrow_table().to_pylist()]
        return table, [r for r in rows if r is not None and not _expired(r)]

    def _write(self, table: DeltaTable | None, rows: list[_LeaseRow]) -> bool:
        """Overwrite the rows read at `table`'s version; False when another writer won."""
        data = pa.Table.from_pylist([r.row() for r in rows], schema=_LEASE_SCHEMA)
        try:
            if table is None:
                write_deltalake(self.uri, data, mode="append", storage_options=self.options)
            else:  # schema_mode: a lease table written before the `mode` column gets it now
                write_deltalake(table, data, mode="overwrite", schema_mode="overwrite")
        except CommitFailedError:
            return False
        except DeltaError as exc:
            if "exists" in str(exc).lower() or "conflict" in str(exc).lower():
                return False
            raise
        return True


@dataclass(frozen=True)
class _LeaseRow:
    holder: Holder
    expires_at: datetime

    @staticmethod
    def parse(row: dict) -> _LeaseRow | None:
        """A holder's row; None for the all-null row an earlier release left."""
        if not row.get("holder_id"):
            return None
        fields = {k: row[k] for k in ("holder_id", "pid", "host", "purpose", "since")}
        holder = Holder(**fields, mode=row.get("mode") or EXCLUSIVE)
        return _LeaseRow(holder, datetime.fromisoformat(row["expires_at"]))

    @staticmethod
    def fresh(holder: Holder, ttl: float) -> _LeaseRow:
        return _LeaseRow(holder, datetime.now(UTC) + timedelta(seconds=ttl))

    def row(self) -> dict:
        return asdict(self.holder) | {"expires_at": self.expires_at.isoformat()}


def _expired(row: _LeaseRow) -> bool:
    return row.expires_at <= datetime.now(UTC)


_LEASE_SCHEMA = pa.schema(
    [
        ("holder_id", pa.string()),
        ("pid", pa.int64()),
        ("host", pa.string()),
        ("purpose", pa.string()),
        ("since", pa.string()),
        ("mode", pa.string()),
        ("expires_at", pa.string()),
    ]
)
