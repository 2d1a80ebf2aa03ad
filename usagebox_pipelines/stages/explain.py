"""`usagebox explain`: the audit trail of an issued document, per line."""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from usagebox_pipelines.catalog import (
    EVENTS,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing.arithmetic import (
    family_arithmetic,
    line_arithmetic,
    markup_arithmetic,
    rate_rule,
    sum_kind,
)
from usagebox_pipelines.invoicing.lines import (
    is_waiver,
)
from usagebox_pipelines.invoicing.stamps import (
    credit_map,
    json_or_none,
    plain,
    plain_row,
)
from usagebox_pipelines.pricing.accounts import PREPAID_GRANT, Account
from usagebox_pipelines.pricing.contract import (
    COUPON_RATE,
    GRANT_RATE,
    SPEND_CAP_RATE,
    WAIVER_RATE,
    grant_balances,
)
from usagebox_pipelines.pricing.pricebook import Rate
from usagebox_pipelines.pricing.rating import rate_events
from usagebox_pipelines.stages.per_event import month_events
from usagebox_pipelines.stages.reproduce import (
    IssuedDocument,
    load_issued,
    rate_as_issued,
)
from usagebox_pipelines.stages.results import InvoiceExplanation
from usagebox_pipelines.storage import DeltaStore

#: Event ids listed per explained line at most (the count is always exact).
EVENT_LIMIT = 10_000
_ZERO = Decimal(0)


def explain_invoice(
    store: DeltaStore,
    settings: Settings,
    invoice_number: str,
    line_no: int | None = None,
    with_events: bool = False,
) -> InvoiceExplanation:
    """The audit trail of an issued document, per line.

    Usage lines: the pricebook file, version and rate rule with the tier arithmetic, and the
    hourly rollup rows behind the line (rebuilt from `events` at the stamped version); with
    `with_events`, the event ids. Contract lines: the account term and its arithmetic.
    Adjustment lines: the late events of the adjusted month that arrived since the previous
    close. Unknown numbers or lines raise UsageboxError.
    """
    doc = load_issued(store, settings, invoice_number)
    lines = doc.lines
    if line_no is not None:
        lines = lines.filter(pl.col("line_no") == line_no)
        if lines.height == 0:
            raise UsageboxError(
                f"invoice {invoice_number} has no line {line_no} (lines 1..{doc.lines.height})"
            )
    hourly, rated = rate_as_issued(store, doc)
    events = store.scan(EVENTS, version=doc.version)
    transactions = _Transactions(store, doc)
    explained = [
        _explain_line(store, doc, line, hourly, rated, events, with_events, transactions)
        for line in lines.iter_rows(named=True)
    ]
    inv_row = doc.invoice
    return InvoiceExplanation(
        invoice_number=invoice_number,
        document_type=inv_row["document_type"],
        account_id=inv_row["account_id"],
        period=doc.period,
        currency=inv_row["currency"],
        subtotal=str(inv_row["subtotal"]),
        total=str(inv_row["total"]),
        issued_at=inv_row["issued_at"].isoformat(),
        events_table_version=doc.version,
        pricebook_versions=json_or_none(inv_row["pricebook_versions"]),
        code_version=inv_row["code_version"],
        template_version=inv_row["template_version"],
        lines=explained,
        period_window=period_window(doc.account, doc.period),
    )


def period_window(account: Account, period: str) -> dict | None:
    """Which UTC hours the account's month covers, when it bills in a time zone (None: the
    UTC month, as every invoice before zones)."""
    if account.time_zone is None:
        return None
    window = account.period(period)
    start, end = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (window.start, window.end))
    return {
        "time_zone": account.time_zone,
        "from": start,
        "to": end,
        "note": f"{period} in {account.time_zone}: local midnight of the 1st to local "
        f"midnight of the next 1st, the UTC hours [{start}, {end})",
    }


def _explain_line(
    store: DeltaStore,
    doc: IssuedDocument,
    line: dict,
    hourly: pl.DataFrame,
    rated: pl.DataFrame,
    events: pl.LazyFrame,
    with_events: bool,
    transactions: _Transactions,
) -> dict:
    base = {
        k: plain(line[k])
        for k in (
            "line_no",
            "kind",
            "description",
            "meter_id",
            "model_id",
            "quantity",
            "unit",
            "unit_price",
            "per",
            "amount",
            "exact_amount",
            "price_version",
            "tier",
            "adjusts_period",
        )
    }
    kind = line["kind"]
    if kind == "usage":
        return base | _explain_usage(doc, line, hourly, rated, events, with_events, transactions)
    if kind == "adjustment":
        return base | _explain_adjustment(store, doc, line, events)
    return base | _explain_contract(doc, line)


