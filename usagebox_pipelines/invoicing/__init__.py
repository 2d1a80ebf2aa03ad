"""Invoicing: draft invoices from rated usage, adjustments for closed months, numbering, PDFs.

Pure logic over Polars frames (no Delta I/O): `lines` builds drafts, `adjustments` restates closed
periods as signed adjustment lines, `numbering` assigns gapless numbers at issue, `render` makes
deterministic PDFs, `register` writes the finance CSV. See docs/adr/0003-invoices-*.md.
"""

#: Template stored on every invoice (`invoices.template_version`) so it re-renders identically.
TEMPLATE_VERSION = "invoice_v5"
