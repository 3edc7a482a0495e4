"""Segment predicates: a small, closed SQL expression language over feature columns.

A segment's ``where`` is parsed here, by our own parser, into a tree of allowed node types, and
only a canonical rendering of that tree ever reaches ``pl.sql_expr``. Polars' SQL layer is a whole
query engine (``read_csv('...')``, ``read_parquet``, subqueries and other table functions read
files and make HTTP requests while an expression is merely *built*), so handing it a user's text
would turn a config file into a file reader and an SSRF gadget. What is allowed:

* column references (bare or ``"double quoted"``) to the columns the caller names;
* literals: numbers, ``'strings'`` (``''`` for a quote; no backslashes), ``TRUE``, ``FALSE``,
  ``NULL``;
* comparisons ``= == != <> < <= > >=``, ``[NOT] LIKE`` / ``[NOT] ILIKE`` with a string pattern,
  ``IS [NOT] NULL``, ``IS [NOT] TRUE|FALSE``, ``[NOT] IN (literal, ...)``,
  ``[NOT] BETWEEN a AND b``;
* ``AND``, ``OR``, ``NOT``, parentheses, arithmetic ``+ - * / %`` and unary ``-``/``+``;
* the scalar functions in :data:`FUNCTIONS` (pure, one row in, one value out).

Anything else (another function, ``SELECT``, ``;``, comments, ``::`` casts, ``[...]``) is refused
before polars sees it, with a message that names the position. Because polars receives a fully
parenthesised rendering of the parsed tree rather than the user's text, the two parsers cannot
disagree about what the predicate means.

Example: ``compile_predicate("order_count >= 3 AND country IN ('DE', 'AT')", FEATURES)``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NoReturn

import polars as pl

MAX_PREDICATE_CHARS = 4_000
MAX_TOKENS = 600  # keeps the recursive parser and renderer far from Python's recursion limit
MAX_DEPTH = 32  # polars' SQL parser stops at 50 levels of nesting

# Scalar function -> allowed argument counts. Each is a pure row-wise function in polars SQL.
FUNCTIONS: dict[str, tuple[int, ...]] = {
    "ABS": (1,),
    "COALESCE": tuple(range(2, 9)),
    "LOWER": (1,),
    "UPPER": (1,),
    "LENGTH": (1,),
    "ROUND": (1, 2),
}

COMPARISONS = frozenset({"=", "==", "!=", "<>", "<", "<=", ">", ">="})
FLAT = frozenset({"AND", "OR"})  # associative: a chain is rendered without nested parentheses
KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IS", "NULL", "IN", "BETWEEN", "LIKE", "ILIKE", "TRUE", "FALSE"}
)


class PredicateError(ValueError):
    """A predicate is not in the allowed language; the message says where and why."""


# --- tokens ---------------------------------------------------------------------------------

TokenKind = Literal["name", "quoted", "number", "string", "op", "end"]


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str
    pos: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<quoted>"[A-Za-z_][A-Za-z0-9_]*")
  | (?P<string>'(?:[^'\\\x00-\x1f]|'')*')
  | (?P<op><>|!=|==|<=|>=|[=<>+\-*/%(),])
    """,
    re.VERBOSE | re.ASCII,
)