def _line_rated_rows(line: dict, rated: pl.DataFrame) -> pl.DataFrame:
    """The rated rows a usage line sums (dimensions that do not change the price summed away)."""
    cond = (
        (pl.col("line_kind") == "usage")
        & (pl.col("meter_id") == line["meter_id"])
        & pl.col("model_id").eq_missing(line["model_id"])
        & pl.col("price_version").eq_missing(line["price_version"])
        & pl.col("tier").eq_missing(line["tier"])
        & pl.col("unit_price").eq_missing(line["unit_price"])
    )
    if line["per"] is not None:
        cond &= pl.col("per") == line["per"]
    return rated.filter(cond)


def _explain_usage(
    doc: IssuedDocument,
    line: dict,
    hourly: pl.DataFrame,
    rated: pl.DataFrame,
    events: pl.LazyFrame,
    with_events: bool,
    transactions: _Transactions,
) -> dict:
    rows = _line_rated_rows(line, rated)
    if rows.height == 0:
        return {"rule": None, "detail": "no rated usage at the stamped version matches this line"}
    first = rows.row(0, named=True)
    version = doc.books.get(f"{first['pricebook']}@{first['price_version']}")
    rate = next(r for r in version.rates if r.rate_id == first["rate_id"])
    family = rated.filter(
        (pl.col("line_kind") == "usage")
        & (pl.col("meter_id") == line["meter_id"])
        & pl.col("model_id").eq_missing(line["model_id"])
        & (pl.col("rate_id") == rate.rate_id)
    )
    behind = _rollup_behind(rows, hourly, rate)
    out = {
        "rule": rate_rule(version, rate),
        "arithmetic": family_arithmetic(family, rate, line),
        "line_arithmetic": line_arithmetic(line),
        "rollup": {
            "rows": [plain_row(r) for r in behind.sort("hour", "dimensions").iter_rows(named=True)],
            "sum": plain(behind["sum"].sum() if behind.height else _ZERO),
            "events": int(behind["count"].sum() or 0),
            "note": _rollup_note(rate),
        },
    }
    if rate.per_event:
        out["per_event"] = transactions.summary(line, rate.rate_id)
        out["line_arithmetic"] = (
            f"sum of the line's part of each transaction's charge = "
            f"{plain(line['exact_amount'])} → {line['amount']}"
        )
    markup = markup_arithmetic(rate, line, first["price_model"])
    if markup is not None:
        out["markup"] = markup
    if with_events:
        out["events"] = _events_behind(events, doc.invoice["account_id"], line, behind)
    return out


