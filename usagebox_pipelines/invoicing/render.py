"""Invoice and credit-note PDFs: a view model from the stored rows, rendered by documents.py.

Everything printed comes from the invoice row, its lines, the account and `assets/issuer.yaml`;
dates come from `issued_at`, never the clock, so re-rendering an issued invoice with the same
template version gives the same bytes (CONTRACT §5.5: the lead compares `pdf_sha256`).
"""

from __future__ import annotations

import calendar
import hashlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import yaml

from usagebox_pipelines.config import ASSETS_DIR
from usagebox_pipelines.documents import format_money, render_pdf, svg_bar_chart
from usagebox_pipelines.errors import InvariantError
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.lines import DETAIL_SEP, field, meter_label

if TYPE_CHECKING:
    from usagebox_pipelines.pricing.accounts import Account

ZERO = Decimal(0)
PER_LABELS = {1_000_000: "1M", 1_000: "1K", 1_000_000_000: "1B"}


def load_issuer(path: Path | None = None) -> dict:
    """The seller block (`assets/issuer.yaml`)."""
    with open(path or ASSETS_DIR / "issuer.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def pdf_sha256(pdf: bytes) -> str:
    """Hex SHA-256 of a rendered PDF (stored as `invoices.pdf_sha256`)."""
    return hashlib.sha256(pdf).hexdigest()


def render_invoice_pdf(
    invoice: dict,
    lines: list[dict] | pl.DataFrame,
    account: Any,
    issuer: dict,
    usage_breakdown: pl.DataFrame | None = None,
    notes: list[str] | None = None,
) -> bytes:
    """PDF bytes of one invoice (or credit note, by `document_type`); deterministic.

    `invoice`: an INVOICES row as a dict; `lines`: its INVOICE_LINES; `account`: a
    pricing.accounts.Account (or dict); `issuer`: `load_issuer()`. `usage_breakdown`
    (optional; columns model_id, meter_id, unit, quantity, amount) replaces the page-2 table
    built from the usage lines, e.g. to show usage by feature. Raises InvariantError when
    the stored total is not the sum of the lines.
    """
    context = invoice_context(invoice, lines, account, issuer, usage_breakdown, notes)
    return _render(invoice, context)


def render_credit_note_pdf(
    credit_note: dict,
    lines: list[dict] | pl.DataFrame,
    account: Any,
    issuer: dict,
    corrects: list[str] | None = None,
    notes: list[str] | None = None,
) -> bytes:
    """PDF bytes of a credit note; `corrects` = numbers of the invoices it corrects."""
    doc = {**credit_note, "document_type": "credit_note"}
    context = invoice_context(doc, lines, account, issuer, None, notes, corrects=corrects)
    return _render(doc, context)


def _render(invoice: dict, context: dict) -> bytes:
    template = f"{invoice.get('template_version') or TEMPLATE_VERSION}.html.j2"
    return render_pdf(template, context, created=_as_datetime(invoice.get("issued_at")))


# --------------------------------------------------------------------------- view model


def invoice_context(
    invoice: dict,
    lines: list[dict] | pl.DataFrame,
    account: Any,
    issuer: dict,
    usage_breakdown: pl.DataFrame | None = None,
    notes: list[str] | None = None,
    *,
    corrects: list[str] | None = None,
) -> dict:
    """Everything the template prints, as plain values (testable without a PDF)."""
    rows = _line_dicts(lines)
    currency = invoice.get("currency") or field(account, "currency") or ""
    kinds = _by_kind(rows)
    totals = _totals(invoice, rows)
    doc = _document(invoice, account, issuer, totals, notes, corrects)
    usage = kinds.get("usage", [])
    breakdown = None if doc["is_credit_note"] else _breakdown(usage, usage_breakdown, currency)
    return {
        "doc": doc,
        "currency": currency,
        "issuer": issuer,
        "customer": _customer(account),
        "sections": _usage_sections(usage),
        "contract_rows": kinds.get("discount", []) + kinds.get("minimum", []),
        "adjustments": _adjustment_groups(kinds.get("adjustment", [])),
        "credit_rows": kinds.get("credit", []),
        "totals": totals,
        "breakdown": breakdown,
    }


def _line_dicts(lines: list[dict] | pl.DataFrame) -> list[dict]:
    rows = lines.to_dicts() if isinstance(lines, pl.DataFrame) else [dict(r) for r in lines]
    rows.sort(key=lambda r: (r.get("line_no") is None, r.get("line_no") or 0))
    for row in rows:
        row["amount"] = Decimal(row.get("amount") or 0)
        row["per_label"] = _per_label(row.get("per"), row.get("unit"))
    return rows


def _by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row.get("kind") or "usage", []).append(row)
    return out


