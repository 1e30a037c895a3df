"""Accuracy of graphc's vectorized math (graphc.codegen.vecmath) against numpy float64.

One LLVM module holds a kernel `out[i] = f(in[i])` per (function, dtype, lanes, variant) with
lanes 1, the host's vector width and half of it, and variant "native" (what this host runs:
AVX-512 intrinsics where it has them) and "portable" (`vecmath.portable()`: what other hosts
run); it is compiled once (module fixture) and called through ctypes. Inputs: dense sweeps
over each function's interesting range, random signs with log-uniform magnitudes over the
whole finite range (denormals included), and special values; for tanh and sigmoid also a
strided sample of all float32 bit patterns (tests/test_vecmath_exhaustive.py, opt-in, runs
all of them).

Error measure: rel = |y - ref| / max(|ref|, smallest normal), so results in the subnormal
range are judged in absolute terms (their relative precision is inherently lower); "ulp" is
|y - ref| divided by the spacing of the tested dtype at ref. Where ref is NaN or +-inf, or
rounds to +-inf in the tested dtype, y must be exactly that. `pytest -s` prints a table of
the measured maxima.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np
import pytest

from graphc.codegen.target import host_target
from graphc.codegen.vecmath import functions as vecmath
from graphc.errors import CompileError
from graphc.ir import DType
from graphc.runtime.jit import JitModule, jit_compile

F32, F64, I64, PTR = ir.FloatType(), ir.DoubleType(), ir.IntType(64), ir.PointerType()
ELEM = {"float32": F32, "float64": F64}
LANES = {d: min(16, host_target().lanes(np.dtype(d).itemsize)) for d in ELEM}
NAMES = list(vecmath.FUNCTIONS)
VARIANTS = ["native", "portable"]
KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

_erf = np.frompyfunc(math.erf, 1, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


REFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "erf": lambda x: _erf(x).astype(np.float64),
    "sin": np.sin,
    "cos": np.cos,
}

# Intervals swept densely, per function (both dtypes; values are clipped to the dtype).
SWEEPS: dict[str, list[tuple[float, float]]] = {
    "exp": [(-110.0, 90.0), (-1.0, 1.0), (-746.0, 710.0)],
    "log": [(0.0, 4.0), (0.5, 1.5), (1e-40, 1e-36)],
    "log1p": [(-1.0, 4.0), (-1e-3, 1e-3), (-1e-7, 1e-7)],
    "expm1": [(-40.0, 90.0), (-1.0, 1.0), (-1e-6, 1e-6)],
    "tanh": [(-12.0, 12.0), (-1.0, 1.0), (-1e-4, 1e-4)],
    "sigmoid": [(-120.0, 40.0), (-5.0, 5.0), (-750.0, 40.0)],
    "erf": [(-7.0, 7.0), (-1.5, 1.5), (-1e-4, 1e-4)],
    "sin": [(-10.0, 10.0), (-1e4, 1e4), (-7e4, 7e4)],
    "cos": [(-10.0, 10.0), (-1e4, 1e4), (-7e4, 7e4)],
}
POINTS_PER_SWEEP = 200_000

# float32 bounds on the max relative error: the documented bounds (vecmath's docstring,
# measured exhaustively) for tanh and sigmoid; a few ulp for the others (1 ulp is at most
# 2^-23 = 1.19e-7 relative). sin/cos: relative error with no absolute floor (the reduction
# keeps relative accuracy near the zeros too, as measured).
RTOL32 = {"exp": 3e-7, "log": 3e-7, "log1p": 3e-7, "expm1": 3e-7, "tanh": 3.1e-7,
          "sigmoid": 2e-7, "erf": 3e-7, "sin": 3e-7, "cos": 3e-7}
RTOL64 = 1e-12  # graphc's float64 bound


def _special(dtype: str) -> np.ndarray:
    fi = np.finfo(dtype)
    vals = [0.0, 1.0, 0.5, 2.0, 1e-30, 1e-10, 1e-5, fi.tiny, fi.smallest_subnormal,
            fi.tiny / 3, fi.tiny - fi.smallest_subnormal, fi.max, fi.max / 2, np.inf, 1e30,
            88.0, 88.72, 89.0, 103.0, 104.0, 709.0, 710.0, 745.0, 746.0, 20.0, 30.0, 40.0,
            3.9, 4.0, 5.9, 6.0, 9.0, 10.0, 19.0, 20.0, 0.625, np.pi, np.pi / 2, 1e5, 1e7,
            2.0**16, 2.0**30, 1e20]
    arr = np.array(vals, dtype=np.float64).astype(dtype)
    return np.concatenate([arr, -arr, np.array([np.nan, -np.nan], dtype=dtype)])


def inputs(name: str, dtype: str) -> np.ndarray:
    """Every input the accuracy tests use for `name` in `dtype`."""
    fi = np.finfo(dtype)
    rng = np.random.default_rng(sum(map(ord, name + dtype)))
    parts = []
    for lo, hi in SWEEPS[name]:
        with np.errstate(over="ignore"):
            parts.append(np.linspace(lo, hi, POINTS_PER_SWEEP).astype(dtype))
    lo_exp, hi_exp = math.log10(fi.smallest_subnormal), math.log10(fi.max)
    mags = 10.0 ** rng.uniform(lo_exp, hi_exp, POINTS_PER_SWEEP)
    signs = rng.choice([-1.0, 1.0], POINTS_PER_SWEEP)
    with np.errstate(over="ignore"):
        parts.append((signs * mags).astype(dtype))
    parts.append(_special(dtype))
    return np.concatenate(parts)


def _kernel(module: ir.Module, name: str, fn: vecmath.VecFn, elem: ir.Type, lanes: int) -> None:
    """void name(ptr in, ptr out, i64 n): out[i] = fn(in[i]), `lanes` at a time (n must be a
    multiple of lanes)."""
    f = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64]), name)
    entry, loop, done = (f.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    zero = ir.Constant(I64, 0)
    b.cbranch(b.icmp_signed("<", zero, f.args[2]), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(zero, entry)
    ty = ir.VectorType(elem, lanes) if lanes > 1 else elem
    x = b.load(b.gep(f.args[0], [i], source_etype=elem), typ=ty, align=4)
    b.store(fn(b, x), b.gep(f.args[1], [i], source_etype=elem), align=4)
    nxt = b.add(i, ir.Constant(I64, lanes))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, f.args[2]), loop, done)
    b.position_at_end(done)
    b.ret_void()


def _kname(name: str, dtype: str, lanes: int, variant: str = "native") -> str:
    return f"k_{name}_{dtype}_{lanes}_{variant}"


def lane_counts(dtype: str) -> list[int]:
    """Scalar, the host's vector width and half of it (AVX-512 code widens short vectors)."""
    return sorted({1, LANES[dtype], max(1, LANES[dtype] // 2)})


@contextlib.contextmanager
def variant_mode(variant: str) -> Iterator[None]:
    with vecmath.portable() if variant == "portable" else contextlib.nullcontext():
        yield


@dataclass
class Compiled:
    jit: JitModule
    module_ir: str

    def run(self, name: str, dtype: str, lanes: int, x: np.ndarray,
            variant: str = "native") -> np.ndarray:
        n = len(x)
        padded = np.zeros(-(-n // lanes) * lanes, dtype=dtype)
        padded[:n] = x
        out = np.empty_like(padded)
        KERNEL(self.jit.address(_kname(name, dtype, lanes, variant)))(
            padded.ctypes.data, out.ctypes.data, len(padded))
        return out[:n]


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    module = ir.Module("vecmath_test")
    for variant in VARIANTS:
        with variant_mode(variant):
            for dtype, elem in ELEM.items():
                for lanes in lane_counts(dtype):
                    for name, fn in vecmath.FUNCTIONS.items():
                        _kernel(module, _kname(name, dtype, lanes, variant), fn, elem, lanes)
                    _kernel(module, _kname("pow15", dtype, lanes, variant), _pow15(dtype),
                            elem, lanes)
    text = str(module)
    return Compiled(jit_compile(text), text)


def _pow15(dtype: str) -> vecmath.VecFn:
    """x -> x**1.5 through vecmath.per_lane_libm (pow/powf per lane)."""

    def emit(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
        if isinstance(x.type, ir.VectorType):
            y = ir.Constant(x.type, [ir.Constant(x.type.element, 1.5)] * x.type.count)
        else:
            y = ir.Constant(x.type, 1.5)
        return vecmath.per_lane_libm(b, "pow", [x, y], DType(dtype))

    return emit


@dataclass
class Errors:
    rel: float
    ulp: float
    worst_x: float
    mismatches: list[str]


def measure(x: np.ndarray, y: np.ndarray, ref: np.ndarray, dtype: str) -> Errors:
    """Max errors of y (dtype) against ref (float64), and the special-value mismatches."""
    with np.errstate(over="ignore", invalid="ignore"):
        ref_rounded = ref.astype(dtype)
    exact = ~np.isfinite(ref_rounded)  # NaN, +-inf, or overflow in the dtype: must be exact
    bad = exact & ~((y == ref_rounded) | (np.isnan(y) & np.isnan(ref_rounded)))
    mismatches = [f"f({x[i]!r}) = {y[i]!r}, expected {ref_rounded[i]!r}"
                  for i in np.flatnonzero(bad)[:5]]
    fin = ~exact
    yf, rf = y[fin].astype(np.float64), ref[fin]
    err = np.abs(yf - rf)
    err[~np.isfinite(yf)] = np.inf
    rel = err / np.maximum(np.abs(rf), np.finfo(dtype).tiny)
    ulp = err / np.spacing(np.abs(rf).astype(dtype)).astype(np.float64)
    worst = int(np.argmax(rel)) if rel.size else 0
    return Errors(float(rel.max(initial=0.0)), float(ulp.max(initial=0.0)),
                  float(x[fin][worst]) if rel.size else 0.0, mismatches)


TABLE: dict[tuple[str, str, str], Errors] = {}


@pytest.fixture(scope="module", autouse=True)
def print_table() -> object:
    yield
    if TABLE:
        print("\nvecmath max errors vs numpy float64 (rel | ulp | worst x):")
        for variant in VARIANTS:
            for dtype in ELEM:
                for name in NAMES:
                    if (name, dtype, variant) in TABLE:
                        e = TABLE[(name, dtype, variant)]
                        print(f"  {name:8s} {dtype} {variant:8s}  rel {e.rel:9.3g}  "
                              f"ulp {e.ulp:8.3g}  x {e.worst_x:.9g}")


def strided_float32(stride: int = 509) -> np.ndarray:
    """Every `stride`-th float32 bit pattern (all signs, exponents and mantissa bit
    positions get covered: the stride is odd), NaNs and infinities included."""
    return np.arange(0, 2**32, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)


def check_accuracy(compiled: Compiled, name: str, dtype: str, variant: str,
                   x: np.ndarray) -> Errors:
    y = compiled.run(name, dtype, LANES[dtype], x, variant)
    with np.errstate(all="ignore"):
        ref = REFERENCE[name](x.astype(np.float64))
    errs = measure(x, y, ref, dtype)
    assert not errs.mismatches, f"{name} {dtype} {variant} special values: {errs.mismatches}"
    bound = RTOL32[name] if dtype == "float32" else RTOL64
    assert errs.rel <= bound, (f"{name} {dtype} {variant}: max relative error {errs.rel:.3g} "
                               f"(at x={errs.worst_x!r}) exceeds {bound:g}")
    return errs


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", list(ELEM))
@pytest.mark.parametrize("name", NAMES)
def test_accuracy(compiled: Compiled, name: str, dtype: str, variant: str) -> None:
    TABLE[(name, dtype, variant)] = check_accuracy(compiled, name, dtype, variant,
                                                   inputs(name, dtype))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "exp"])
def test_float32_accuracy_on_strided_bit_patterns(compiled: Compiled, name: str,
                                                  variant: str) -> None:
    check_accuracy(compiled, name, "float32", variant, strided_float32())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", list(ELEM))
@pytest.mark.parametrize("name", NAMES)
def test_vector_and_scalar_agree_bitwise(compiled: Compiled, name: str, dtype: str,
                                         variant: str) -> None:
    x = inputs(name, dtype)
    one = compiled.run(name, dtype, 1, x, variant)
    itype = np.uint32 if dtype == "float32" else np.uint64
    for lanes in lane_counts(dtype)[1:]:
        vec = compiled.run(name, dtype, lanes, x, variant)
        differ = (vec.view(itype) != one.view(itype)) & ~(np.isnan(vec) & np.isnan(one))
        assert not differ.any(), (f"{name} {dtype} {variant} lanes={lanes}: lanes differ at "
                                  f"x={x[differ][:5]!r}: vector {vec[differ][:5]!r}, "
                                  f"scalar {one[differ][:5]!r}")


def test_special_values_exact(compiled: Compiled) -> None:
    inf, nan = np.inf, np.nan
    expect = {
        "exp": [(-inf, 0.0), (inf, inf), (0.0, 1.0), (-0.0, 1.0), (-1000.0, 0.0), (1000.0, inf)],
        "log": [(0.0, -inf), (-0.0, -inf), (inf, inf), (1.0, 0.0), (-1.0, nan), (-inf, nan)],
        "log1p": [(-1.0, -inf), (inf, inf), (-0.0, -0.0), (0.0, 0.0), (-2.0, nan)],
        "expm1": [(-inf, -1.0), (inf, inf), (-0.0, -0.0), (-100.0, -1.0)],
        "tanh": [(inf, 1.0), (-inf, -1.0), (-0.0, -0.0), (50.0, 1.0), (-50.0, -1.0)],
        "sigmoid": [(-inf, 0.0), (inf, 1.0), (0.0, 0.5), (-0.0, 0.5), (1000.0, 1.0)],
        "erf": [(inf, 1.0), (-inf, -1.0), (-0.0, -0.0), (10.0, 1.0), (-10.0, -1.0)],
        "sin": [(inf, nan), (-inf, nan), (-0.0, -0.0), (0.0, 0.0)],
        "cos": [(inf, nan), (-inf, nan), (0.0, 1.0), (-0.0, 1.0)],
    }
    for variant in VARIANTS:
        for dtype in ELEM:
            for lanes in lane_counts(dtype):
                for name, pairs in [*expect.items(), *[(n, [(nan, nan)]) for n in NAMES]]:
                    x = np.array([p[0] for p in pairs], dtype=dtype)
                    want = np.array([p[1] for p in pairs], dtype=dtype)
                    got = compiled.run(name, dtype, lanes, x, variant)
                    same = (got == want) & (np.signbit(got) == np.signbit(want))
                    same |= np.isnan(got) & np.isnan(want)
                    assert same.all(), (f"{name} {dtype} {variant} lanes={lanes}: "
                                        f"f({x}) = {got}, want {want}")


def test_sin_cos_large_arguments_use_exact_fallback_per_lane(compiled: Compiled) -> None:
    # Mixed vectors: huge lanes (libm fallback) next to ordinary ones (polynomial).
    for dtype in ELEM:
        x = np.tile(np.array([1e30, 0.5, -3e5, 2.0, 1e9, -1.0, 7e4, 3.0], dtype=dtype), 4)
        for name, ref in (("sin", np.sin), ("cos", np.cos)):
            got = compiled.run(name, dtype, LANES[dtype], x)
            want = ref(x.astype(np.float64))
            np.testing.assert_allclose(got, want, rtol=3e-7 if dtype == "float32" else 1e-12)


def test_per_lane_libm_pow(compiled: Compiled) -> None:
    for dtype in ELEM:
        x = np.linspace(0.0, 100.0, 1001).astype(dtype)
        for lanes in lane_counts(dtype):
            got = compiled.run("pow15", dtype, lanes, x)
            np.testing.assert_allclose(got, x.astype(np.float64) ** 1.5,
                                       rtol=3e-7 if dtype == "float32" else 1e-14)


def test_one_internal_definition_per_module_and_type() -> None:
    module = ir.Module("m")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), "f")
    b = ir.IRBuilder(fn.append_basic_block())
    v = b.load(fn.args[0], typ=ir.VectorType(F32, 8))
    vecmath.exp(b, v)
    vecmath.exp(b, v)
    vecmath.sigmoid(b, v)  # uses exp internally: no second definition
    vecmath.exp(b, b.load(fn.args[0], typ=F64))
    b.ret_void()
    defined = [g.name for g in module.functions if g.name.startswith("graphc.vm.")]
    assert sorted(defined) == ["graphc.vm.exp.f64", "graphc.vm.exp.v8f32",
                               "graphc.vm.sigmoid.v8f32"]
    exp_fn = module.globals["graphc.vm.exp.v8f32"]
    assert exp_fn.linkage == "internal" and "alwaysinline" in exp_fn.attributes


def test_rejects_non_float_types() -> None:
    module = ir.Module("m")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]), "f")
    b = ir.IRBuilder(fn.append_basic_block())
    with pytest.raises(CompileError, match="expected float, double or a vector of them, got i32"):
        vecmath.tanh(b, fn.args[0])
    with pytest.raises(CompileError, match="pow arguments must all be double"):
        vecmath.per_lane_libm(b, "pow", [ir.Constant(F32, 1.0)] * 2, DType.float64)
    with pytest.raises(CompileError, match="pow needs a float dtype, got int32"):
        vecmath.per_lane_libm(b, "pow", [ir.Constant(F32, 1.0)] * 2, DType.int32)


