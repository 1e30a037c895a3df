"""vecmath algorithms for the logarithm: log, log1p (branch-free, see vecmath_exp).

log (fdlibm's decomposition, vectorized): x = 2^k m with m in [sqrt(1/2), sqrt(2)) taken
from the bits (denormals are first scaled by 2^mant_bits); f = m - 1 is exact;
s = f / (2 + f), z = s^2 and log1p(f) = f - (hfsq - s (hfsq + z P(z))) with hfsq = f^2/2
(so the rounding error of the leading term f is zero); log x = k ln2_hi + (log1p(f) +
k ln2_lo) with the product k ln2_hi exact inside an FMA.
"""

from __future__ import annotations

import math
import struct

import llvmlite.ir as ir

from graphc.codegen.vecmath.emitter import Emitter, internal_call


def _bits_of(value: float, f64: bool) -> int:
    if f64:
        return struct.unpack("<q", struct.pack("<d", value))[0]
    return struct.unpack("<i", struct.pack("<f", value))[0]


def log_body(e: Emitter, x: ir.Value) -> ir.Value:
    mant = e.mant_bits
    # Denormals: scale into the normal range and correct k.
    denormal = e.cmp("<", x, e.c(2.0 ** (1 - e.exp_bias)))
    xs = e.select(denormal, e.mul(x, e.c(2.0**mant)), x)
    k_adjust = e.select(denormal, e.ci(-mant), e.ci(0))
    # Subtracting the bits of sqrt(1/2) puts m in [sqrt(1/2), sqrt(2)): the exponent field
    # of the difference is k, its mantissa field added back gives m's bits.
    base = e.ci(_bits_of(math.sqrt(0.5), e.is_f64))
    d = e.b.sub(e.to_bits(xs), base)
    k = e.b.add(e.b.ashr(d, e.ci(mant)), k_adjust)
    m = e.from_bits(e.b.add(e.b.and_(d, e.ci((1 << mant) - 1)), base))
    f = e.sub(m, e.c(1.0))
    s = e.div(f, e.add(f, e.c(2.0)))
    z = e.mul(s, s)
    r = e.mul(z, e.poly(z, e.coeffs("LOG_P")))
    hfsq = e.mul(e.mul(f, f), e.c(0.5))
    ln2_hi, ln2_lo = e.const("LN2")
    kf = e.to_float(k)
    inner = e.fma(s, e.add(hfsq, r), e.mul(kf, e.c(ln2_lo)))
    t = e.sub(e.sub(hfsq, inner), f)  # -(log1p(f) + k ln2_lo)
    y = e.fma(kf, e.c(ln2_hi), e.neg(t))
    # Special values: +inf -> +inf, +-0 -> -inf, negative or NaN -> NaN.
    inf = e.c(math.inf)
    y = e.select(e.cmp("==", x, inf), inf, y)
    y = e.select(e.cmp("==", x, e.c(0.0)), e.neg(inf), y)
    return e.select(e.cmp_u("<", x, e.c(0.0)), e.c(math.nan), y)


def log1p_body(e: Emitter, x: ir.Value) -> ir.Value:
    # u = 1 + x rounds; log(u) - ((u - 1) - x) / u corrects to first order for that rounding
    # (the correction is exact when u - 1 is, and is tiny relative to log(u) otherwise).
    u = e.add(e.c(1.0), x)
    y = internal_call(e.b, "log", u, log_body)
    corr = e.div(e.sub(e.sub(u, e.c(1.0)), x), u)
    # u = 0 (x = -1) and u = inf give 0/0 or inf-inf; there log(u) alone is the answer.
    corr = e.select(e.isnan(corr), e.c(0.0), corr)
    res = e.sub(y, corr)
    # |x| below half an ulp of 1 (and NaN, +-0): log1p(x) rounds to x itself.
    tiny = e.pick(2.0**-25, 2.0**-54)
    return e.select(e.cmp_u("<", e.abs(x), tiny), x, res)
