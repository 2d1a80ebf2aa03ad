"""Strict YAML reading shared by pricebooks and accounts: every error names file and field.

PyYAML silently keeps the last of two equal keys and reads `2.49` as a binary float; billing
config must not do either, so duplicate keys are errors and decimals must be quoted strings or
integers.

Parsing uses libyaml (PyYAML's C parser) when PyYAML was built with it: the accounts file of a
few thousand customers parses in a fraction of the pure-Python time. Tags and constructors are
the same SafeLoader ones either way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import yaml

from usagebox_pipelines.errors import UsageboxError

MAX_DECIMAL_PLACES = 12
MAX_ABS = Decimal(10) ** 18
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """SafeLoader (libyaml's when available) that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def display(path: Path) -> str:
    """The path as users typed it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Where:
    """A file plus a field path (`rates[3].tiers.steps[1].up_to`) for error messages."""

    def __init__(self, file: str, error: type[UsageboxError], path: str = "") -> None:
        self.file = file
        self.error = error
        self.path = path

    def key(self, name: str) -> Where:
        return Where(self.file, self.error, f"{self.path}.{name}" if self.path else name)

    def item(self, index: int) -> Where:
        return Where(self.file, self.error, f"{self.path}[{index}]")

    def fail(self, message: str) -> NoReturn:
        prefix = f"{self.file}: {self.path}: " if self.path else f"{self.file}: "
        raise self.error(prefix + message)


def read_bytes(path: Path, error: type[UsageboxError]) -> bytes:
    """The file's bytes; an unreadable file is a user error naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"{display(path)}: cannot read: {exc.strerror or exc}") from None


def load_yaml(path: Path, error: type[UsageboxError]) -> Any:
    """Parse one YAML file strictly; syntax errors and duplicate keys name file and line."""
    return parse_yaml(read_bytes(path, error), path, error)


def parse_yaml(data: bytes, path: Path, error: type[UsageboxError]) -> Any:
    """Parse the bytes of the YAML file `path` strictly (UTF-8), like `load_yaml`."""
    text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - strict SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{display(path)}: invalid YAML{where}: {problem}") from None


def mapping(value: Any, where: Where, allowed: set[str], required: set[str] = frozenset()) -> dict:
    """A mapping with only `allowed` keys and every `required` one."""
    if not isinstance(value, Mapping):
        where.fail(f"must be a mapping, got {_kind(value)}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        where.key(unknown[0]).fail(f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for name in sorted(required):
        if name not in value or value[name] is None:
            where.key(name).fail("required")
    return dict(value)


def text(value: Any, where: Where, *, pattern: re.Pattern[str] | None = None) -> str:
    """A non-empty string (YAML dates are accepted as their ISO text)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = value.isoformat()
    if not isinstance(value, str) or not value.strip():
        where.fail(f"must be a non-empty string, got {_kind(value)}")
    if pattern is not None and not pattern.match(value):
        where.fail(f"invalid value {value!r}")
    return value


def decimal(
    value: Any, where: Where, *, minimum: Decimal | None = None, positive: bool = False
) -> Decimal:
    """An exact decimal from a quoted string or an integer; floats are refused."""
    if isinstance(value, bool) or value is None:
        where.fail(f"must be a decimal, got {_kind(value)}")
    if isinstance(value, float):
        where.fail(f'write decimals as quoted strings, e.g. "{value}" (YAML floats are inexact)')
    if isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            where.fail(f"not a decimal: {value!r}")
    else:
        where.fail(f"must be a decimal, got {_kind(value)}")
    if not result.is_finite():
        where.fail(f"must be finite, got {value!r}")
    if result.as_tuple().exponent < -MAX_DECIMAL_PLACES:  # type: ignore[operator]
        where.fail(f"at most {MAX_DECIMAL_PLACES} decimal places, got {value!r}")
    if abs(result) >= MAX_ABS:
        where.fail(f"too large: {value!r}")
    if positive and result <= 0:
        where.fail(f"must be greater than 0, got {value!r}")
    if minimum is not None and result < minimum:
        where.fail(f"must be at least {minimum}, got {value!r}")
    return result


def integer(value: Any, where: Where, *, minimum: int = 0) -> int:
    """A plain integer (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"must be an integer, got {_kind(value)}")
    if value < minimum:
        where.fail(f"must be at least {minimum}, got {value}")
    return value


def utc_hour(value: Any, where: Where) -> datetime:
    """An offset-aware timestamp aligned to a UTC hour, as a UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            where.fail(f"not an RFC 3339 timestamp: {value!r}")
    if not isinstance(value, datetime):
        where.fail("must be a timestamp with offset, e.g. 2026-10-01T00:00:00Z")
    if value.tzinfo is None or value.utcoffset() is None:
        where.fail("needs a UTC offset or Z, e.g. 2026-10-01T00:00:00Z")
    value = value.astimezone(UTC)
    if (value.minute, value.second, value.microsecond) != (0, 0, 0):
        where.fail(f"must be aligned to a UTC hour, got {value.isoformat()}")
    return value


def scalar_text(value: Any, where: Where) -> str:
    """A dimension value as it appears in canonical JSON text (true/false, 1, h100)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str) and str(value) != "":
        return str(value)
    where.fail(f"must be a string, integer or boolean, got {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
