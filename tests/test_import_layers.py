"""Import guard: graphc has no import cycles, and its imports only point down the layers.

The checker reads every module's imports with `ast`; the code under test is never imported.
Rule (a): the graph of import-time and TYPE_CHECKING imports has no cycle. Rule (b): every
import, function-local ones included, stays inside its unit or points to a lower rank of
`LAYERS`, and every module belongs to a layer.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# pyproject.toml [tool.setuptools] package-dir: the folders installed as graphc.*
PACKAGE_DIRS = {"graphc": "graphc", "graphc.passes": "passes", "graphc.runtime": "runtime"}

# Mirrors docs/architecture.md ("Import rules"): lowest layer first, one tuple per rank.
LAYERS = [
    ("graphc._version", "graphc.errors"),
    ("graphc.comm",),
    ("graphc.ir",),
    ("graphc.options", "graphc.builder", "graphc.init"),
    ("graphc.ops",),
    ("graphc.verify",),
    ("graphc.io",),
    ("graphc.onnx",),
    ("graphc.passes",),
    ("graphc.codegen",),
    ("graphc.runtime",),
    ("graphc.pipeline",),
    ("graphc.viz", "graphc.compile", "graphc.export", "graphc.gradcheck"),
    ("graphc.quant",),
    ("graphc.cli", "graphc.optim", "graphc.onnx.backend"),
    ("graphc.distributed",),
    ("graphc.nn",),
    ("graphc.training",),
    ("graphc.datasets",),
    ("graphc",),
]

Kind = Literal["module", "type", "local"]
Layers = Sequence[tuple[str, ...]]


# --- the checker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement from `source` to `target`, both modules of the checked package.

    `kind`: "module" runs at import time, "type" sits under `if TYPE_CHECKING:`, "local" in a
    function body. `path:line` locates the statement (path relative to the package root).
    `resolved` is False when `target` names no module of the package (a broken import).
    """

    source: str
    target: str
    kind: Kind
    path: str
    line: int
    resolved: bool = True

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.source} -> {self.target}"


@dataclass(frozen=True)
class Violation:
    """A broken rule: "cycle", "upward", "sideways", "unlayered" or "unresolved".

    `modules` are the modules involved (sorted for a cycle); `message` is self-contained.
    """

    rule: str
    modules: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Package:
    """The modules of a package (name -> file) and every import between them."""

    root: Path
    modules: dict[str, Path]
    imports: list[Import]


def discover(root: Path, package_dirs: Mapping[str, str]) -> dict[str, Path]:
    """Map module names to files: with {prefix: folder}, `folder/a/b.py` is `prefix.a.b` and
    `folder/a/__init__.py` is `prefix.a`. Two files claiming one name raise ValueError."""
    modules: dict[str, Path] = {}
    for prefix, folder in package_dirs.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            name = ".".join([prefix, *parts[:-1]] if parts[-1] == "__init__" else [prefix, *parts])
            if modules.setdefault(name, path) != path:
                raise ValueError(f"{modules[name]} and {path} are both the module {name}")
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    if isinstance(test, ast.Attribute) and isinstance(test.value, ast.Name):
        return test.value.id == "typing" and test.attr == "TYPE_CHECKING"
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _statements(nodes: Iterable[ast.AST], kind: Kind) -> Iterator[tuple[ast.stmt, Kind]]:
    """Every import statement below `nodes`, with the kind of the place it sits in."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, kind
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _statements(ast.iter_child_nodes(node), "local")
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.body, "local" if kind == "local" else "type")
            yield from _statements(node.orelse, kind)
        else:
            yield from _statements(ast.iter_child_nodes(node), kind)


def _imported_names(
    node: ast.stmt, source: str, is_package: bool, known: Mapping[str, Path]
) -> list[str]:
    """The module names a statement in `source` imports (absolute, not yet checked)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        package = source.split(".") if is_package else source.split(".")[:-1]
        if node.level > len(package):
            return []  # beyond the top-level package: an ImportError, not an edge
        parts = package[: len(package) - node.level + 1]
        base = ".".join([*parts, node.module] if node.module else parts)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def scan_package(root: Path, package_dirs: Mapping[str, str]) -> Package:
    """Read the imports of every module of a package into `Import` edges.

    A name is an edge when it is a module of the package, and an unresolved import when only a
    parent package of it is (`graphc.gone.x`); names outside the package (numpy, os) are
    dropped. Parent packages a statement runs implicitly are not edges."""
    modules = discover(root, package_dirs)
    imports: list[Import] = []
    for source, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _statements(tree.body, "module"):
            names = _imported_names(node, source, path.name == "__init__.py", modules)
            for name in dict.fromkeys(names):
                parents = [name.rsplit(".", n)[0] for n in range(name.count(".") + 1)]
                if any(parent in modules for parent in parents):
                    where = path.relative_to(root).as_posix()
                    imports.append(Import(source, name, kind, where, node.lineno, name in modules))
    return Package(root, modules, imports)


