"""Cold-compile cost of a training step (issue 13, item 13): what keeps LLVM's work small.

The generator vectorizes and blocks its loops itself, so LLVM's unroller and loop vectorizer
only add code (compile time) there: those loops carry `llvm.loop` metadata forbidding both
(`codegen.loops.keep_rolled`). These tests fail if a loop of the GEMM micro-kernels or of an
elementwise kernel loses it. (A row reduction's accumulator loop is left to LLVM: unrolled,
LeNet's bias gradients ran 1.5x faster.)
"""

from __future__ import annotations

import re

import numpy as np

import graphc as gc
from graphc.pipeline import lower
from graphc.runtime import jit
from graphc.runtime.arguments import resolve_signature

_DEFINE = re.compile(r'^define [^@]*@"?([\w.$]+)"?\(.*?^}\n', re.S | re.M)
_LABEL = re.compile(r'^"?([\w.$]+)"?:', re.M)
_BRANCH = re.compile(r'^\s*br i1 [^,]+, label %"?([\w.$]+)"?, label %"?([\w.$]+)"?(.*)$', re.M)


def _step_ir() -> str:
    """The LLVM IR of a small MLP training step with SGD momentum (GEMMs big enough for the
    packed path, a softmax cross-entropy, elementwise updates)."""
    rng = np.random.default_rng(0)
    with gc.Graph("step") as g:
        x = gc.placeholder((64, 96), gc.float32, name="x")
        y = gc.placeholder((64,), gc.int32, name="y")
        w0 = gc.variable(rng.standard_normal((96, 128)).astype(np.float32), name="w0")
        b0 = gc.variable(np.zeros(128, np.float32), name="b0")
        w1 = gc.variable(rng.standard_normal((128, 10)).astype(np.float32), name="w1")
        h = gc.relu(x @ w0 + b0)
        loss = gc.mean(gc.softmax_cross_entropy(h @ w1, y))
        updates = gc.optim.SGD(lr=0.1, momentum=0.9).minimize(loss)
    sig, _ = resolve_signature(g, [x, y], [loss], updates, None)
    return lower(g, sig, gc.CompileOptions(cache_dir=None, threads=1), "llvm").ir_text


def _back_edges(body: str) -> list[str]:
    """The conditional branches of a function that jump back to an earlier block (every
    generator here appends a loop's header before its latch)."""
    seen: set[str] = set()
    edges = []
    for line in body.splitlines():
        label = _LABEL.match(line)
        if label:
            seen.add(label.group(1))
        branch = _BRANCH.match(line)
        if branch and (branch.group(1) in seen or branch.group(2) in seen):
            edges.append(line)
    return edges


def _functions(ir_text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in _DEFINE.finditer(ir_text)}


def test_generated_loops_stay_rolled() -> None:
    ir_text = _step_ir()
    fns = _functions(ir_text)
    kernels = [n for n in fns if n.startswith("graphc.gemm.uk.")]
    kernels += [n for n in fns if re.fullmatch(r"k\d+_mul_sub", n)]  # SGD's updates
    assert any(n.startswith("graphc.gemm.uk.") for n in kernels)
    assert any(n.endswith("mul_sub") for n in kernels)
    for name in kernels:
        edges = _back_edges(fns[name])
        assert edges, name
        free = [e.strip() for e in edges if "!llvm.loop" not in e]
        assert not free, f"{name}: loops LLVM may unroll: {free}"


def test_rolled_loops_survive_optimization() -> None:
    """LLVM accepts the loop IDs (self-referential nodes) and honours them: after the O2
    pipeline the micro-kernel keeps exactly its two k loops (main and remainder), none
    unrolled into a copy of the other."""
    ir_text = _step_ir()
    opt = jit.optimized_ir(ir_text, gc.codegen.target.host_target(), 2)
    fns = _functions(opt)
    uk = [n for n in fns if n.startswith("graphc.gemm.uk.")]
    assert uk
    for name in uk:
        assert len(_back_edges(fns[name])) == 2, name
