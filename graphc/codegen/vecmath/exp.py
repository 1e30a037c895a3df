"""vecmath algorithms built on the exponential: exp, expm1, erf (tanh, sigmoid: vecmath_act).

Each `*_body(e, x)` emits the function for the type of `x` with the `Emitter` `e` and
returns the result; `vecmath` wraps them into internal functions. All are branch-free
(every lane computes every path; selects pick the result), so scalar and vector code are the
same instructions.

Shared reduction (Cephes style): n = rint(x * log2(e)), r = x - n*ln2 with ln2 split in two
(the first product is exact inside the FMA, so r is exact before the second correction),
|r| <= ln2/2; expm1(r) = r + r^2 G(r) with a fitted polynomial G; the result is scaled by
2^n built from exponent bits (exp with AVX-512: one vscalef, the same correctly rounded
product as the two-step scaling, so both paths agree bit for bit).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.vecmath.emitter import Emitter


def _reduce(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(n, r) with x = n*ln2 + r, n integral (as a float), |r| <= ln2/2 (x finite)."""
    (log2e,) = e.const("LOG2E")
    ln2_hi, ln2_lo = e.const("LN2")
    n = e.rint(e.mul(x, e.c(log2e)))
    r = e.fma(n, e.c(-ln2_hi), x)
    return n, e.fma(n, e.c(-ln2_lo), r)


def _expm1_reduced(e: Emitter, r: ir.Value) -> ir.Value:
    """expm1(r) for |r| <= ln2/2."""
    return e.fma(e.mul(r, r), e.poly(r, e.coeffs("EXP_G")), r)


def _clamp(e: Emitter, x: ir.Value, lo: ir.Value, hi: ir.Value) -> ir.Value:
    """x limited to [lo, hi]; NaN becomes hi (so later integer conversions stay defined)."""
    x = e.select(e.cmp("<", x, hi), x, hi)
    return e.select(e.cmp(">", x, lo), x, lo)


def exp_body(e: Emitter, x: ir.Value) -> ir.Value:
    # Beyond the clamp bounds the result is already inf (hi) or rounds to +0 (lo); inside
    # them n fits the two-factor scaling below.
    xc = _clamp(e, x, e.pick(-104.0, -746.0), e.pick(89.0, 710.0))
    n, r = _reduce(e, xc)
    p = e.add(_expm1_reduced(e, r), e.c(1.0))
    if e.avx512:
        return e.select(e.isnan(x), x, e.scalef(p, n))
    # 2^n as 2^n1 * 2^n2 with both halves normal: p*2^n1 is exact, and the one rounding of
    # the second product produces overflow to inf and gradual underflow correctly.
    ni = e.to_int(n)
    n1 = e.b.ashr(ni, e.ci(1))
    n2 = e.b.sub(ni, n1)
    y = e.mul(e.mul(p, e.pow2(n1)), e.pow2(n2))
    return e.select(e.isnan(x), x, y)


def exp_bounded(e: Emitter, x: ir.Value) -> ir.Value:
    """exp(x) for finite x in [-100, 0] (no special values, result normal): erf's exp(-x^2)."""
    n, r = _reduce(e, x)
    p = e.add(_expm1_reduced(e, r), e.c(1.0))
    return e.mul(p, e.pow2(e.to_int(n)))


def expm1_body(e: Emitter, x: ir.Value) -> ir.Value:
    # Below lo the result rounds to -1; above hi it overflows (as for exp).
    xc = _clamp(e, x, e.pick(-30.0, -40.0), e.pick(89.0, 710.0))
    n, r = _reduce(e, xc)
    p = _expm1_reduced(e, r)
    # expm1(x) = 2^n p + (2^n - 1) = 2 (p t + (t - 1/2)) with t = 2^(n-1): t stays finite up
    # to the overflow threshold, and t - 1/2 is exact for the n where the -1 matters.
    t = e.pow2(e.b.sub(e.to_int(n), e.ci(1)))
    y = e.mul(e.fma(p, t, e.sub(t, e.c(0.5))), e.c(2.0))
    # |x| below half an ulp of 1 (and NaN, +-0): expm1(x) rounds to x itself.
    tiny = e.pick(2.0**-25, 2.0**-54)
    return e.select(e.cmp_u("<", e.abs(x), tiny), x, y)


def erf_body(e: Emitter, x: ir.Value) -> ir.Value:
    # |x| < 1: x A(x^2) (odd, so relative accuracy holds down to 0 and denormals).
    # 1 <= |x| < amax: 1 - exp(-x^2) B(|x| - c), B a fit of the scaled erfc(x) exp(x^2);
    #   there erf >= 0.84, so the absolute accuracy of erfc is what counts.
    # |x| >= amax: +-1 (erfc(amax) is below half an ulp of 1).
    a = e.abs(x)
    z = e.mul(x, x)
    # The constant term 2/sqrt(pi) is split hi + lo so that its rounding does not cost
    # accuracy: x A(z) = x hi + x (lo + z A1(z)).
    a_hi, a_lo, *a_rest = e.coeffs("ERF_A")
    inner = e.fma(z, e.poly(z, a_rest), e.c(a_lo))
    small = e.fma(x, e.c(a_hi), e.mul(x, inner))
    amax = e.pick(4.0, 6.0)
    in_range = e.cmp("<", a, amax)
    zc = e.select(in_range, z, e.c(0.0))  # keeps exp's argument finite and bounded
    scaled = e.poly(e.sub(a, e.pick(2.5, 3.5)), e.coeffs("ERF_B"))
    big = e.copysign(e.fma(e.neg(exp_bounded(e, e.neg(zc))), scaled, e.c(1.0)), x)
    y = e.select(e.cmp(">=", a, e.c(1.0)), big, small)  # NaN takes `small`, which is NaN
    return e.select(e.cmp(">=", a, amax), e.copysign(e.c(1.0), x), y)