def _totals(invoice: dict, rows: list[dict]) -> dict:
    """Subtotal = this period's charges; the total printed is the sum of the lines printed."""
    by = _by_kind(rows)
    period = sum(
        (r["amount"] for k in ("usage", "discount", "minimum") for r in by.get(k, [])), ZERO
    )
    adjust = sum((r["amount"] for r in by.get("adjustment", [])), ZERO)
    credit = sum((r["amount"] for r in by.get("credit", [])), ZERO)
    total = sum((r["amount"] for r in rows), ZERO)
    stored = invoice.get("total")
    if stored is not None and Decimal(stored) != total:
        raise InvariantError(f"invoice total {stored} != sum of its lines {total}")
    return {"period": period, "adjustments": adjust, "credit": credit, "total": total}


def _sum(rows: list[dict]) -> Decimal:
    return sum((r["amount"] for r in rows), ZERO)


def _share(part: Decimal, total: Decimal) -> Decimal | None:
    return (part / total * 100).quantize(Decimal("0.1")) if total else None


def _document(
    invoice: dict,
    account: Any,
    issuer: dict,
    totals: dict,
    notes: list[str] | None,
    corrects: list[str] | None,
) -> dict:
    is_note = invoice.get("document_type") == "credit_note"
    issued = _as_datetime(invoice.get("issued_at"))
    terms = field(account, "payment_terms_days") or issuer.get("payment_terms_days") or 30
    due = invoice.get("due_date") or (issued.date() + timedelta(days=terms) if issued else None)
    all_notes = [n for n in [invoice.get("notes"), *(notes or [])] if n]
    return {
        "type": "credit_note" if is_note else "invoice",
        "title": "Credit note" if is_note else "Invoice",
        "number": invoice.get("invoice_number"),
        "is_draft": invoice.get("status") != "issued" or not invoice.get("invoice_number"),
        "is_credit_note": is_note,
        "issue_date": _long_date(issued.date()) if issued else None,
        "due_date": _long_date(due) if due else None,
        "terms_days": terms,
        "period": invoice.get("period"),
        "period_label": _period_label(invoice.get("period")),
        "period_month": _month_label(invoice.get("period")),
        "amount_due": abs(totals["total"]) if is_note else totals["total"],
        "corrects": corrects or [],
        "notes": all_notes,
        "template_version": invoice.get("template_version") or TEMPLATE_VERSION,
    }


def _customer(account: Any) -> dict:
    return {
        "name": field(account, "name") or field(account, "account_id"),
        "account_id": field(account, "account_id"),
        "email": field(account, "email"),
        "address": list(field(account, "address") or ()),
        "tax_id": field(account, "tax_id"),
    }


def _usage_sections(rows: list[dict]) -> list[dict]:
    """Usage lines grouped: one section per model (then "Other usage"), and within it one item
    per meter/rule; an item with several lines (tiers, price versions) shows them as sub-rows."""
    sections: dict[str, dict] = {}
    for row in rows:
        model = row.get("model_id")
        section = sections.setdefault(
            model or "", {"title": model or "Other usage", "is_model": bool(model), "items": []}
        )
        head, _, detail = (row.get("description") or meter_label(row.get("meter_id"))).partition(
            DETAIL_SEP
        )
        if model and head.startswith(f"{model} · "):
            head = head[len(model) + 3 :]
        items = section["items"]
        if not items or items[-1]["label"] != head:
            items.append({"label": head, "rows": []})
        items[-1]["rows"].append({**row, "detail": detail})
    ordered = [s for k, s in sections.items() if k] + [s for k, s in sections.items() if not k]
    return ordered


def _adjustment_groups(rows: list[dict]) -> list[dict]:
    groups: dict[str, dict] = {}
    for row in rows:
        period = row.get("adjusts_period") or ""
        group = groups.setdefault(
            period, {"period": period, "label": _month_label(period), "rows": [], "total": ZERO}
        )
        group["rows"].append(row)
        group["total"] += row["amount"]
    return [groups[k] for k in sorted(groups)]


