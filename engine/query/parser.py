"""Query parser: query text -> AST (the grammar is in docs/query-language.md).

Every node gets ``pos``, the 1-based column of its first token; columns of literals, names
and options are recorded with :mod:`engine.query.positions` for the binder's messages.
``AND``/``OR`` chains are flattened (``a AND (b AND c)`` -> one ``And`` of three items) and a
single operand is never wrapped. Literals are kept as written: a timestamp given as an ISO
string stays a ``str`` until :func:`engine.query.binder.bind` checks it against the schema.

Keywords are case-insensitive and reserved: an attribute, property, event or consent purpose
whose name is a keyword (``count``, ``last``, ``all``...) must be double-quoted (``"count" > 2``);
a keyword where a name belongs is an error that shows the quoted form.

Nesting is bounded: more than ``MAX_DEPTH`` levels of parentheses and ``NOT`` (a DID's WHERE
counts one level) is an error at the first level too many. The boolean structure is parsed
with an explicit stack, so no query text can exhaust Python's recursion limit here, and the
bound keeps every later stage (binder, rules, planner, executor, shard messages, protobuf
plans) well within theirs.

>>> parse("age >= 30 and not vip = true")
And(items=(Compare(name='age', op='>=', value=30), Not(item=Compare(name='vip', op='=', value=True))))
>>> parse("signup_at > NOW - 7d")
Compare(name='signup_at', op='>', value=Now(offset_ms=-604800000))
"""
from __future__ import annotations

from engine.errors import QueryError
from engine.query.ast import (
    AGG_FUNCS,
    CMP_OPS,
    Aggregate,
    All,
    And,
    Between,
    Bucket,
    Compare,
    Consented,
    Did,
    Has,
    In,
    IsNull,
    Node,
    Not,
    Now,
    Or,
    Sample,
    SegmentRef,
    Sequence,
    SeqStep,
    Value,
)
from engine.query.positions import set_columns
from engine.query.tokens import Token, tokenize

_TOP_LEVEL_ONLY = ("DID", "CONSENTED", "SEGMENT", "SAMPLE", "SEQUENCE", "BUCKET")
#: Keywords that follow an attribute name in a predicate (``x IN``, ``x IS NULL``...).
_PREDICATE_WORDS = ("IN", "NOT", "BETWEEN", "IS", "HAS")
#: The deepest nesting of parentheses and NOTs a query may have (a DID's WHERE counts one level).
MAX_DEPTH = 64


def parse(text: str) -> Node:
    """Parse query text into an AST; QueryError (with column and token) on any syntax error."""
    return _Parser(text).parse_all()


