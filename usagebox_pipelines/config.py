"""Where things live: the home root (local path or s3:// URI), the pricebooks folder and the
files shipped inside the package.

Templates, CSS, the issuer block, the logo and the default pricebooks are package data under
`usagebox_pipelines/package_data/` (found with importlib.resources), so a wheel install renders
invoices with no source checkout. In a checkout, the top-level `pricebooks/` is a link to the
packaged folder: one copy of the files, and "the project's `pricebooks/`" either way.
"""

from __future__ import annotations

import atexit
import os
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

_EXTRACTED = ExitStack()
atexit.register(_EXTRACTED.close)


def _package_data(name: str) -> Path:
    """A folder of `usagebox_pipelines/package_data/` as a real path (Jinja and WeasyPrint
    read files); a zipped install is extracted once for the life of the process."""
    resource = files(__package__).joinpath("package_data", name)
    if isinstance(resource, Path):
        return resource.resolve()
    return _EXTRACTED.enter_context(as_file(resource)).resolve()


def _source_root() -> Path | None:
    """The repository root when the package runs from a source checkout, else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


#: Jinja templates and their CSS (invoices, credit notes, reconciliation and margin reports).
TEMPLATES_DIR = _package_data("templates")
#: Static files the documents use: `issuer.yaml`, `logo.svg`, `sample_vendor_exports/`.
ASSETS_DIR = _package_data("assets")
#: The shipped pricebooks, accounts and vendor mapping (`pricebooks/` in a checkout links here).
DEFAULT_PRICEBOOKS = _package_data("pricebooks")
#: The checkout the code runs from (for `git describe`), or None for an installed wheel.
SOURCE_ROOT = _source_root()


def resolve_home(home: str | None = None) -> str:
    """`--home`, else $USAGEBOX_HOME, else ./data; local paths are made absolute."""
    value = home or os.environ.get("USAGEBOX_HOME") or "data"
    if is_object_store(value):
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())


def resolve_pricebooks(pricebooks: str | None = None) -> Path:
    """`--pricebooks`, else $USAGEBOX_PRICEBOOKS, else the project's pricebooks/ (packaged)."""
    value = pricebooks or os.environ.get("USAGEBOX_PRICEBOOKS")
    return Path(value).expanduser().resolve() if value else DEFAULT_PRICEBOOKS


def is_object_store(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass(frozen=True)
class Settings:
    """Resolved locations for one command or Dagster run."""

    home: str
    pricebooks: Path

    @classmethod
    def resolve(cls, home: str | None = None, pricebooks: str | None = None) -> Settings:
        return cls(resolve_home(home), resolve_pricebooks(pricebooks))

    @property
    def local_home(self) -> Path:
        """A local folder for the Dagster instance and the inbox (a temp area for s3 homes).

        Documents are not kept here: invoices, credit notes and reports go to the home itself
        (`storage.DocumentStore`, `<home>/documents`), on object storage too. Only the Dagster
        instance (run history, logs) stays local for an `s3://` home.
        """
        if is_object_store(self.home):
            safe = self.home.split("://", 1)[1].replace("/", "_")
            return Path(os.environ.get("TMPDIR", "/tmp")) / "usagebox" / safe
        return Path(self.home)

    @property
    def documents_dir(self) -> Path:
        """`<home>/documents` of a local home (tests and local tools); an `s3://` home has no
        local documents folder: use `storage.DocumentStore(home)`."""
        if is_object_store(self.home):
            raise ValueError(f"{self.home} is on object storage: its documents are in the store")
        return Path(self.home) / "documents"
