"""Credit grants through real closes (ADR 0016): October and November issued, each grant's draw a
line, explained, reproduced from the stamps; `credit_grant_ledger` appended once per close."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from pypdf import PdfReader

from tests.conftest import event
from tests.test_close_scenario import NOV, OCT, build_month, ingest, issued
from usagebox_pipelines.catalog import CREDIT_GRANT_LEDGER, CREDIT_LEDGER
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS, Settings
from usagebox_pipelines.stages.books import all_lines
from usagebox_pipelines.stages.close import close_month
from usagebox_pipelines.stages.explain import explain_invoice
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.storage import DeltaStore

#: gpt-out burns first (priority 0) but pays output tokens only; pack next; promo (priority 2)
#: is never reached in October and expires on 2026-11-01 with its 10.00.
GRANTS = """
  acct-grant:
    name: "Grant Test Co."
    credit_grants:
      - {id: promo, amount: "10.00", priority: 2, expires: 2026-11-01}
      - {id: pack, amount: "20.00", priority: 1}
      - {id: gpt-out, amount: "1.00", applies_to: {meters: [output_tokens]}}
"""
EVENTS = [
    event("g-in", "acct-grant", 2_000_000, "2026-10-02T10:00:00Z"),  # gpt-4o 3.125/M: 6.25
    event("g-out", "acct-grant", 200_000, "2026-10-03T10:00:00Z", "output_tokens"),  # 2.50
    event("g-nov", "acct-grant", 1_000_000, "2026-11-04T10:00:00Z"),  # 3.125 → 3.13
]


def credit_lines(store: DeltaStore, number: str) -> list[tuple[str, str]]:
    lines = all_lines(store).filter(
        (pl.col("invoice_number") == number) & (pl.col("kind") == "credit")
    )
    return lines.select("description", pl.col("amount").cast(pl.String)).rows()


def ledger(store: DeltaStore) -> list[tuple]:
    """The account's ledger rows (a Delta read has no row order: sorted)."""
    rows = store.read(CREDIT_GRANT_LEDGER).filter(pl.col("account_id") == "acct-grant")
    assert rows["recorded_at"].null_count() == 0 and rows["run_id"].null_count() == 0
    cols = ["grant_id", "period", "kind", "amount", "balance_after"]
    out = [(g, p, k, f"{a:.2f}", f"{b:.2f}") for g, p, k, a, b in rows.select(cols).iter_rows()]
    return sorted(out, key=lambda r: (r[1], ["grant", "draw", "expiry"].index(r[2]), r[0]))


def test_grants_are_drawn_in_order_explained_reproduced_and_ledgered_once(tmp_path: Path) -> None:
    books = tmp_path / "pricebooks"
    shutil.copytree(DEFAULT_PRICEBOOKS, books)
    accounts = books / "accounts.yaml"
    accounts.write_text(accounts.read_text() + GRANTS)
    store, settings = DeltaStore(str(tmp_path / "home")), Settings(str(tmp_path / "home"), books)
    ingest(store, tmp_path / "in" / "events.jsonl", EVENTS)
    for month, issued_at in ((OCT, datetime(2026, 11, 3, tzinfo=UTC)),
                             (NOV, datetime(2026, 12, 3, tzinfo=UTC))):  # fmt: skip
        build_month(store, books, month)
        close_month(store, settings, month, approve=True, now=issued_at)
    oct_no = issued(store, OCT).filter(pl.col("account_id") == "acct-grant")["invoice_number"][0]
    nov_no = issued(store, NOV).filter(pl.col("account_id") == "acct-grant")["invoice_number"][0]
    # October: 8.75 due; gpt-out pays 1.00 of the 2.50 output line, pack the 7.75 left
    assert credit_lines(store, oct_no) == [
        ("Credit grant gpt-out (balance left 0.00 USD)", "-1.00"),
        ("Credit grant pack (balance left 12.25 USD)", "-7.75"),
    ]
    # November: promo expired on 11-01 and gpt-out is used up; pack pays the 3.13
    assert credit_lines(store, nov_no) == [("Credit grant pack (balance left 9.12 USD)", "-3.13")]
    # the PDF's credit box (invoice_v3) shows each grant in burn order, the total below
    oct_pdf = (
        settings.documents_dir
        / issued(store).filter(pl.col("invoice_number") == oct_no)["pdf_path"].item()
    )
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(oct_pdf).pages)
    box = text[text.index("CREDIT GRANT OPENING APPLIED CLOSING") :]
    assert box.startswith(
        "CREDIT GRANT OPENING APPLIED CLOSING gpt-out $1.00 -$1.00 $0.00 pack $20.00 -$7.75 $12.25"
        " promo expires 2026-11-01 $10.00 $0.00 $10.00 Prepaid credit $31.00 -$8.75 $22.25"
    ), box[:200]  # 31.00 - 8.75 = 22.25: the ledger summary's October closing below
    for number in (oct_no, nov_no):
        assert issued(store).filter(pl.col("invoice_number") == number)["total"][0] == 0
        assert verify_invoice(store, settings, number).reproduced
    explained = explain_invoice(store, settings, nov_no).lines
    pack = next(line for line in explained if line["kind"] == "credit")
    assert pack["rule"]["grant_id"] == "pack" and pack["rule"]["opening_balance"] == "12.25"
    assert pack["arithmetic"].startswith("grant pack: balance 12.25 − applied 3.13 = 9.12 left")
    expected = [
        ("gpt-out", OCT, "grant", "1.00", "1.00"),
        ("pack", OCT, "grant", "20.00", "20.00"),
        ("promo", OCT, "grant", "10.00", "10.00"),
        ("gpt-out", OCT, "draw", "-1.00", "0.00"),
        ("pack", OCT, "draw", "-7.75", "12.25"),
        ("pack", NOV, "draw", "-3.13", "9.12"),
        ("promo", NOV, "expiry", "-10.00", "0.00"),
    ]
    assert ledger(store) == expected
    # the per-account summary stays what it was: every grant, minus what issued invoices drew
    summary = store.read(CREDIT_LEDGER).filter(pl.col("account_id") == "acct-grant")
    assert [f"{c:.2f}" for c in summary.sort("period")["closing"]] == ["22.25", "19.12"]
    # closing a closed month again appends nothing
    assert close_month(store, settings, NOV, approve=True).status == "already_closed"
    assert ledger(store) == expected