def _breakdown(
    usage: list[dict], usage_breakdown: pl.DataFrame | None, currency: str
) -> dict | None:
    """Page 2: usage per model and meter with a bar chart of amount per model."""
    table = _breakdown_rows(usage, usage_breakdown)
    if not table:
        return None
    per_model: dict[str, Decimal] = {}
    for row in table:
        per_model[row["model"]] = per_model.get(row["model"], ZERO) + row["amount"]
    total = sum(per_model.values(), ZERO)
    chart_items = sorted(per_model.items(), key=lambda kv: (-kv[1], kv[0]))
    for row in table:
        row["share"] = (row["amount"] / total * 100).quantize(Decimal("0.1")) if total else None
    models = [
        {
            "model": m,
            "amount": a,
            "share": (a / total * 100).quantize(Decimal("0.1")) if total else None,
        }
        for m, a in chart_items
    ]
    chart = svg_bar_chart(chart_items, width=500, value_format=lambda v: format_money(v, currency))
    return {"rows": table, "models": models, "chart": chart, "total": total}


def _breakdown_rows(usage: list[dict], frame: pl.DataFrame | None) -> list[dict]:
    """model, meter, quantity, unit, amount: from the caller's frame or the usage lines."""
    if frame is not None and not frame.is_empty():
        source = frame.to_dicts()
    else:
        source = usage
    acc: dict[tuple, dict] = {}
    for r in source:
        model = r.get("model_id") or "Other usage"
        key = (model, r.get("meter_id"), r.get("unit"))
        row = acc.setdefault(
            key,
            {
                "model": model,
                "meter": meter_label(r.get("meter_id")),
                "unit": r.get("unit") or "",
                "quantity": ZERO,
                "amount": ZERO,
            },
        )
        row["quantity"] += Decimal(r.get("quantity") or 0)
        row["amount"] += Decimal(r.get("amount") or 0)
    rows = list(acc.values())
    per_model: dict[str, Decimal] = {}
    for row in rows:
        per_model[row["model"]] = per_model.get(row["model"], ZERO) + row["amount"]
    return sorted(
        rows,
        key=lambda r: (r["model"] == "Other usage", -per_model[r["model"]], r["model"], r["meter"]),
    )


# --------------------------------------------------------------------------- small formats


def _per_label(per: Decimal | None, unit: str | None) -> str:
    """`per 1M tokens`, `per 3,600 seconds`, `per call` for the unit-price column."""
    if per is None or unit is None:
        return ""
    n = int(per) if per == int(per) else per
    if n == 1:
        return f"per {unit.rstrip('s')}"
    return f"per {PER_LABELS.get(n, f'{n:,}')} {unit}"


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise TypeError(f"not a timestamp: {value!r}")


def _long_date(day: date | datetime) -> str:
    return f"{day.day} {calendar.month_abbr[day.month]} {day.year}"


def _period_label(period: str | None) -> str:
    """`1–31 Oct 2026` for `2026-10` (the half-open month, printed inclusively)."""
    if not period:
        return ""
    year, month = (int(p) for p in period.split("-"))
    last = calendar.monthrange(year, month)[1]
    return f"1–{last} {calendar.month_abbr[month]} {year}"


def _month_label(period: str | None) -> str:
    """`October 2026` for `2026-10`."""
    if not period:
        return ""
    year, month = (int(p) for p in period.split("-"))
    return f"{calendar.month_name[month]} {year}"


#: Stored `invoices.notes` hold one note per line, joined by this.
NOTE_SEP = "\n"


def render_document(
    invoice: dict, lines: pl.DataFrame, account: Account, issuer: dict, corrects: list[str]
) -> bytes:
    """The one way a stored document is rendered (at issue and by verify_invoice).

    Stored `notes` hold one note per line; they are passed as a list so each prints apart.
    """
    notes = [n for n in (invoice.get("notes") or "").split(NOTE_SEP) if n]
    doc = {**invoice, "notes": None}
    if invoice.get("document_type") == "credit_note":
        return render_credit_note_pdf(doc, lines, account, issuer, corrects=corrects, notes=notes)
    return render_invoice_pdf(doc, lines, account, issuer, notes=notes)


def corrected_numbers(issued: pl.DataFrame, row: dict, lines: pl.DataFrame) -> list[str]:
    """For a credit note: the account's issued invoices of the periods it adjusts."""
    if row["document_type"] != "credit_note":
        return []
    periods = lines["adjusts_period"].drop_nulls().unique().to_list()
    hits = issued.filter(
        (pl.col("account_id") == row["account_id"])
        & pl.col("period").is_in(periods)
        & (pl.col("document_type") == "invoice")
    )
    return sorted(hits["invoice_number"].to_list())
