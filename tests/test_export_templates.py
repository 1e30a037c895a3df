"""The C templates of exported libraries (graphc/export/templates): complete and consistent.

NAME.c and NAME.h are rendered from hand-built `Layout`s covering every optional part
(embedded or external weights, training or inference, worker pool, no ports or buffers at
all), with no JIT compile: every template file is used, every placeholder gets a value and
every value a placeholder, nothing is left unsubstituted, the files ship as package data,
and the rendered header (and wrapper) pass the system C compiler's syntax check.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import pytest

from graphc.export import csource, header
from graphc.export import render as render_module
from graphc.export.header import STATUS
from graphc.export.library_layout import BufferSpec, Layout, PortSpec
from graphc.ir import DType, TensorType

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler `cc` on PATH to check the C")
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11),
                               reason="string.Template.get_identifiers is Python 3.11+")

META = {
    "graphc_version": "0.0.test",
    "graph": "test-graph",
    "signature": "call",
    "target": {"triple": "x86_64-unknown-linux-gnu", "cpu": "generic"},
}
META_JSON = json.dumps(META, sort_keys=True)


def _layout(name: str, *, external: bool = False, trains: bool = False, pool: bool = False,
            ports: bool = True, buffers: bool = True) -> Layout:
    """A plausible layout: odd port names, a scalar, int32/float64/bool types, variables
    (one rank 0) and a constant, with the state offsets `build_layout` would choose."""
    f32, i32 = TensorType((2, 3), DType.float32), TensorType((3,), DType.int32)
    inputs = (PortSpec("input.1", "input_1", f32), PortSpec("idx-2", "idx_2", i32))
    outputs = (PortSpec("out.sum", "out_sum", TensorType((), DType.float64)),
               PortSpec("mask", "mask", TensorType((3,), DType.bool)))
    if not ports:
        inputs = outputs = ()

    def state(offset: int, owned: bool) -> int | None:
        return offset if external or owned else None

    bufs = (
        BufferSpec("variable", "layer.0/w", "layer_0_w", 4, TensorType((3, 2), DType.float32),
                   0, state(0, trains), trains),
        BufferSpec("variable", "step", "step", 5, TensorType((), DType.int64), 64,
                   state(64, trains), trains),
        BufferSpec("constant", "table", "table", 6, TensorType((4,), DType.float32), 128,
                   state(128, False), False),
    ) if buffers else ()
    blob = 192 if buffers else 0
    return Layout(
        name=name, external=external, inputs=inputs, outputs=outputs, buffers=bufs,
        table_len=len(inputs) + len(outputs) + len(bufs) + 1, blob_bytes=blob,
        state_bytes=blob if external else (128 if trains and buffers else 0), arena_bytes=64,
        header_bytes=128, entry_symbol=f"{name}_graphc_entry", threads=2 if pool else 1,
        pool_shutdown="graphc_test_pool_shutdown" if pool else None,
    )


LAYOUTS = {
    "embedded": _layout("embedded"),
    "external": _layout("external", external=True),
    "training": _layout("training", trains=True),
    "training_external_pool": _layout("trainpool", external=True, trains=True, pool=True),
    "bare": _layout("bare", ports=False, buffers=False),
}


@dataclass(frozen=True)
class Rendered:
    """One library's NAME.c and NAME.h, and every `render` call made to produce them."""

    layout: Layout
    source: str
    header: str
    calls: list[tuple[str, dict[str, object]]]


_RENDER = render_module.render  # the real one, before the fixture patches it


@pytest.fixture(scope="module")
def rendered() -> Iterator[dict[str, Rendered]]:
    """Every case of `LAYOUTS` rendered, with the `render` calls each made."""
    out: dict[str, Rendered] = {}
    with pytest.MonkeyPatch.context() as mp:
        for case, layout in LAYOUTS.items():
            calls: list[tuple[str, dict[str, object]]] = []

            def recording(template: str, /, **values: object) -> str:
                calls.append((template, values))  # noqa: B023 (each case's own list)
                return _RENDER(template, **values)

            # csource and header import `render` from export.render: patch both names.
            mp.setattr(header, "render", recording)
            mp.setattr(csource, "render", recording)
            source = csource.source_text(layout, META_JSON, 0x0123456789ABCDEF, "ab" * 32)
            out[case] = Rendered(layout, source, header.header_text(layout, META), calls)
    yield out


def _template_files() -> list[str]:
    root = resources.files("graphc.export") / "templates"
    return sorted(p.name for p in root.iterdir() if p.is_file())


def test_every_template_file_is_used(rendered: dict[str, Rendered]) -> None:
    used = {name for r in rendered.values() for name, _ in r.calls}
    assert set(_template_files()) == used


