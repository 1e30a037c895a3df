"""Reading and cutting the text of an LLVM module that llvmlite's IR builder printed.

Splitting a module into modules compiled separately (`runtime.kernel_library`: shared GEMM
functions; `runtime.program_split`: a program's kernels, for a concurrent compile) works on
the text, not on LLVM's in-memory module: llvmlite's binding cannot move or delete a
function, and reparsing per piece is what the concurrent compile needs anyway (each piece
is parsed in an LLVM context of its own).

What the text looks like (llvmlite's `ir.Module.__str__`): a header (`; ModuleID`, `target`
lines); then globals (`@name = ...`, one line), declarations (`declare ...`, one line) and
definitions (a `define ...` header line, "{", the body and "}" on lines of their own) in
the order they were created; numbered metadata (`!N = ...`, one line each) after every
function. No attribute groups, comdats or named metadata. The text is scanned with
str.find for these line starts (full-text multiline regexes cost ~4 ms each on a 600 KB
module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r'@"([^"]+)"')
GLOBAL_REF = re.compile(r'@"([^"]+)"|@([\w.$]+)')
_METADATA = re.compile(r"^!(\d+) = ([^\n]*)$", re.M)
_METADATA_REF = re.compile(r"!(\d+)\b")


@dataclass(frozen=True)
class Definition:
    """One function definition: text[start:end] is "\\ndefine ...\\n}" (end at the newline
    after the closing brace); `head` is the header line after "define "."""

    name: str
    start: int
    end: int
    head: str

    @property
    def internal(self) -> bool:
        return self.head.startswith(("internal ", "private "))


def header(text: str) -> str:
    """The module's `target` lines, each ending in a newline."""
    return "".join(line + "\n" for line in text.splitlines()[:4] if line.startswith("target "))


def definitions(text: str, prefix: str = "\ndefine ") -> list[Definition]:
    """Every function definition whose line starts with `prefix`, in text order."""
    out = []
    at = text.find(prefix)
    while at >= 0:
        head_end = text.find("\n", at + 1)
        close = text.find("\n}\n", head_end)
        if head_end < 0 or close < 0:
            break
        head = text[at + len("\ndefine "):head_end]
        found = NAME.search(head)
        if found is not None:
            out.append(Definition(found.group(1), at, close + 2, head))
        at = text.find(prefix, close)
    return out


def line_items(text: str, start: str) -> dict[str, str]:
    """name -> line of every top-level line starting with `start` ("declare ", "@")."""
    out = {}
    at = text.find("\n" + start)
    while at >= 0:
        end = text.find("\n", at + 1)
        line = text[at + 1:end if end >= 0 else len(text)]
        found = GLOBAL_REF.match(line) if start == "@" else NAME.search(line)
        if found is not None:
            out[found.group(1) or found.group(2)] = line
        at = text.find("\n" + start, at + 1)
    return out


def declarations(text: str) -> dict[str, str]:
    """name -> `declare` line."""
    return line_items(text, "declare ")


def global_variables(text: str) -> dict[str, str]:
    """name -> definition line of every global variable."""
    return line_items(text, "@")


def references(body: str) -> set[str]:
    """The global names (functions and variables) `body` mentions."""
    return {m.group(1) or m.group(2) for m in GLOBAL_REF.finditer(body)}


def metadata_nodes(text: str) -> dict[int, str]:
    """number -> right-hand side of every numbered metadata line."""
    first = text.find("\n!")
    if first < 0:
        return {}
    return {int(m.group(1)): m.group(2) for m in _METADATA.finditer(text, first + 1)}


def renumbered_metadata(body: str, metadata: dict[int, str]) -> tuple[str, str] | None:
    """`body` with its metadata numbered from !0 in order of first use, and the nodes it
    reaches (transitively) as definition lines; None if a node is undefined."""
    order: list[int] = []
    seen: set[int] = set()

    def visit(number: int) -> bool:
        if number in seen:
            return True
        if number not in metadata:
            return False
        seen.add(number)
        order.append(number)
        return all(visit(int(r)) for r in _METADATA_REF.findall(metadata[number]))

    if not all(visit(int(r)) for r in _METADATA_REF.findall(body)):
        return None
    new = {old: i for i, old in enumerate(order)}

    def renumber(part: str) -> str:
        return _METADATA_REF.sub(lambda r: f"!{new[int(r.group(1))]}", part)

    nodes = "".join(f"!{new[old]} = {renumber(metadata[old])}\n" for old in order)
    return renumber(body), nodes
