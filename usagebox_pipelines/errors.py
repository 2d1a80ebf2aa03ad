"""The one exception type for user errors: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import re


class UsageboxError(Exception):
    """A problem with the user's input or request (file, row, field, option), not a bug."""


class InvariantError(UsageboxError):
    """A stored-data invariant or blocking check failed (exit code 1)."""


class HomeError(UsageboxError):
    """The home is missing, not a folder, not writable, unreachable or unreadable (exit 2)."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ARROWS = re.compile(r"[↳│╭╮╰╯─]+")
_OS_MESSAGE = re.compile(r'message: "([^"]+)"')
_TABLE = re.compile(r"/tables/([A-Za-z0-9_]+)")


def one_line(text: str, limit: int = 240) -> str:
    """Collapse a (multi-line, ANSI-coloured) library message into one short line."""
    flat = " ".join(_ARROWS.sub(" ", _ANSI.sub("", text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def environment_error(exc: BaseException, home: str | None) -> HomeError | None:
    """A user-actionable reason for an OS, object-store or Delta failure; None if it is a bug.

    Covers: a home that is not writable, an unreachable object-store endpoint and a Delta
    table whose `_delta_log` cannot be read (names the table).
    """
    from deltalake.exceptions import DeltaError, DeltaProtocolError

    where = home or "the home"
    full = one_line(str(exc), limit=100_000)
    text = one_line(str(exc))
    lowered = text.lower()
    if isinstance(exc, PermissionError) or any(
        s in lowered
        for s in ("permission denied", "operation not permitted", "read-only file system")
    ):
        return HomeError(
            f"cannot write under {where}: permission denied "
            "(fix its permissions or pass a writable --home)"
        )
    if "generic s3 error" in lowered or any(
        s in lowered
        for s in ("error sending request", "tcp connect error", "dns error", "connection refused")
    ):
        cause = _last_cause(full)
        return HomeError(
            f"cannot reach the object store for {where} ({cause}): check AWS_ENDPOINT_URL, "
            "the network and the AWS_* credentials"
        )
    if "could not create local directory" in lowered:
        reason = _OS_MESSAGE.search(text)
        why = reason.group(1) if reason else "cannot create it"
        return HomeError(f"cannot create the tables under {where} ({why}): pass a writable --home")
    if isinstance(exc, DeltaError | DeltaProtocolError) or "_delta_log" in text:
        first = one_line((str(exc).strip().splitlines() or [""])[0])
        table = _TABLE.search(str(exc))
        name = f"table {table.group(1)!r}" if table else _broken_table(home) or "a table"
        return HomeError(
            f"{name} under {where} cannot be read ({first[:160]}): its _delta_log is corrupted "
            "or was written by an unsupported writer; restore it from a backup"
        )
    if isinstance(exc, OSError) and getattr(exc, "strerror", None):
        target = exc.filename or where
        return HomeError(f"{target}: {exc.strerror} (check --home)")
    return None


def _last_cause(text: str) -> str:
    for marker in ("Connection refused", "dns error", "timed out", "tcp connect error"):
        if marker.lower() in text.lower():
            return marker
    return text[:80]


def _broken_table(home: str | None) -> str | None:
    """The first local table that does not open (only looked for once something failed)."""
    from pathlib import Path

    from deltalake import DeltaTable

    if not home or "://" in home:
        return None
    root = Path(home) / "tables"
    if not root.is_dir():
        return None
    for path in sorted(root.iterdir()):
        if not (path / "_delta_log").is_dir():
            continue
        try:
            DeltaTable(str(path)).to_pyarrow_dataset()
        except Exception:
            return f"table {path.name!r}"
    return None