def test_exp_scaling_agrees_bitwise_across_variants(compiled: Compiled) -> None:
    # The AVX-512 exp scales by 2^n with vscalef, the portable one with two multiplications;
    # both round p * 2^n once, so they must agree bit for bit (overflow and underflow too).
    for dtype in ELEM:
        x = inputs("exp", dtype)
        native = compiled.run("exp", dtype, LANES[dtype], x)
        port = compiled.run("exp", dtype, LANES[dtype], x, "portable")
        itype = np.uint32 if dtype == "float32" else np.uint64
        differ = (native.view(itype) != port.view(itype)) & ~np.isnan(native)
        assert not differ.any(), f"exp {dtype}: variants differ at x={x[differ][:5]!r}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_tanh_bounded_by_one_and_exact_for_tiny_inputs(compiled: Compiled,
                                                               variant: str) -> None:
    x = strided_float32()
    y = compiled.run("tanh", "float32", LANES["float32"], x, variant)
    assert (np.abs(y[~np.isnan(x)]) <= 1.0).all()
    # |x| < 2^-12: tanh(x) = x (1 - x^2/3 + ...) rounds to x or to its neighbour.
    tiny = x[np.abs(x) < 2.0**-12]
    got = compiled.run("tanh", "float32", LANES["float32"], tiny, variant)
    steps = np.abs(got.view(np.int32).astype(np.int64) - tiny.view(np.int32).astype(np.int64))
    assert steps.max() <= 1, f"tanh(x) vs x: {steps.max()} ulp for tiny x"
    assert (np.signbit(got) == np.signbit(tiny)).all()
