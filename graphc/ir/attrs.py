"""Declared op attributes: what each attribute of an op is, checked once for every source.

An op lists its attributes as `AttrSpec`s (`OpDef.attrs`): a name, a kind (int, float, bool,
string, dtype, a tuple of ints, a tuple of int rows), a default if it may be omitted, and
simple bounds. `check_attrs` holds a node's attributes against that declaration and returns
them normalized (defaults filled in, lists as tuples, ints of float attributes as floats).
The builder (user code), the readers (text IR, `.gcg`), the pass rebuilder and `verify` all
call it, so a malformed attribute is an `AttrError` naming the op's attribute, the expected
and the received value -- never a raw `KeyError` or `TypeError` from a type rule, a
reference or codegen. Relations between attributes and operand types (an axis within the
rank, pads per axis) stay in the op's type rule.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import AttrError
from graphc.ir.types import Attrs, AttrValue, DType


class Kind(enum.Enum):
    """The type of an attribute's value."""

    INT = "an int"
    FLOAT = "a float"
    BOOL = "a bool"
    STR = "a string"
    DTYPE = "a dtype"
    INTS = "a tuple of ints"
    INT_ROWS = "a tuple of int tuples"  # one row per axis, e.g. conv pads ((lo, hi), ...)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class AttrSpec:
    """One attribute of an op.

    `default` is the value when the attribute is omitted (`REQUIRED`: it may not be). `low`
    and `high` bound ints and floats, and every int of INTS / INT_ROWS, inclusively.
    `choices` are the allowed strings. `length` is the exact length of an INTS / INT_ROWS
    value and `width` the length of each INT_ROWS row. `finite` refuses inf and nan.
    """

    name: str
    kind: Kind
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    length: int | None = None
    width: int | None = None
    finite: bool = False

    def describe(self) -> str:
        """What the attribute must be, in words (for error messages and `graphc ops`)."""
        text = self.kind.value
        if self.length is not None:
            text += f" of length {self.length}"
        if self.width is not None:
            text += f", rows of {self.width}"
        if self.choices:
            text += " (" + " or ".join(repr(c) for c in self.choices) + ")"
        if self.low is not None and self.high is not None:
            text += f" in [{_num(self.low)}, {_num(self.high)}]"
        elif self.low is not None:
            text += f" >= {_num(self.low)}"
        elif self.high is not None:
            text += f" <= {_num(self.high)}"
        if self.finite:
            text += ", finite"
        return text

    def normalize(self, value: Any) -> AttrValue:
        """`value` in canonical form, or an AttrError saying what was expected."""
        try:
            return _NORMALIZE[self.kind](self, value)
        except _MismatchError:
            raise AttrError(f"attribute {self.name!r}: expected {self.describe()}, got "
                            f"{_shown(value)}") from None


def check_attrs(op: str, specs: Sequence[AttrSpec], attrs: Mapping[str, Any]) -> Attrs:
    """`attrs` of a node of `op` checked against its declaration, normalized and frozen.

    Raises AttrError for an unknown attribute, a missing required one, or a value of the
    wrong kind or out of bounds (without op/location: the caller adds its context).
    """
    if isinstance(attrs, Attrs) and _canonical(specs, attrs):
        return attrs  # the common case (a node's attributes checked again): no new object
    known = {s.name: s for s in specs}
    unknown = sorted(set(attrs) - set(known))
    if unknown:
        takes = ", ".join(known) or "no attributes"
        raise AttrError(f"unknown attribute {unknown[0]!r} ({op} takes {takes})")
    out: dict[str, AttrValue] = {}
    for spec in specs:
        if spec.name in attrs:
            out[spec.name] = spec.normalize(attrs[spec.name])
        elif spec.default is REQUIRED:
            raise AttrError(f"missing attribute {spec.name!r} ({spec.describe()})")
        else:
            out[spec.name] = spec.default
    return Attrs(out)


def _canonical(specs: Sequence[AttrSpec], attrs: Attrs) -> bool:
    """Whether `attrs` already are exactly what `check_attrs` would return (fast path)."""
    if len(attrs) != len(specs):
        return False
    for spec in specs:
        value = attrs.get(spec.name, _MISSING)
        if value is _MISSING or not _EXACT[spec.kind](spec, value):
            return False
    return True


def _exact_int(spec: AttrSpec, v: Any) -> bool:
    return type(v) is int and _within(spec, v)


def _exact_float(spec: AttrSpec, v: Any) -> bool:
    return type(v) is float and (not spec.finite or math.isfinite(v)) and _within(spec, v)


def _exact_ints(spec: AttrSpec, v: Any) -> bool:
    return (type(v) is tuple and (spec.length is None or len(v) == spec.length)
            and all(_exact_int(spec, x) for x in v))


def _exact_rows(spec: AttrSpec, v: Any) -> bool:
    return (type(v) is tuple and (spec.length is None or len(v) == spec.length)
            and all(type(r) is tuple and (spec.width is None or len(r) == spec.width)
                    and all(_exact_int(spec, x) for x in r) for r in v))


def _within(spec: AttrSpec, x: float) -> bool:
    return (spec.low is None or x >= spec.low) and (spec.high is None or x <= spec.high)


_MISSING = object()
_EXACT = {
    Kind.INT: _exact_int,
    Kind.FLOAT: _exact_float,
    Kind.BOOL: lambda spec, v: type(v) is bool,
    Kind.STR: lambda spec, v: type(v) is str and (not spec.choices or v in spec.choices),
    Kind.DTYPE: lambda spec, v: type(v) is DType,
    Kind.INTS: _exact_ints,
    Kind.INT_ROWS: _exact_rows,
}


class _MismatchError(Exception):
    """Internal: the value does not fit the spec (turned into an AttrError)."""


def _int(spec: AttrSpec, v: Any) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise _MismatchError
    return _bounded(spec, int(v))


def _float(spec: AttrSpec, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                             np.floating)):
        raise _MismatchError
    f = float(v)
    if spec.finite and not math.isfinite(f):
        raise _MismatchError
    return _bounded(spec, f)


def _bool(spec: AttrSpec, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise _MismatchError
    return bool(v)


def _str(spec: AttrSpec, v: Any) -> str:
    if not isinstance(v, str) or (spec.choices and v not in spec.choices):
        raise _MismatchError
    return v


def _dtype(spec: AttrSpec, v: Any) -> DType:
    if not isinstance(v, DType):
        raise _MismatchError
    return v


def _ints(spec: AttrSpec, v: Any) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)):
        raise _MismatchError
    items = tuple(_int(spec, x) for x in v)
    if spec.length is not None and len(items) != spec.length:
        raise _MismatchError
    return items


def _int_rows(spec: AttrSpec, v: Any) -> tuple[tuple[int, ...], ...]:
    if not isinstance(v, (tuple, list)):
        raise _MismatchError
    rows = []
    for row in v:
        if not isinstance(row, (tuple, list)) or (spec.width is not None
                                                  and len(row) != spec.width):
            raise _MismatchError
        rows.append(tuple(_int(spec, x) for x in row))
    if spec.length is not None and len(rows) != spec.length:
        raise _MismatchError
    return tuple(rows)


def _bounded(spec: AttrSpec, x: Any) -> Any:
    if not _within(spec, x):
        raise _MismatchError
    return x


_NORMALIZE = {Kind.INT: _int, Kind.FLOAT: _float, Kind.BOOL: _bool, Kind.STR: _str,
              Kind.DTYPE: _dtype, Kind.INTS: _ints, Kind.INT_ROWS: _int_rows}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
