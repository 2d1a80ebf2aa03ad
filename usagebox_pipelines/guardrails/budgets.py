"""Budgets, caps and allocations down the account hierarchy (`pricebooks/accounts.yaml`).

`pricing.accounts` already parses and validates each `budget:` block (monthly, soft_pct,
hard_pct, caps, enforcement) and the `parent` links. This module turns them into *limits*:
one `budget` limit per account that states a budget, one per cap, each measured over the
account's whole subtree (an org's budget covers its teams; a team's budget is its allocation
from the org). It re-checks the hierarchy (an `Accounts` built in code skips the YAML checks)
and adds the rule YAML cannot express alone: a child's allocation never exceeds its nearest
budgeted ancestor's budget, and a cap never exceeds its own account's budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import cached_property

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.pricing.accounts import Account, Accounts, BudgetCap

_HUNDRED = Decimal(100)
BUDGET = "budget"
CAP = "cap"


class BudgetError(UsageboxError):
    """An inconsistent budget or hierarchy (named with file, account and field)."""


@dataclass(frozen=True)
class Limit:
    """One money limit on an account's subtree: its budget, or one cap of that budget.

    `monthly` is None for an account without a budget: it still gets a row (spend, burn and
    its ancestors' remainder) but never alerts on its own.
    """

    account_id: str
    scope: str
    monthly: Decimal | None
    soft_pct: Decimal = Decimal(80)
    hard_pct: Decimal = Decimal(100)
    enforcement: str = "SOFT"
    meter_id: str | None = None
    model_id: str | None = None

    @property
    def limit_id(self) -> str:
        """`budget`, or `cap:<meter|*>:<model|*>`: stable, so decisions can be keyed on it."""
        if self.scope == BUDGET:
            return BUDGET
        return f"{CAP}:{self.meter_id or '*'}:{self.model_id or '*'}"

    @property
    def key(self) -> str:
        return f"{self.account_id}|{self.limit_id}"

    @property
    def soft_threshold(self) -> Decimal | None:
        return _pct_of(self.monthly, self.soft_pct)

    @property
    def hard_threshold(self) -> Decimal | None:
        return _pct_of(self.monthly, self.hard_pct)

    @property
    def hard_status(self) -> str:
        """What reaching the hard threshold means here: stop (HARD) or only alert (SOFT)."""
        return "hard_stop" if self.enforcement == "HARD" else "hard_alert"


def _pct_of(amount: Decimal | None, pct: Decimal) -> Decimal | None:
    """amount × pct / 100, exact (both have at most 12 places, so 80 digits always suffice)."""
    if amount is None:
        return None
    with localcontext() as ctx:
        ctx.prec = 80
        return amount * pct / _HUNDRED


@dataclass(frozen=True)
class BudgetTree:
    """The hierarchy of the accounts that matter this month, with their limits."""

    accounts: Accounts
    ids: tuple[str, ...]

    @cached_property
    def _children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for account_id in self.ids:
            parent = self.accounts.get(account_id).parent
            if parent is not None:
                out.setdefault(parent, []).append(account_id)
        return out

    def parent(self, account_id: str) -> str | None:
        return self.accounts.get(account_id).parent

    def ancestors(self, account_id: str) -> list[str]:
        return self.accounts.ancestors(account_id)

    def level(self, account_id: str) -> int:
        """0 for an org (root), 1 for its teams, 2 for their users, ..."""
        return len(self.ancestors(account_id))

    def root(self, account_id: str) -> str:
        return self.accounts.root(account_id)

    def subtree(self, account_id: str) -> list[str]:
        """The account and every descendant, sorted (what its budget is measured over)."""
        out, todo = [], [account_id]
        while todo:
            current = todo.pop()
            out.append(current)
            todo.extend(self._children.get(current, []))
        return sorted(out)

    def top_down(self) -> list[str]:
        """Ids ordered so that every parent comes before its children."""
        return sorted(self.ids, key=lambda a: (self.level(a), a))

    @cached_property
    def limits(self) -> tuple[Limit, ...]:
        """The budget limit of every account (None budget when unstated), then every cap."""
        out: list[Limit] = []
        for account_id in self.top_down():
            budget = self.accounts.get(account_id).budget
            if budget is None:
                out.append(Limit(account_id, BUDGET, None))
                continue
            common = {
                "soft_pct": budget.soft_pct,
                "hard_pct": budget.hard_pct,
                "enforcement": budget.enforcement,
            }
            out.append(Limit(account_id, BUDGET, budget.monthly, **common))
            out.extend(_cap_limit(account_id, cap, common) for cap in budget.caps)
        return tuple(out)

    def limit(self, account_id: str, limit_id: str = BUDGET) -> Limit:
        for lim in self.limits:
            if lim.account_id == account_id and lim.limit_id == limit_id:
                return lim
        raise KeyError(f"{account_id}|{limit_id}")

    def membership(self) -> pl.DataFrame:
        """(limit_key, account_id = member, scope, cap_meter, cap_model): the limits' subtrees."""
        rows = [
            (lim.key, member, lim.scope, lim.meter_id, lim.model_id)
            for lim in self.limits
            for member in self.subtree(lim.account_id)
        ]
        schema = {
            "limit_key": pl.String,
            "account_id": pl.String,
            "scope": pl.String,
            "cap_meter": pl.String,
            "cap_model": pl.String,
        }
        return pl.DataFrame(rows, schema=schema, orient="row")


def _cap_limit(account_id: str, cap: BudgetCap, common: dict) -> Limit:
    return Limit(
        account_id, CAP, cap.monthly, meter_id=cap.meter_id, model_id=cap.model_id, **common
    )


def build_budget_tree(accounts: Accounts, active_ids: Iterable[str] = ()) -> BudgetTree:
    """Validate the hierarchy and budgets; the tree covers listed accounts plus `active_ids`.

    `active_ids` are accounts with usage this month that the file may not list (they get the
    defaults and no budget, but still a spend row).
    """
    check_hierarchy(accounts)
    check_allocations(accounts)
    return budget_tree(accounts, set(accounts.ids()) | set(active_ids))


def budget_tree(accounts: Accounts, ids: Iterable[str]) -> BudgetTree:
    """The tree of exactly `ids` (whole hierarchies: a shard of the month), once the file's
    hierarchy and allocations were checked (`check_hierarchy`, `check_allocations`)."""
    return BudgetTree(accounts, tuple(sorted(set(ids))))


def _where(accounts: Accounts, account_id: str, key: str) -> str:
    file = str(accounts.file) if accounts.file is not None else "accounts"
    return f"{file}: accounts.{account_id}.{key}"


def check_hierarchy(accounts: Accounts) -> None:
    """Every parent is listed and following parents never loops (clear errors, not recursion)."""
    for account_id in accounts.ids():
        seen = [account_id]
        parent = accounts.listed[account_id].parent
        while parent is not None:
            if parent not in accounts.listed:
                raise BudgetError(
                    f"{_where(accounts, seen[-1], 'parent')}: unknown parent account {parent!r}"
                )
            if parent in seen:
                cycle = " -> ".join([*seen, parent])
                raise BudgetError(
                    f"{_where(accounts, account_id, 'parent')}: cycle in parent chain: {cycle}"
                )
            seen.append(parent)
            parent = accounts.listed[parent].parent


def check_allocations(accounts: Accounts) -> None:
    """A child's budget fits in its nearest budgeted ancestor's; caps fit in their budget."""
    for account_id in accounts.ids():
        account = accounts.listed[account_id]
        if account.budget is None:
            continue
        _check_caps(accounts, account)
        above = _budgeted_ancestor(accounts, account_id)
        if above is None:
            continue
        theirs = above.budget.monthly if above.budget else None
        if theirs is not None and account.budget.monthly > theirs:
            raise BudgetError(
                f"{_where(accounts, account_id, 'budget.monthly')}: allocation "
                f"{account.budget.monthly} exceeds the budget of its parent "
                f"{above.account_id} ({theirs}); a child can never exceed its parent"
            )


def _check_caps(accounts: Accounts, account: Account) -> None:
    budget = account.budget
    assert budget is not None
    for i, cap in enumerate(budget.caps):
        if cap.monthly > budget.monthly:
            raise BudgetError(
                f"{_where(accounts, account.account_id, f'budget.caps[{i}].monthly')}: cap "
                f"{cap.monthly} exceeds the account's monthly budget {budget.monthly}"
            )


def _budgeted_ancestor(accounts: Accounts, account_id: str) -> Account | None:
    for ancestor in accounts.ancestors(account_id):
        found = accounts.get(ancestor)
        if found.budget is not None:
            return found
    return None