@needs_311
def test_templates_are_well_formed() -> None:
    for name in _template_files():
        text = render_module.template_text(name)
        assert Template(text).is_valid(), f"{name}: a `$` that is no placeholder (use $$)"
        assert text.endswith("\n") and not text.endswith("\n\n"), name
        assert text.isascii() and "\t" not in text, name


@needs_311
def test_every_placeholder_gets_a_value(rendered: dict[str, Rendered]) -> None:
    for case, r in rendered.items():
        for name, values in r.calls:
            wanted = set(Template(render_module.template_text(name)).get_identifiers())
            assert wanted - set(values) == set(), f"{case}: {name} lacks values"
            assert set(values) - wanted == set(), f"{case}: {name} ignores values"


@pytest.mark.parametrize("case", LAYOUTS)
def test_rendered_text_is_complete(rendered: dict[str, Rendered], case: str) -> None:
    r = rendered[case]
    for text in (r.source, r.header):
        assert "$" not in text
        assert text.endswith("}\n") or text.endswith("_H */\n")
        assert all(line == line.rstrip() for line in text.splitlines()), "trailing blanks"


@pytest.mark.parametrize("case", LAYOUTS)
def test_optional_parts_follow_the_layout(rendered: dict[str, Rendered], case: str) -> None:
    r = rendered[case]
    lay, src, hdr = r.layout, r.source, r.header
    n, up = lay.name, lay.name.upper()
    embedded = not lay.external and lay.blob_bytes > 0
    assert ("stop_pool" in src) == ("worker threads" in hdr) == (lay.pool_shutdown is not None)
    assert (f"{n}_load_weights(" in src) == (f"{n}_load_weights(" in hdr) == lay.external
    assert ("#include <dlfcn.h>" in src) == lay.external
    assert (".incbin" in src) == embedded == ("memcpy(ctx->state + b->state_offset" in src)
    assert (" * Training:" in hdr) == lay.trains != (" * Variables (" in hdr)
    assert f"#define {up}_NUM_INPUTS {len(lay.inputs)}\n" in hdr
    assert f'    case {up}_ERR_COMPUTE: return "{dict(STATUS)["ERR_COMPUTE"]}";' in src
    assert f"    {up}_ERR_COMPUTE = 11,  /* {dict(STATUS)['ERR_COMPUTE']} */" in hdr
    assert ('{"", 0, 0, 0, 0, 0},  /* placeholder' in src) == (not lay.buffers)
    assert ("{NULL, 0, 0, dims, 0, 0},  /* placeholder" in src) == (
        not lay.inputs and not lay.outputs and not lay.variables)
    assert "#define WEIGHTS_CHECKSUM64 UINT64_C(0x0123456789abcdef)" in src
    assert f'#define METADATA_SHA256 "{"ab" * 32}"' in src
    if lay.inputs:  # a scalar has no SHAPE macro (C has no empty initializer)
        assert f"#define {up}_INPUT_IDX_2_SHAPE {up}_INPUT1_SHAPE\n" in hdr
        assert f"#define {up}_OUTPUT0_RANK 0\n#define {up}_OUTPUT0_ELEMENTS 1u\n" in hdr
        # The compiled-in port table: inputs, outputs, then variables; rank 0 has no dims.
        assert f'    {{"idx-2", {up}_DTYPE_INT32, 1, dims + 2, 3u, 12u}},  /* input 1 */' in src
        assert f'    {{"out.sum", {up}_DTYPE_FLOAT64, 0, dims + 3, 1u, 8u}},  /* output 0 */' \
            in src
    if lay.buffers:
        assert f"#define {up}_VARIABLE_STEP_BYTES 8u\n\n" in hdr  # rank 0: no SHAPE line
        assert f'    {{"layer.0/w", 4, {int(lay.external or lay.trains)}, 0u, 0u, 24u}},' in src


def _cc(tmp_path: Path, *args: str) -> None:
    assert CC is not None
    cmd = [CC, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stderr}"


@needs_cc
@pytest.mark.parametrize("case", LAYOUTS)
def test_header_compiles_alone(rendered: dict[str, Rendered], case: str,
                               tmp_path: Path) -> None:
    r = rendered[case]
    (tmp_path / f"{r.layout.name}.h").write_text(r.header)
    _cc(tmp_path, "-std=c99", "-pedantic", "-x", "c", f"{r.layout.name}.h")


@needs_cc
@pytest.mark.parametrize("case", LAYOUTS)
def test_wrapper_compiles_with_its_header(rendered: dict[str, Rendered], case: str,
                                          tmp_path: Path) -> None:
    r = rendered[case]
    (tmp_path / f"{r.layout.name}.h").write_text(r.header)
    (tmp_path / f"{r.layout.name}.c").write_text(r.source)
    _cc(tmp_path, f"{r.layout.name}.c")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_templates_ship_as_package_data() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["graphc.export"]
    for name in _template_files():
        assert any(fnmatch.fnmatch(f"templates/{name}", p) for p in patterns), name
