"""usagebox-pipelines: usage events → Delta tables → rated usage → invoices and reconciliations."""

import os

# Polars allocates with jemalloc (env prefix `_RJEM_`), which by default keeps freed pages for
# seconds: the peak RSS of a run then adds up its steps' working memory instead of being the
# largest one. Returning pages at once lets each step reuse what the one before freed. Read
# when polars loads, so it is set here, before any module imports polars; a user's own
# setting wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

__version__ = "0.1.0"
