"""The plan cache: query text -> (plan, the saved segments it reads, the bound query), compiled once."""
from __future__ import annotations

import threading
from collections import OrderedDict

from .errors import QueryError
from .plan import Step, plan
from .query import Node, bind, parse
from .schema import Schema
from .segment_time import segment_refs


class PlanCache:
    """LRU cache of compiled plans, the saved segments each reads, and the bound query, keyed by query text."""

    def __init__(self, schema: Schema, capacity: int = 4096):
        self.schema = schema
        self.capacity = capacity
        self.entries: OrderedDict[str, tuple[Step, frozenset[str], Node]] = OrderedDict()
        self.lock = threading.Lock()

    def compiled(self, text: str) -> tuple[Step, frozenset[str], Node]:
        """(plan, saved segments it reads, bound query) of ``text``, parsed, bound and planned once."""
        with self.lock:
            hit = self.entries.get(text)
            if hit is not None:
                self.entries.move_to_end(text)
                return hit
        node = bind(parse(text), self.schema)
        step = plan(node)
        hit = (step, segment_refs(step), node)
        with self.lock:
            self.entries[text] = hit
            if len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        return hit

    def entry(self, text: str) -> tuple[Step, frozenset[str]]:
        """(plan, saved segments it reads) of ``text``."""
        step, refs, _ = self.compiled(text)
        return step, refs

    def entry_list(self, texts: list[str], argument: str) -> tuple[list[Step], frozenset[str]]:
        """The plans of ``texts`` and every saved segment they read; a QueryError names the argument and
        the query's position in it."""
        steps, refs = [], frozenset()
        for position, text in enumerate(texts):
            try:
                step, reads = self.entry(text)
            except QueryError as error:
                raise QueryError(f"argument {argument!r}, query {position}: {error}") from None
            steps.append(step)
            refs |= reads
        return steps, refs

    def get(self, text: str) -> Step:
        """The plan of ``text``."""
        return self.entry(text)[0]
