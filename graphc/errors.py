"""The error hierarchy every user-facing failure of graphc belongs to.

Contract: a `GraphcError` message names what failed (an op, an argument, a file), what was
expected and what was received, and, when the failure comes from a node the user built, the
user's source line (``at model.py:12``). Callers never need to parse messages: the op name
and location are also attributes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """Where user code created a node: a file and a line (and the function, for messages)."""

    file: str
    line: int
    func: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class GraphcError(Exception):
    """Base class of every error graphc raises on bad input."""

    def __init__(self, message: str, *, op: str | None = None, loc: SourceLoc | None = None):
        self.message = message
        self.op = op
        self.loc = loc
        super().__init__(self._format())

    def _format(self) -> str:
        text = f"{self.op}: {self.message}" if self.op else self.message
        if self.loc is not None:
            text += f"\n  at {self.loc}"
        return text

    def with_context(self, *, op: str | None = None, loc: SourceLoc | None = None) -> GraphcError:
        """Return a copy of this error of the same class, filling in op/loc where missing."""
        err = type(self)(self.message, op=self.op or op, loc=self.loc or loc)
        err.__cause__ = self.__cause__
        return err


class ShapeError(GraphcError):
    """An operand has a shape the op cannot accept."""


class DTypeError(GraphcError):
    """An operand has a dtype the op cannot accept."""


class AttrError(GraphcError):
    """An op attribute (axis, perm, stride, ...) is invalid."""


class GraphNameError(GraphcError):
    """A node or variable name is unknown or used twice."""


class GraphStructureError(GraphcError):
    """A graph is malformed: nodes from two graphs mixed, a cycle, a missing node."""


class VerifyError(GraphcError):
    """`verify(graph)` found an inconsistency (a bug in a pass or a corrupt file)."""


class SerializationError(GraphcError):
    """A graph or checkpoint file is corrupt, truncated, of an unknown version, or hostile."""


class ArgumentError(GraphcError):
    """A call of a compiled or reference function got wrong arguments."""


class CompileError(GraphcError):
    """Compilation failed (a pass, code generation, LLVM, or the system linker)."""
