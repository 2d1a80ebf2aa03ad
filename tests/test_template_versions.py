"""Invariant: an issued invoice's template version keeps printing the same document.

`invoices.template_version` names the template an issued invoice was rendered with, and
`usagebox verify` re-renders it and compares `pdf_sha256` (CONTRACT §5.5). Editing an issued
version's template (even a Jinja block tag that eats a newline) silently breaks that for every
invoice already sent. This pins the HTML each issued version produces for one fixed invoice; the
charts are cut out (matplotlib draws them: a library upgrade, not our edit, would change them).
A new look is a new version (`invoice_v3` extends v2 through blocks that print nothing in v2;
`invoice_v5` is a template and stylesheet of its own, so no edit to v2–v4 can reach it).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.test_invoicing_fixtures import PERIOD, account, rated, sample_rated
from usagebox_pipelines.config import TEMPLATES_DIR
from usagebox_pipelines.documents import render_html
from usagebox_pipelines.invoicing import TEMPLATE_VERSION
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.invoicing.numbering import issue_documents
from usagebox_pipelines.invoicing.render import (
    PDF_STYLES,
    invoice_context,
    load_issuer,
)

#: sha256 of the HTML (charts cut out) of `fixed_invoice` per issued template version.
#: v1 and v2 were computed on main before invoice_v3 was added (3164d3a) and after: equal.
PINNED = {
    "invoice_v1": "7118b84d6052836d669d8c088babc724f51148cda232699f0e89a49cc91086b6",
    "invoice_v2": "6d29166e32a35dc1013505996bf7d2f49d1b0bf4fb9970b8e7ed1551aaf4ed8d",
    "invoice_v3": "261a27b4afd9019fa5b167cc4097f60cd99737f88a836f7dc51485fc130d51a7",
    # v4 changes only adjustment sections (this invoice has none): v3's HTML but the generator tag
    "invoice_v4": "ee6838aed95410bb8851e5a16110b0f7ba4ff8da6b80f584639c023963463bd0",
    # v5: v4's content in its own cheaper layout (invoice_v5.html.j2 and invoice_v5.css)
    "invoice_v5": "2a5ac8b8e8422c065fdad06c01c5cbbf76a42c2fc47d39494be1da32834c4b46",
}
#: Two grants open the period: v1/v2 print their total (400.00), v3 one row each.
OPENING = {"prepaid_credit": Decimal("300"), "promo": Decimal("100")}
_SVG = re.compile(r"<svg.*?</svg>", re.S)
_CHECKOUT = re.compile(r"file://[^\"]*?/package_data/")  # where this checkout happens to be


def fixed_invoice() -> tuple[dict, object, object]:
    acct = account(name="Acme", discount_pct=Decimal(5))
    rows = sample_rated() + [{"line_kind": "credit", "amount": "-250"}]
    invoices, lines = build_draft_invoices(rated(rows), [acct], PERIOD)
    issued_at = datetime(2026, 11, 2, tzinfo=UTC)
    invoices, lines = issue_documents(
        invoices, lines, last_seq=1, prefix="UBX", issued_at=issued_at
    )
    return invoices.row(0, named=True), lines, acct


@pytest.mark.parametrize("version", sorted(PINNED))
def test_an_issued_template_version_prints_what_it_printed(version: str) -> None:
    invoice, lines, acct = fixed_invoice()
    doc = {**invoice, "template_version": version}
    context = invoice_context(doc, lines, acct, load_issuer(), credit_opening=OPENING)
    html = _CHECKOUT.sub(
        "package_data/", _SVG.sub("<svg/>", render_html(f"{version}.html.j2", context))
    )
    assert hashlib.sha256(html.encode()).hexdigest() == PINNED[version], version
    if version in ("invoice_v3", "invoice_v4", "invoice_v5"):
        assert "promo" in html and "Credit grant" in html


#: sha256 of the stylesheets issued versions print with (v1: base + invoice; v2–v4: base +
#: invoice_v2; v5: invoice_v5 and its user-agent sheet): a stylesheet edit re-lays every
#: invoice already sent with it as surely as a template edit.
PINNED_CSS = {
    "base.css": "096ad5ae5091cb35e9e5c541c833b44aab1ecc0acf8cfc31a9e7557b22457fcb",
    "invoice.css": "a39ab04c290e570767202d769971c8d045ce7eda48db943329315907a250f86b",
    "invoice_v2.css": "03d11e9bdf66e6589e6dcb87f8357fdf2cf7891d97d04f1940e5fbe6681c69f5",
    "invoice_v5.css": "20db7342e46570d829859316df23d64528b56f4f1f1698c8133c2e476471b5e2",
    "invoice_v5_ua.css": "d7a637068e12f00cf3eacd47c38e6e7203fb4efe84c335475cd919916868ed0f",
}


@pytest.mark.parametrize("name", sorted(PINNED_CSS))
def test_an_issued_stylesheet_is_unchanged(name: str) -> None:
    digest = hashlib.sha256((TEMPLATES_DIR / name).read_bytes()).hexdigest()
    assert digest == PINNED_CSS[name], name


def test_the_current_version_is_pinned_and_renders_with_its_own_stylesheets() -> None:
    assert TEMPLATE_VERSION in PINNED
    style = PDF_STYLES[TEMPLATE_VERSION]
    for name in (*style.stylesheets, style.user_agent):
        assert name is None or name in PINNED_CSS