class _Parser:
    """One parse: a token list and a cursor."""

    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0  # a DID's WHERE is one level deeper than the DID
        self.stacks: list[list[_Group]] = []  # the open groups of every parse_or under way

    # -- token helpers -------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at(self, kind: str, value: object = None) -> bool:
        tok = self.tok
        return tok.kind == kind and (value is None or tok.value == value)

    def accept(self, kind: str, value: object = None) -> Token | None:
        return self.advance() if self.at(kind, value) else None

    def error(self, message: str, tok: Token | None = None) -> QueryError:
        tok = tok or self.tok
        if tok.kind == "eof":
            return QueryError("unexpected end of query", tok.column)
        return QueryError(message, tok.column, tok.text)

    def expect(self, kind: str, value: object = None, what: str | None = None) -> Token:
        if self.at(kind, value):
            return self.advance()
        if kind == "name" and self.tok.kind == "keyword":
            raise self.keyword_as_name()
        raise self.error(f"expected {what or repr(value)}")

    def expect_keyword(self, word: str) -> Token:
        return self.expect("keyword", word, word)

    # -- boolean structure ---------------------------------------------------------------

    def parse_all(self) -> Node:
        if self.at("eof"):
            raise QueryError("empty query", self.tok.column)
        node = self.parse_or(in_where=False)
        if not self.at("eof"):
            raise self.error("unexpected token")
        return node

    def parse_or(self, in_where: bool) -> Node:
        """or_expr up to the first token that cannot continue it (iterative: no recursion per level)."""
        stack = [_Group(self.tok.column, None)]
        self.stacks.append(stack)
        while True:
            group = stack[-1]
            group.mark(self.tok.column)
            while self.at("keyword", "NOT"):
                self._deeper()
                group.nots.append(self.advance().column)
            if self.at("op", "("):
                self._deeper()
                open_tok = self.advance()
                stack.append(_Group(self.tok.column, open_tok))
                continue
            operand = self.parse_atom(in_where)
            while True:
                group = stack[-1]
                group.add(operand)
                if self.accept("keyword", "AND"):
                    break
                if self.accept("keyword", "OR"):
                    group.end_and()
                    break
                result = group.result()
                if group.open is None:
                    self.stacks.pop()
                    return result
                self.expect("op", ")", "')'")
                stack.pop()
                operand = result

    def _deeper(self) -> None:
        """Count one more level of nesting (a NOT or a parenthesis) and refuse past MAX_DEPTH."""
        depth = self.depth + 1 + sum(len(g.nots) + (g.open is not None) for s in self.stacks for g in s)
        if depth > MAX_DEPTH:
            raise self.error(f"query nests deeper than {MAX_DEPTH} levels of parentheses and NOT")

    def parse_atom(self, in_where: bool) -> Node:
        """A predicate or ALL (parenthesised groups are handled by :meth:`parse_or`)."""
        tok = self.tok
        if tok.kind == "name":
            return self.parse_attr_pred()
        if tok.kind == "keyword":
            if tok.value == "ALL":
                self.advance()
                return All(pos=tok.column)
            if tok.value in _TOP_LEVEL_ONLY:
                if in_where:
                    raise self.error(f"{tok.value} is not allowed inside WHERE")
                return getattr(self, f"parse_{tok.value.lower()}")()
            after = self.tokens[self.i + 1]
            if (after.kind == "op" and after.value in CMP_OPS) or (
                    tok.value not in ("AND", "OR") and after.kind == "keyword" and after.value in _PREDICATE_WORDS):
                raise self.keyword_as_name()
        raise self.error("unexpected token")

    def keyword_as_name(self) -> QueryError:
        """The error for a keyword where a name belongs, showing the name's quoted form."""
        text = self.tok.text
        return self.error(f"{text} is a keyword; write a name spelled like a keyword double-quoted: \"{text}\"")

    # -- attribute predicates ------------------------------------------------------------

    def parse_attr_pred(self) -> Node:
        name_tok = self.advance()
        name, pos = name_tok.value, name_tok.column
        tok = self.tok
        if tok.kind == "op" and tok.value in CMP_OPS:
            self.advance()
            value, vcol = self.parse_literal()
            return self._with(Compare(name, tok.value, value, pos=pos), op=tok.column, value=vcol)
        if tok.kind != "keyword":
            raise self.error("expected an operator")
        negated = False
        if tok.value == "NOT":
            self.advance()
            negated = True
            if not (self.at("keyword", "IN") or self.at("keyword", "BETWEEN")):
                raise self.error("expected IN or BETWEEN")
        word = self.advance().value
        if word == "IN":
            values, cols = self.parse_literal_list()
            return self._with(In(name, values, negated, pos=pos), op=tok.column, values=cols)
        if word == "BETWEEN":
            lo, lo_col = self.parse_literal()
            self.expect_keyword("AND")
            hi, hi_col = self.parse_literal()
            node = Between(name, lo, hi, negated, pos=pos)
            return self._with(node, op=tok.column, lo=lo_col, hi=hi_col)
        if word == "IS":
            negated = bool(self.accept("keyword", "NOT"))
            self.expect_keyword("NULL")
            return self._with(IsNull(name, negated, pos=pos), op=tok.column)
        if word == "HAS":
            mode_tok = self.accept("keyword", "ANY") or self.accept("keyword", "ALL")
            if mode_tok:
                values, cols = self.parse_literal_list()
                node = Has(name, mode_tok.value.lower(), values, pos=pos)  # type: ignore[arg-type]
                return self._with(node, op=tok.column, values=cols)
            value, vcol = self.parse_literal()
            node = Has(name, "one", (value,), pos=pos)  # type: ignore[arg-type]
            return self._with(node, op=tok.column, values=(vcol,))
        raise self.error("expected an operator", tok)

    @staticmethod
    def _with(node: Node, **columns: object) -> Node:
        set_columns(node, columns)
        return node

    def parse_literal_list(self) -> tuple[tuple[Value, ...], tuple[int, ...]]:
        self.expect("op", "(", "'('")
        values, cols = [], []
        while True:
            value, col = self.parse_literal()
            values.append(value)
            cols.append(col)
            if not self.accept("op", ","):
                break
        self.expect("op", ")", "')'")
        return tuple(values), tuple(cols)

    def parse_literal(self) -> tuple[Value, int]:
        """literal = string | [-]number | TRUE | FALSE | NOW [(+|-) duration]; returns (value, column)."""
        tok = self.tok
        if tok.kind in ("string", "number"):
            self.advance()
            return tok.value, tok.column  # type: ignore[return-value]
        if tok.kind == "op" and tok.value == "-":
            self.advance()
            num = self.expect("number", None, "a number after '-'")
            return -num.value, tok.column  # type: ignore[operator]
        if tok.kind == "keyword" and tok.value in ("TRUE", "FALSE"):
            self.advance()
            return tok.value == "TRUE", tok.column
        if tok.kind == "keyword" and tok.value == "NOW":
            return self.parse_now(), tok.column
        raise self.error("expected a literal")

    def parse_now(self) -> Now:
        self.expect_keyword("NOW")
        sign = self.accept("op", "-") or self.accept("op", "+")
        if not sign:
            return Now(0)
        ms = self.expect("duration", None, "a duration like 7d").value
        return Now(-ms if sign.value == "-" else ms)  # type: ignore[operator]

    # -- behavioural and special predicates ----------------------------------------------

    def parse_did(self) -> Node:
        did = self.expect_keyword("DID")
        self.expect("op", "(", "'('")
        event = self.expect("name", None, "an event name")
        fields: dict[str, object] = {}
        cols: dict[str, object] = {"event": event.column}
        if self.accept("keyword", "WHERE"):
            self.depth += 1
            fields["where"] = self.parse_or(in_where=True)
            self.depth -= 1
        aggregates: list[Aggregate] = []
        while self.accept("op", ","):
            opt = self.tok
            if opt.kind == "keyword" and opt.value in AGG_FUNCS:
                aggregates.append(self.parse_aggregate())
                continue
            if opt.kind != "keyword" or opt.value not in ("COUNT", "WITHIN", "SINCE", "BEFORE", "AFTER"):
                raise self.error("expected COUNT, SUM, AVG, MIN, MAX, WITHIN, SINCE, BEFORE or AFTER LAST")
            if opt.value in cols:
                raise self.error(f"duplicate {opt.value} option")
            self.advance()
            cols[opt.value] = opt.column
            if opt.value == "COUNT":
                op = self.tok
                if not (op.kind == "op" and op.value in CMP_OPS):
                    raise self.error("expected a comparison operator after COUNT")
                self.advance()
                n = self.tok
                if n.kind != "number" or not isinstance(n.value, int):
                    raise self.error("COUNT needs a non-negative integer")
                self.advance()
                fields["count_op"], fields["count_n"] = op.value, n.value
                cols["count_n"] = n.column
            elif opt.value == "WITHIN":
                dur = self.expect("duration", None, "a duration like 7d")
                fields["within_ms"], cols["within_ms"] = dur.value, dur.column
            elif opt.value in ("SINCE", "BEFORE"):
                key = opt.value.lower()
                fields[key], cols[key] = self.parse_when()
            else:
                self.expect_keyword("LAST")
                last = self.expect("name", None, "an event name")
                fields["after_last"], cols["after_last"] = last.value, last.column
        self.expect("op", ")", "')'")
        if aggregates:
            fields["aggregates"] = tuple(aggregates)
            if "COUNT" not in cols:  # no implicit COUNT >= 1 next to an aggregate
                fields["count_op"], fields["count_n"] = ">=", 0
        return self._with(Did(event.value, pos=did.column, **fields), **cols)  # type: ignore[arg-type]

    def parse_aggregate(self) -> Aggregate:
        """agg "(" property ")" cmp number, as a DID option."""
        func = self.advance()
        self.expect("op", "(", "'('")
        prop = self.expect("name", None, "a property name")
        self.expect("op", ")", "')'")
        op = self.tok
        if not (op.kind == "op" and op.value in CMP_OPS):
            raise self.error(f"expected a comparison operator after {func.value}(...)")
        self.advance()
        value_tok = self.tok
        value, vcol = self.parse_literal()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{func.value} needs a number to compare with", value_tok)
        node = Aggregate(func.value, prop.value, op.value, value, pos=func.column)  # type: ignore[arg-type]
        return self._with(node, prop=prop.column, op=op.column, value=vcol)  # type: ignore[return-value]

    def parse_sequence(self) -> Node:
        kw = self.expect_keyword("SEQUENCE")
        self.expect("op", "(", "'('")
        steps = [self.parse_step()]
        while self.accept("keyword", "THEN"):
            steps.append(self.parse_step())
        if len(steps) < 2:
            raise self.error("SEQUENCE needs at least two steps: step THEN step")
        fields: dict[str, object] = {}
        cols: dict[str, object] = {}
        while self.accept("op", ","):
            opt = self.tok
            if opt.kind != "keyword" or opt.value not in ("SPAN", "WITHIN", "SINCE", "BEFORE"):
                raise self.error("expected SPAN, WITHIN, SINCE or BEFORE")
            if opt.value in cols:
                raise self.error(f"duplicate {opt.value} option")
            self.advance()
            cols[opt.value] = opt.column
            if opt.value in ("SPAN", "WITHIN"):
                dur = self.expect("duration", None, "a duration like 7d")
                key = "span_ms" if opt.value == "SPAN" else "within_ms"
                fields[key], cols[key] = dur.value, dur.column
            else:
                key = opt.value.lower()
                fields[key], cols[key] = self.parse_when()
        self.expect("op", ")", "')'")
        return self._with(Sequence(tuple(steps), pos=kw.column, **fields), **cols)  # type: ignore[arg-type]

    def parse_step(self) -> SeqStep:
        """step = event_name [ WHERE prop_query ]."""
        event = self.expect("name", None, "an event name")
        where = None
        if self.accept("keyword", "WHERE"):
            self.depth += 1
            where = self.parse_or(in_where=True)
            self.depth -= 1
        node = SeqStep(event.value, where, pos=event.column)  # type: ignore[arg-type]
        return self._with(node, event=event.column)  # type: ignore[return-value]

    def parse_bucket(self) -> Node:
        kw = self.expect_keyword("BUCKET")
        self.expect("op", "(", "'('")
        seed, scol = self.parse_int("BUCKET seed must be an integer")
        self.expect("op", ")", "')'")
        tok = self.tok
        if tok.kind == "op" and tok.value in CMP_OPS:
            self.advance()
            value, vcol = self.parse_int("BUCKET is compared with integers")
            node = Bucket(seed, tok.value, (value,), pos=kw.column)  # type: ignore[arg-type]
            return self._with(node, seed=scol, op=tok.column, values=(vcol,))
        negated = bool(self.accept("keyword", "NOT"))
        word = self.tok
        if self.accept("keyword", "BETWEEN"):
            lo, lo_col = self.parse_int("BUCKET is compared with integers")
            self.expect_keyword("AND")
            hi, hi_col = self.parse_int("BUCKET is compared with integers")
            node = Bucket(seed, "BETWEEN", (lo, hi), negated, pos=kw.column)
            return self._with(node, seed=scol, op=tok.column, values=(lo_col, hi_col))
        if self.accept("keyword", "IN"):
            self.expect("op", "(", "'('")
            values, cols = [], []
            while True:
                value, col = self.parse_int("BUCKET is compared with integers")
                values.append(value)
                cols.append(col)
                if not self.accept("op", ","):
                    break
            self.expect("op", ")", "')'")
            node = Bucket(seed, "IN", tuple(values), negated, pos=kw.column)
            return self._with(node, seed=scol, op=tok.column, values=tuple(cols))
        raise self.error("expected a comparison, BETWEEN or IN after BUCKET(seed)", word if negated else tok)

    def parse_int(self, message: str) -> tuple[int, int]:
        """An integer literal (optionally negative); returns (value, column)."""
        tok = self.tok
        value, col = self.parse_literal()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(message, tok)
        return value, col

    def parse_when(self) -> tuple[str | int | Now, int]:
        """when = string (ISO 8601) | integer (epoch ms) | NOW time."""
        tok = self.tok
        if tok.kind == "keyword" and tok.value == "NOW":
            return self.parse_now(), tok.column
        message = "expected an ISO 8601 string, epoch milliseconds or NOW"
        if tok.kind in ("string", "number") or (tok.kind == "op" and tok.value == "-"):
            value, col = self.parse_literal()
            if isinstance(value, (str, int)):
                return value, col
            raise self.error(message, tok)
        raise self.error(message)

    def parse_consented(self) -> Node:
        kw = self.expect_keyword("CONSENTED")
        self.expect("op", "(", "'('")
        purpose = self.expect("name", None, "a consent purpose")
        self.expect("op", ")", "')'")
        node = Consented(purpose.value, pos=kw.column)  # type: ignore[arg-type]
        return self._with(node, purpose=purpose.column)

    def parse_segment(self) -> Node:
        kw = self.expect_keyword("SEGMENT")
        self.expect("op", "(", "'('")
        name = self.expect("string", None, "a segment name string")
        self.expect("op", ")", "')'")
        return self._with(SegmentRef(name.value, pos=kw.column), name=name.column)  # type: ignore[arg-type]

    def parse_sample(self) -> Node:
        kw = self.expect_keyword("SAMPLE")
        self.expect("op", "(", "'('")
        ptok = self.tok
        percent, pcol = self.parse_literal()
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise self.error("SAMPLE needs a percentage number", ptok)
        seed, scol = 0, None
        if self.accept("op", ","):
            stok = self.tok
            seed, scol = self.parse_literal()  # type: ignore[assignment]
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise self.error("SAMPLE seed must be an integer", stok)
        self.expect("op", ")", "')'")
        return self._with(Sample(percent, seed, pos=kw.column), percent=pcol, seed=scol)


