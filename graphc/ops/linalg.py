"""Linear algebra ops: `matmul` (batched, broadcasting, with transpose flags).

`matmul` is one primitive whose operands have rank >= 2; the attributes ``transpose_a`` and
``transpose_b`` say that an operand is used transposed in its last two axes. The simplify
pass folds explicit transposes into these flags and the gradient rule uses them, so no
transpose is ever materialized for a gradient. The builder adds numpy's 1-D rules on top
(promote with a reshape, reshape the result back), so ``a @ b`` behaves like numpy's ``@``
for operands of any rank >= 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply, user_location
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Anchor, Fusion, OpDef
from graphc.ops import elementwise as _elementwise
from graphc.ops.common import BF16, NUMERIC, check_dtype, same_dtype
from graphc.ops.layout import reshape
from graphc.ops.panels import unpack_groups, unpack_panels

__all__ = ["linear", "matmul", "matmul_integer"]

OPS: list[OpDef] = []


def _describe(t: TensorType, operand: str, transposed: bool) -> str:
    return f"{operand} {t}" + (f" (transpose_{operand})" if transposed else "")


def _inner_dim(t: TensorType, transposed: bool, is_a: bool) -> int:
    """The axis (negative, numpy-style) of `t` that is contracted."""
    if t.ndim == 1:
        return -1
    # a contracts its columns (-1), b its rows (-2); a transpose flag swaps the two.
    return (-2 if transposed else -1) if is_a else (-1 if transposed else -2)


def _check_inner(a: TensorType, b: TensorType, ta: bool, tb: bool) -> None:
    """Raise a ShapeError naming both operands and dims if the contracted sizes differ."""
    da, db = _inner_dim(a, ta, True), _inner_dim(b, tb, False)
    if a.shape[da] != b.shape[db]:
        raise ShapeError(
            f"inner dimensions do not agree: {_describe(a, 'a', ta)} has {a.shape[da]} in "
            f"dim {da}, {_describe(b, 'b', tb)} has {b.shape[db]} in dim {db}"
        )


def _batch_shape(a: TensorType, b: TensorType) -> tuple[int, ...]:
    """numpy broadcasting of the batch (all but the last two) dims of a and b."""
    sa, sb = a.shape[:-2], b.shape[:-2]
    n = max(len(sa), len(sb))
    sa, sb = (1,) * (n - len(sa)) + sa, (1,) * (n - len(sb)) + sb
    out = []
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x != y and x != 1 and y != 1:
            raise ShapeError(
                f"batch dimensions do not broadcast: a {a} and b {b} "
                f"(batch dim {i - n - 2}: {x} vs {y})"
            )
        out.append(y if x == 1 else x)
    return tuple(out)


def _matmul_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    a, b = types
    ta, tb = bool(attrs.get("transpose_a", False)), bool(attrs.get("transpose_b", False))
    for t, operand in ((a, "a"), (b, "b")):
        check_dtype(t, NUMERIC, operand)
        if t.ndim < 2:
            raise ShapeError(f"{operand}: expected rank >= 2, got {t}")
    dtype = same_dtype(types, ("a", "b"))
    _check_inner(a, b, ta, tb)
    panels = int(attrs.get("b_panels", 0))
    if panels and (b.ndim != 2 or tb or dtype not in (DType.float32, DType.float64)):
        raise AttrError(f"b_panels={panels}: needs a float32 or float64 b of rank 2 that is "
                        f"not transposed, got b {b} (transpose_b={tb})")
    m = a.shape[-1] if ta else a.shape[-2]
    n = b.shape[-2] if tb else b.shape[-1]
    # bf16 operands accumulate in float32 and return it (JAX's preferred_element_type,
    # oneDNN's f32 destination); cast the result for a bf16 one: that rounds once.
    out = DType.float32 if dtype == DType.bfloat16 else dtype
    return TensorType((*_batch_shape(a, b), m, n), out)


def _matmul_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    a, b = arrays
    if attrs.get("transpose_a", False):
        a = np.swapaxes(a, -1, -2)
    if attrs.get("transpose_b", False):
        b = np.swapaxes(b, -1, -2)
    if attrs.get("b_panels", 0):
        b = unpack_panels(b.ravel(), b.shape[0], b.shape[1], attrs["b_panels"])
    return np.matmul(a, b)


def _matmul_grad(n: Node, g: Node) -> list[Node | None]:
    """With C = op(A) @ op(B): d op(A) = g @ op(B)^T, d op(B) = op(A)^T @ g.

    Un-transposing those results gives, per flag combination, another matmul whose flags
    absorb every transpose (e.g. with transpose_a: dA = (g B^T)^T = B @ g^T). Broadcast batch
    dims are then summed away.
    """
    a, b = n.inputs
    ta, tb = bool(n.attrs.get("transpose_a", False)), bool(n.attrs.get("transpose_b", False))
    if n.attrs.get("b_panels", 0):
        raise GraphcError(f"matmul %{n.name} has a prepacked b (b_panels="
                          f"{n.attrs['b_panels']}, a layout the compiler gives constant "
                          "weights); it has no gradient: differentiate the graph before it "
                          "is compiled", op="matmul", loc=n.loc)
    if a.dtype == DType.bfloat16:
        # bf16 backward GEMMs: the float32 cotangent rounded to bf16, the products rounded
        # to the operands' dtype (each cotangent has its operand's type).
        g = _elementwise.cast(g, DType.bfloat16)
    if not ta and not tb:
        ga, gb = _prim(g, b, False, True), _prim(a, g, True, False)
    elif not ta and tb:
        ga, gb = _prim(g, b, False, False), _prim(g, a, True, False)
    elif ta and not tb:
        ga, gb = _prim(b, g, False, True), _prim(a, g, False, False)
    else:
        ga, gb = _prim(b, g, True, True), _prim(g, a, True, True)
    if a.dtype == DType.bfloat16:
        ga, gb = _elementwise.cast(ga, a.dtype), _elementwise.cast(gb, b.dtype)
    return [_elementwise.unbroadcast(ga, a.shape), _elementwise.unbroadcast(gb, b.shape)]


MATMUL = OpDef(
    "matmul", "linalg", 2, _matmul_infer, _matmul_reference, Fusion.OUT_FUSABLE, _matmul_grad,
    anchor=Anchor.MATMUL, lowp=BF16,
    attrs=(AttrSpec("transpose_a", Kind.BOOL, default=False),
           AttrSpec("transpose_b", Kind.BOOL, default=False),
           # 0, or the GEMM's panel width P: a 2-D b is stored in its panels
           # (`graphc.ops.panels`), set by the compiler on constant weights
           # (`graphc.codegen.gemm.prepack`).
           AttrSpec("b_panels", Kind.INT, default=0, low=0)),
    doc="batched matrix product of rank>=2 operands (batch dims broadcast); transpose_a/"
        "transpose_b use an operand transposed in its last two axes; bf16 operands give "
        "a float32 result; b_panels: the compiler's prepacked layout of a constant b",
)
OPS.append(MATMUL)


def _matmul_integer_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    a, b = types[:2]
    check_dtype(a, {DType.uint8}, "a")
    check_dtype(b, {DType.int8}, "b")
    if a.ndim < 2 or b.ndim != 2:
        raise ShapeError(f"expected a of rank >= 2 and b of rank 2, got a {a} and b {b}")
    if len(types) == 3:
        check_dtype(types[2], {DType.uint8}, "a_zero_point")
        if types[2].shape != ():
            raise ShapeError(f"a_zero_point: expected a scalar, got {types[2]}")
    ta, tb = bool(attrs["transpose_a"]), bool(attrs["transpose_b"])
    if ta and a.ndim > 2:
        raise ShapeError(f"transpose_a needs a rank-2 a, got {a}")
    _check_inner(a, b, ta, tb)
    groups = tuple(attrs.get("b_groups", ()))
    if groups and (len(groups) != 2 or tb or b.shape[0] % groups[1] or b.shape[1] % groups[0]):
        raise AttrError(f"b_groups={groups!r}: expected () or (panel, group) for a b that is "
                        f"not transposed, its rows a multiple of group and its columns of "
                        f"panel, got b {b} (transpose_b={tb})")
    m = a.shape[-1] if ta else a.shape[-2]
    n = b.shape[-2] if tb else b.shape[-1]
    return TensorType((*a.shape[:-2], m, n), DType.int32)


def _matmul_integer_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    a, b = (x.astype(np.int64) for x in arrays[:2])
    if len(arrays) == 3:
        a = a - int(arrays[2])
    if attrs["transpose_a"]:
        a = np.swapaxes(a, -1, -2)
    if attrs["transpose_b"]:
        b = b.T
    if attrs.get("b_groups"):
        b = unpack_groups(b.ravel(), *b.shape, *attrs["b_groups"])
    # Exact in int64; the kernel's int32 sums wrap only past 2^31 (K >= 65536).
    return np.matmul(a, b).astype(np.int32)


MATMUL_INTEGER = OpDef(
    "matmul_integer", "linalg", None, _matmul_integer_infer, _matmul_integer_reference,
    Fusion.OUT_FUSABLE, None, anchor=Anchor.MATMUL, lowp=frozenset({DType.uint8, DType.int8}),
    attrs=(AttrSpec("transpose_a", Kind.BOOL, default=False),
           AttrSpec("transpose_b", Kind.BOOL, default=False),
           # () or (panel, group): b is stored in the integer GEMM's grouped panels
           # (`graphc.ops.panels.pack_groups`), set by the compiler on constant weights
           # (`graphc.codegen.gemm.prepack`).
           AttrSpec("b_groups", Kind.INTS, default=(), low=1)),
    doc="(a - a_zero_point) @ b in int32, exactly, for uint8 a (rank >= 2, its rows "
        "merged), int8 b (rank 2) and an optional uint8 scalar a_zero_point (ONNX "
        "MatMulInteger with symmetric weights); dequantize with elementwise ops, which fuse "
        "into the kernel's epilogue; b_groups: the compiler's prepacked layout of a "
        "constant b",
)
OPS.append(MATMUL_INTEGER)


def matmul_integer(a: Operand, b: Operand, a_zero_point: Operand | None = None,
                   transpose_a: bool = False, transpose_b: bool = False,
                   name: str | None = None) -> Node:
    """``(a - a_zero_point) @ b`` as exact int32 sums: uint8 activations `a` (rank >= 2),
    int8 weights `b` (rank 2; `transpose_b` for weights stored (N, K)), an optional uint8
    scalar zero point of `a` (a node: dynamic quantization computes it at run time).

    Compiled on `vpdpbusd` (AVX512-VNNI), or exactly emulated without it. Dequantize as
    ``gc.cast(acc, gc.float32) * (a_scale * b_scale) + bias``: those elementwise ops fuse
    into the GEMM's epilogue. Not differentiable."""
    operands = [a, b] if a_zero_point is None else [a, b, a_zero_point]
    return apply(MATMUL_INTEGER, operands, {"transpose_a": bool(transpose_a),
                                            "transpose_b": bool(transpose_b)}, name=name)