def _by_place(imp: Import) -> tuple[str, int, str]:
    return imp.path, imp.line, imp.target


def _spans(lines: list[int]) -> str:
    """`[3, 4, 5, 9]` -> `"3-5, 9"`."""
    spans: list[list[int]] = []
    for line in lines:
        if spans and line == spans[-1][-1] + 1:
            spans[-1][1:] = [line]
        else:
            spans.append([line])
    return ", ".join("-".join(map(str, span)) for span in spans)


def check_cycles(package: Package) -> list[Violation]:
    """One violation per strongly connected component of more than one module, or self-import,
    in the graph of "module" and "type" imports; the message lists every edge inside it
    with the lines of its imports.
    Function-local imports run after all modules are loaded, so they cannot form a cycle."""
    graph = nx.DiGraph()
    for imp in package.imports:
        if imp.kind != "local" and imp.resolved:
            graph.add_edge(imp.source, imp.target)
            graph.edges[imp.source, imp.target].setdefault("imports", []).append(imp)
    violations = []
    for component in nx.strongly_connected_components(graph):
        members = sorted(component)
        if len(members) == 1 and not graph.has_edge(members[0], members[0]):
            continue
        sub = graph.subgraph(members)
        loop = [u for u, _ in nx.find_cycle(sub, source=members[0])]
        example = " -> ".join([*loop, loop[0]])
        lines = [f"import cycle through {len(members)} module(s), e.g. {example}:"]
        for *_, imports in sorted(sub.edges(data="imports")):
            first, *more = sorted(imports, key=_by_place)
            also = f"; also lines {_spans([i.line for i in more])}" if more else ""
            lines.append(f"    {first} ({first.kind} import{also})")
        violations.append(Violation("cycle", tuple(members), "\n".join(lines)))
    return sorted(violations, key=lambda v: v.modules)


def layer_of(module: str, layers: Layers) -> tuple[int, str] | None:
    """(rank, unit) of the longest prefix in `layers` matching `module`, or None.

    A dotted prefix matches itself and what is below it (`p.ir` matches `p.ir.node`, not
    `p.irx`); an undotted prefix is a package's face and matches only that exact module."""
    best: tuple[int, str] | None = None
    for rank, prefixes in enumerate(layers):
        for prefix in prefixes:
            below = "." in prefix and module.startswith(prefix + ".")
            if (module == prefix or below) and (best is None or len(prefix) > len(best[1])):
                best = (rank, prefix)
    return best


def check_layers(package: Package, layers: Layers) -> list[Violation]:
    """Violations of the layer order: modules in no layer, imports of no existing module, and
    imports (of any kind) that leave their unit for a unit of the same or a higher rank."""
    violations = []
    placed: dict[str, tuple[int, str]] = {}
    for module, path in sorted(package.modules.items()):
        layer = layer_of(module, layers)
        if layer is None:
            where = path.relative_to(package.root).as_posix()
            message = f"{where} {module} matches no prefix in LAYERS (add it to LAYERS)"
            violations.append(Violation("unlayered", (module,), message))
        else:
            placed[module] = layer
    for imp in sorted(package.imports, key=_by_place):
        if not imp.resolved:
            message = f"{imp} (unresolved: no module {imp.target} in the package)"
            violations.append(Violation("unresolved", (imp.source, imp.target), message))
        if imp.source not in placed or imp.target not in placed:
            continue
        (rank, unit), (target_rank, target_unit) = placed[imp.source], placed[imp.target]
        if unit == target_unit or target_rank < rank:
            continue
        rule = "upward" if target_rank > rank else "sideways"
        why = f"{unit} below {target_unit}" if rule == "upward" else f"{unit} beside {target_unit}"
        message = f"{imp} ({rule}, {imp.kind} import: {why})"
        violations.append(Violation(rule, (imp.source, imp.target), message))
    return violations


