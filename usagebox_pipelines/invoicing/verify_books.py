"""`usagebox verify` over every issued document, cheap by default (invariant 5, ADR 0007).

Per closed period, with no PDF rendering:

* **Committed.** The close's own commits of `invoices` and `invoice_lines` are found in the
  tables' Delta history (stage `close`, the period; audit.close_commits) and read by time
  travel. Every issued row must still equal what its close committed, column by column (so a
  `pdf_sha256`, a note or a total rewritten later fails), its lines likewise, and the stored
  file's sha256 must equal both the stored and the committed hash. A PDF replaced together
  with its stored hash therefore fails: the committed hash still names the original.
* **Reproduced.** Lines and totals of every document are rebuilt from the stamped events
  version, pricebooks and the decisions the close read, one rating pass per period
  (close.rebuild_period) instead of one per document, and compared with the stored ones.

`render=True` (`usagebox verify --render`) also re-renders each rebuilt document and compares
the bytes' sha256 with the stored one, in a process pool (`os.cpu_count()` workers) when there
are several; `usagebox invoice verify N` always renders its one document. Rewriting
`_delta_log` itself is out of reach of these checks.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl

from usagebox_pipelines import invariants as inv
from usagebox_pipelines.config import Settings
from usagebox_pipelines.invoicing import tables as t
from usagebox_pipelines.invoicing.audit import books_problems, close_commits
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.pricing.pricebook import load_pricebooks
from usagebox_pipelines.schemas import INVOICE_LINES, INVOICES, conform
from usagebox_pipelines.storage import DeltaStore

#: Render in a process pool from this many documents on (a pool costs ~1 s to start).
POOL_FROM = 4


def issued_intact(
    store: DeltaStore, settings: Settings, month: str | None = None, render: bool = False
) -> inv.InvariantResult:
    """Invariant 5: sound numbering books, every issued document (of `month`, or all) as its
    close committed it and reproduced from its stamps; with `render`, its PDF re-rendered."""
    from usagebox_pipelines.invoicing import close as c

    closed = t.closed_periods(store)
    docs = t.issued_invoices(store, closed)
    if month is not None:
        docs = docs.filter(pl.col("period") == month)
    books = load_pricebooks(settings.pricebooks)
    accounts = load_accounts(settings.pricebooks)
    bad = [{"problem": p} for p in c._frozen_problems(books, docs)]
    bad += [p for p in books_problems(store) if month is None or p.get("period") in (None, month)]
    commits = close_commits(store, t.INVOICES_TABLE)
    line_commits = close_commits(store, t.INVOICE_LINES_TABLE)
    lines = t.all_lines(store).filter(pl.col("invoice_number").is_not_null())
    to_render = []
    for (period,), part in sorted(docs.group_by("period"), key=lambda kv: str(kv[0])):
        own_lines = lines.filter(pl.col("period") == period)
        bad += committed_problems(
            store, period, part, own_lines, commits, line_commits, settings.documents_dir
        )
        decisions = c.decisions_of_close(store, period, commits)
        for (version,), same in part.group_by("events_table_version"):
            invoices, rebuilt_lines = c.rebuild_period(
                store, period, version, closed, books, accounts, decisions
            )
            for row in same.sort("invoice_number").iter_rows(named=True):
                number = row["invoice_number"]
                stored = own_lines.filter(pl.col("invoice_number") == number).sort("line_no")
                rebuilt, rlines = c.rebuilt_document(row, invoices, rebuilt_lines)
                if rebuilt is None:
                    diffs = [{"what": "document", "detail": "re-rating gives no such document"}]
                else:
                    diffs = c._line_differences(stored, rlines)
                    diffs += c._total_differences(row, stored, rebuilt)
                    to_render.append((rebuilt, rlines, row["pdf_sha256"]))
                if diffs:
                    bad.append(_unreproduced(number, diffs))
    rendered = 0
    if render:
        bad += render_problems(store, closed, to_render, accounts)
        rendered = len(to_render)
    what = "rebuilt and re-rendered" if render else "rebuilt and checked against their close"
    return inv.InvariantResult(
        "5_issued_invoices_unchanged",
        not bad,
        f"{docs.height} issued documents {what} ({rendered} PDFs rendered); {len(bad)} problems",
        bad[: inv.SAMPLE],
    )


def _unreproduced(number: str, diffs: list[dict]) -> dict:
    return {
        "invoice_number": number,
        "problem": "does not reproduce from its stamps",
        "differences": diffs[:3],
    }


# --------------------------------------------------------------------------- committed


def committed_problems(
    store: DeltaStore,
    period: str,
    docs: pl.DataFrame,
    lines: pl.DataFrame,
    commits: dict[str, dict],
    line_commits: dict[str, dict],
    documents_dir: Path,
) -> list[dict]:
    """Issued rows, lines and files of `period` against what its close committed."""
    if period not in commits or period not in line_commits:
        return [{"period": period, "problem": "no close commit in the invoices' Delta history"}]
    then = store.read(t.INVOICES_TABLE, INVOICES, version=int(commits[period]["version"]))
    then = then.filter((pl.col("period") == period) & (pl.col("status") == "issued"))
    then_by = {r["invoice_number"]: r for r in then.iter_rows(named=True)}
    then_lines = store.read(
        t.INVOICE_LINES_TABLE, INVOICE_LINES, version=int(line_commits[period]["version"])
    ).filter((pl.col("period") == period) & pl.col("invoice_number").is_not_null())
    out = []
    for row in docs.iter_rows(named=True):
        number = row["invoice_number"]
        committed = then_by.get(number)
        if committed is None:
            out.append({"invoice_number": number, "problem": "not issued by its period's close"})
            continue
        changed = [k for k in INVOICES.names() if row[k] != committed[k]]
        if changed:
            out.append(
                {
                    "invoice_number": number,
                    "problem": f"invoice row changed since its close: {', '.join(changed)}",
                    "stored": {k: _text(row[k]) for k in changed},
                    "committed": {k: _text(committed[k]) for k in changed},
                }
            )
        mine = pl.col("invoice_number") == number
        if not _same_rows(lines.filter(mine), then_lines.filter(mine)):
            out.append({"invoice_number": number, "problem": "lines changed since its close"})
        file = file_sha(documents_dir, row["pdf_path"])
        if file is None or file != row["pdf_sha256"] or file != committed["pdf_sha256"]:
            out.append(
                {
                    "invoice_number": number,
                    "problem": "stored PDF file is missing" if file is None else
                    "stored PDF file differs from the hash its close committed",
                    "file": file,
                    "stored": row["pdf_sha256"],
                    "committed": committed["pdf_sha256"],
                }
            )  # fmt: skip
    return out


def _same_rows(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    a, b = conform(a, INVOICE_LINES).sort("line_no"), conform(b, INVOICE_LINES).sort("line_no")
    return a.height == b.height and a.equals(b)


def file_sha(documents_dir: Path, rel: str | None) -> str | None:
    if not rel:
        return None
    root = Path(documents_dir).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- render


def render_problems(
    store: DeltaStore, closed: dict[str, dict], docs: list[tuple], accounts: object
) -> list[dict]:
    """Re-render each rebuilt document; a problem per sha256 that differs from the stored one."""
    from usagebox_pipelines.invoicing import close as c
    from usagebox_pipelines.invoicing.render import load_issuer

    issued = t.issued_invoices(store, closed)
    issuer = load_issuer()
    jobs = [
        (doc, lines, accounts.get(doc["account_id"]), issuer, _corrects(c, issued, doc, lines))
        for doc, lines, _ in docs
    ]  # fmt: skip
    if len(jobs) >= POOL_FROM and (os.cpu_count() or 1) > 1:
        spawn = multiprocessing.get_context("spawn")  # polars' threads do not survive a fork
        with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=spawn) as pool:
            hashes = list(pool.map(_render_sha, jobs))
    else:
        hashes = [_render_sha(job) for job in jobs]
    return [
        {
            "invoice_number": doc["invoice_number"],
            "problem": "re-rendered PDF differs from the stored sha256",
            "stored": stored,
            "rerendered": sha,
        }
        for (doc, _, stored), sha in zip(docs, hashes, strict=True)
        if sha != stored
    ]


def _corrects(c, issued: pl.DataFrame, doc: dict, lines: pl.DataFrame) -> list[str]:
    return c._corrected_numbers(issued, doc, lines)


def _render_sha(job: tuple) -> str:
    from usagebox_pipelines.invoicing.close import render_document
    from usagebox_pipelines.invoicing.render import pdf_sha256

    return pdf_sha256(render_document(*job))
