"""Compact keys for the exactly-once lookup over all history (pure Polars).

Dedupe compares an arriving event with every accepted event of the same (account_id, event_id),
over all history. Reading the ids of all history for every chunk grows with history; instead
each accepted row leaves a 64-bit hash of its key in the `event_keys` index, with the
`raw_events` partition (`event_date`) and batch holding it. A lookup scans only those 8-byte
hashes, then reads exactly the partitions and batches that can match, and compares there with
the real ids: a hash only narrows where to look, so a collision costs a read, never a wrong
answer.

A correction also leaves a *target* hash of (account_id, correction_of) under another seed, so a
later correction of the same original finds the earlier ones, and an original arriving after
its corrections finds them.

Polars does not promise the same hash across versions: `hash_canary()` is the hash of fixed
keys, stored with every index commit; when it changes, the index is rebuilt from `raw_events`.
"""

from __future__ import annotations

import polars as pl

OWN_SEED = 0x5EED_0001
TARGET_SEED = 0x5EED_0002
INDEX_COLUMNS = ["key", "event_date"]


def key_hash(account_id: pl.Expr, event_id: pl.Expr, seed: int | None = None) -> pl.Expr:
    """Signed 64-bit hash of (account_id, event_id) (Delta has no unsigned integers);
    `seed` defaults to `OWN_SEED`."""
    return (
        pl.struct(account_id.alias("a"), event_id.alias("e"))
        .hash(seed=OWN_SEED if seed is None else seed)
        .reinterpret(signed=True)
        .alias("key")
    )


def target_hash(account_id: pl.Expr, correction_of: pl.Expr) -> pl.Expr:
    """The hash a correction leaves for the event it corrects (another seed than own keys)."""
    return key_hash(account_id, correction_of, TARGET_SEED)


def index_rows(accepted: pl.DataFrame, *extra: str) -> pl.DataFrame:
    """`key`, `event_date` (and `extra` columns) of accepted rows: one own key each, plus a
    target key per correction.

    `accepted` has account_id, event_id, correction_of and event_date (the row's partition).
    """
    keep = ["event_date", *extra]
    own = accepted.select(key_hash(pl.col("account_id"), pl.col("event_id")), *keep)
    corrections = accepted.filter(pl.col("correction_of").is_not_null())
    if corrections.height == 0:
        return own
    target = corrections.select(target_hash(pl.col("account_id"), pl.col("correction_of")), *keep)
    return pl.concat([own, target])


def probe_keys(valid: pl.DataFrame) -> pl.Series:
    """Hashes whose index entries locate every accepted row the chunk must be compared with.

    The rows sharing a key with the chunk (duplicates, conflicts), the originals and earlier
    corrections its corrections point at (own keys of the targets), and the earlier
    corrections of the same originals (target keys of the targets).
    """
    corrections = valid.filter(pl.col("correction_of").is_not_null())
    parts = [valid.select(key_hash(pl.col("account_id"), pl.col("event_id")))]
    if corrections.height:
        parts += [
            corrections.select(key_hash(pl.col("account_id"), pl.col("correction_of"))),
            corrections.select(target_hash(pl.col("account_id"), pl.col("correction_of"))),
        ]
    return pl.concat(parts)["key"].unique()


def hash_canary() -> str:
    """The hashes of two fixed keys: equal across runs exactly when `key_hash` is."""
    sample = pl.DataFrame({"a": ["acct-001", "ü"], "e": ["evt-1", "\x00'\""]})
    own = sample.select(key_hash(pl.col("a"), pl.col("e")))["key"].to_list()
    target = sample.select(target_hash(pl.col("a"), pl.col("e")))["key"].to_list()
    return ",".join(str(v) for v in own + target)
