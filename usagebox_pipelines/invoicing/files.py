"""Where issued PDFs live under the documents folder: validated paths, atomic writes, hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing.numbering import NUMBER_RE
from usagebox_pipelines.pricing.rating import period_bounds


def document_relpath(period: str, number: str) -> str:
    """`invoices/<period>/<number>.pdf`; both parts are validated, never account ids."""
    if not NUMBER_RE.match(number or ""):
        raise UsageboxError(f"refusing to name a document file after {number!r}")
    return f"{period_folder(period)}/{number}.pdf"


def period_folder(period: str) -> str:
    period_bounds(period)  # YYYY-MM only
    return f"invoices/{period}"


def document_file(documents_dir: Path, rel: str) -> Path | None:
    """The stored relative path resolved under the documents folder (None if it escapes)."""
    root = Path(documents_dir).resolve()
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) else None


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha(documents_dir: Path, rel: str | None) -> str | None:
    path = document_file(documents_dir, rel) if rel else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()
