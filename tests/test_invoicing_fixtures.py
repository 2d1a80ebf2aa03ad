"""Shared builders for the invoicing tests (no tests here): rated rows, an independent rater.

The rater here is deliberately separate from pricing/: adjustments are checked against an
independent recomputation (graduated tiers over the month's cumulative quantity, Decimal only).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import polars as pl

from usagebox_pipelines.pricing.accounts import Account
from usagebox_pipelines.schemas import RATED_USAGE, conform

D = Decimal
PERIOD = "2026-10"
NEXT = "2026-11"


def account(account_id: str = "acct-001", **overrides) -> Account:
    """A resolved pricing.accounts.Account with invoice-relevant fields filled in."""
    base = {
        "account_id": account_id,
        "name": "Acme Robotics GmbH",
        "currency": "USD",
        "pricebook": "standard",
        "payment_terms_days": 30,
        "email": "billing@acme.example",
        "address": ("Hafenstraße 12", "20457 Hamburg", "Germany"),
        "tax_id": "DE123456789",
    }
    return Account(**{**base, **overrides})


def rated(rows: list[dict]) -> pl.DataFrame:
    """RATED_USAGE frame from partial dicts (defaults fill the rest)."""
    base = {
        "period": PERIOD,
        "account_id": "acct-001",
        "line_kind": "usage",
        "dimensions": "{}",
        "pricebook": "standard",
        "price_version": "2025-01-01",
        "price_model": "per_unit",
        "per": D(1),
        "currency": "USD",
    }
    full = [{**base, **r} for r in rows]
    for r in full:
        for k in ("quantity", "per", "unit_price", "amount"):
            if r.get(k) is not None:
                r[k] = D(str(r[k]))
    df = pl.DataFrame(full, infer_schema_length=None)
    return conform(df, RATED_USAGE)


# graduated tiers for output_tokens of one model: up_to (exclusive bound) and price per 1M
TIERS = [(D(100_000_000), D("8.00")), (None, D("6.00"))]
PER = D(1_000_000)


def tier_split(total: Decimal) -> list[tuple[int, Decimal]]:
    """Quantity per tier (1-based) of a month's cumulative `total` under TIERS."""
    out, lower = [], D(0)
    for i, (up_to, _) in enumerate(TIERS, start=1):
        top = total if up_to is None else min(total, up_to)
        if top > lower:
            out.append((i, top - lower))
        if up_to is None or total <= up_to:
            break
        lower = up_to
    return out


def rate_output_tokens(
    total: Decimal, account_id: str = "acct-001", model: str = "gpt-4.1"
) -> list[dict]:
    """Rated rows (one per tier) for `total` output tokens of `model` in PERIOD."""
    rows = []
    for tier, qty in tier_split(total):
        price = TIERS[tier - 1][1]
        rows.append(
            {
                "account_id": account_id,
                "meter_id": "output_tokens",
                "model_id": model,
                "rate_id": f"standard@2025-01-01#{model}/output",
                "price_model": "graduated",
                "tier": tier,
                "quantity": qty,
                "per": PER,
                "unit_price": price,
                "amount": qty * price / PER,
            }
        )
    return rows


def half_up(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def sample_rated(account_id: str = "acct-001") -> list[dict]:
    """A realistic month: two models, a price change, tiers, GPUs by type, tools, discount."""
    rows = rate_output_tokens(D(130_000_000), account_id)
    rows += [
        {
            "account_id": account_id,
            "meter_id": "input_tokens",
            "model_id": "gpt-4.1",
            "rate_id": "r-in-41",
            "dimensions": '{"feature":"chat"}',
            "quantity": 41_000_000,
            "per": PER,
            "unit_price": "2.00",
            "amount": "82.000000000000",
        },
        {
            "account_id": account_id,
            "meter_id": "input_tokens",
            "model_id": "gpt-4.1",
            "rate_id": "r-in-41",
            "dimensions": '{"feature":"search"}',
            "quantity": 1_234_567,
            "per": PER,
            "unit_price": "2.00",
            "amount": "2.469134000000",
        },
        {
            "account_id": account_id,
            "meter_id": "input_tokens",
            "model_id": "claude-sonnet-4-5",
            "rate_id": "r-in-s45-a",
            "quantity": 9_000_000,
            "per": PER,
            "unit_price": "3.00",
            "amount": "27.000000000000",
        },
        {
            "account_id": account_id,
            "meter_id": "input_tokens",
            "model_id": "claude-sonnet-4-5",
            "rate_id": "r-in-s45-b",
            "price_version": "2026-10-16",
            "quantity": 7_500_000,
            "per": PER,
            "unit_price": "2.50",
            "amount": "18.750000000000",
        },
        {
            "account_id": account_id,
            "meter_id": "gpu_seconds",
            "rate_id": "r-gpu-h100",
            "dimensions": '{"gpu":"h100"}',
            "quantity": 36_125,
            "per": 3600,
            "unit_price": "2.49",
            "amount": "24.986458333333",
        },
        {
            "account_id": account_id,
            "meter_id": "gpu_seconds",
            "rate_id": "r-gpu-a100",
            "dimensions": '{"gpu":"a100"}',
            "quantity": 7_200,
            "per": 3600,
            "unit_price": "1.10",
            "amount": "2.200000000000",
        },
        {
            "account_id": account_id,
            "meter_id": "tool_calls",
            "rate_id": "r-tools",
            "price_model": "package",
            "dimensions": '{"tool":"web_search"}',
            "quantity": 1_500,
            "per": 1000,
            "unit_price": "1.00",
            "amount": "2.000000000000",
        },
        {"account_id": account_id, "line_kind": "discount", "amount": "-50.005000000000"},
    ]
    return rows
