"""WeasyPrint, and only here: the URL fetcher that reads templates/ and assets/ only, and
deterministic PDF bytes (fixed dates, an identifier from the HTML, memoised font subsets).

Split from `documents` so that importing the formatting helpers (every command does, through
the Dagster definitions) does not import WeasyPrint, which takes most of a second: only a
command that makes a PDF pays for it (`documents.html_to_pdf` imports this module).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import weasyprint
from weasyprint import CSS, HTML
from weasyprint.pdf import fonts as pdf_fonts
from weasyprint.urls import URLFetcher

from usagebox_pipelines.config import ASSETS_DIR, TEMPLATES_DIR
from usagebox_pipelines.documents import FIXED_PDF_DATE, PdfStyle, RefusedURL

_ENV_LOCK = threading.Lock()


class SafeURLFetcher(URLFetcher):
    """Serves `file:` URLs under the allowed roots only; refuses and records everything else.

    WeasyPrint catches the refusal, logs a warning and renders without the resource, so a
    hostile `<img src="file:///etc/passwd">` that slipped past escaping still reads nothing.
    `fetched` / `refused` list the URLs seen, for tests and audit.
    """

    def __init__(self, roots: Iterable[Path] = (TEMPLATES_DIR, ASSETS_DIR)) -> None:
        super().__init__(allowed_protocols=("file",), allow_redirects=False)
        self.roots = tuple(Path(r).resolve() for r in roots)
        self.fetched: list[str] = []
        self.refused: list[str] = []

    def fetch(self, url: str, headers: dict | None = None):
        path = self._allowed_path(url)
        if path is None:
            self.refused.append(url)
            raise RefusedURL(f"refused to fetch {url[:200]!r}: outside templates/ and assets/")
        self.fetched.append(url)
        return super().fetch(path.as_uri(), headers)

    def _allowed_path(self, url: str) -> Path | None:
        """The resolved local file for `url` if it is a plain file under a root, else None."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return None
        if parts.query or parts.fragment:
            return None
        path = Path(unquote(parts.path)).resolve()
        if not path.is_file():
            return None
        return path if any(path.is_relative_to(root) for root in self.roots) else None


def html_to_pdf(
    html: str,
    *,
    created: datetime | None = None,
    fetcher: SafeURLFetcher | None = None,
    style: PdfStyle = PdfStyle(),
) -> bytes:
    """HTML string to deterministic PDF bytes; relative URLs resolve against `templates/`.

    `style.stylesheets` (names in `templates/`) are applied as well as any the HTML links,
    parsed once per process (`_stylesheet`): a template that names its stylesheet here instead
    of in a `<link>` saves parsing it for every document (invoice_v5). They apply as user
    stylesheets: above the user agent's, below any the document links. `style.user_agent` (a
    name in `templates/`, also parsed once) replaces WeasyPrint's user-agent stylesheet: its
    ~190 rules, many with attribute selectors, are tried on every element; a template that
    uses a dozen elements can name a stylesheet with the rules for those only
    (invoice_v5_ua.css).

    `style.stable_subsets` (invoice_v5 on, every earlier document off: their bytes are
    pinned) embeds each font subset with the glyphs of `STABLE_TEXT` added to those the
    document uses, so almost every document of a close needs the same subset and the memo
    below serves it: subsetting a font is about a seventh of a v5 invoice otherwise, as each
    customer's name and address ask for a slightly different glyph set. It makes a PDF
    ~15 KB larger.
    """
    fetcher = fetcher or SafeURLFetcher()
    stamp = (created or FIXED_PDF_DATE).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    sheets = [_stylesheet(name) for name in style.stylesheets]
    source = HTML(string=html, base_url=str(TEMPLATES_DIR) + os.sep, url_fetcher=fetcher)
    if style.user_agent is not None:
        source = _OwnUserAgent.of(source, _stylesheet(style.user_agent))
    document = source.render(stylesheets=sheets)
    document.metadata.created = stamp
    document.metadata.modified = stamp
    token = _STABLE.set(style.stable_subsets)
    try:
        with _reproducible_fonts():
            return document.write_pdf(pdf_identifier=_pdf_identifier(html))
    finally:
        _STABLE.reset(token)


