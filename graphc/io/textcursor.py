"""A cursor over one line of text IR: the tokens of the text-IR grammar and error carets.

`LineCursor` reads names (``%x``), words, quoted strings (JSON escapes, decoded with
`json.loads`, never evaluated), integers, attribute values, tensor types and punctuation.
Every failure is a `SerializationError` whose message names the line and column, what was
expected and what was found, followed by the line and a caret under the column::

    line 3, column 13: expected ',' or ')', got '%a'
      %b = add(%a %a) : f32[2,4]
                  ^
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from graphc.errors import SerializationError
from graphc.ir import DType, TensorType, TupleType

__all__ = ["IDENT", "MAX_NESTING", "STRING", "LineCursor"]

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?\d+(\.\d*)?([eE][+-]?\d+)?")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "inf": math.inf,
                          "nan": math.nan}
_DTYPES = {d.value: d for d in DType}
_SHORT_DTYPES = {d.short: d for d in DType}
# How deeply tuples and lists may nest in one value: a constant's inline value nests once
# per dimension and numpy arrays have at most 64; attribute tuples nest far less (the JSON
# reader allows 32). Values are parsed recursively, so untrusted text must not go deeper.
MAX_NESTING = 64


class LineCursor:
    """A cursor over one line of text; `error` builds a SerializationError pointing at it."""

    def __init__(self, text: str, number: int):
        self.text = text
        self.number = number
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> SerializationError:
        col = self.pos if pos is None else pos
        shown = self.text.replace("\t", " ")
        return SerializationError(
            f"line {self.number}, column {col + 1}: {message}\n  {shown}\n  {' ' * col}^")

    def expected(self, what: str) -> SerializationError:
        self.skip()
        return self.error(f"expected {what}, got {self.describe()}")

    def describe(self) -> str:
        rest = self.text[self.pos:]
        if not rest or rest.startswith("#"):
            return "end of line"
        token = re.match(r"%?[\w.\-/]+|\S", rest)
        return repr(token.group(0) if token else rest[:1])

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text) or self.text[self.pos] == "#"

    def accept(self, token: str) -> bool:
        self.skip()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.accept(token):
            raise self.expected(repr(token))

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def word(self, what: str) -> str:
        found = self.match(IDENT)
        if found is None:
            raise self.expected(what)
        return found

    def node_ref(self) -> tuple[str, int]:
        """``%name``: the name and its column."""
        self.skip()
        start = self.pos
        if not self.accept("%"):
            raise self.expected("a node name like %x")
        end = self.pos
        while end < len(self.text) and (self.text[end].isalnum() or self.text[end] in "_./-"):
            end += 1
        if end == self.pos:
            raise self.expected("a node name after '%'")
        name = self.text[self.pos:end]
        self.pos = end
        return name, start

    def string(self, what: str) -> str:
        token = self.match(STRING)
        if token is None:
            raise self.expected(what)
        try:
            return json.loads(token)
        except ValueError as exc:
            raise self.error(f"bad string escape ({exc})", self.pos - len(token)) from None

    def integer(self, what: str) -> int:
        start = self.pos
        token = self.match(re.compile(r"-?\d+"))
        if token is None:
            raise self.expected(what)
        try:
            return int(token)
        except ValueError:
            raise self.error(f"integer too long: {token[:20]}...", start) from None

    def names(self, close: str) -> list[tuple[str, int]]:
        """``%a, %b`` up to and including `close`."""
        result: list[tuple[str, int]] = []
        if self.accept(close):
            return result
        while True:
            result.append(self.node_ref())
            if self.accept(close):
                return result
            if not self.accept(","):
                raise self.expected(f"',' or {close!r}")

    def value(self, allow_list: bool = False, depth: int = 0) -> Any:
        """One attribute value (or, for constants, a nested list of numbers).

        `depth` is how many tuples or lists enclose it; more than `MAX_NESTING` is an error.
        """
        self.skip()
        start = self.pos
        if self.text.startswith('"', self.pos):
            return self.string("a string")
        if self.text.startswith(("(", "["), self.pos) and depth >= MAX_NESTING:
            raise self.error(f"value nested too deeply (more than {MAX_NESTING} levels of "
                             "tuples or lists)")
        if self.accept("("):
            return tuple(self._sequence(")", allow_list, depth + 1))
        if self.text.startswith("[", self.pos):
            if not allow_list:
                raise self.error("lists are only for constant values; "
                                 "attributes use tuples (...)")
            self.pos += 1
            return self._sequence("]", allow_list, depth + 1)
        if self.accept("-inf"):
            return -math.inf
        number = self.match(_NUMBER)
        if number is not None:
            if self.pos < len(self.text) and (self.text[self.pos].isalnum()
                                              or self.text[self.pos] in "_."):
                raise self.error("malformed number", start)
            try:
                return int(number) if number.lstrip("-").isdigit() else float(number)
            except ValueError:
                raise self.error(f"number too long: {number[:20]}...", start) from None
        word = self.match(IDENT)
        if word is not None:
            if word in _WORDS:
                return _WORDS[word]
            if word in _DTYPES:
                return _DTYPES[word]
            raise self.error(f"unknown word {word!r} (values are numbers, strings, "
                             "true/false, none, inf, nan, dtypes or tuples)", start)
        raise self.expected("a value (number, string, true/false, none, dtype or tuple)")

    def _sequence(self, close: str, allow_list: bool, depth: int) -> list[Any]:
        items: list[Any] = []
        while not self.accept(close):
            items.append(self.value(allow_list, depth))
            if not self.accept(",") and not self.text.startswith(close, self.pos):
                raise self.expected(f"',' or {close!r}")
        return items

    def tensor_type(self) -> TensorType:
        start = self.pos
        word = self.match(re.compile(r"[a-z]+\d*"))
        if word is None:
            raise self.expected("a type like f32[2,3]")
        if word not in _SHORT_DTYPES:
            raise self.error(f"unknown element type {word!r} "
                             f"(known: {', '.join(_SHORT_DTYPES)})", start)
        self.expect("[")
        dims: list[int] = []
        if not self.accept("]"):
            while True:
                dims.append(self.integer("a dimension"))
                if dims[-1] < 0:
                    raise self.error("negative dimension", start)
                if self.accept("]"):
                    break
                self.expect(",")
        return TensorType(tuple(dims), _SHORT_DTYPES[word])

    def value_type(self) -> TensorType | TupleType:
        """A tensor type, or a tuple of them ``(f32[2], i32[])`` (a region op's results)."""
        if not self.accept("("):
            return self.tensor_type()
        elements: list[TensorType] = []
        while not self.accept(")"):
            elements.append(self.tensor_type())
            if not self.accept(",") and not self.text.startswith(")", self.pos):
                raise self.expected("',' or ')'")
        return TupleType(tuple(elements))
