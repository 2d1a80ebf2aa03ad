"""Invoice and credit-note PDFs: a view model from the stored rows, rendered by documents.py.

Everything printed comes from the invoice row, its lines, the account and `assets/issuer.yaml`;
dates come from `issued_at`, never the clock, so re-rendering an issued invoice with the same
template version gives the same bytes (CONTRACT §5.5: the lead compares `pdf_sha256`).
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import yaml

from usagebox_pipelines.charts import bar_chart, plain_bar_chart
from usagebox_pipelines.config import ASSETS_DIR
from usagebox_pipelines.decimals import grouped_text
from usagebox_pipelines.documents import PdfStyle, format_money, render_pdf, svg_bar_chart
from usagebox_pipelines.errors import InvariantError
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.lines import CONTRACT_LABELS, DETAIL_SEP, field, meter_label
from usagebox_pipelines.pricing.accounts import PREPAID_GRANT
from usagebox_pipelines.pricing.contract import GRANT_RATE, grant_balances, stamped_grants

if TYPE_CHECKING:
    from usagebox_pipelines.pricing.accounts import Account
    from usagebox_pipelines.pricing.contract import CreditBalances

ZERO = Decimal(0)
#: The credit balances an invoice opens with: {grant id: balance} (`credit_before`); a plain
#: Decimal is the one balance of an account's prepaid credit (the form before credit grants).
GrantOpening = Mapping[str, Decimal] | Decimal | None
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
    *,
    originals: Mapping[str, list[str]] | None = None,
    credit_opening: GrantOpening = None,
) -> bytes:
    """PDF bytes of one invoice (or credit note, by `document_type`); deterministic.

    `invoice`: an INVOICES row as a dict; `lines`: its INVOICE_LINES; `account`: a
    pricing.accounts.Account (or dict); `issuer`: `load_issuer()`. `usage_breakdown`
    (optional; columns model_id, meter_id, unit, quantity, amount) replaces the page-2 table
    built from the usage lines, e.g. to show usage by feature. Raises InvariantError when
    the stored total is not the sum of the lines. `originals` (adjusted period → the numbers
    of the invoices that billed it) and `credit_opening` (the prepaid balance before this
    invoice, credit.balances) are printed by invoice_v2.
    """
    context = invoice_context(
        invoice,
        lines,
        account,
        issuer,
        usage_breakdown,
        notes,
        originals=originals,
        credit_opening=credit_opening,
    )
    return _render(invoice, context)


def render_credit_note_pdf(
    credit_note: dict,
    lines: list[dict] | pl.DataFrame,
    account: Any,
    issuer: dict,
    corrects: list[str] | None = None,
    notes: list[str] | None = None,
    *,
    originals: Mapping[str, list[str]] | None = None,
) -> bytes:
    """PDF bytes of a credit note; `corrects` = numbers of the invoices it corrects."""
    doc = {**credit_note, "document_type": "credit_note"}
    context = invoice_context(
        doc, lines, account, issuer, None, notes, corrects=corrects, originals=originals
    )
    return _render(doc, context)


#: Template versions whose usage chart is `charts.plain_bar_chart` (no matplotlib).
PLAIN_CHARTS = frozenset({"invoice_v5"})
#: Template versions rendered the cheap way (pdf_writer.html_to_pdf): their stylesheet
#: (named here, not linked by the template) and their own user-agent stylesheet parsed once
#: per process, and font subsets padded to a fixed glyph set, memoised across documents.
#: Every other version renders with `PdfStyle()`. Never change an issued version's entry:
#: its bytes would change.
PDF_STYLES = {
    "invoice_v5": PdfStyle(("invoice_v5.css",), "invoice_v5_ua.css", stable_subsets=True),
}
#: Templates whose merged lines also name a free allowance (`included usage`) and a percentage
#: (`2.9% of the amount`); earlier ones print such lines by their unit price only, byte for
#: byte as issued.
NAMED_RULES = frozenset({"invoice_v5"})


def _render(invoice: dict, context: dict) -> bytes:
    version = invoice.get("template_version") or TEMPLATE_VERSION
    return render_pdf(
        f"{version}.html.j2",
        context,
        created=_as_datetime(invoice.get("issued_at")),
        style=PDF_STYLES.get(version, PdfStyle()),
    )


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
    originals: Mapping[str, list[str]] | None = None,
    credit_opening: GrantOpening = None,
) -> dict:
    """Everything the template prints, as plain values (testable without a PDF).

    invoice_v1 reads the first keys; invoice_v2 adds `items` (usage lines merged where the
    price is the same), `summary` (the totals block: usage → discounts → minimum → net → tax
    → adjustments → total → credit → amount due), `tax` and `credit`.
    """
    rows = _line_dicts(lines)
    currency = invoice.get("currency") or field(account, "currency") or ""
    kinds = _by_kind(rows)
    totals = _totals(invoice, rows)
    doc = _document(invoice, account, issuer, totals, notes, corrects)
    usage = kinds.get("usage", [])
    version = doc["template_version"]
    plot = "plain" if version in PLAIN_CHARTS else "matplotlib" if version != "invoice_v1" else ""
    breakdown = (  # v1 keeps its hand-drawn chart, v2–v4 matplotlib's, byte for byte
        None if doc["is_credit_note"] else _breakdown(usage, usage_breakdown, currency, plot)
    )
    adjustments = _adjustment_groups(kinds.get("adjustment", []), originals or {})
    tax = _tax(kinds.get("tax", []), account, issuer)
    credit = _credit(kinds.get("credit", []), account, credit_opening)
    summary = summary_rows(kinds, adjustments, tax, doc, totals)
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
        "items": merged_sections(usage, named=version in NAMED_RULES),
        "tax": tax,
        "credit": credit,
        "summary": summary,
        "wide_columns": _widest(rows, summary, credit) >= WIDE_AMOUNT
        or max((abs(Decimal(r.get("quantity") or 0)) for r in rows), default=ZERO) >= WIDE_QUANTITY,
        "adjustment_sections": [
            _shown_adjustments(
                g,
                account,
                merge=doc["template_version"] in MERGED_ADJUSTMENTS,
                named=doc["template_version"] in NAMED_RULES,
            )
            for g in adjustments
        ],
    }


#: From this amount (in major units) or quantity on, invoice_v5 prints its number columns
#: wider: its tables have fixed column widths (invoice_v5.css), sized for smaller numbers.
WIDE_AMOUNT = Decimal(100_000)
WIDE_QUANTITY = Decimal(1_000_000_000)


def _widest(rows: list[dict], summary: list[dict], credit: dict | None) -> Decimal:
    """The largest amount (absolute) the document prints: a line, a total, a credit balance."""
    amounts = [r["amount"] for r in rows] + [r["amount"] for r in summary]
    if credit is not None:
        amounts += [credit["opening"] or ZERO, credit["closing"] or ZERO]
        amounts += [g["opening"] or ZERO for g in credit["grants"]]
    return max((abs(a) for a in amounts), default=ZERO)


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
        "period_label": _period_label(invoice.get("period"), field(account, "time_zone")),
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


def _adjustment_groups(
    rows: list[dict], originals: Mapping[str, list[str]] | None = None
) -> list[dict]:
    """Adjustment lines per period they correct, naming the invoices that billed it."""
    groups: dict[str, dict] = {}
    for row in rows:
        period = row.get("adjusts_period") or ""
        group = groups.setdefault(
            period,
            {
                "period": period,
                "label": _month_label(period),
                "rows": [],
                "total": ZERO,
                "originals": list((originals or {}).get(period, [])),
            },
        )
        group["rows"].append(row)
        group["total"] += row["amount"]
    return [groups[k] for k in sorted(groups)]


def _breakdown(
    usage: list[dict], usage_breakdown: pl.DataFrame | None, currency: str, plot: str = ""
) -> dict | None:
    """Page 2: usage per model and meter with a bar chart of amount per model (`plot`:
    "matplotlib", with an axis, for invoice_v2–v4; "plain", the same chart written without
    matplotlib, for invoice_v5; "" the hand-drawn one of invoice_v1)."""
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
    money = functools.partial(format_money, currency=currency)
    if plot:
        draw = plain_bar_chart if plot == "plain" else bar_chart
        chart = draw(chart_items, title="Usage by model", value_format=money, axis_label=currency)
    else:
        chart = svg_bar_chart(chart_items, width=500, value_format=money)
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
                "meter_id": r.get("meter_id"),
                "unit": r.get("unit") or "",
                "quantity": ZERO,
                "amount": ZERO,
            },
        )
        row["quantity"] += Decimal(r.get("quantity") or 0)
        row["amount"] += Decimal(r.get("amount") or 0)
    rows = list(acc.values())
    for row in rows:
        row["shown_quantity"], row["shown_unit"] = _in_human_units(
            row["meter_id"], row["quantity"], row["unit"]
        )
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


def _period_label(period: str | None, zone: str | None = None) -> str:
    """`1–31 Oct 2026` for `2026-10` (the half-open month, printed inclusively); in an
    account's time zone `1 Oct 2026 – 31 Oct 2026 (America/New_York)`, so the customer sees
    whose midnights bound it (a UTC account's label is exactly as before zones, ADR 0017)."""
    if not period:
        return ""
    year, month = (int(p) for p in period.split("-"))
    last = calendar.monthrange(year, month)[1]
    abbr = calendar.month_abbr[month]
    if zone:
        return f"1 {abbr} {year} – {last} {abbr} {year} ({zone})"
    return f"1–{last} {abbr} {year}"


def _month_label(period: str | None) -> str:
    """`October 2026` for `2026-10`."""
    if not period:
        return ""
    year, month = (int(p) for p in period.split("-"))
    return f"{calendar.month_name[month]} {year}"


#: Stored `invoices.notes` hold one note per line, joined by this.
NOTE_SEP = "\n"


def render_document(
    invoice: dict,
    lines: pl.DataFrame,
    account: Account,
    issuer: dict,
    corrects: list[str],
    originals: Mapping[str, list[str]] | None = None,
    credit_opening: GrantOpening = None,
) -> bytes:
    """The one way a stored document is rendered (at issue and by verify_invoice); build the
    arguments with `render_args`, so issue and verify print the same references and balance.

    Stored `notes` hold one note per line; they are passed as a list so each prints apart.
    """
    notes = [n for n in (invoice.get("notes") or "").split(NOTE_SEP) if n]
    doc = {**invoice, "notes": None}
    if invoice.get("document_type") == "credit_note":
        return render_credit_note_pdf(
            doc, lines, account, issuer, corrects=corrects, notes=notes, originals=originals
        )
    return render_invoice_pdf(
        doc, lines, account, issuer, notes=notes, originals=originals, credit_opening=credit_opening
    )


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


# --------------------------------------------------------------------------- invoice_v2


def render_args(
    issued: pl.DataFrame,
    row: dict,
    lines: pl.DataFrame,
    account: Account,
    issuer: dict,
    opening: CreditBalances | None,
) -> tuple:
    """`render_document`'s arguments for one stored document: what it corrects, the invoices
    its adjustments restate, and its credit balance before it (`opening`: the close's
    `opening_credit`, {account: {grant: balance}}; an account missing there starts from its
    grants: `credit_before`)."""
    credit_opening = credit_before(opening, account, row["period"])
    return (
        row,
        lines,
        account,
        issuer,
        corrected_numbers(issued, row, lines),
        originals(issued, row, lines),
        credit_opening,
    )


def credit_before(
    opening: CreditBalances | None, account: Account, period: str
) -> dict[str, Decimal] | None:
    """The balances the invoice's credit box opens with: {grant id: balance} of the grants
    usable in `period`, in burn order (`CreditGrant.burn_key`); None when no grant is usable."""
    own = grant_balances((opening or {}).get(account.account_id), account)
    window = account.period(period)
    usable = [g for g in stamped_grants(account, own) if g.usable_in(window.start, window.end)]
    if not usable:
        return None
    return {g.grant_id: own[g.grant_id] for g in sorted(usable, key=lambda g: g.burn_key)}


def originals(issued: pl.DataFrame, row: dict, lines: pl.DataFrame) -> dict[str, list[str]]:
    """{adjusted period: numbers of the account's issued invoices of that period}."""
    periods = lines.filter(pl.col("kind") == "adjustment")["adjusts_period"].drop_nulls()
    if periods.is_empty():
        return {}
    hits = issued.filter(
        (pl.col("account_id") == row["account_id"])
        & pl.col("period").is_in(periods.unique().implode())
        & (pl.col("document_type") == "invoice")
    )
    out: dict[str, list[str]] = {}
    for period, number in hits.select("period", "invoice_number").sort(pl.all()).iter_rows():
        out.setdefault(period, []).append(number)
    return out


#: Meters shown in a larger unit than they are metered in: (meter, per) → (unit, units).
HUMAN_UNITS = {("gpu_seconds", Decimal(3600)): ("GPU-hour", "GPU-hours")}
_PACKAGE = " × package of "


def merged_sections(usage: list[dict], named: bool = False) -> list[dict]:
    """Usage lines per model, then per item (meter, GPU type, tool), with lines of the same
    price merged: a price version that did not change the price, and usage already covered
    by a package bought earlier in the month (an amount of 0.00), add to the line they share
    a price with. Amounts are sums of stored rounded lines, so the invoice still adds up.
    A part of a per-event charge keeps its rule (`3 transaction(s) × fixed fee 0.30`), and
    with `named` (NAMED_RULES) free allowances and percentages keep theirs."""
    sections = _usage_sections(usage)
    for section in sections:
        for item in section["items"]:
            item["rows"] = _describe_merged(_merge_same_price(item["rows"], named))
    return sections


def _merge_same_price(rows: list[dict], named: bool = False) -> list[dict]:
    merged: list[dict] = []
    for row in rows:
        part = _rule_part(row, named)
        twin = next(
            (m for m in merged if _same_price(m, row) and _same_part(m["part"], part)), None
        )
        if twin is None:
            merged.append(
                {**row, "line_nos": [row.get("line_no")], "versions": [_version(row)], "part": part}
            )
            continue
        if part is not None and part[1] is not None:
            twin["part"] = (part[0], twin["part"][1] + part[1])
        twin["quantity"] = Decimal(twin.get("quantity") or 0) + Decimal(row.get("quantity") or 0)
        twin["amount"] += row["amount"]
        twin["line_nos"].append(row.get("line_no"))
        twin["versions"].append(_version(row))
    covered = [m for m in merged if _covered(m)]
    for row in covered:
        payer = next((m for m in merged if not _covered(m) and _same_package(m, row)), None)
        if payer is not None:
            payer["quantity"] = Decimal(payer["quantity"] or 0) + Decimal(row["quantity"] or 0)
            payer["line_nos"] += row["line_nos"]
            merged.remove(row)
    return merged


def _same_price(a: dict, b: dict) -> bool:
    keys = ("tier", "unit_price", "per", "unit")
    return all(a.get(k) == b.get(k) for k in keys) and _is_package(a) == _is_package(b)


#: A part of a per-event charge (pricing.per_event, ADR 0018) names its rule in the detail of
#: its description (invoicing.lines): `3 transaction(s) × fixed fee 0.30`, `… at the minimum
#: of 0.50 per transaction`, `each event's own price`.
_TRANSACTION_PART = re.compile(r"^(?P<count>[0-9][0-9,]*) (?P<part>transaction\(s\) .+)$")
_DYNAMIC_PART = "each event's own price"
#: What `named` templates also keep of a line's detail (invoicing.lines).
_NAMED_PARTS = re.compile(r"^(included usage|[0-9.]+% of the amount)$")


def _rule_part(row: dict, named: bool = False) -> tuple[str, int | None] | None:
    """(the rule a line's detail names, without a count; its transactions) of a per-event
    part line (no count for a dynamic one) and, when `named`, of a free allowance or a
    percentage; None for every other line, which are shown as they were."""
    detail = (row.get("description") or "").partition(DETAIL_SEP)[2]
    for piece in detail.split(", "):
        if piece == _DYNAMIC_PART or (named and _NAMED_PARTS.match(piece)):
            return piece, None
        match = _TRANSACTION_PART.match(piece)
        if match:
            return match["part"], int(match["count"].replace(",", ""))
    return None


def _same_part(a: tuple[str, int | None] | None, b: tuple[str, int | None] | None) -> bool:
    """Lines of different per-event parts never merge, even at one price (a fixed fee of 0.50
    and a minimum of 0.50 are two rules)."""
    return (a is None) == (b is None) and (a is None or b is None or a[0] == b[0])


def _same_package(payer: dict, row: dict) -> bool:
    return _is_package(payer) and _is_package(row) and payer.get("per") == row.get("per")


def _covered(row: dict) -> bool:
    """A package line of 0.00: its calls fit in a package bought earlier in the month."""
    return _is_package(row) and row["amount"] == 0 and bool(row.get("quantity"))


def _is_package(row: dict) -> bool:
    return _PACKAGE in (row.get("description") or "")


def _version(row: dict) -> str:
    return row.get("price_version") or ""


def _describe_merged(rows: list[dict]) -> list[dict]:
    """Detail, display quantity and price unit of each merged line (`GPU-hours`, `tier 2`,
    `prices from 2026-10-16`, `1 × package of 1,000 calls`)."""
    tiers = {r.get("tier") for r in rows}
    prices = len({(r.get("unit_price"), r.get("per")) for r in rows})
    for row in rows:
        detail = []
        if len(tiers) > 1 and row.get("tier") is not None:
            detail.append(f"tier {row['tier']}")
        if prices > 1 and any(row["versions"]):
            detail.append(f"prices from {min(v for v in row['versions'] if v)}")
        if "flat fee" in (row.get("description") or ""):
            detail.append("flat fee")
        if _is_package(row) and row.get("unit_price"):
            count = (row["amount"] / Decimal(row["unit_price"])).to_integral_value()
            detail.append(f"{count:,}{_PACKAGE}{grouped_text(Decimal(row['per']))} {row['unit']}")
        part = row.get("part")
        if part is not None:
            detail.append(part[0] if part[1] is None else f"{part[1]:,} {part[0]}")
        row["detail"] = ", ".join(detail)
        row["line_label"] = _line_numbers(row["line_nos"])
        row.update(_display_units(row))
        if (
            part is not None and part[1] is not None
        ):  # a fee, a minimum or a maximum: per transaction
            row.update(
                shown_quantity=Decimal(part[1]),
                shown_unit="transactions",
                price_label="per transaction",
                metered=None,
            )
    return rows


def _display_units(row: dict) -> dict:
    """Quantity, unit and price label as a person reads them: GPU time in GPU-hours (the
    metered seconds below it), tokens per 1M, packages per package."""
    per = row.get("per")
    per = None if per is None else Decimal(per)
    quantity = None if row.get("quantity") is None else Decimal(row["quantity"])
    human = HUMAN_UNITS.get((row.get("meter_id"), per)) if per is not None else None
    if human is not None and quantity is not None and per is not None:
        return {
            "shown_quantity": (quantity / per).quantize(Decimal("0.0001"), ROUND_HALF_UP),
            "shown_unit": human[1],
            "price_label": f"per {human[0]}",
            "metered": f"{grouped_text(quantity)} {row.get('unit') or ''}".strip(),
        }
    if _is_package(row) and per is not None:
        price_label = f"per package of {grouped_text(per)}"
    else:
        price_label = _per_label(per, row.get("unit"))
    return {
        "shown_quantity": quantity,
        "shown_unit": row.get("unit") or "",
        "price_label": price_label,
        "metered": None,
    }


def _shown_adjustments(
    group: dict, account: Any, *, merge: bool = False, named: bool = False
) -> dict:
    """An adjustment section for invoice_v2: usage rows in the units of the usage table, and
    restated discount, minimum or tax rows by amount only, tax named with its rate. With
    `merge` (invoice_v4), usage rows of the same price are merged as on the usage table."""
    amount_only = {
        "shown_quantity": None,
        "shown_unit": "",
        "unit_price": None,
        "price_label": "",
        "metered": None,
    }
    treatment = field(account, "tax")
    name = treatment.name if treatment is not None else CONTRACT_LABELS["tax"]
    rows = []
    for row in _merged_adjustment_rows(group["rows"], named) if merge else group["rows"]:
        shown = {**row, "line_label": row.get("line_label") or str(row.get("line_no") or "")}
        if not row.get("meter_id"):
            shown |= amount_only
        elif "shown_quantity" not in row:  # merged rows are described already (per transaction)
            shown |= _display_units(row)
        if row.get("unit") == "tax" and row.get("unit_price") is not None:
            shown["description"] = f"{name} {grouped_text(Decimal(row['unit_price']))}%"
        rows.append(shown)
    return {**group, "rows": rows}


#: Template versions whose adjustment sections merge stored lines of the same price. Earlier
#: versions print every stored line (a price version that did not change the price included):
#: issued invoices re-render byte for byte (tests/test_template_versions.py).
MERGED_ADJUSTMENTS = frozenset({"invoice_v4", "invoice_v5"})


def _merged_adjustment_rows(rows: list[dict], named: bool = False) -> list[dict]:
    """Adjustment lines as the usage table shows its lines: per item (the description before
    its detail), lines of the same tier and price merged, detail (`prices from …`) only where
    the merged lines still differ in price. Restated discount, minimum and tax lines follow."""
    items: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("meter_id"):
            head = (row.get("description") or "").partition(DETAIL_SEP)[0]
            items.setdefault(head, []).append(row)
    merged = []
    for head, item_rows in items.items():
        for row in _describe_merged(_merge_same_price(item_rows, named)):
            detail = row["detail"]
            merged.append({**row, "description": head + (DETAIL_SEP + detail if detail else "")})
    return merged + [row for row in rows if not row.get("meter_id")]


def _in_human_units(meter_id: str | None, quantity: Decimal, unit: str) -> tuple[Decimal, str]:
    """A total quantity in the unit it is priced in (GPU seconds → GPU-hours, 4 places)."""
    for (meter, per), (_, units) in HUMAN_UNITS.items():
        if meter == meter_id:
            return (quantity / per).quantize(Decimal("0.0001"), ROUND_HALF_UP), units
    return quantity, unit


def _line_numbers(numbers: list[int | None]) -> str:
    """`3`, `3, 4`, `3–5`: the stored line numbers a merged line stands for."""
    known = sorted(n for n in numbers if n is not None)
    if len(known) > 2 and known == list(range(known[0], known[-1] + 1)):
        return f"{known[0]}–{known[-1]}"
    return ", ".join(str(n) for n in known)


def _tax(rows: list[dict], account: Any, issuer: dict) -> dict | None:
    """The tax block: rate and base from the stored tax line, wording from the account's
    treatment (pricing.tax), both parties' tax ids. None when the invoice carries no tax."""
    treatment = field(account, "tax")
    if not rows and treatment is None:
        return None
    line = rows[0] if rows else {}
    rate = line.get("unit_price")
    return {
        "label": line.get("description") or (treatment.label if treatment else "Tax"),
        "rate": None if rate is None else Decimal(rate),
        "base": None if line.get("quantity") is None else Decimal(line["quantity"]),
        "amount": _sum(rows),
        "code": getattr(treatment, "code", None),
        "note": getattr(treatment, "note", None),
        "seller_tax_id": issuer.get("tax_id"),
        "customer_tax_id": field(account, "tax_id"),
        "line_nos": [r.get("line_no") for r in rows],
    }


def _credit(rows: list[dict], account: Any, opening: GrantOpening) -> dict | None:
    """Prepaid credit: opening balance, applied here, closing balance (credit.balances gives
    the opening; the credit lines are the draw), in total and, for invoice_v3, per grant.
    None for an account without a grant."""
    if opening is None and not rows:
        return None
    applied = -_sum(rows)
    total = _opening_total(opening)
    return {
        "opening": total,
        "applied": applied,
        "closing": None if total is None else total - applied,
        "line_nos": [r.get("line_no") for r in rows],
        "grants": _grant_rows(rows, account, opening),
    }


def _opening_total(opening: GrantOpening) -> Decimal | None:
    """The box's opening balance: one grant's balance as stamped, or the Σ of several."""
    if opening is None or isinstance(opening, Decimal):
        return opening
    balances = list(opening.values())
    return balances[0] if len(balances) == 1 else sum(balances, ZERO)


def _grant_rows(rows: list[dict], account: Any, opening: GrantOpening) -> list[dict]:
    """One row per grant (id, expiry, opening, applied, closing) in burn order: the grants
    usable in the period, then any grant a credit line drew that `opening` does not list."""
    drawn: dict[str, Decimal] = {}
    for row in rows:
        grant_id = _grant_of(row)
        drawn[grant_id] = drawn.get(grant_id, ZERO) - Decimal(row["amount"])
    balances = dict(opening) if isinstance(opening, Mapping) else {}
    if isinstance(opening, Decimal):
        balances[PREPAID_GRANT] = opening
    expiry = {g.grant_id: g.expires for g in getattr(account, "grants", ())}
    out = []
    for grant_id in [*balances, *(g for g in drawn if g not in balances)]:
        before, used = balances.get(grant_id), drawn.get(grant_id, ZERO)
        expires = expiry.get(grant_id)
        out.append(
            {
                "grant_id": grant_id,
                "expires": None if expires is None else expires.date().isoformat(),
                "opening": before,
                "applied": used,
                "closing": None if before is None else before - used,
            }
        )
    return out


def _grant_of(row: dict) -> str:
    """The grant a `credit` line drew: its unit `credit_grant:<id>`, else prepaid credit."""
    unit = row.get("unit") or ""
    prefix = f"{GRANT_RATE}:"
    return unit[len(prefix) :] if unit.startswith(prefix) else PREPAID_GRANT


def summary_rows(
    kinds: dict[str, list[dict]],
    adjustments: list[dict],
    tax: dict | None,
    doc: dict,
    totals: dict,
) -> list[dict]:
    """The totals block of invoice_v2, top to bottom; every amount is a sum of stored lines,
    and the last row is the total of all of them (`_totals` checked it against the row)."""
    rows: list[dict] = []
    if not doc["is_credit_note"]:
        rows.append(_summary("Usage", _sum(kinds.get("usage", []))))
        for line in kinds.get("discount", []) + kinds.get("minimum", []):
            rows.append(_summary(line["description"], line["amount"], no=line.get("line_no")))
        rows.append(_summary(f"Net amount {doc['period_month']}", totals["period"], "sub"))
        if tax is not None and kinds.get("tax"):
            base = tax["base"] if tax["base"] is not None else totals["period"]
            rows.append(_summary(tax["label"], tax["amount"], no=tax["line_nos"][0], base=base))
    for group in adjustments:
        cites = f" ({', '.join(group['originals'])})" if group["originals"] else ""
        rows.append(_summary(f"Adjustments to {group['label']}{cites}", group["total"]))
    credit = kinds.get("credit", [])
    if doc["is_credit_note"]:
        rows.append(_summary("Total credited", totals["total"], "grand"))
        return rows
    if credit:
        rows.append(_summary("Total", totals["total"] - totals["credit"], "sub"))
        for line in credit:
            rows.append(_summary(line["description"], line["amount"], no=line.get("line_no")))
    rows.append(_summary("Amount due", totals["total"], "grand"))
    return rows


def _summary(
    label: str, amount: Decimal, cls: str = "", no: int | None = None, base: Decimal | None = None
) -> dict:
    return {"label": label, "amount": amount, "cls": cls, "no": no, "base": base}