class _Group:
    """One open level of :meth:`_Parser.parse_or`: the query, or a parenthesised group."""

    def __init__(self, start: int, open_tok: Token | None) -> None:
        self.open = open_tok
        self.or_start = start
        self.or_items: list[Node] = []
        self.and_start = 0
        self.and_items: list[Node] = []
        self.nots: list[int] = []  # columns of the NOTs before the operand being parsed

    def mark(self, column: int) -> None:
        """Note where an AND chain starts (at its first operand)."""
        if not self.and_items and not self.nots:
            self.and_start = column

    def add(self, operand: Node) -> None:
        """Append an operand to the AND chain, wrapped in the NOTs written before it."""
        while self.nots:
            operand = Not(operand, pos=self.nots.pop())
        self.and_items.append(operand)

    def end_and(self) -> None:
        """Close the AND chain as one operand of the OR chain."""
        self.or_items.append(_chain(And, self.and_items, self.and_start))
        self.and_items = []

    def result(self) -> Node:
        """The group's node: its OR chain (a single operand unwrapped)."""
        self.end_and()
        return _chain(Or, self.or_items, self.or_start)


def _chain(cls: type[And] | type[Or], items: list[Node], start: int) -> Node:
    """``items`` joined by ``cls``, nested operands of the same class flattened."""
    if len(items) == 1:
        return items[0]
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, cls) else (item,))
    return cls(tuple(flat), pos=start)