# --- the real repository -------------------------------------------------------------------


@pytest.fixture(scope="module")
def graphc_package() -> Package:
    return scan_package(ROOT, PACKAGE_DIRS)


def _fail_on(violations: list[Violation], what: str) -> None:
    if violations:
        lines = "\n".join(map(str, violations))
        pytest.fail(f"{len(violations)} {what}:\n{lines}", pytrace=False)


def test_graphc_has_no_import_cycles(graphc_package: Package) -> None:
    _fail_on(check_cycles(graphc_package), "import cycles (module and TYPE_CHECKING imports)")


def test_graphc_imports_follow_the_layers(graphc_package: Package) -> None:
    _fail_on(check_layers(graphc_package, LAYERS), "violations of LAYERS")


# --- the guard on synthetic packages -------------------------------------------------------

LAYERED = [("pkg.base",), ("pkg.left", "pkg.right"), ("pkg.top",), ("pkg",)]


def make_package(
    root: Path, files: dict[str, str], dirs: Mapping[str, str] | None = None
) -> Package:
    """Write `files` (dedented) under `root`, add missing `__init__.py`s, and scan them."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    for name in files:
        for folder in Path(name).parents[:-1]:
            (root / folder / "__init__.py").touch()
    return scan_package(root, dirs or {"pkg": "pkg"})


def cycles(package: Package) -> list[tuple[str, ...]]:
    return [v.modules for v in check_cycles(package)]


def edges(package: Package) -> set[tuple[str, str, str, int]]:
    return {(i.source, i.target, i.kind, i.line) for i in package.imports}


TC = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    "


@pytest.mark.parametrize(
    ("files", "found"),
    [
        ({"a": "import pkg.b", "b": "from pkg.a import x"}, ["a b"]),
        (
            {"a": "import pkg.b", "b": "import pkg.c", "c": "import pkg.a", "d": "import pkg.a"},
            ["a b c"],
        ),
        ({"a": "from pkg import b", "b": "from pkg import a"}, ["a b"]),
        ({"a": "from .b import f", "b": "from . import a"}, ["a b"]),
        ({"a": "import pkg.b", "b": TC + "import pkg.a"}, ["a b"]),
        (
            {"a": "import pkg.b", "b": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.a"},
            ["a b"],
        ),
        ({"a": "import pkg.a", "b": "import pkg.b as b\nfrom . import b"}, ["a", "b"]),
        ({"a": "import pkg.b", "b": "def f():\n    import pkg.a"}, []),
    ],
    ids=[
        "two",
        "three",
        "submodule",
        "relative",
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
        "self",
        "local",
    ],
)
def test_cycles(tmp_path: Path, files: dict[str, str], found: list[str]) -> None:
    """`files` maps pkg/<name>.py to its source; `found` lists each cycle's module names."""
    pkg = make_package(tmp_path, {f"pkg/{name}.py": text for name, text in files.items()})
    expected = [tuple(f"pkg.{name}" for name in cycle.split()) for cycle in found]
    assert cycles(pkg) == expected


def test_cycle_message_locates_every_import(tmp_path: Path) -> None:
    a = "import pkg.b\n" * 4 + "x = 1\nimport pkg.b\n"
    pkg = make_package(tmp_path, {"pkg/a.py": a, "pkg/b.py": TC + "from pkg.a import x\n"})
    assert str(check_cycles(pkg)[0]).splitlines() == [
        "import cycle through 2 module(s), e.g. pkg.a -> pkg.b -> pkg.a:",
        "    pkg/a.py:1 pkg.a -> pkg.b (module import; also lines 2-4, 6)",
        "    pkg/b.py:3 pkg.b -> pkg.a (type import)",
    ]


def test_cycle_through_relative_imports_in_a_mapped_folder(tmp_path: Path) -> None:
    files = {
        "ext/one.py": "from .two import f\n",  # ext/ is installed as pkg.ext
        "ext/two.py": "from .. import core\n",
        "pkg/core.py": "from pkg.ext import one\n",
    }
    pkg = make_package(tmp_path, files, {"pkg": "pkg", "pkg.ext": "ext"})
    assert cycles(pkg) == [("pkg.core", "pkg.ext.one", "pkg.ext.two")]
    assert ("pkg.ext.two", "pkg.core", "module", 1) in edges(pkg)


