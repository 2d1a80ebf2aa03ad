"""Benchmark invoice rendering: CPU seconds per document, per template version.

Usage: python bench/render.py --home HOME [--versions invoice_v4,invoice_v5] [-n 50]
                              [--repeat 1] [--long] [--profile VERSION] [--pricebooks DIR]

Renders the first N issued documents of a home (`usagebox demo --home HOME --month 2026-10`
makes one: 50 invoices) as the close renders them (`render_args` + `render_document`, one
process, no pool), once per template version, and prints the CPU seconds per document
(`time.process_time`, this process only). A warm-up document per version goes first and is not
counted, so imports, font loading and the first chart are out of the figure (a close's workers
pay them once per process). `--long` also renders the home's largest document (the most lines)
padded to 40 usage items across several pages, the multi-page case. `--profile VERSION`
prints the top of a cProfile of that version instead of timing it.

The output is a table, then ONE JSON line (`result_line`).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
import pypdfium2 as pdfium  # noqa: E402

from bench.common import result_line  # noqa: E402
from usagebox_pipelines.config import resolve_pricebooks  # noqa: E402
from usagebox_pipelines.invoicing.render import (  # noqa: E402
    load_issuer,
    render_args,
    render_document,
)
from usagebox_pipelines.invoicing.stamps import credit_map  # noqa: E402
from usagebox_pipelines.pricing.accounts import load_accounts  # noqa: E402
from usagebox_pipelines.stages.books import closed_periods, issued_invoices, issued_lines  # noqa: E402
from usagebox_pipelines.storage import DeltaStore  # noqa: E402


def jobs(home: str, pricebooks: str | None, count: int) -> list[tuple]:
    """`render_document`'s arguments for the first `count` issued documents of `home`."""
    store = DeltaStore(home)
    closed = closed_periods(store)
    issued = issued_invoices(store, closed).sort("invoice_number")
    lines = issued_lines(store, issued)
    accounts = load_accounts(resolve_pricebooks(pricebooks))
    issuer = load_issuer()
    out = []
    for row in issued.head(count).iter_rows(named=True):
        mine = lines.filter(pl.col("invoice_number") == row["invoice_number"]).sort("line_no")
        opening = credit_map(closed[row["period"]]["opening_credit"])
        account = accounts.get(row["account_id"])
        out.append(render_args(issued, row, mine, account, issuer, opening))
    return out


def long_job(all_jobs: list[tuple], items: int = 40) -> tuple:
    """The document with the most lines, its usage lines copied under new meters until it
    has `items` usage items (several pages); its total follows the lines it prints."""
    job = max(all_jobs, key=lambda j: j[1].height)
    row, lines = dict(job[0]), job[1]
    usage = lines.filter(pl.col("kind") == "usage")
    copies, n = [lines], 0
    while usage.height and sum(c.height for c in copies) < items:
        n += 1
        copies.append(
            usage.with_columns(
                pl.col("meter_id") + f"_{n}",
                pl.col("description").str.replace(r"^", f"Extra {n} · "),
                pl.col("line_no") + 1000 * n,
            )
        )
    padded = pl.concat(copies)
    row["total"] = sum((Decimal(a) for a in padded["amount"].to_list()), Decimal(0))
    return (row, padded, *job[2:])


def with_version(job: tuple, version: str) -> tuple:
    return ({**job[0], "template_version": version}, *job[1:])


def cpu_per_document(batch: list[tuple], version: str, repeat: int) -> tuple[float, int]:
    """CPU seconds per document over `repeat` passes of `batch` (after one warm-up), pages."""
    render_document(*with_version(batch[0], version))
    start = time.process_time()
    for _ in range(repeat):
        pdfs = [render_document(*with_version(job, version)) for job in batch]
    cpu = (time.process_time() - start) / (repeat * len(batch))
    return cpu, sum(len(pdfium.PdfDocument(pdf)) for pdf in pdfs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--pricebooks", default=None)
    parser.add_argument("--versions", default="invoice_v4,invoice_v5")
    parser.add_argument("-n", type=int, default=50, help="documents to render per version")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--long", action="store_true", help="also a padded multi-page invoice")
    parser.add_argument("--profile", default=None, help="cProfile this version instead")
    args = parser.parse_args()

    batch = jobs(args.home, args.pricebooks, args.n)
    cases = {"typical": batch}
    if args.long:
        cases["long"] = [long_job(batch)]
    if args.profile:
        for name, docs in cases.items():
            render_document(*with_version(docs[0], args.profile))
            profile = cProfile.Profile()
            profile.enable()
            for job in docs:
                render_document(*with_version(job, args.profile))
            profile.disable()
            print(f"== {args.profile} {name} ({len(docs)} documents)")
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        return
    figures: dict[str, dict] = {}
    print(f"{'case':<8} {'version':<12} {'docs':>5} {'pages':>6} {'cpu s/doc':>10}")
    for name, docs in cases.items():
        for version in args.versions.split(","):
            cpu, pages = cpu_per_document(docs, version, args.repeat)
            figures.setdefault(name, {})[version] = {"cpu_s_per_doc": round(cpu, 4), "pages": pages}
            print(f"{name:<8} {version:<12} {len(docs):>5} {pages:>6} {cpu:>10.3f}")
    result_line("render", documents=len(batch), cases=figures)


if __name__ == "__main__":
    main()
