"""One owner per fact: the op registry's fusion facts and codegen's lowering registry agree.

Every op that fusion may inline has a rule that evaluates it at an index; every op that gets
a kernel of its own has a lowering; every kind of anchored kernel has one; fusion decides by
those facts alone, never by op names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from graphc.codegen import lowering
from graphc.codegen.fused import expr, op_table
from graphc.ir import SOURCE_OPS
from graphc.ir.opdef import Anchor, Fusion
from graphc.ops import registry
from graphc.passes import column_sums, fuse, kernels, multi_output
from graphc.passes.kernels import KernelKind

ROOT = Path(__file__).resolve().parent.parent
OWN_KERNEL = (Fusion.OPAQUE, Fusion.INJECTIVE, Fusion.REDUCTION, Fusion.OUT_FUSABLE)


def test_every_inlinable_op_has_an_index_rule() -> None:
    missing = [op.name for op in registry.OPS.values() if op.fusion.inlinable
               and op.name not in op_table.LOWER and op.name not in expr.INDEX_RULES]
    assert not missing, f"inlinable ops codegen cannot evaluate at an index: {missing}"


def test_index_rules_are_for_inlinable_ops() -> None:
    for name in (*op_table.LOWER, *expr.INDEX_RULES):
        assert registry.OPS[name].fusion.inlinable, name


@pytest.mark.parametrize("name", [op.name for op in registry.OPS.values()
                                  if op.fusion in OWN_KERNEL and op.anchor is None])
def test_every_op_with_a_kernel_of_its_own_has_a_lowering(name: str) -> None:
    found = lowering.TABLE.get(name)
    assert found is not None, f"op {name} gets its own kernel but has no Lowering"
    assert callable(found.emit)


def test_every_kernel_kind_has_a_lowering() -> None:
    for anchor in Anchor:
        assert KernelKind.of_anchor(anchor) in lowering.TABLE
    assert KernelKind.ELEMENTWISE in lowering.TABLE


def test_every_lowering_is_for_a_kernel_kind_or_a_registered_op() -> None:
    for key in lowering.TABLE:
        if isinstance(key, str):
            op = registry.OPS[key]  # KeyError: a lowering of an op that no longer exists
            assert op.anchor is None and op.fusion in (*OWN_KERNEL, Fusion.INDEXED), key
        else:
            assert key != KernelKind.OPAQUE


def test_anchors_are_exactly_the_ops_fusion_treats_as_anchors() -> None:
    anchored = {op.name: op.anchor for op in registry.OPS.values() if op.anchor is not None}
    assert anchored == {"sum": Anchor.REDUCTION, "max": Anchor.REDUCTION,
                        "min": Anchor.REDUCTION, "prod": Anchor.REDUCTION,
                        "matmul": Anchor.MATMUL, "matmul_integer": Anchor.MATMUL,
                        "conv2d": Anchor.CONV}


@pytest.mark.parametrize("module", [fuse, kernels, multi_output, column_sums],
                         ids=lambda m: m.__name__)
def test_fusion_reads_facts_not_op_names(module: object) -> None:
    """The fusion passes name no op (but the IR's source ops): their decisions come from
    `OpDef.fusion` and `OpDef.anchor`, which the op owns."""
    source = Path(module.__file__).read_text()  # type: ignore[attr-defined]
    ops = set(registry.OPS) - SOURCE_OPS
    named = sorted({node.value for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.Constant) and node.value in ops})
    assert not named, f"{module.__name__} decides by op names: {named}"  # type: ignore