def test_function_local_import_is_no_cycle_but_obeys_the_layers(tmp_path: Path) -> None:
    files = {"pkg/top.py": "import pkg.base\n", "pkg/base.py": "def f():\n    import pkg.top\n"}
    pkg = make_package(tmp_path, files)
    assert ("pkg.base", "pkg.top", "local", 2) in edges(pkg)
    assert cycles(pkg) == []
    [violation] = check_layers(pkg, LAYERED)
    assert violation.rule == "upward"
    assert (
        str(violation)
        == "pkg/base.py:2 pkg.base -> pkg.top (upward, local import: pkg.base below pkg.top)"
    )


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("from pkg.top import x\n", "upward"),
        ("from pkg import right\n", "sideways"),
        ("import pkg\n", "upward"),
    ],
)
def test_upward_and_sideways_imports_are_reported(tmp_path: Path, source: str, rule: str) -> None:
    files = {"pkg/left.py": source, "pkg/right.py": "", "pkg/top.py": "", "pkg/base.py": ""}
    assert [v.rule for v in check_layers(make_package(tmp_path, files), LAYERED)] == [rule]


def test_imports_within_a_unit_and_downward_are_allowed(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "from pkg.top import view\nimport pkg.left\n",
        "pkg/top/__init__.py": "from pkg.top import view\nfrom . import model\n",
        "pkg/top/view.py": "from pkg.top.model import M\nfrom pkg.left import L\nimport pkg.base\n",
        "pkg/top/model.py": "from ..base import B\n",
        "pkg/left.py": "from pkg.base import B\n",
        "pkg/base.py": "",
    }
    pkg = make_package(tmp_path, files)
    assert len(pkg.imports) == 9
    assert check_layers(pkg, LAYERED) == []
    assert cycles(pkg) == []


def test_third_party_and_stdlib_imports_are_ignored(tmp_path: Path) -> None:
    source = (
        "import os\nimport numpy as np\nfrom collections import abc\nimport pkgx\nimport pkg_a.b\n"
    )
    assert make_package(tmp_path, {"pkg/base.py": source}).imports == []


def test_modules_in_no_layer_and_unresolved_imports_are_reported(tmp_path: Path) -> None:
    files = {
        "pkg/extra.py": "import pkg.top\n",
        "pkg/basement.py": "",
        "pkg/top.py": "from pkg.gone import x\n",
    }
    found = [(v.rule, v.modules) for v in check_layers(make_package(tmp_path, files), LAYERED)]
    assert found == [
        ("unlayered", ("pkg.basement",)),
        ("unlayered", ("pkg.extra",)),
        ("unresolved", ("pkg.top", "pkg.gone")),
    ]
    assert layer_of("pkg", LAYERED) == (3, "pkg")
    assert layer_of("pkg.top.deep", LAYERED) == (2, "pkg.top")


def test_implicit_import_of_the_parent_package_is_no_edge(tmp_path: Path) -> None:
    files = {
        "pkg/sub/__init__.py": "from pkg.sub.a import A\nfrom pkg.sub.b import B\n",
        "pkg/sub/a.py": "from pkg.sub.b import B\n",
        "pkg/sub/b.py": "B = 1\n",
    }
    pkg = make_package(tmp_path, files)
    assert {(i.source, i.target) for i in pkg.imports} == {
        ("pkg.sub", "pkg.sub.a"),
        ("pkg.sub", "pkg.sub.b"),
        ("pkg.sub.a", "pkg.sub.b"),
    }
    assert cycles(pkg) == []


def test_import_as_resolves_to_the_submodule_and_kinds_follow_the_place(tmp_path: Path) -> None:
    source = """\
        import pkg.a.b as x
        from typing import TYPE_CHECKING
        try:
            from pkg import c
        except ImportError:
            c = None
        if TYPE_CHECKING:
            import pkg.a
        else:
            import pkg.c
        class K:
            from pkg.c import y
            def m(self) -> None:
                import pkg.c
    """
    pkg = make_package(tmp_path, {"pkg/a/b.py": "", "pkg/c.py": "", "pkg/m.py": source})
    assert edges(pkg) == {
        ("pkg.m", "pkg.a.b", "module", 1),
        ("pkg.m", "pkg.c", "module", 4),
        ("pkg.m", "pkg.a", "type", 8),
        ("pkg.m", "pkg.c", "module", 10),
        ("pkg.m", "pkg.c", "module", 12),
        ("pkg.m", "pkg.c", "local", 14),
    }
