"""segengine: an in-memory segmentation engine (public API: Engine, Schema, QueryError, DataError)."""
from .engine import Engine
from .errors import DataError, QueryError, SegengineError
from .schema import Schema

__all__ = ["Engine", "Schema", "QueryError", "DataError", "SegengineError"]
