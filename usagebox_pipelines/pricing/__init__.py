"""Pure pricing engine: pricebooks, accounts, rating, contract lines and repricing.

No I/O beyond reading the YAML config; Dagster assets and the CLI wire these functions to
Delta tables (see docs/adr/0002-pricing-engine.md for the semantics).
"""

from usagebox_pipelines.pricing.accounts import Account, Accounts, AccountsError, load_accounts
from usagebox_pipelines.pricing.money import MINOR_UNITS, round_decimal, round_money
from usagebox_pipelines.pricing.pricebook import (
    PricebookError,
    PricebookSet,
    PricebookVersion,
    Rate,
    load_pricebook_file,
    load_pricebooks,
)
from usagebox_pipelines.pricing.rating import RatingResult, rate_usage
from usagebox_pipelines.pricing.reprice import reprice_impact

__all__ = [
    "MINOR_UNITS",
    "Account",
    "Accounts",
    "AccountsError",
    "PricebookError",
    "PricebookSet",
    "PricebookVersion",
    "Rate",
    "RatingResult",
    "load_accounts",
    "load_pricebook_file",
    "load_pricebooks",
    "rate_usage",
    "reprice_impact",
    "round_decimal",
    "round_money",
]