class _OwnUserAgent(HTML):
    """A parsed HTML document whose user-agent stylesheet is `ua` (WeasyPrint asks the
    document for it: `HTML._ua_stylesheets`, stable in WeasyPrint 70, checked at import)."""

    ua: CSS

    @classmethod
    def of(cls, html: HTML, ua: CSS) -> HTML:
        if not _OWN_UA:
            return html
        own = cls.__new__(cls)
        own.__dict__.update(html.__dict__)
        own.ua = ua
        return own

    def _ua_stylesheets(self, forms: bool = False) -> list[CSS]:
        return [self.ua]


_OWN_UA = weasyprint.__version__.split(".")[0] == "70" and hasattr(HTML, "_ua_stylesheets")


#: The fetcher that reads `_stylesheet`s: SafeURLFetcher as it was at import, so a caller
#: that swaps SafeURLFetcher to watch a document's fetches sees the document's only.
_SheetFetcher = SafeURLFetcher


@lru_cache(maxsize=16)
def _stylesheet(name: str) -> CSS:
    """`templates/<name>` parsed, once per process (read through a SafeURLFetcher)."""
    path = TEMPLATES_DIR / name
    if path.resolve().parent != TEMPLATES_DIR.resolve():
        raise RefusedURL(f"stylesheet outside templates/: {name!r}")
    return CSS(url=path.as_uri(), url_fetcher=_SheetFetcher())


def _pdf_identifier(html: str) -> bytes:
    """The PDF file id: a hash of the HTML with the install location taken out.

    `asset_url` puts absolute `file:` URLs into the HTML; hashing them as they are would make
    the bytes depend on where the package is installed (a checkout, a venv, a wheel), and an
    invoice issued from one install would not reproduce from another.
    """
    portable = html.replace(ASSETS_DIR.as_uri(), "assets:").replace(
        TEMPLATES_DIR.as_uri(), "templates:"
    )
    return hashlib.sha256(portable.encode("utf-8")).hexdigest()[:32].encode("ascii")


@contextmanager
def _reproducible_fonts() -> Iterator[None]:
    """Pin fontTools' subset-font `head.modified` stamp, else every PDF differs by the clock.

    fontTools honours SOURCE_DATE_EPOCH (the reproducible-builds convention); we set it to the
    fixed date for the duration of the write, under a lock as the environment is process-wide.
    """
    with _ENV_LOCK:
        previous = os.environ.get("SOURCE_DATE_EPOCH")
        os.environ["SOURCE_DATE_EPOCH"] = str(int(FIXED_PDF_DATE.timestamp()))
        try:
            yield
        finally:
            if previous is None:
                del os.environ["SOURCE_DATE_EPOCH"]
            else:
                os.environ["SOURCE_DATE_EPOCH"] = previous


# --------------------------------------------------------------------------- font subsets

#: Subset fonts kept per process (each some tens of KB): invoices mostly use the same glyphs.
SUBSET_CACHE_SIZE = 256
_SUBSETS: OrderedDict[tuple, bytes] = OrderedDict()
_SUBSETS_LOCK = threading.Lock()
#: Whether the PDF being written pads its font subsets with `STABLE_TEXT` (`html_to_pdf`).
_STABLE: ContextVar[bool] = ContextVar("stable_subsets", default=False)
#: The characters every stable subset holds: printable ASCII, Latin-1 (names, addresses) and
#: the punctuation, currency and math signs the documents print.
STABLE_TEXT = (
    "".join(chr(c) for c in range(0x20, 0x7F))
    + "".join(chr(c) for c in range(0xA0, 0x100))
    + "–—‘’“”•…‰€₹₩₺−×Δ→·"
)