def _prim(a: Operand, b: Operand, ta: bool, tb: bool, name: str | None = None) -> Node:
    return apply(MATMUL, [a, b], {"transpose_a": ta, "transpose_b": tb}, name=name)


def matmul(
    a: Operand,
    b: Operand,
    transpose_a: bool = False,
    transpose_b: bool = False,
    name: str | None = None,
) -> Node:
    """``a @ b`` with numpy semantics for operands of rank >= 1 (this is what ``@`` calls).

    Rank >= 2 operands are (batches of) matrices whose batch dims broadcast. A 1-D `a` is a
    row vector and a 1-D `b` a column vector; the added axis is removed from the result, as
    in numpy. `transpose_a`/`transpose_b` use an operand transposed in its last two axes
    (they need rank >= 2). Raises ShapeError if the contracted dims differ, naming both
    operands, their shapes and the dims.
    """
    ta, tb = bool(transpose_a), bool(transpose_b)
    loc = user_location()
    a, b = _literal(a), _literal(b)
    for x, operand, flag in ((a, "a", ta), (b, "b", tb)):
        if x.ndim == 0:
            raise ShapeError(f"{operand}: expected rank >= 1, got a scalar (use * to scale)",
                             op="matmul", loc=loc)
        if x.ndim == 1 and flag:
            raise AttrError(f"transpose_{operand} needs a rank >= 2 operand; {operand} is 1-D",
                            op="matmul", loc=loc)
    if a.ndim >= 2 and b.ndim >= 2:
        return _prim(a, b, ta, tb, name)
    try:
        # Check before promoting so that the message shows the user's shapes, not (1, K).
        _check_inner(_type(a), _type(b), ta, tb)
    except GraphcError as exc:
        raise exc.with_context(op="matmul", loc=loc) from None
    out = _prim(_promote(a, (1, -1)) if a.ndim == 1 else a,
                _promote(b, (-1, 1)) if b.ndim == 1 else b, ta, tb)
    shape = out.shape
    if a.ndim == 1:
        shape = (*shape[:-2], shape[-1])
    if b.ndim == 1:
        shape = shape[:-1]
    return reshape(out, shape, name=name)


