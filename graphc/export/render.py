"""Rendering the C templates of exported libraries (`graphc/export/templates/`, package data).

`render(name, **values)` is `string.Template` substitution with one addition, *blocks*, so
that optional parts and per-item lists need no logic in the templates; `template_text`
reads a template once per process (through `importlib.resources`: editable and regular
installs alike).
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from string import Template

# A placeholder alone on its line (after indentation): a block, see `render`.
_BLOCK = re.compile(r"([ \t]*)\$\{(\w+)\}")


@functools.cache
def template_text(name: str) -> str:
    """The text of template `name` (a file of graphc/export/templates, shipped as package
    data); read once per process. Raises FileNotFoundError for an unknown name."""
    path = resources.files("graphc.export") / "templates" / name
    return path.read_text(encoding="utf-8")


@functools.cache
def _parts(name: str) -> tuple[Template | tuple[str, str, str], ...]:
    """Template `name` cut into runs of ordinary lines (a `Template` each) and block lines
    (indentation, key, line ending)."""
    parts: list[Template | tuple[str, str, str]] = []
    run: list[str] = []
    for line in template_text(name).splitlines(keepends=True):
        body = line.rstrip("\r\n")
        block = _BLOCK.fullmatch(body)
        if block is None:
            run.append(line)
            continue
        if run:
            parts.append(Template("".join(run)))
            run = []
        parts.append((block[1], block[2], line[len(body):]))
    if run:
        parts.append(Template("".join(run)))
    return tuple(parts)


def render(template: str, /, **values: object) -> str:
    """Template file `template` with each ``${key}`` replaced by ``str(values[key])``.

    A placeholder alone on its line (possibly indented) is a *block*: the lines of its value
    are each indented like the placeholder (empty lines stay empty), one trailing newline of
    the value is dropped (the line keeps its own), and an empty value removes the line; so
    optional parts and per-item lists need no logic in the templates. Values are inserted
    once, never rescanned for ``$``. Raises KeyError for a placeholder without a value and
    ValueError for a lone ``$`` in the template (`string.Template.substitute`).
    """
    out: list[str] = []
    for part in _parts(template):
        if isinstance(part, Template):
            out.append(part.substitute(values))
            continue
        indent, key, end = part
        value = str(values[key])
        if value:
            lines = value.removesuffix("\n").split("\n")
            out.append("\n".join(indent + line if line else "" for line in lines) + end)
    return "".join(out)
