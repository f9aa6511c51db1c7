"""The System Log's ``filter`` parameter: a SCIM filter over the LogEvent's attributes.

Supported: ``eq ne co sw ew gt ge lt le`` between an attribute path and a string, number,
boolean or null; ``pr``; ``and``, ``or``, ``not`` and parentheses. An attribute path goes through
objects by name and matches if any element of an array does (``target.id eq "00u..."``). As in
Okta, ``published`` cannot be filtered on (use ``since``/``until``) and ``co`` is refused on
``debugContext.debugData.url`` and ``requestUri``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][\w.\-]*)
      | (?P<number>-?\d+(?:\.\d+)?)
    )""",
    re.VERBOSE,
)
_OPERATORS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"})
_NO_CONTAINS = frozenset({"debugcontext.debugdata.url", "debugcontext.debugdata.requesturi"})
_MISSING = object()


class FilterError(ValueError):
    """The filter cannot be parsed; the message says where."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    position: int


def compile_filter(text: str) -> Predicate:
    """A predicate over one LogEvent dict; raise :class:`FilterError` for a bad filter."""
    tokens = _tokenize(text)
    parser = _Parser(tokens)
    predicate = parser.expression()
    if parser.peek() is not None:
        token = parser.peek()
        assert token is not None
        raise FilterError(f"unexpected {token.text!r} at position {token.position}")
    return predicate


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterError(f"cannot read the filter at position {position}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    if not tokens:
        raise FilterError("the filter is empty")
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0

    def peek(self) -> _Token | None:
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("the filter ends too early")
        self._index += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == word:
            self._index += 1
            return True
        return False

    def expression(self) -> Predicate:
        terms = [self._term()]
        while self._keyword("or"):
            terms.append(self._term())
        if len(terms) == 1:
            return terms[0]
        return lambda event: any(term(event) for term in terms)

    def _term(self) -> Predicate:
        factors = [self._factor()]
        while self._keyword("and"):
            factors.append(self._factor())
        if len(factors) == 1:
            return factors[0]
        return lambda event: all(factor(event) for factor in factors)

    def _factor(self) -> Predicate:
        if self._keyword("not"):
            inner = self._factor()
            return lambda event: not inner(event)
        token = self._take()
        if token.kind == "paren" and token.text == "(":
            inner = self.expression()
            closing = self._take()
            if closing.text != ")":
                raise FilterError(f"expected ')' at position {closing.position}")
            return inner
        if token.kind != "word":
            raise FilterError(f"expected an attribute at position {token.position}")
        return self._comparison(token)

    def _comparison(self, attribute: _Token) -> Predicate:
        path = attribute.text.split(".")
        lowered = attribute.text.lower()
        if lowered == "published":
            raise FilterError("published cannot be used in a filter; use since and until")
        operator = self._take()
        op = operator.text.lower()
        if operator.kind != "word" or (op not in _OPERATORS and op != "pr"):
            raise FilterError(f"unknown operator {operator.text!r} at position "
                              f"{operator.position}")
        if op == "pr":
            return lambda event: any(v is not None for v in _values(event, path))
        if op == "co" and lowered in _NO_CONTAINS:
            raise FilterError(f"'co' is not supported on {attribute.text}")
        value = _literal(self._take())
        test = _test(op, value)
        return lambda event: any(test(v) for v in _values(event, path))


def _literal(token: _Token) -> Any:
    if token.kind == "string":
        return re.sub(r"\\(.)", r"\1", token.text[1:-1])
    if token.kind == "number":
        return float(token.text) if "." in token.text else int(token.text)
    if token.kind == "word" and token.text.lower() in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[token.text.lower()]
    raise FilterError(f"expected a value at position {token.position}")


def _test(op: str, expected: Any) -> Callable[[Any], bool]:
    def compare(actual: Any) -> bool:
        if op == "eq":
            return _equal(actual, expected)
        if op == "ne":
            return not _equal(actual, expected)
        if actual is None or expected is None:
            return False
        if op in ("co", "sw", "ew"):
            if not isinstance(actual, str) or not isinstance(expected, str):
                return False
            a, e = actual.lower(), expected.lower()
            return e in a if op == "co" else a.startswith(e) if op == "sw" else a.endswith(e)
        try:
            if op == "gt":
                return bool(actual > expected)
            if op == "ge":
                return bool(actual >= expected)
            if op == "lt":
                return bool(actual < expected)
            return bool(actual <= expected)
        except TypeError:
            return False

    return compare


def _equal(actual: Any, expected: Any) -> bool:
    if _is_number(actual) and _is_number(expected):
        return bool(actual == expected)
    return type(actual) is type(expected) and bool(actual == expected)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _values(node: Any, path: list[str]) -> list[Any]:
    """Every value at ``path`` (arrays are searched element by element); none if absent."""
    if not path:
        return list(node) if isinstance(node, list) else [node]
    if isinstance(node, list):
        return [value for item in node for value in _values(item, path)]
    if not isinstance(node, dict):
        return []
    child = node.get(path[0], _MISSING)
    if child is _MISSING:
        return []
    return _values(child, path[1:])