class _Transactions:
    """The document's per-event transactions (pricing.per_event), priced once on first use
    from its account's `events` at the stamped version."""

    def __init__(self, store: DeltaStore, doc: IssuedDocument) -> None:
        self._store, self._doc = store, doc
        self._frame: pl.DataFrame | None = None

    def frame(self) -> pl.DataFrame:
        if self._frame is None:
            doc, account_id = self._doc, self._doc.invoice["account_id"]
            events = month_events(
                self._store,
                doc.period,
                doc.books,
                doc.accounts,
                version=doc.version,
                account_id=account_id,
            )
            result = rate_events(events.collect(), doc.period, doc.books, doc.accounts)
            self._frame = result.transactions.filter(pl.col("account_id") == account_id)
        return self._frame

    def summary(self, line: dict, rate_id: str) -> dict:
        """How the line's rate priced its transactions: counts by outcome, the clamped ones
        named, and the first transactions (id, amount, charge, status)."""
        rows = self.frame().filter(
            (pl.col("meter_id") == line["meter_id"])
            & pl.col("model_id").eq_missing(line["model_id"])
            & pl.col("price_version").eq_missing(line["price_version"])
            & (pl.col("rate_id") == rate_id)
        )
        counts = dict(rows.group_by("status").len().iter_rows())
        return {
            "transactions": rows.height,
            "charged": counts.get("charged", 0),
            "clamped_to_minimum": counts.get("minimum", 0),
            "clamped_to_maximum": counts.get("maximum", 0),
            "free_events": counts.get("free_event", 0),
            "free_units": counts.get("free_units", 0),
            "void": counts.get("void", 0),
            "total_charge": plain(rows["charge"].sum() if rows.height else _ZERO),
            "note": "each transaction is an original event with its corrections netted in; "
            "charge = rate% × amount + fixed_amount, clamped to [min, max]; the first "
            "free_units_per_events transactions of the month, then free_units of amount, "
            "are free",
            "first": [
                plain_row(r)
                for r in rows.head(EVENT_LIMIT // 100)
                .select("event_id", "timestamp", "events", "amount", "charge", "status")
                .iter_rows(named=True)
            ],
        }


def _rollup_behind(rows: pl.DataFrame, hourly: pl.DataFrame, rate: Rate) -> pl.DataFrame:
    """Billable hourly rows of the line's dimensions inside each rated row's hour span (a
    dynamic rate's rows carry its dimension filter, the hourly rows each event's amount too:
    those match on the filter's keys)."""
    parts = []
    for r in rows.iter_rows(named=True):
        if rate.price_model == "dynamic":
            dims = pl.lit(True)
            for key, value in rate.dimensions:
                dims &= pl.col("dimensions").str.json_path_match(f"$['{key}']") == value
        else:
            dims = pl.col("dimensions").fill_null("{}") == (r["dimensions"] or "{}")
        parts.append(
            hourly.filter(
                (pl.col("meter_id") == r["meter_id"])
                & pl.col("model_id").eq_missing(r["model_id"])
                & dims
                & pl.col("billable").fill_null(False)
                & pl.col("hour").is_between(r["first_hour"], r["last_hour"])
            )
        )
    return pl.concat(parts).unique(maintain_order=True) if parts else hourly.clear()


def _rollup_note(rate: Rate) -> str | None:
    if rate.per_event:
        return (
            "priced per transaction from events, not from these hourly sums (ADR 0018); "
            "see per_event"
        )
    if rate.price_model in ("graduated", "volume", "package"):
        return (
            f"{rate.price_model} pricing runs over the month's cumulative quantity in hour "
            "order; an hour that crosses a tier boundary appears under both tiers"
        )
    return None


def _events_behind(events: pl.LazyFrame, account_id: str, line: dict, behind: pl.DataFrame) -> dict:
    """Counted events (status ok) in the rollup rows behind a line, oldest first."""
    keys = ["meter_id", "model_id", "product_id", "unit", "billable", "dimensions", "hour"]
    hits = (
        events.filter((pl.col("account_id") == account_id) & (pl.col("status") == "ok"))
        .join(behind.lazy().select(keys), on=keys, how="semi", nulls_equal=True)
        .select("event_id", "timestamp", "quantity", "correction_of")
        .sort("timestamp", "event_id")
        .collect()
    )
    return {
        "count": hits.height,
        "truncated": hits.height > EVENT_LIMIT,
        "ids": hits["event_id"].head(EVENT_LIMIT).to_list(),
    }


def _explain_adjustment(
    store: DeltaStore, doc: IssuedDocument, line: dict, events: pl.LazyFrame
) -> dict:
    """Late events of the adjusted month (same account, meter, model) since the last close."""
    period = line["adjusts_period"]
    before = doc.closed_before()
    previous = max(before.values(), key=lambda r: r["closed_at"]) if before else None
    window = doc.account.period(period)  # the account's own month (ADR 0017)
    start, end = window.start, window.end
    cond = (
        (pl.col("account_id") == doc.invoice["account_id"])
        & (pl.col("hour") >= start)
        & (pl.col("hour") < end)
        & pl.col("is_late").fill_null(False)
        & (pl.col("status") == "ok")
    )
    if line["meter_id"] is not None:
        cond &= (pl.col("meter_id") == line["meter_id"]) & pl.col("model_id").eq_missing(
            line["model_id"]
        )
    late = events.filter(cond)
    if previous is not None:
        known = store.scan(EVENTS, version=previous["events_table_version"])
        late = late.join(
            known.select("account_id", "event_id"), on=["account_id", "event_id"], how="anti"
        )
    rows = (
        late.select(
            "event_id", "timestamp", "quantity", "correction_of", "ingested_at", "source_file"
        )
        .sort("timestamp", "event_id")
        .collect()
    )
    return {
        "late_events": {
            "since_close_of": previous["period"] if previous else None,
            "count": rows.height,
            "quantity": plain(rows["quantity"].sum() if rows.height else _ZERO),
            "events": [plain_row(r) for r in rows.head(EVENT_LIMIT).iter_rows(named=True)],
            "truncated": rows.height > EVENT_LIMIT,
        }
    }


def _explain_contract(doc: IssuedDocument, line: dict) -> dict:
    """The account term behind a discount, minimum true-up or prepaid credit line."""
    account = doc.account
    kind = line["kind"]
    waivers = doc.lines.filter(pl.col("unit").fill_null("").str.starts_with(WAIVER_RATE))
    usage = sum_kind(doc.lines, "usage") + sum_kind(waivers, "discount")  # billed usage
    if is_waiver(line["unit"]):
        text = f"usage billed after the hard stop ({line['description']}) waived"
        term: dict[str, object] = {"after_hard_stop": account.after_hard_stop}
    elif (line["unit"] or "").startswith(COUPON_RATE + ":"):
        coupon_id = line["unit"].removeprefix(COUPON_RATE + ":")
        coupon = next(c for c in account.coupons if c.coupon_id == coupon_id)
        text = (
            f"coupon {coupon_id}: {plain(coupon.amount)} off each month {coupon.start} to "
            f"{coupon.last}, at most what is due after the percentage discount"
        )
        term = {"coupon": coupon_id, "amount": plain(coupon.amount), "from": coupon.start}
        term["months"] = str(coupon.months)
    elif line["unit"] == SPEND_CAP_RATE:
        after = usage + sum_kind(doc.lines.filter(pl.col("unit") == "discount"), "discount")
        text = f"usage after discount {after} − maximum_spend {plain(account.maximum_spend)}"
        term = {"maximum_spend": plain(account.maximum_spend)}
    elif kind == "discount":
        text = f"{plain(account.discount_pct)}% of usage {usage} = {plain(line['exact_amount'])}"
        if waivers.height:
            text += " (usage after the hard-stop waiver)"
        term = {"discount_pct": plain(account.discount_pct)}
    elif kind == "minimum":
        after = sum_kind(doc.lines, "usage") + sum_kind(doc.lines, "discount")
        text = f"commitment {plain(account.minimum_commit)} − usage after discount {after}"
        term = {"minimum_commit": plain(account.minimum_commit)}
    elif kind == "tax":
        rate, base = plain(line["unit_price"]), plain(line["quantity"])
        text = f"{rate}% of net charges {base}, rounded half-up"
        tax = account.tax
        term = {"country": account.country, "tax_id": account.tax_id, "tax_rate": rate}
        if tax is not None:
            term |= {"treatment": tax.code, "note": tax.note}
    else:
        text, term = _credit_term(doc, account, line)
    return {
        "rule": {"source": "accounts.yaml", "account_id": account.account_id, **term},
        "arithmetic": f"{text} → {line['amount']}",
    }


def _credit_term(doc: IssuedDocument, account: Account, line: dict) -> tuple[str, dict]:
    """Which grant paid the credit line, from what balance (the close's stamp), and what is
    left of it; the `prepaid_credit` grant keeps the wording it always had."""
    unit = line["unit"] or "credit"
    grant_id = unit.removeprefix(GRANT_RATE + ":") if unit != "credit" else PREPAID_GRANT
    stamped = (credit_map(doc.closed[doc.period]["opening_credit"]) or {}).get(account.account_id)
    opening = grant_balances(stamped, account).get(grant_id)
    if grant_id == PREPAID_GRANT:
        term = {
            "opening_balance": plain(opening),
            "prepaid_credit": plain(account.prepaid_credit),
            "grant_id": PREPAID_GRANT,
        }
        return f"prepaid balance {plain(opening)} applied", term
    applied = -Decimal(line["amount"])
    left = None if opening is None else opening - applied
    grant = next((g for g in account.grants if g.grant_id == grant_id), None)
    term = {"grant_id": grant_id, "opening_balance": plain(opening), "balance_after": plain(left)}
    if grant is not None:
        term |= {
            "amount": plain(grant.amount),
            "priority": grant.priority,
            "effective": None if grant.effective is None else grant.effective.isoformat(),
            "expires": None if grant.expires is None else grant.expires.isoformat(),
            "applies_to": {"meters": list(grant.meters), "models": list(grant.models)},
        }
    text = (
        f"grant {grant_id}: balance {plain(opening)} − applied {plain(applied)} = "
        f"{plain(left)} left (burn order: priority, earliest expiry, earliest effective, id)"
    )
    return text, term
