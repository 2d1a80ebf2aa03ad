"""The one exception type for user errors: the CLI prints it as one line and exits 2."""


class UsageboxError(Exception):
    """A problem with the user's input or request (file, row, field, option), not a bug."""


class InvariantError(UsageboxError):
    """A stored-data invariant or blocking check failed (exit code 1)."""
