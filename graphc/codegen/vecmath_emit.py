"""Instruction helpers for vecmath: one float type (scalar or vector), one builder position.

`Emitter` hides the scalar/vector difference (constants are splatted, integer views have the
matching lane count) so each algorithm in vecmath is written once for `float`, `double`,
`<N x float>` and `<N x double>`. `internal_call` emits (once per module) and calls the
internal function that holds one algorithm for one type.

Floating-point flags: none. Every FMA the algorithms rely on is an explicit `llvm.fma`, and
nothing else may be contracted or reassociated: the range reductions (Cody-Waite splits,
exact differences) and the special-value handling (inf, NaN, signed zero) depend on IEEE
semantics, and leaving contraction to the backend could make the vector and scalar code of
the same function round differently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llvmlite.ir as ir

from graphc.codegen.vecmath_coeffs import COEFFS, CONSTS
from graphc.errors import CompileError

Body = Callable[["Emitter", ir.Value], ir.Value]


def element_type(ty: ir.Type) -> ir.Type:
    """`float`/`double` for a scalar or vector type; CompileError for anything else."""
    elem = ty.element if isinstance(ty, ir.VectorType) else ty
    if not isinstance(elem, (ir.FloatType, ir.DoubleType)):
        raise CompileError(f"vecmath: expected float, double or a vector of them, got {ty}")
    return elem


def type_suffix(ty: ir.Type) -> str:
    """`f32`, `f64`, `v16f32`, `v8f64`: the part of an internal function's name."""
    base = "f64" if isinstance(element_type(ty), ir.DoubleType) else "f32"
    return f"v{ty.count}{base}" if isinstance(ty, ir.VectorType) else base


