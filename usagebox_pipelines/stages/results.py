"""What the close, reproduce, explain, export and verify stages return: frozen dataclasses.

Each result's `to_dict()` is the JSON object the CLI prints (CONTRACT §1): its fields in
declaration order, nested parts (summaries, totals, differences, explained lines) as the
plain JSON payloads they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from usagebox_pipelines.invariants import InvariantResult


class _Result:
    """`to_dict()`: the dataclass fields, in order, shallow (nested payloads as they are)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


# --------------------------------------------------------------------------- close


@dataclass(frozen=True)
class NeedsApproval(_Result):
    """A close without `--approve`: control totals and drafts; nothing written."""

    status: Literal["needs_approval"] = field(default="needs_approval", init=False)
    period: str
    message: str
    events_table_version: int | None
    control_totals: dict
    invoices: list[dict]


@dataclass(frozen=True)
class Closed(_Result):
    """An approved close: numbered, rendered, committed documents."""

    status: Literal["closed"] = field(default="closed", init=False)
    period: str
    closed_at: str
    issued_at: str
    events_table_version: int | None
    invoices: list[dict]
    #: report name -> URI of the month's reconciliation reports, rendered with the invoices
    reports: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Numbered(_Result):
    """The first step of an approved close run per month shard (Dagster: `close_job`): the
    documents are numbered and stamped; their PDFs and the marker follow (ADR 0019 §5)."""

    status: Literal["numbered"] = field(default="numbered", init=False)
    period: str
    issued_at: str
    events_table_version: int | None
    documents: int
    first_number: str | None
    last_number: str | None


@dataclass(frozen=True)
class AlreadyClosed(_Result):
    """A close of a closed month: nothing changed."""

    status: Literal["already_closed"] = field(default="already_closed", init=False)
    period: str
    closed_at: str
    message: str
    events_table_version: int | None
    invoices: list[dict]


CloseResult = NeedsApproval | Numbered | Closed | AlreadyClosed


# --------------------------------------------------------------------------- issued documents


@dataclass(frozen=True)
class InvoiceVerification(_Result):
    """`usagebox invoice verify N`: one issued document rebuilt from its stamps."""

    invoice_number: str
    reproduced: bool
    period: str
    account_id: str
    events_table_version: int | None
    pricebook_versions: Any
    lines: int
    total: str
    pdf_sha256: dict[str, str | None]
    differences: list[dict]


@dataclass(frozen=True)
class InvoiceExplanation(_Result):
    """`usagebox explain N`: the audit trail of an issued document, per line."""

    invoice_number: str
    document_type: str
    account_id: str
    period: str
    currency: str
    subtotal: str
    total: str
    issued_at: str
    events_table_version: int | None
    pricebook_versions: Any
    code_version: str | None
    template_version: str | None
    lines: list[dict]
    #: For an account billed in its time zone (ADR 0017): the zone and the UTC window
    #: [from, to) its month covers. Absent from the JSON for UTC accounts.
    period_window: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["period_window"] is None:
            del out["period_window"]
        return out


@dataclass(frozen=True)
class InvoiceExport(_Result):
    """`usagebox invoices --out`: the copied PDFs and the register written."""

    period: str
    out: str
    documents: int
    credit_notes: int
    files: list[str]
    register: str


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyReport:
    """`usagebox verify`: every invariant checked, and the names of those that failed."""

    checks: tuple[InvariantResult, ...]

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.checks if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "checks": [r.as_dict() for r in self.checks],
        }
