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

erf, float32 with AVX-512 (`_erf_table`): one piecewise polynomial on a = |x|, about half
the instructions of the two-path form below (no exponential, no second polynomial). 16
intervals: [0, 0.2265625) and then width 1/4 centred on j/4 up to AMAX = 3.9192059 (the
smallest float32 whose erf rounds to 1); j = min(rint(4a), 15) (0 below 0.2265625) comes
from one FMA against the 1.5*2^23 shifter, t = a - j/4 is exact, and each of the eight
coefficients of interval j's degree-6 polynomial in t is read with one vpermps from a
16-entry table (ERF16_*, fitted by tools/vecmath_fit_erf16.py, which documents the form):
Horner, then one more FMA adding t*2/sqrt(pi)'s float32 part on the first interval, whose
polynomial has no constant term (relative accuracy down to subnormals, -0 stays -0). |x| >=
AMAX gives +-1 exactly; the sign comes back with copysign; NaN propagates through t.
Measured over all float32 inputs: max 1.0 ulp (0.9998), max relative error 1.12e-7 at results
next to the smallest normal (judged against it: the low part of the linear term rounds on
the subnormal grid there), 7.7e-8 elsewhere.

erf otherwise (float64, and float32 without AVX-512): |x| < 1: x A(x^2); 1 <= |x| < 4 (6
for float64): 1 - exp(-x^2) B(|x| - c); both evaluated for every lane, a select picks one
(float32: max 1.33 ulp, 1.13e-7 relative).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.vecmath.emitter import Emitter

SHIFTER_K1 = 1.5 * 2.0**23  # v + this rounds v (0 <= v < 2^22) to an integer, in the low bits
ERF16_INTERVALS = 16  # the float32 AVX-512 erf: intervals of width 1/4 centred on j/4
ERF16_DEGREE = 6  # ... with polynomials of this degree (tables ERF16_C0 .. C6, C1X)


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
    if e.avx512 and not e.is_f64:
        return _erf_table(e, x)
    return _erf_two_paths(e, x)


def normal_cdf_body(e: Emitter, x: ir.Value) -> ir.Value:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, the GELU's factor.

    float32 without AVX-512: one path for every x, 0.5 erfc(a / sqrt 2) = exp(-a^2/2) P(u)
    with a = |x|, u = 1 / (1 + PHI_P a) and P a 10-term fit on the u of a <= PHI_AMAX
    (`tools.vecmath_fit`), then Phi = 1 - h for x >= 0 and h for x < 0. A third fewer
    operations than 1 + erf on the two-path erf, and relatively accurate for negative x too,
    where 1 + erf cancels (at x = -5 the erf form's Phi is off by ~10 %). The square's
    rounding is carried into exp's argument (a^2 = hi + lo, exp(-hi/2) (1 - lo/2)). Beyond
    PHI_AMAX, h is 0. Other types and AVX-512 (whose erf is one table polynomial): via erf.
    """
    if e.is_f64 or e.avx512:
        return e.mul(e.add(erf_body(e, e.mul(x, e.c(0.7071067811865476))), e.c(1.0)),
                     e.c(0.5))
    a = e.abs(x)
    (p,) = e.const("PHI_P")
    (amax,) = e.const("PHI_AMAX")
    inside = e.cmp("<", a, e.c(amax))  # false for NaN and beyond amax
    ac = e.select(inside, a, e.c(0.0))  # keeps u and exp's argument in their ranges
    u = e.div(e.c(1.0), e.fma(ac, e.c(p), e.c(1.0)))
    hi = e.mul(ac, ac)
    lo = e.fma(ac, ac, e.neg(hi))
    ex = exp_bounded(e, e.mul(hi, e.c(-0.5)))
    ex = e.fma(ex, e.mul(lo, e.c(-0.5)), ex)
    h = e.mul(ex, e.poly(u, e.coeffs("PHI_U")))
    h = e.select(inside, h, e.select(e.cmp(">=", a, e.c(amax)), e.c(0.0), x))  # NaN: x
    return e.select(e.cmp("<", x, e.c(0.0)), h, e.sub(e.c(1.0), h))


def _erf_table(e: Emitter, x: ir.Value) -> ir.Value:
    """float32 with AVX-512: one piecewise polynomial, its coefficients read with vpermps."""
    a = e.abs(x)
    (split,) = e.const("ERF16_SPLIT")
    (amax,) = e.const("ERF16_AMAX")
    # j = min(rint(4a), 15), or 0 below `split`, sits in the low mantissa bits of `shifted`
    # (NaN gets 15: every compare with NaN is false); t = a - j/4 is exact for a < amax
    # (|t| <= 1/4 and both terms are multiples of a's ulp). Lanes at or beyond amax (and
    # infinities) get some finite index and a meaningless t: the final select drops them.
    shifted = e.fma(a, e.c(4.0), e.c(SHIFTER_K1))
    top = e.c(SHIFTER_K1 + ERF16_INTERVALS - 1)
    shifted = e.select(e.cmp("<", shifted, top), shifted, top)
    shifted = e.select(e.cmp("<", a, e.c(split)), e.c(SHIFTER_K1), shifted)
    j = e.sub(shifted, e.c(SHIFTER_K1))
    t = e.fma(j, e.c(-0.25), a)
    index = e.to_bits(shifted)

    def coeff(k: str) -> ir.Value:
        return e.permute16(e.coeffs(f"ERF16_{k}"), index)

    acc = coeff(f"C{ERF16_DEGREE}")
    for k in range(ERF16_DEGREE - 1, -1, -1):
        acc = e.fma(acc, t, coeff(f"C{k}"))
    y = e.fma(t, coeff("C1X"), acc)  # C1X is 0 except on interval 0
    y = e.select(e.cmp(">=", a, e.c(amax)), e.c(1.0), y)  # NaN keeps y (NaN)
    return e.copysign(y, x)


def _erf_two_paths(e: Emitter, x: ir.Value) -> ir.Value:
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