def _memoise_font_subsets() -> bool:
    """Remember WeasyPrint's font subsets: the same font and glyphs give the same bytes.

    Subsetting a font (fontTools decompiles its layout tables every time) is about a third of
    a document's render time, and most documents use the same few glyph sets (digits, the
    labels). `Font.subset` is a pure function of the font file, its face index, the glyph ids,
    `hinting`, whether glyphs are missing, and `SOURCE_DATE_EPOCH` (fontTools stamps `head`
    with it), so the subset is keyed on exactly those and replayed on a hit: the PDF bytes are
    the same as without the cache (tests/test_invoicing_documents.py). Only for the WeasyPrint
    major version this was checked against; any other renders unmemoised.
    """
    font: Any = getattr(pdf_fonts, "Font", None)
    real = getattr(font, "subset", None)
    if real is None or getattr(real, "memoised", False):
        return False
    if weasyprint.__version__.split(".")[0] != "70":
        return False

    def subset(self: Any, to_unicode: dict, hinting: bool) -> None:
        if not to_unicode:
            return real(self, to_unicode, hinting)
        content: bytes = self.file_content
        digest = hashlib.sha256(content).digest()
        glyphs = set(to_unicode)
        if _STABLE.get():
            glyphs |= _stable_glyphs(digest, content, self.index)
            to_unicode = dict.fromkeys(sorted(glyphs))  # only its keys are read: glyph ids
        key = (
            digest,
            self.index,
            tuple(sorted(glyphs)),
            bool(hinting),
            bool(self.missing),
            os.environ.get("SOURCE_DATE_EPOCH"),
        )
        with _SUBSETS_LOCK:
            hit = _SUBSETS.get(key)
            if hit is not None:
                _SUBSETS.move_to_end(key)
        if hit is not None:
            self.file_content = hit
            return None
        if self.index == 0:
            self.file_content = _without_dropped_tables(content)
        real(self, to_unicode, hinting)
        with _SUBSETS_LOCK:
            _SUBSETS[key] = self.file_content
            while len(_SUBSETS) > SUBSET_CACHE_SIZE:
                _SUBSETS.popitem(last=False)
        return None

    subset.memoised = True  # type: ignore[attr-defined]
    subset.__wrapped__ = real  # type: ignore[attr-defined]
    font.subset = subset
    return True


_STABLE_GLYPHS: dict[tuple[bytes, int], frozenset[int]] = {}


def _stable_glyphs(digest: bytes, content: bytes, index: int) -> frozenset[int]:
    """Glyph ids of the characters of `STABLE_TEXT` that the font (`digest`) has."""
    hit = _STABLE_GLYPHS.get((digest, index))
    if hit is None:
        from fontTools.ttLib import TTFont

        font = TTFont(io.BytesIO(content), lazy=True, fontNumber=index)
        cmap = font.getBestCmap() or {}
        names = [cmap[ord(c)] for c in STABLE_TEXT if ord(c) in cmap]
        hit = frozenset(font.getGlyphID(name) for name in names)
        _STABLE_GLYPHS[(digest, index)] = hit
    return hit


@lru_cache(maxsize=8)
def _without_dropped_tables(content: bytes) -> bytes:
    """The font without the tables WeasyPrint's fontTools subset drops (GSUB, GPOS, SVG, and
    `kern` when GPOS is there).

    fontTools' `Subsetter.subset` decompiles GSUB and GPOS to compact them before it drops
    them (`_compact_layout_tables`): for DejaVu Sans that is ~0.2 s of every font of every
    document, for nothing. Removing them up front is what the subsetter does first anyway
    (`_prune_pre_subset`), so the subset font, and the PDF, are the same bytes
    (tests/test_invoicing_documents.py). Raw table data is copied, nothing decompiled.
    """
    from fontTools.ttLib import TTFont

    font = TTFont(io.BytesIO(content), lazy=True)
    if "GPOS" in font and "kern" in font:  # fontTools drops legacy kern next to GPOS
        del font["kern"]
    for tag in ("GSUB", "GPOS", "SVG "):
        if tag in font:
            del font[tag]
    out = io.BytesIO()
    font.save(out, reorderTables=False)
    return out.getvalue()


_memoise_font_subsets()
