"""`usagebox guardrails`: export the enforcement policy (JSON) or show one account's state.

Thin typer commands over `guardrails.stages`; mounted by cli.py with
`app.add_typer(guardrails_app, name="guardrails")`. Both read what the pipeline stored
(spend_state, guardrail_decisions); `--refresh` first re-evaluates the month at the current
time (the same stage the monthly Dagster partition runs).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from usagebox_pipelines.cli_options import Home, Pricebooks, open_home, parse_month
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.storage import DeltaStore

guardrails_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Spend guardrails: enforcement policy export and per-account status.",
)

Month = Annotated[
    str | None,
    typer.Option("--month", help="Month YYYY-MM (default: the newest in spend_state)."),
]
Refresh = Annotated[
    bool,
    typer.Option("--refresh", help="Re-evaluate the month now before reading (records decisions)."),
]


def _store_and_month(
    home: str | None, pricebooks: str | None, month: str | None, refresh: bool
) -> tuple[Settings, DeltaStore, str | None]:
    from usagebox_pipelines.stages.guardrails import refresh_guardrails

    if month is not None:
        parse_month(month)
    settings, store = open_home(home, pricebooks)
    if refresh:
        month = month or datetime.now(UTC).strftime("%Y-%m")
        refresh_guardrails(store, settings.pricebooks, month, datetime.now(UTC), "cli-guardrails")
    return settings, store, month


@guardrails_app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Where to write the policy JSON.")],
    month: Month = None,
    refresh: Refresh = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Write the current enforcement state (account → status, headroom, hard stop) as JSON."""
    from usagebox_pipelines.stages.guardrails import current_policy

    _, store, month = _store_and_month(home, pricebooks, month, refresh)
    policy = current_policy(store, month)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(policy, indent=2, sort_keys=False) + "\n")
    except OSError as exc:
        raise UsageboxError(f"--out {out}: cannot write ({exc.strerror})") from None
    accounts = policy["accounts"].values()
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "period": policy["period"],
                "as_of": policy["as_of"],
                "accounts": len(policy["accounts"]),
                "hard_stop": sorted(a for a, v in policy["accounts"].items() if v["hard_stop"]),
                "not_ok": sum(1 for v in accounts if v["status"] != "ok"),
            }
        )
    )


@guardrails_app.command()
def status(
    account: Annotated[str, typer.Argument(help="Account id.")],
    month: Month = None,
    refresh: Refresh = False,
    home: Home = None,
    pricebooks: Pricebooks = None,
) -> None:
    """Print one account's guardrail state for a person."""
    from usagebox_pipelines.guardrails.export import status_text
    from usagebox_pipelines.pricing import load_accounts
    from usagebox_pipelines.stages.guardrails import current_policy, read_decisions

    settings, store, month = _store_and_month(home, pricebooks, month, refresh)
    policy = current_policy(store, month)
    if account not in policy["accounts"]:
        raise UsageboxError(
            f"account {account!r} has no guardrail state in {policy['period']} "
            "(no budget and no usage that month)"
        )
    name = load_accounts(settings.pricebooks).get(account).name
    decisions = read_decisions(store, policy["period"])
    typer.echo(status_text(policy, account, decisions, name))
