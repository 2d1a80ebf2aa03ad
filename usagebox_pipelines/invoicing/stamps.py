"""What issued documents stamp (pricebook fingerprints, credit, totals) and JSON text for
reports: pure, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal

import polars as pl

from usagebox_pipelines.decimals import plain, plain_row, plain_text  # noqa: F401 (re-exported)
from usagebox_pipelines.pricing.accounts import PREPAID_GRANT
from usagebox_pipelines.pricing.pricebook import (
    PricebookError,
    PricebookSet,
)


def recorded_fingerprints(invoices: pl.DataFrame) -> dict[str, str]:
    """Union of the `pricebook_versions` JSON stamped on issued invoices: {version key: sha}.

    Drafts carry a plain `a@v,b@w` list, not JSON; those (and empty stamps) are skipped.
    """
    out: dict[str, str] = {}
    for text in invoices.get_column("pricebook_versions").drop_nulls().to_list():
        try:
            stamp = json.loads(text)
        except ValueError:
            continue
        if isinstance(stamp, dict):
            out.update({str(k): str(v) for k, v in stamp.items()})
    return out


def credit_map(text: str | None) -> dict[str, dict[str, Decimal]] | None:
    """Parse a `period_closes.opening_credit` stamp: {account: {grant id: decimal string}}.
    Closes before credit grants stamped {account: decimal string}: that is the one grant
    `prepaid_credit` (ADR 0016), so their invoices rebuild exactly."""
    if text is None:
        return None
    out: dict[str, dict[str, Decimal]] = {}
    for account_id, value in json.loads(text).items():
        if isinstance(value, dict):
            out[account_id] = {g: Decimal(v) for g, v in value.items()}
        else:
            out[account_id] = {PREPAID_GRANT: Decimal(value)}
    return out


def credit_stamp(opening: Mapping[str, Mapping[str, Decimal]]) -> str:
    """The `opening_credit` stamp of per-grant balances (`credit_map` reads it back)."""
    return dump_json({a: {g: str(v) for g, v in own.items()} for a, own in opening.items()})


def dump_json(value: object) -> str:
    """Compact, key-sorted JSON: the same value always stamps the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def json_or_none(text: str | None) -> object:
    """A stored JSON stamp parsed for output (non-JSON text is returned as is)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def frozen_problems(books: PricebookSet, issued: pl.DataFrame) -> list[str]:
    """A pricebook version edited (or removed) after it issued an invoice blocks every close."""
    try:
        books.check_frozen(recorded_fingerprints(issued))
    except PricebookError as exc:
        return [str(exc)]
    return []
