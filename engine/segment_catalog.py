"""Saved segment definitions: ``SegmentCatalog`` holds them (name -> query text, plan, the segments
it reads) and refuses unknown references and reference cycles; the coordinator and every shard
keep one.

>>> from engine.plan.steps import Pred, Universe
>>> from engine.query.ast import SegmentRef
>>> catalog = SegmentCatalog()
>>> catalog.put(catalog.prepare("a", "ALL", Universe(), now=0))
>>> catalog.put(catalog.prepare("b", "SEGMENT('a')", Pred(SegmentRef("a")), now=0))
>>> catalog.order
['a', 'b']
>>> catalog.prepare("a", "SEGMENT('b')", Pred(SegmentRef("b")), now=0)
Traceback (most recent call last):
...
engine.errors.QueryError: segment reference cycle: a -> b -> a
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import QueryError, SegmentInUse, SegmentNotFound, quoted
from .plan.steps import Step
from .segment_time import is_clocked, segment_refs


@dataclass(frozen=True)
class SegmentDef:
    """One saved segment's definition."""

    name: str
    text: str
    step: Step
    refs: frozenset[str]
    clocked: bool
    created_ms: int
    updated_ms: int


def check_segment_name(name: object) -> str:
    """``name`` if it can name a saved segment (QueryError otherwise)."""
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 256:
        raise QueryError("a segment name must be a non-empty string of at most 256 UTF-8 bytes")
    return name


@dataclass
class SegmentCatalog:
    """Saved segment definitions, their dependencies and a dependency (topological) order."""

    defs: dict[str, SegmentDef] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    clocked: bool = False  # some segment is time-relative

    def __contains__(self, name: str) -> bool:
        return name in self.defs

    def __len__(self) -> int:
        return len(self.defs)

    def get(self, name: str) -> SegmentDef:
        """The definition of ``name`` (SegmentNotFound if unknown)."""
        try:
            return self.defs[name]
        except KeyError:
            raise SegmentNotFound(f"unknown segment {quoted(name)}") from None

    def check_refs(self, refs: frozenset[str]) -> None:
        """Raise SegmentNotFound for the first (sorted) unknown name in ``refs``."""
        for name in sorted(refs):
            if name not in self.defs:
                raise SegmentNotFound(f"unknown segment {quoted(name)}")

    def prepare(self, name: str, text: str, step: Step, now: int) -> SegmentDef:
        """A definition of ``name`` as ``step``, checked against this catalog (not yet stored).

        Raises SegmentNotFound for a reference to an unknown segment and QueryError for a
        reference cycle (``a -> b -> a``), naming the cycle.
        """
        check_segment_name(name)
        refs = segment_refs(step)
        self.check_refs(refs - {name})
        path = self._path_to(name, refs)
        if path is not None:
            raise QueryError("segment reference cycle: " + " -> ".join([name, *path]))
        old = self.defs.get(name)
        return SegmentDef(name, text, step, refs, is_clocked(step), old.created_ms if old else now, now)

    def _path_to(self, target: str, starts: frozenset[str]) -> list[str] | None:
        """A reference path from one of ``starts`` to ``target`` (depth first), or None."""
        seen: set[str] = set()

        def walk(name: str) -> list[str] | None:
            if name == target:
                return [name]
            if name in seen or name not in self.defs:
                return None
            seen.add(name)
            for ref in sorted(self.defs[name].refs):
                tail = walk(ref)
                if tail is not None:
                    return [name, *tail]
            return None

        for start in sorted(starts):
            path = walk(start)
            if path is not None:
                return path
        return None

    def put(self, definition: SegmentDef) -> None:
        """Store a prepared definition and recompute the dependency order."""
        self.defs[definition.name] = definition
        self._reorder()

    def remove(self, name: str) -> SegmentDef:
        """Delete ``name``; SegmentInUse if another segment reads it."""
        definition = self.check_removable(name)
        del self.defs[name]
        self._reorder()
        return definition

    def check_removable(self, name: str) -> SegmentDef:
        """The definition of ``name``; SegmentNotFound if unknown, SegmentInUse if another segment reads it."""
        definition = self.get(name)
        users = self.readers(name)
        if users:
            raise SegmentInUse(f"segment {name!r} is read by {', '.join(repr(u) for u in users)}")
        return definition

    def readers(self, name: str) -> list[str]:
        """Segments that reference ``name`` directly, sorted."""
        return sorted(other for other, d in self.defs.items() if name in d.refs and other != name)

    def _reorder(self) -> None:
        """Kahn's algorithm, ties broken by name: dependencies before the segments reading them."""
        pending = {name: set(d.refs) & self.defs.keys() for name, d in self.defs.items()}
        order: list[str] = []
        ready = sorted(name for name, deps in pending.items() if not deps)
        while ready:
            name = ready.pop(0)
            order.append(name)
            del pending[name]
            for other, deps in pending.items():
                if name in deps:
                    deps.discard(name)
                    if not deps:
                        ready.append(other)
            ready.sort()
        self.order = order
        self.clocked = any(d.clocked for d in self.defs.values())

    def definitions(self) -> list[tuple[str, str]]:
        """(name, query text) of every segment in dependency order (re-creating them in this order works)."""
        return [(name, self.defs[name].text) for name in self.order]