def _tokens(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text.startswith(("--", "/*"), pos):
            raise PredicateError(f"comments are not allowed (position {pos + 1})")
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PredicateError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = match.lastgroup
        if kind != "space":
            tokens.append(Token(kind, match.group(), pos))  # type: ignore[arg-type]
        pos = match.end()
        if len(tokens) > MAX_TOKENS:
            raise PredicateError(f"more than {MAX_TOKENS} tokens")
    tokens.append(Token("end", "", len(text)))
    return tokens


# --- tree -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Lit:
    sql: str  # canonical SQL text of the literal


@dataclass(frozen=True)
class Unary:
    op: Literal["-", "+", "NOT"]
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str  # AND, OR, a comparison, LIKE/ILIKE (with NOT), or arithmetic
    left: Node
    right: Node


@dataclass(frozen=True)
class Is:
    operand: Node
    what: Literal["NULL", "TRUE", "FALSE"]
    negated: bool


@dataclass(frozen=True)
class In:
    operand: Node
    items: tuple[Lit, ...]
    negated: bool


@dataclass(frozen=True)
class Between:
    operand: Node
    low: Node
    high: Node
    negated: bool


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


Node = Column | Lit | Unary | Binary | Is | In | Between | Call


class _Parser:
    """Recursive descent; precedence from loosest: OR, AND, NOT, comparison, + -, * / %, unary."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    # helpers
    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def _keyword(self, *words: str) -> bool:
        t = self.token
        return t.kind == "name" and t.text.upper() in words

    def _take_keyword(self, word: str) -> bool:
        if self._keyword(word):
            self.i += 1
            return True
        return False

    def _take_op(self, *ops: str) -> str | None:
        t = self.token
        if t.kind == "op" and t.text in ops:
            self.i += 1
            return t.text
        return None

    def _expect_op(self, op: str) -> None:
        if self._take_op(op) is None:
            self._fail(f"expected {op!r}")

    def _fail(self, message: str) -> NoReturn:
        t = self.token
        found = "end of predicate" if t.kind == "end" else repr(t.text)
        raise PredicateError(f"{message}, found {found} at position {t.pos + 1}")

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise PredicateError(f"nested deeper than {MAX_DEPTH} levels")
            yield
        finally:
            self.depth -= 1

    # grammar
    def parse(self) -> Node:
        node = self.or_()
        if self.token.kind != "end":
            self._fail("expected AND, OR or the end of the predicate")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self._take_keyword("OR"):
            node = Binary("OR", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self._take_keyword("AND"):
            node = Binary("AND", node, self.not_())
        return node

    def not_(self) -> Node:
        if self._take_keyword("NOT"):
            with self._nested():
                return Unary("NOT", self.not_())
        return self.comparison()

    def comparison(self) -> Node:
        node = self.additive()
        op = self._take_op(*COMPARISONS)
        if op is not None:
            return Binary(op, node, self.additive())
        if self._take_keyword("IS"):
            negated = self._take_keyword("NOT")
            for word in ("NULL", "TRUE", "FALSE"):
                if self._take_keyword(word):
                    return Is(node, word, negated)
            self._fail("expected NULL, TRUE or FALSE after IS")
        negated = self._take_keyword("NOT")
        if self._keyword("LIKE", "ILIKE"):
            word = self.token.text.upper()
            self.i += 1
            pattern = self.primary()
            if not (isinstance(pattern, Lit) and pattern.sql.startswith("'")):
                raise PredicateError(f"{word} needs a 'string' pattern")
            return Binary(("NOT " if negated else "") + word, node, pattern)
        if self._take_keyword("IN"):
            self._expect_op("(")
            items = [self.literal()]
            while self._take_op(","):
                items.append(self.literal())
            self._expect_op(")")
            return In(node, tuple(items), negated)
        if self._take_keyword("BETWEEN"):
            low = self.additive()
            if not self._take_keyword("AND"):
                self._fail("expected AND in BETWEEN")
            return Between(node, low, self.additive(), negated)
        if negated:
            self._fail("expected LIKE, ILIKE, IN or BETWEEN after NOT")
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while (op := self._take_op("+", "-")) is not None:
            node = Binary(op, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while (op := self._take_op("*", "/", "%")) is not None:
            node = Binary(op, node, self.unary())
        return node

    def unary(self) -> Node:
        op = self._take_op("-", "+")
        if op is not None:
            with self._nested():
                return Unary(op, self.unary())  # type: ignore[arg-type]
        return self.primary()

    def literal(self) -> Lit:
        negative = self._take_op("-") is not None
        node = self.primary()
        if not isinstance(node, Lit) or (negative and node.sql[0] not in "0123456789."):
            raise PredicateError("IN takes a list of literals, e.g. IN ('DE', 'AT') or IN (1, 2)")
        return Lit("-" + node.sql) if negative else node

    def primary(self) -> Node:
        t = self.token
        if t.kind == "number":
            self.i += 1
            return Lit(t.text)
        if t.kind == "string":
            self.i += 1
            return Lit(t.text)
        if t.kind == "quoted":
            self.i += 1
            return Column(t.text[1:-1])
        if t.kind == "op" and t.text == "(":
            self.i += 1
            with self._nested():
                node = self.or_()
            self._expect_op(")")
            return node
        if t.kind == "name":
            word = t.text.upper()
            if word in ("TRUE", "FALSE", "NULL"):
                self.i += 1
                return Lit(word)
            self.i += 1
            if self.token.kind == "op" and self.token.text == "(":
                return self.call(word, t)
            if word in KEYWORDS:
                raise PredicateError(f"unexpected {word} at position {t.pos + 1}")
            return Column(t.text)
        self._fail("expected a column, a literal or '('")

    def call(self, function: str, at: Token) -> Node:
        if function not in FUNCTIONS:
            raise PredicateError(
                f"function {at.text}() at position {at.pos + 1} is not allowed; "
                f"allowed functions: {', '.join(sorted(FUNCTIONS))}"
            )
        self._expect_op("(")
        args: list[Node] = []
        with self._nested():
            if self._take_op(")") is None:
                args.append(self.or_())
                while self._take_op(","):
                    args.append(self.or_())
                self._expect_op(")")
        if len(args) not in FUNCTIONS[function]:
            raise PredicateError(
                f"{function}() takes {' or '.join(map(str, FUNCTIONS[function]))} argument(s), "
                f"got {len(args)}"
            )
        return Call(function, tuple(args))


# --- public surface -------------------------------------------------------------------------


def parse_predicate(where: str) -> Node:
    """Parse ``where`` into the allowed tree, or raise :class:`PredicateError`."""
    if len(where) > MAX_PREDICATE_CHARS:
        raise PredicateError(f"longer than {MAX_PREDICATE_CHARS} characters")
    if not where.strip():
        raise PredicateError("empty")
    return _Parser(where).parse()


def columns_of(node: Node) -> set[str]:
    """Every column the tree reads."""
    match node:
        case Column(name):
            return {name}
        case Lit():
            return set()
        case Unary(_, operand) | Is(operand, _, _) | In(operand, _, _):
            return columns_of(operand)
        case Binary(_, left, right):
            return columns_of(left) | columns_of(right)
        case Between(operand, low, high, _):
            return columns_of(operand) | columns_of(low) | columns_of(high)
        case Call(_, args):
            return set().union(*(columns_of(a) for a in args))
    raise TypeError(f"not a predicate node: {node!r}")


def render(node: Node) -> str:
    """Canonical, fully parenthesised SQL for the tree (the only text polars ever parses)."""
    match node:
        case Column(name):
            return f'"{name}"'
        case Lit(sql):
            return sql
        case Unary("NOT", operand):
            return f"(NOT {render(operand)})"
        case Unary(op, operand):
            return f"({op}{render(operand)})"
        case Binary(op, Binary(left_op, _, _) as left, right) if op == left_op and op in FLAT:
            return f"{render(left)[:-1]} {op} {render(right)})"  # a chain stays one level deep
        case Binary(op, left, right):
            return f"({render(left)} {op} {render(right)})"
        case Is(operand, what, negated):
            return f"({render(operand)} IS {'NOT ' if negated else ''}{what})"
        case In(operand, items, negated):
            listed = ", ".join(render(i) for i in items)
            return f"({render(operand)} {'NOT ' if negated else ''}IN ({listed}))"
        case Between(operand, low, high, negated):
            keyword = "NOT BETWEEN" if negated else "BETWEEN"
            return f"({render(operand)} {keyword} {render(low)} AND {render(high)})"
        case Call(function, args):
            return f"{function}({', '.join(render(a) for a in args)})"
    raise TypeError(f"not a predicate node: {node!r}")


def predicate_columns(where: str) -> set[str]:
    """The columns a predicate reads (parsed, never evaluated)."""
    return columns_of(parse_predicate(where))


def compile_predicate(where: str, columns: Collection[str]) -> pl.Expr:
    """A polars expression for ``where``; only the allowed language over ``columns`` compiles.

    Raises :class:`PredicateError` for anything outside the language or for a column not in
    ``columns``. Nothing the user wrote reaches polars unless it parsed into allowed nodes.
    """
    tree = parse_predicate(where)
    unknown = sorted(columns_of(tree) - set(columns))
    if unknown:
        raise PredicateError(f"unknown column(s) {unknown}; available: {sorted(columns)}")
    sql = render(tree)
    if _nesting(sql) > MAX_DEPTH:
        raise PredicateError(f"nested deeper than {MAX_DEPTH} levels")
    return pl.sql_expr(sql)


def _nesting(sql: str) -> int:
    depth = deepest = 0
    for token in _tokens(sql):
        if token.kind == "op" and token.text in "()":
            depth += 1 if token.text == "(" else -1
            deepest = max(deepest, depth)
    return deepest
