"""How tables on object storage are reached, and whether their commits are safe (issue 14).

A Delta commit is the put of `_delta_log/<version>.json`; two writers committing the same
version must not both succeed. delta-rs makes that put conditional (`If-None-Match: *`, the
default for AWS S3 in delta-rs 1.x; `aws_conditional_put=etag` for S3-compatible stores), so
the loser gets 412 and retries. A store that ignores the header accepts both puts and one
commit silently vanishes. The first write to an `s3://` home in a process therefore probes the
store once: a conditional put of `<home>/_usagebox/probe-<uuid>`, then a second one of the same
key, which must fail. A store that accepts both is refused unless the user opts into
single-writer mode (`USAGEBOX_SINGLE_WRITER=1`), which turns on delta-rs's unsafe rename and
leaves the home's writer lease as the only protection.

The probe goes through `obstore`, the Python binding of the same `object_store` crate delta-rs
commits with, configured from the same options, so it tests the client delta-rs really uses.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import TYPE_CHECKING, cast

from usagebox_pipelines.config import is_object_store
from usagebox_pipelines.errors import UsageboxError, one_line

if TYPE_CHECKING:
    from obstore.store import S3Config, S3Store

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN": "AWS_SESSION_TOKEN",
    "AWS_REGION": "AWS_REGION",
    "AWS_DEFAULT_REGION": "AWS_REGION",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP": "AWS_ALLOW_HTTP",
    # object_store's conditional-put mode: `etag` for S3-compatible stores that support it
    "AWS_CONDITIONAL_PUT": "aws_conditional_put",
}
UNSAFE_RENAME = "AWS_S3_ALLOW_UNSAFE_RENAME"
PROBE_FOLDER = "_usagebox"

_probed: set[tuple[str, str | None, str | None]] = set()
_probe_guard = threading.Lock()


def single_writer() -> bool:
    """$USAGEBOX_SINGLE_WRITER: the user vouches that one writer at a time uses an object-store
    home whose store ignores conditional puts (ADR 0012); off unless set to 1/true/yes."""
    raw = os.environ.get("USAGEBOX_SINGLE_WRITER", "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise UsageboxError(f"USAGEBOX_SINGLE_WRITER={raw!r}: expected 1 (on) or 0 (off)")


def storage_options(home: str) -> dict[str, str] | None:
    """Credentials, endpoint and commit mode for an `s3://` home from the standard AWS_*
    variables (None for a local home).

    Commits use conditional puts; only single-writer mode sets delta-rs's unsafe rename.
    """
    if not is_object_store(home):
        return None
    opts = {dst: os.environ[src] for src, dst in _AWS_ENV.items() if os.environ.get(src)}
    if opts.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    opts.setdefault("AWS_REGION", "us-east-1")
    if single_writer():
        opts[UNSAFE_RENAME] = "true"
    return opts


def check_conditional_puts(home: str, options: dict[str, str] | None) -> None:
    """Refuse (UsageboxError, exit 2) an `s3://` home whose store ignores `If-None-Match`.

    Probed once per process for each home, endpoint and conditional-put mode; local homes and
    single-writer mode are not probed.
    """
    if options is None or options.get(UNSAFE_RENAME) == "true":
        return
    probe = (home, options.get("AWS_ENDPOINT_URL"), options.get("aws_conditional_put"))
    with _probe_guard:
        if probe in _probed:
            return
        if not _second_put_refused(home, options):
            raise UsageboxError(
                f"{_store_name(home, options)} accepted a second conditional put of the same "
                "key (it ignores If-None-Match), so two writers could silently overwrite each "
                "other's commits: set AWS_CONDITIONAL_PUT=etag if the store supports "
                "conditional puts, or USAGEBOX_SINGLE_WRITER=1 to run one writer at a time"
            )
        _probed.add(probe)


def _second_put_refused(home: str, options: dict[str, str]) -> bool:
    """Two conditional puts of one new probe key: True when the store refused the second."""
    import obstore
    from obstore.exceptions import AlreadyExistsError

    bucket, _, prefix = home.split("://", 1)[1].partition("/")
    key = "/".join(p for p in (prefix, PROBE_FOLDER, f"probe-{uuid.uuid4().hex}") if p)
    store = _probe_store(bucket, options)
    try:
        obstore.put(store, key, b"probe", mode="create")
        try:
            obstore.put(store, key, b"probe", mode="create")
        except AlreadyExistsError:
            return True
        return False
    except NotImplementedError:
        # `aws_conditional_put=disabled`: the client cannot make a conditional put at all
        return False
    except (OSError, RuntimeError) as exc:
        raise UsageboxError(
            f"{_store_name(home, options)}: cannot write the commit-safety probe "
            f"({one_line(str(exc), 160)}); check the endpoint and credentials"
        ) from None
    finally:
        _delete_quietly(store, key)


def _probe_store(bucket: str, options: dict[str, str]) -> S3Store:
    """An obstore S3 client configured like delta-rs (same keys, lower-cased)."""
    from obstore.store import S3Store

    config = {k.lower(): v for k, v in options.items() if k != "AWS_ENDPOINT_URL"}
    if "AWS_ENDPOINT_URL" in options:
        config["aws_endpoint"] = options["AWS_ENDPOINT_URL"]
    return S3Store(bucket, config=cast("S3Config", config))


def _delete_quietly(store: S3Store, key: str) -> None:
    import obstore

    try:
        obstore.delete(store, key)
    except (OSError, RuntimeError):
        pass  # a leftover probe object is harmless (its key is unique)


def _store_name(home: str, options: dict[str, str]) -> str:
    endpoint = options.get("AWS_ENDPOINT_URL", "AWS S3")
    return f"the object store at {endpoint} ({home})"
