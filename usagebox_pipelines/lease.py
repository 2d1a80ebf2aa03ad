"""One writer at a time per home: a lease that dies with its holder.

Every command and Dagster step that writes tables holds the home's writer lease for its whole
unit of work (an ingest batch loop, a run, a close), so two writers never interleave: an ingest
cannot delete another ingest's half-written batch, the same file is never loaded twice, and
invoice numbers are issued exactly once. Readers never take it (Delta gives them snapshots).

* **Local homes**: an exclusive `flock` on `<home>/.writer.lock`. The kernel releases it the
  moment the holder dies, so a crashed writer never blocks the next one, and whoever holds the
  lock knows any uncommitted batch it finds belongs to a dead writer.
* **Object-store homes** (`s3://`): a one-row Delta table `<home>/_writer_lease`. Taking or
  renewing the lease is an overwrite of the row read at version N; Delta's conditional-put commit
  lets exactly one of two concurrent overwrites of version N win. The holder renews it from a
  heartbeat thread; a holder that dies stops renewing and its lease expires after `ttl`.

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

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from usagebox_pipelines.errors import UsageboxError

LOCK_FILE = ".writer.lock"
LEASE_TABLE = "_writer_lease"
DEFAULT_WAIT_SECONDS = 900.0
DEFAULT_TTL_SECONDS = 60.0
_POLL_SECONDS = 0.2

_held: dict[str, int] = {}
_held_guard = threading.RLock()


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a home's lease, as shown to a waiting person."""

    holder_id: str
    pid: int
    host: str
    purpose: str
    since: str

    @classmethod
    def me(cls, purpose: str) -> Holder:
        return cls(
            holder_id=uuid.uuid4().hex,
            pid=os.getpid(),
            host=socket.gethostname(),
            purpose=purpose,
            since=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.purpose}, since {self.since})"


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
) -> Iterator[None]:
    """Hold the home's writer lease for the duration of the block (re-entrant per process)."""
    key = home.rstrip("/")
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            try:
                yield
            finally:
                _held[key] -= 1
            return
        lease = (
            _DeltaLease(key, storage_options)
            if storage_options is not None
            else _FileLease(Path(key))
        )
        lease.acquire(Holder.me(purpose), wait_seconds() if wait is None else wait)
        _held[key] = 1
        try:
            yield
        finally:
            _held[key] = 0
            lease.release()


def holds_lease(home: str) -> bool:
    """True while this process holds the home's lease (stages assert it before destructive work)."""
    with _held_guard:
        return bool(_held.get(home.rstrip("/")))


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
    """`flock` on `<home>/.writer.lock`; the holder's details are written into the file."""

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
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
    """A one-row Delta table whose overwrite commits serialise writers on object storage."""

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
            current = self._read()
            if current is None or current[1] is None or _expired(current[1]):
                if self._write(current, me):
                    break
                continue
            if time.monotonic() >= deadline:
                raise _busy(self.home, current[1].holder, wait)
            if not announced:
                _say_waiting(self.home, current[1].holder)
                announced = True
            time.sleep(_POLL_SECONDS)
        self.me = me
        self._heartbeat = threading.Thread(target=self._renew, name="usagebox-lease", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        current = self._read()
        if current and current[1] and self.me and current[1].holder.holder_id == self.me.holder_id:
            self._write(current, None)

    def _renew(self) -> None:
        me = self.me
        assert me is not None, "renewing a lease that was never taken"
        while not self._stop.wait(self.ttl / 4):
            current = self._read()
            if current and current[1] and current[1].holder.holder_id == me.holder_id:
                self._write(current, me)

    def _read(self) -> tuple[DeltaTable, _LeaseRow | None] | None:
        try:
            table = DeltaTable(self.uri, storage_options=self.options)
        except TableNotFoundError:
            return None
        rows = table.to_pyarrow_table().to_pylist()
        return table, _LeaseRow.parse(rows[0]) if rows else None

    def _write(
        self, current: tuple[DeltaTable, _LeaseRow | None] | None, holder: Holder | None
    ) -> bool:
        """Overwrite the row read at `current`'s version; False when another writer won."""
        row = _LeaseRow.row(holder, self.ttl)
        target = current[0] if current is not None else self.uri
        try:
            write_deltalake(
                target,
                pa.Table.from_pylist([row], schema=_LEASE_SCHEMA),
                mode="overwrite" if current is not None else "append",
                storage_options=None if current is not None else self.options,
            )
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
        if not row.get("holder_id"):
            return None
        fields = {k: row[k] for k in ("holder_id", "pid", "host", "purpose", "since")}
        return _LeaseRow(Holder(**fields), datetime.fromisoformat(row["expires_at"]))

    @staticmethod
    def row(holder: Holder | None, ttl: float) -> dict:
        if holder is None:
            return {k: None for k in _LEASE_SCHEMA.names}
        expires = datetime.now(UTC) + timedelta(seconds=ttl)
        return asdict(holder) | {"expires_at": expires.isoformat()}


def _expired(row: _LeaseRow) -> bool:
    return row.expires_at <= datetime.now(UTC)


_LEASE_SCHEMA = pa.schema(
    [
        ("holder_id", pa.string()),
        ("pid", pa.int64()),
        ("host", pa.string()),
        ("purpose", pa.string()),
        ("since", pa.string()),
        ("expires_at", pa.string()),
    ]
)
