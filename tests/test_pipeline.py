"""One stage sequence: `graphc dump`, `gc.compile` and `gc.export` see the same program.

The LLVM IR printed by `graphc dump --stage llvm` and the IR `gc.compile` JIT-compiled are
the same text, and the IR `gc.export` linked defines the same functions and globals (up to
the entry symbol's name and the worker pool it embeds) for an MLP training step and a LeNet
training step at 2 threads with convolutions through the GEMM; the arena
`graphc dump --stage planned` reports is the one the executable runs with.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import textwrap
from pathlib import Path

import pytest

import graphc as gc
from graphc import pipeline
from graphc.cli import main as cli
from graphc.cli.command import load_model
from graphc.codegen.module import GeneratedModule
from graphc.codegen.threadpool import PARALLEL_FOR, SHUTDOWN, process_pool_symbols
from graphc.export import api as export_module
from tests.test_cli_stages import MLP

# The MLP training step of tests/test_cli_stages.py, and a LeNet-5 training step.
MODELS = MLP + textwrap.dedent("""\


    def lenet():
        rng = np.random.default_rng(1)

        def param(*shape):
            return gc.variable(rng.normal(0, 0.1, shape).astype(np.float32))

        with gc.Graph("lenet") as g:
            x = gc.placeholder((4, 1, 28, 28), gc.float32, name="x")
            y = gc.placeholder((4,), gc.int32, name="y")
            h = gc.max_pool2d(gc.relu(gc.conv2d(x, param(6, 1, 5, 5), padding=2,
                                                bias=param(6))), 2)
            h = gc.max_pool2d(gc.relu(gc.conv2d(h, param(16, 6, 5, 5), bias=param(16))), 2)
            h = gc.relu(gc.reshape(h, (4, 400)) @ param(400, 120) + param(120))
            h = gc.relu(h @ param(120, 84) + param(84))
            logits = h @ param(84, 10) + param(10)
            loss = gc.mean(gc.softmax_cross_entropy(logits, y))
            updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
        g.add_signature("train", inputs=[x, y], outputs=[loss], updates=updates)
        return g
""")

OPTIONS = gc.CompileOptions(threads=2, conv_algorithm="gemm")
FLAGS = ("--signature", "train", "--threads", "2", "--conv-algorithm", "gemm")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "models.py"
    path.write_text(MODELS)
    return path


def _dump(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _entry_renamed(ir_text: str, entry: str) -> str:
    renamed = ir_text.replace(f'@"{entry}"', f'@"{pipeline.ENTRY}"')
    assert renamed != ir_text, f"entry symbol {entry} not found"
    return renamed


def _definitions(ir_text: str) -> dict[str, str]:
    """Every function definition and global variable of a module, by name."""
    found = {m.group(1): m.group(0) for m in
             re.finditer(r'^define [^@]*@"([^"]+)"\(.*?^}$', ir_text, re.M | re.S)}
    found.update((m.group(1), m.group(0))
                 for m in re.finditer(r'^@"([^"]+)" = .*$', ir_text, re.M))
    return found


@pytest.mark.parametrize("function", ["mlp", "lenet"])
def test_dump_compile_and_export_build_the_same_llvm_module(
        function: str, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = f"{models}:{function}"
    dumped = _dump(capsys, "dump", spec, "--stage", "llvm", *FLAGS)

    graph = load_model(spec)
    compiled = gc.compile(graph, signature="train", options=OPTIONS)
    built = compiled.report.generated
    assert isinstance(built, GeneratedModule)  # no cache: IR was built
    assert built.ir_text == dumped

    linked: list[str] = []
    real_object_code = export_module.object_code

    def spy(ir_text: str, *args: object) -> bytes:
        linked.append(ir_text)
        return real_object_code(ir_text, *args)

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("gc.export links with the system C compiler `cc`, which is not installed")
    monkeypatch.setattr(export_module, "object_code", spy)
    lib = gc.export(graph, tmp_path / f"lib{function}.so", signature="train", options=OPTIONS)
    assert len(linked) == 1
    # The same kernels; the library defines its own worker pool where the JIT's program
    # calls the process's.
    exported = _entry_renamed(linked[0], f"{function}_graphc_entry")
    jit_code = dumped.replace(f'@"{process_pool_symbols(2)[0]}"', f'@"{PARALLEL_FOR}"')
    exported_defs, jit_defs = _definitions(exported), _definitions(jit_code)
    own_pool = {name for name in exported_defs
                if name.startswith("graphc.pool") or name in (PARALLEL_FOR, SHUTDOWN)}
    if f'call void @"{PARALLEL_FOR}"' in exported:
        assert own_pool >= {"graphc.pool", PARALLEL_FOR, SHUTDOWN}
    assert {k: v for k, v in exported_defs.items() if k not in own_pool} == jit_defs
    # The library records the hash of the module it was built from.
    assert lib.metadata["module_sha256"] == hashlib.sha256(linked[0].encode()).hexdigest()
    assert lib.metadata["threads"] == 2


def test_dump_planned_shows_the_arena_gc_compile_runs_with(
        models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{models}:mlp"
    planned = _dump(capsys, "dump", spec, "--stage", "planned", *FLAGS)
    arena = int(re.search(r"arena (\d+) bytes", planned).group(1))
    compiled = gc.compile(load_model(spec), signature="train", options=OPTIONS)
    assert arena == compiled.report.plan.arena_bytes
    # The momentum buffers are updated in place inside their GEMM's epilogue, which only
    # the plan that asks codegen (epilogue_writes_once) allows.
    assert compiled.report.plan.in_place_updates


def test_every_code_changing_option_is_in_the_settings_key() -> None:
    base = pipeline.CodegenSettings.of(gc.CompileOptions(threads=1))
    for change in ({"threads": 2}, {"conv_algorithm": "gemm"}, {"profile": True},
                   {"opt_level": 3}):
        other = pipeline.CodegenSettings.of(gc.CompileOptions(**{"threads": 1, **change}))
        assert other.key != base.key, change


def test_lower_stops_at_each_stage_and_resumes(models: Path) -> None:
    graph = load_model(f"{models}:mlp")
    sig = graph.signatures["train"]
    lowered = pipeline.lower(graph, sig, OPTIONS, "optimized")
    assert lowered.optimized is not None and lowered.fused is None
    with pytest.raises(gc.GraphcError, match="stage 'llvm'"):
        _ = lowered.ir_text
    pipeline.advance(lowered, "llvm")
    assert lowered.plan is not None and "define" in lowered.ir_text
    assert set(lowered.seconds) == set(pipeline.STAGES[1:])
    with pytest.raises(gc.GraphcError, match="unknown stage"):
        pipeline.lower(graph, sig, OPTIONS, "machine code")

