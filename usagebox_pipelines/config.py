"""Where things live: the home root (local path or s3:// URI) and the pricebooks folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRICEBOOKS = PROJECT_ROOT / "pricebooks"
ASSETS_DIR = PROJECT_ROOT / "assets"
REPORTS_DIR = PROJECT_ROOT / "reports"


def resolve_home(home: str | None = None) -> str:
    """`--home`, else $USAGEBOX_HOME, else ./data; local paths are made absolute."""
    value = home or os.environ.get("USAGEBOX_HOME") or "data"
    if is_object_store(value):
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())


def resolve_pricebooks(pricebooks: str | None = None) -> Path:
    """`--pricebooks`, else $USAGEBOX_PRICEBOOKS, else the project's pricebooks/ folder."""
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
        """A local folder for documents and the Dagster instance (a temp area for s3 homes)."""
        if is_object_store(self.home):
            safe = self.home.split("://", 1)[1].replace("/", "_")
            return Path(os.environ.get("TMPDIR", "/tmp")) / "usagebox" / safe
        return Path(self.home)

    @property
    def documents_dir(self) -> Path:
        return self.local_home / "documents"
