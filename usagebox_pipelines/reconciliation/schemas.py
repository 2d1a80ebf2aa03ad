"""Column schemas of the reconciliation tables (vendor bills, review list, reconciliation, margin).

Same conventions as `usagebox_pipelines.schemas`: quantities and exact money Decimal(38, 12),
UTC microsecond timestamps, `date` is the UTC calendar day of the vendor's bucket.
"""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.schemas import MONEY, QTY, TS

# Vendor names accepted by the loaders (and `usagebox reconcile --vendor`).
VENDORS = ("openai", "anthropic", "focus")

# Charge classes kept apart in `vendor_costs`: only `usage` is compared with metering.
CHARGE_CLASSES = ("usage", "credit", "tax", "correction", "adjustment", "purchase")

# `source_kind`: what a row came from. `costs` rows carry money, `usage` rows carry quantities,
# `focus` rows carry both (BilledCost and ConsumedQuantity on the same line).
SOURCE_KINDS = ("costs", "usage", "focus")

# One row per vendor bill/usage line, normalized to our model_id × meter_id.
# RESTATEMENT_KEY is the restatement unit: a newer export of the same day and the same scope
# (`vendor_scope`: the vendor's project / workspace / account columns) replaces all its rows; an
# export of another scope adds to them. `line_id` identifies one vendor line by what it says
# (scope, every descriptive column, its occurrence in the file), never by the file's bytes.
VENDOR_COSTS = pl.Schema(
    {
        "vendor": pl.String(),
        "provider": pl.String(),
        "source_kind": pl.String(),
        "billing_period": pl.String(),
        "date": pl.Date(),
        "model_id": pl.String(),
        "meter_id": pl.String(),
        "quantity": QTY,
        "amount": MONEY,
        "currency": pl.String(),
        "charge_class": pl.String(),
        "service_tier": pl.String(),
        "context_window": pl.String(),
        "vendor_model": pl.String(),
        "vendor_line_item": pl.String(),
        "vendor_scope": pl.String(),
        "line_id": pl.String(),
        "source_file": pl.String(),
        "source_row": pl.Int64(),
        "export_sha256": pl.String(),
        "exported_at": TS,
        "loaded_at": TS,
        "mapping_version": pl.String(),
    }
)

RESTATEMENT_KEY = ["vendor", "provider", "source_kind", "billing_period", "date", "vendor_scope"]

# Rows a newer export replaced: the old row as it was, plus what replaced it and when.
# `from_table` says where the row stood (vendor_costs, vendor_review or vendor_ignored);
# `reason` is the review reason of a superseded review line.
VENDOR_COST_CHANGES = pl.Schema(
    {
        **VENDOR_COSTS,
        "from_table": pl.String(),
        "reason": pl.String(),
        "superseded_at": TS,
        "superseded_by_sha256": pl.String(),
        "superseded_by_file": pl.String(),
    }
)

# Vendor lines the mapping does not cover: kept with the raw line and an actionable reason.
# Restated like vendor_costs (same unit, same line identity), so a re-pull never doubles them.
VENDOR_REVIEW = pl.Schema(
    {
        "vendor": pl.String(),
        "provider": pl.String(),
        "source_kind": pl.String(),
        "billing_period": pl.String(),
        "date": pl.Date(),
        "vendor_model": pl.String(),
        "vendor_line_item": pl.String(),
        "quantity": QTY,
        "amount": MONEY,
        "currency": pl.String(),
        "charge_class": pl.String(),
        "service_tier": pl.String(),
        "context_window": pl.String(),
        "vendor_scope": pl.String(),
        "line_id": pl.String(),
        "reason": pl.String(),
        "payload": pl.String(),
        "source_file": pl.String(),
        "source_row": pl.Int64(),
        "export_sha256": pl.String(),
        "exported_at": TS,
        "loaded_at": TS,
        "mapping_version": pl.String(),
    }
)

# Vendor lines with zero cost and zero quantity that no meter maps: nothing to bill or
# review, but counted (and restated) so every input line ends in exactly one table.
VENDOR_IGNORED = VENDOR_REVIEW
IGNORED_REASON = "ignored: zero cost and quantity"

# Our metered usage per vendor grain (all usage, billable or not: the vendor served it all).
METERED_DAILY = pl.Schema(
    {
        "vendor": pl.String(),
        "date": pl.Date(),
        "model_id": pl.String(),
        "meter_id": pl.String(),
        "quantity": QTY,
    }
)

# Statuses of `usage` rows; other rows carry their charge class as status.
RECON_STATUSES = (
    "matched",
    "under_metered",
    "over_metered",
    "rate_mismatch",
    "vendor_only",
    "meter_only",
)

# vendor × UTC day × model × meter (× charge_class). Variances are vendor minus ours:
# positive quantity_variance = the vendor saw more than we metered (unbilled usage).
RECONCILIATION = pl.Schema(
    {
        "period": pl.String(),
        "vendor": pl.String(),
        "date": pl.Date(),
        "model_id": pl.String(),
        "meter_id": pl.String(),
        "charge_class": pl.String(),
        "status": pl.String(),
        "metered_quantity": QTY,
        "vendor_quantity": QTY,
        "vendor_quantity_source": pl.String(),
        "quantity_variance": QTY,
        "quantity_variance_pct": QTY,
        "unit_price": MONEY,
        "rate_per": QTY,
        "rate_effective_from": pl.Date(),
        "expected_amount": MONEY,
        "vendor_list_amount": MONEY,
        "billed_amount": MONEY,
        "amount_variance": MONEY,
        "amount_variance_pct": QTY,
        "currency": pl.String(),
        "note": pl.String(),
        "qty_tolerance_pct": QTY,
        "amount_tolerance": MONEY,
        "amount_tolerance_pct": QTY,
        "mapping_version": pl.String(),
    }
)

# Vendor cost allocated to metered usage at the finest grain (vendor × day × model × meter ×
# account × feature × agent). Rows with a null account are cost no customer metered.
COST_ALLOCATIONS = pl.Schema(
    {
        "vendor": pl.String(),
        "date": pl.Date(),
        "model_id": pl.String(),
        "meter_id": pl.String(),
        "account_id": pl.String(),
        "feature": pl.String(),
        "agent_id": pl.String(),
        "weight": QTY,
        "allocated_cost": MONEY,
        "currency": pl.String(),
    }
)

# account × model × month (× feature × agent_id where events carry them). `row_kind`:
# account | unattributed (vendor usage no customer metered) | vendor_adjustment (credits, tax,
# corrections: not allocated to customers). margin_pct = margin / revenue × 100.
COST_ATTRIBUTION = pl.Schema(
    {
        "month": pl.String(),
        "account_id": pl.String(),
        "row_kind": pl.String(),
        "charge_class": pl.String(),
        "model_id": pl.String(),
        "feature": pl.String(),
        "agent_id": pl.String(),
        "revenue": MONEY,
        "revenue_currency": pl.String(),
        "allocated_cost": MONEY,
        "cost_currency": pl.String(),
        "margin": MONEY,
        "margin_pct": QTY,
        "note": pl.String(),
    }
)

UNATTRIBUTED = "unattributed"
VENDOR_ADJUSTMENTS = "vendor_adjustments"
