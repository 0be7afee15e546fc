"""One root error for segengine; each subclass knows its gRPC status code name."""
from __future__ import annotations


class SegengineError(Exception):
    """Root of every error segengine raises on purpose."""

    grpc_status: str = "INTERNAL"


#: Longest token (in characters) quoted whole in an error message; longer ones are cut with "...".
MAX_QUOTED_TOKEN = 60


def quoted(value: object, limit: int = MAX_QUOTED_TOKEN) -> str:
    """``repr(value)`` for an error message, cut after ``limit`` characters of a long value.

    >>> quoted("ab"), quoted("x" * 100, 5)
    ("'ab'", "'xxxxx...'")
    """
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit] + "...")
    return repr(value)


class QueryError(SegengineError, ValueError):
    """A malformed or ill-typed segment query; the message names the 1-based column and token.

    A long token is quoted by its start (a 1 MB string literal makes no error message):

    >>> print(QueryError("unterminated string", 5, "y" * 100))
    unterminated string at column 5 near 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...'
    """

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, column: int | None = None, token: str | None = None):
        self.column = column
        self.token = token
        if column is not None:
            where = f"column {column}"
            if token is not None:
                where += f" near {quoted(token)}"
            message = f"{message} at {where}"
        super().__init__(message)


class DataError(SegengineError, ValueError):
    """A bad profile or event record; the message names the record and the field."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, record: int | str | None = None, field: str | None = None):
        self.record = record
        self.field = field
        parts = []
        if record is not None:
            parts.append(f"record {record}" if isinstance(record, int) else str(record))
        if field is not None:
            parts.append(f"field {field!r}")
        if parts:
            message = f"{', '.join(parts)}: {message}"
        super().__init__(message)


class BadRequest(SegengineError, ValueError):
    """A request that cannot be read at all (e.g. bytes that are not a valid message)."""

    grpc_status = "INVALID_ARGUMENT"


class SegmentNotFound(SegengineError, KeyError):
    """A saved segment name that does not exist."""

    grpc_status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "segment not found"


class ProfileNotFound(SegengineError, KeyError):
    """A profile id that is not live."""

    grpc_status = "NOT_FOUND"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "profile not found"


class ShardError(SegengineError, RuntimeError):
    """A shard worker died or failed while serving a request."""

    grpc_status = "UNAVAILABLE"


class SegmentExists(SegengineError):
    """Creating a saved segment whose name is taken (without asking to replace it)."""

    grpc_status = "ALREADY_EXISTS"


class SegmentInUse(SegengineError):
    """Deleting a saved segment that another saved segment reads."""

    grpc_status = "FAILED_PRECONDITION"


class WatchOverflow(SegengineError):
    """A change-stream subscriber fell more changes behind than its buffer holds; it was dropped."""

    grpc_status = "RESOURCE_EXHAUSTED"


class DataCorruption(SegengineError, RuntimeError):
    """A data directory whose log or snapshot fails its checksums: refused, never served."""

    grpc_status = "DATA_LOSS"


class DataDirMismatch(SegengineError, ValueError):
    """A data directory written with another schema or shard count, already in use, or missing."""

    grpc_status = "FAILED_PRECONDITION"


class SchemaChangeRefused(SegengineError, ValueError):
    """A new schema removes or retypes something of the current one (a schema may only grow)."""

    grpc_status = "FAILED_PRECONDITION"


class PermissionDenied(SegengineError):
    """The caller's token does not allow this call (merge, erase and export need the admin token)."""

    grpc_status = "PERMISSION_DENIED"


class DestinationNotFound(SegengineError, KeyError):
    """A destination (webhook) name that does not exist."""

    grpc_status = "NOT_FOUND"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "destination not found"


class DestinationExists(SegengineError):
    """Adding a destination whose name is taken."""

    grpc_status = "ALREADY_EXISTS"


class LookalikeError(SegengineError, ValueError):
    """A lookalike request that cannot be served: an empty seed, a seed covering every candidate, a bad size."""

    grpc_status = "INVALID_ARGUMENT"


class MissingExtra(SegengineError, RuntimeError):
    """A feature that needs an optional dependency which is not installed (the message names the extra)."""

    grpc_status = "FAILED_PRECONDITION"
