"""Instruction helpers for vecmath: one float type (scalar or vector), one builder position.

`Emitter` hides the scalar/vector difference (constants are splatted, integer views have the
matching lane count) so each algorithm in vecmath is written once for `float`, `double`,
`<N x float>` and `<N x double>`. `internal_call` emits (once per module) and calls the
internal function that holds one algorithm for one type (`internal_call_pair` for algorithms
that return two values, such as a numerator and a denominator).

AVX-512: when the host has AVX-512F (every graphc target is the host), `Emitter.avx512` is
true and the algorithms may use `scalef` (x * 2^floor(n) with one rounding, so overflow and
gradual underflow come out right without the two-step scaling) and `permute16` (a 16-entry
table lookup in a register). These are per-lane operations: scalars and vectors of any
length are widened to 512-bit registers, so a scalar lane computes exactly what a vector lane
computes. `portable()` turns them off (tests use it to cover the code other targets run).

Floating-point flags: none. Every FMA the algorithms rely on is an explicit `llvm.fma`, and
nothing else may be contracted or reassociated: the range reductions (Cody-Waite splits,
exact differences) and the special-value handling (inf, NaN, signed zero) depend on IEEE
semantics, and leaving contraction to the backend could make the vector and scalar code of
the same function round differently.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import llvmlite.ir as ir

from graphc.codegen.target import host_target
from graphc.codegen.vecmath.coeffs import COEFFS, CONSTS
from graphc.errors import CompileError

Body = Callable[["Emitter", ir.Value], ir.Value]
PairBody = Callable[["Emitter", ir.Value], tuple[ir.Value, ir.Value]]

I32 = ir.IntType(32)
_PORTABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("graphc_vm_portable",
                                                                 default=False)


@functools.cache
def _host_avx512() -> bool:
    target = host_target()
    return target.triple.startswith("x86_64") and target.has("avx512f")


def use_avx512() -> bool:
    """Whether vecmath emits AVX-512 intrinsics now (host has AVX-512F, not `portable()`)."""
    return _host_avx512() and not _PORTABLE.get()


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Within the block, emit only target-independent code (what hosts without AVX-512
    run). Internal functions emitted this way get the name suffix `.generic`, so both
    variants can live in one module."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


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
    avx512: bool = field(init=False)  # scalef / permute16 are available

    def __post_init__(self) -> None:
        self.avx512 = use_avx512()
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

    # -- AVX-512 (only when self.avx512) --------------------------------------------------
    def _per_lane_512(self, args: Sequence[ir.Value],
                      call: Callable[[list[ir.Value]], ir.Value]) -> ir.Value:
        """Apply a 512-bit per-lane operation: `call` gets the arguments as full-width
        vectors (a scalar in lane 0, short vectors padded by repeating their last lane,
        long ones in 512-bit chunks) and returns a full-width result; the lanes that
        belong to the input are put back together in this type."""
        if not self.avx512:
            raise CompileError("vecmath: AVX-512 intrinsic used without AVX-512 (a bug)")
        b = self.b
        width = 512 // self.bits
        if self.lanes == 1:
            zero = ir.Constant(I32, 0)
            wide = [b.insert_element(ir.Constant(ir.VectorType(a.type, width), None), a, zero)
                    for a in args]
            return b.extract_element(call(wide), zero)
        if self.lanes == width:
            return call(list(args))
        parts = []
        for start in range(0, self.lanes, width):
            sel = ir.Constant(ir.VectorType(I32, width),
                              [min(start + i, self.lanes - 1) for i in range(width)])
            parts.append(call([b.shuffle_vector(a, ir.Constant(a.type, None), sel)
                               for a in args]))
        out: ir.Value = ir.Constant(self.ty, None)
        for lane in range(self.lanes):
            v = b.extract_element(parts[lane // width], ir.Constant(I32, lane % width))
            out = b.insert_element(out, v, ir.Constant(I32, lane))
        return out

    def _declare(self, name: str, ret: ir.Type, params: Sequence[ir.Type]) -> ir.Function:
        fn = self.b.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.b.module, ir.FunctionType(ret, list(params)), name)
        return fn

    def scalef(self, a: ir.Value, n: ir.Value) -> ir.Value:
        """a * 2^floor(n), rounded once (vscalefps/pd); n is a float of this type."""
        width = 512 // self.bits
        vt = ir.VectorType(self.elem, width)
        mask = ir.IntType(width)
        fn = self._declare(f"llvm.x86.avx512.mask.scalef.{'pd' if self.is_f64 else 'ps'}.512",
                           vt, [vt, vt, vt, mask, I32])
        rest = [ir.Constant(vt, None), ir.Constant(mask, -1), ir.Constant(I32, 4)]
        return self._per_lane_512([a, n], lambda w: self.b.call(fn, [*w, *rest]))

    def permute16(self, table: Sequence[float], index_bits: ir.Value) -> ir.Value:
        """table[i & 15] per lane (float32 only; vpermps reads the low four bits of the
        integer lanes `index_bits`)."""
        if self.is_f64 or len(table) != 16:
            raise CompileError("vecmath: permute16 needs float32 and a 16-entry table")
        vt, it = ir.VectorType(self.elem, 16), ir.VectorType(I32, 16)
        fn = self._declare("llvm.x86.avx512.permvar.sf.512", vt, [vt, it])
        values = ir.Constant(vt, [ir.Constant(self.elem, float(v)) for v in table])
        return self._per_lane_512([index_bits], lambda w: self.b.call(fn, [values, w[0]]))

    def sign_bit(self) -> ir.Constant:
        return self.ci(1 << (self.bits - 1))

    def any(self, cond: ir.Value) -> ir.Value:
        """i1: whether any lane of the i1 (vector) `cond` is true."""
        if self.lanes == 1:
            return cond
        mask = self.b.bitcast(cond, ir.IntType(self.lanes))
        return self.b.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(self.lanes), 0))


def _function_name(name: str, ty: ir.Type) -> str:
    suffix = ".generic" if _host_avx512() and not use_avx512() else ""
    return f"graphc.vm.{name}.{type_suffix(ty)}{suffix}"


def _define(b: ir.IRBuilder, fname: str, ret: ir.Type, ty: ir.Type,
            emit: Callable[[ir.IRBuilder, ir.Value], ir.Value]) -> ir.Function:
    module = b.module
    fn = module.globals.get(fname)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, [ty]), fname)
        fn.linkage = "internal"
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        inner = ir.IRBuilder(fn.append_basic_block("entry"))
        inner.ret(emit(inner, fn.args[0]))
    return fn


def internal_call(b: ir.IRBuilder, name: str, x: ir.Value, body: Body) -> ir.Value:
    """Call `graphc.vm.<name>.<type>` on `x`, defining it in b's module on first use.

    The function is internal and alwaysinline, so after inlining the caller's loop contains
    the algorithm's instructions directly; one definition per module keeps the IR text small.
    """
    ty = x.type
    fn = _define(b, _function_name(name, ty), ty, ty, lambda inner, a: body(Emitter(inner, ty), a))
    return b.call(fn, [x])


def internal_call_pair(b: ir.IRBuilder, name: str, x: ir.Value,
                       body: PairBody) -> tuple[ir.Value, ir.Value]:
    """Like `internal_call` for a body returning two values of x's type."""
    ty = x.type
    pair = ir.LiteralStructType([ty, ty])

    def emit(inner: ir.IRBuilder, a: ir.Value) -> ir.Value:
        first, second = body(Emitter(inner, ty), a)
        packed = inner.insert_value(ir.Constant(pair, None), first, 0)
        return inner.insert_value(packed, second, 1)

    call = b.call(_define(b, _function_name(name, ty), pair, ty, emit), [x])
    return b.extract_value(call, 0), b.extract_value(call, 1)


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
