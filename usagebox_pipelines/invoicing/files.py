"""Where issued PDFs live in the document store: validated relative paths.

The bytes are written, read and hashed by `storage.DocumentStore` (the stages own all I/O).
"""

from __future__ import annotations

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing.numbering import NUMBER_RE
from usagebox_pipelines.months import month_bounds


def document_relpath(period: str, number: str) -> str:
    """`invoices/<period>/<number>.pdf`; both parts are validated, never account ids."""
    if not NUMBER_RE.match(number or ""):
        raise UsageboxError(f"refusing to name a document file after {number!r}")
    return f"{period_folder(period)}/{number}.pdf"


def period_folder(period: str) -> str:
    month_bounds(period)  # YYYY-MM only
    return f"invoices/{period}"