@dataclass
class Emitter:
    """Emits instructions on values of type `ty` at the position of `b`."""

    b: ir.IRBuilder
    ty: ir.Type
    # Derived from `ty`:
    elem: ir.Type = field(init=False)  # float or double
    is_f64: bool = field(init=False)
    dtype: str = field(init=False)  # "f32" / "f64": the key of the coefficient tables
    lanes: int = field(init=False)  # 1 for scalars
    bits: int = field(init=False)
    mant_bits: int = field(init=False)
    exp_bias: int = field(init=False)
    ity: ir.Type = field(init=False)  # the integer type of the same shape (bit views)

    def __post_init__(self) -> None:
        self.elem = element_type(self.ty)
        self.is_f64 = isinstance(self.elem, ir.DoubleType)
        self.dtype = "f64" if self.is_f64 else "f32"
        self.lanes = self.ty.count if isinstance(self.ty, ir.VectorType) else 1
        self.bits = 64 if self.is_f64 else 32
        self.mant_bits = 52 if self.is_f64 else 23
        self.exp_bias = 1023 if self.is_f64 else 127
        ielem = ir.IntType(self.bits)
        self.ity = ir.VectorType(ielem, self.lanes) if self.lanes > 1 else ielem

    # -- constants -------------------------------------------------------------------------
    def c(self, value: float) -> ir.Constant:
        """A float constant of this type (rounded to float for float32)."""
        scalar = ir.Constant(self.elem, float(value))
        return ir.Constant(self.ty, [scalar] * self.lanes) if self.lanes > 1 else scalar

    def ci(self, value: int) -> ir.Constant:
        """An integer constant of the matching integer type (i32 or i64 lanes)."""
        scalar = ir.Constant(self.ity.element if self.lanes > 1 else self.ity, value)
        return ir.Constant(self.ity, [scalar] * self.lanes) if self.lanes > 1 else scalar

    def coeffs(self, name: str) -> tuple[float, ...]:
        return COEFFS[(name, self.dtype)]

    def const(self, name: str) -> tuple[float, ...]:
        return CONSTS[(name, self.dtype)]

    def pick(self, f32: float, f64: float) -> ir.Constant:
        """The constant for this precision (bounds such as overflow thresholds differ)."""
        return self.c(f64 if self.is_f64 else f32)

    # -- arithmetic (no fast-math flags: see the module docstring) -------------------------
    def add(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.fadd(a, b)

    def sub(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.fsub(a, b)

    def mul(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.fmul(a, b)

    def div(self, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.fdiv(a, b)

    def neg(self, a: ir.Value) -> ir.Value:
        return self.b.fneg(a)

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        """Call the overloaded intrinsic `name` on args of this type (llvmlite's
        declare_intrinsic cannot mangle vector types)."""
        full = f"{name}.{type_suffix(self.ty)}"
        module = self.b.module
        fn = module.globals.get(full)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(self.ty, [self.ty] * len(args)), full)
        return self.b.call(fn, list(args))

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        """a*b + c with one rounding."""
        return self.intrinsic("llvm.fma", a, b, c)

    def abs(self, a: ir.Value) -> ir.Value:
        return self.intrinsic("llvm.fabs", a)

    def copysign(self, mag: ir.Value, sign: ir.Value) -> ir.Value:
        return self.intrinsic("llvm.copysign", mag, sign)

    def rint(self, a: ir.Value) -> ir.Value:
        """Round to nearest, ties to even (the default rounding mode)."""
        return self.intrinsic("llvm.rint", a)

    def poly(self, x: ir.Value, coeffs: Sequence[float]) -> ir.Value:
        """sum(coeffs[k] * x**k) by Horner's rule with one FMA per coefficient."""
        acc: ir.Value = self.c(coeffs[-1])
        for k in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(k))
        return acc

    # -- comparisons and selection ---------------------------------------------------------
    def cmp(self, op: str, a: ir.Value, b: ir.Value) -> ir.Value:
        """Ordered comparison: false when either operand is NaN."""
        return self.b.fcmp_ordered(op, a, b)

    def cmp_u(self, op: str, a: ir.Value, b: ir.Value) -> ir.Value:
        """Unordered comparison: true when either operand is NaN."""
        return self.b.fcmp_unordered(op, a, b)

    def isnan(self, a: ir.Value) -> ir.Value:
        return self.b.fcmp_unordered("uno", a, a)

    def select(self, cond: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.select(cond, a, b)

    # -- integer views ---------------------------------------------------------------------
    def to_bits(self, a: ir.Value) -> ir.Value:
        return self.b.bitcast(a, self.ity)

    def from_bits(self, a: ir.Value) -> ir.Value:
        return self.b.bitcast(a, self.ty)

    def to_int(self, a: ir.Value) -> ir.Value:
        """Float holding an integer value -> integer lanes. The caller guarantees the value
        is finite and in range (fptosi of NaN or out-of-range values is poison)."""
        return self.b.fptosi(a, self.ity)

    def to_float(self, a: ir.Value) -> ir.Value:
        return self.b.sitofp(a, self.ty)

    def pow2(self, n: ir.Value) -> ir.Value:
        """2**n for integer lanes n in the normal exponent range (built from exponent bits)."""
        biased = self.b.add(n, self.ci(self.exp_bias))
        return self.from_bits(self.b.shl(biased, self.ci(self.mant_bits)))

    def sign_bit(self) -> ir.Constant:
        return self.ci(1 << (self.bits - 1))

    def any(self, cond: ir.Value) -> ir.Value:
        """i1: whether any lane of the i1 (vector) `cond` is true."""
        if self.lanes == 1:
            return cond
        mask = self.b.bitcast(cond, ir.IntType(self.lanes))
        return self.b.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(self.lanes), 0))


def internal_call(b: ir.IRBuilder, name: str, x: ir.Value, body: Body) -> ir.Value:
    """Call `graphc.vm.<name>.<type>` on `x`, defining it in b's module on first use.

    The function is internal and alwaysinline, so after inlining the caller's loop contains
    the algorithm's instructions directly; one definition per module keeps the IR text small.
    """
    ty = x.type
    fname = f"graphc.vm.{name}.{type_suffix(ty)}"
    module = b.module
    fn = module.globals.get(fname)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ty, [ty]), fname)
        fn.linkage = "internal"
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        inner = ir.IRBuilder(fn.append_basic_block("entry"))
        inner.ret(body(Emitter(inner, ty), fn.args[0]))
    return b.call(fn, [x])


def libm_name(name: str, ty: ir.Type) -> str:
    """C library name for `name` (the double version's name) at the element type of `ty`."""
    return name if isinstance(element_type(ty), ir.DoubleType) else name + "f"


def per_lane_libm_call(b: ir.IRBuilder, name: str, args: Sequence[ir.Value]) -> ir.Value:
    """Call the C library function `name` (`powf` for float lanes) lane by lane.

    All arguments have the type of args[0]; the result has it too. The function is declared
    as an external symbol, which the JIT resolves from the process (libm is loaded) and
    exported libraries link against libm.
    """
    ty = args[0].type
    elem = element_type(ty)
    cname = libm_name(name, ty)
    module = b.module
    fn = module.globals.get(cname)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(elem, [elem] * len(args)), cname)
    if not isinstance(ty, ir.VectorType):
        return b.call(fn, list(args))
    out: ir.Value = ir.Constant(ty, ir.Undefined)
    for lane in range(ty.count):
        idx = ir.Constant(ir.IntType(32), lane)
        lane_args = [b.extract_element(a, idx) for a in args]
        out = b.insert_element(out, b.call(fn, lane_args), idx)
    return out