def linear(x: Operand, w: Operand, b: Operand | None = None, name: str | None = None) -> Node:
    """``x @ w + b`` (a dense layer's affine map; `b` broadcasts, None means no bias)."""
    if b is None:
        return matmul(x, w, name=name)
    return _elementwise.add(matmul(x, w), b, name=name)


def _literal(x: Operand) -> Node | np.ndarray:
    """A node as is; any other operand as the array the builder would make of it.

    Python literals follow the builder's defaults (a list of floats is float32, of ints
    int32); numpy arrays keep their dtype. Converting here gives non-node operands a rank.
    """
    if isinstance(x, (Node, np.ndarray)):
        return x
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"cannot convert {type(x).__name__} to an array: {exc}",
                         op="matmul", loc=user_location()) from None
    return array.astype({"float64": np.float32, "int64": np.int32}.get(array.dtype.name,
                                                                       array.dtype))


def _type(x: Node | np.ndarray) -> TensorType:
    return x.type if isinstance(x, Node) else TensorType(x.shape, DType.of(x.dtype))


def _promote(x: Node | np.ndarray, pattern: tuple[int, int]) -> Node | np.ndarray:
    """A 1-D operand as a (1, K) row or a (K, 1) column."""
    if isinstance(x, Node):
        return reshape(x, tuple(x.shape[0] if p == -1 else 1 for p in pattern))
    return x.reshape(pattern)
