"""vecmath's activation functions, tanh and sigmoid, each also as a fraction num / den.

`*_body(e, x)` emits the function; `*_parts(e, x)` emits (num, den) with num / den the
same function up to the rounding of the division (and, for tanh, the final clamp to 1),
for `vecmath.fraction_product`, which multiplies two such results with one division. Parts
are finite and bounded for every input (NaN aside): 1 <= den, |num| <= den (to rounding),
den < 2^30 in float32 and < 2^60 in float64, so a product of two of them cannot overflow,
and where the numerators' product underflows so does the result.

float32 tanh (every target): a (5, 5) rational minimax approximation (coefficients
TANH_P, TANH_Q from vecmath_fit_rational), as in XLA and Eigen but fitted here:
a = min(|x|, c); tanh|x| = a P(a^2) / Q(a^2), Q monic; beyond c (just above 13 ln 2, where
tanh rounds to 1) the clamped value saturates, and min(., 1) makes it exactly 1 (also
keeping |tanh| <= 1 everywhere); the sign comes back with copysign. P(0) == Q(0), so tanh(x)
is x to within the division's rounding for tiny x (and -0 stays -0); NaN passes through.
Eight FMAs and a division, no exponential: about half the work of the expm1 form below,
for a max relative error of 3.1e-7 instead of 1.8e-7 (the roundings of the two degree-4
Horner evaluations dominate; the fit itself is within 2.7e-8).

float64 tanh: tanh|x| = m / (m + 2) with m = expm1(2|x|) (accurate near 0 because expm1
is, and for large |x|; beyond the clamp tanh rounds to 1).

sigmoid, with AVX-512 (float32): t = e^s for s = -|x| (so t <= 1, nothing overflows) from a
16-entry table: s = (k + j/16) ln2 + r, |r| <= ln2/32, with k + j/16 = s log2(e) rounded
to a multiple of 1/16 by one FMA against the 1.5*2^19 shifter (whose low mantissa bits then
hold 16 k + j: vpermps reads j from them), r by the usual two-part ln2; 6 e^r by the
monic cubic ((r + 3) r + 6) r + 6 (two FMAs and an add; Taylor, exact constants: see
vecmath_fit); u = scalef(that, k) (one rounding, so gradual underflow is right). With
TINV[j] = 6 * 2^(-j/16), t = u / TINV[j], so sigmoid(x) = TINV / (TINV + u) for x >= 0 and
u / (TINV + u) for x < 0: no multiplication by the table value at all. Below s = -110 the
result is 0 (sigmoid(-110) is below half the smallest subnormal).

sigmoid otherwise: t = exp(-|x|); 1 / (1 + t) for x >= 0, t / (1 + t) for x < 0.
Either form never overflows, keeps full relative accuracy in both tails, gives exactly 0 and
1 at -inf and +inf and exactly 1/2 at +-0.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.vecmath.emitter import Emitter, internal_call
from graphc.codegen.vecmath.exp import exp_body, expm1_body

SHIFTER_K16 = 1.5 * 2.0**19  # fma(s, log2e, this) rounds s*log2e to a multiple of 1/16


def _tanh_rational(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(a P(a^2), Q(a^2)) with a = min(|x|, clamp), float32 only."""
    (clamp,) = e.const("TANH_CLAMP")
    limit = e.c(clamp)
    a = e.abs(x)
    a = e.select(e.cmp(">", a, limit), limit, a)  # NaN stays NaN (ordered compare)
    z = e.mul(a, a)
    num = e.mul(a, e.poly(z, e.coeffs("TANH_P")))
    *q_low, q_top = e.coeffs("TANH_Q")
    assert q_top == 1.0, "TANH_Q must be monic"
    den = e.add(z, e.c(q_low[-1]))  # the leading coefficient is 1: an addition
    for coeff in reversed(q_low[:-1]):
        den = e.fma(den, z, e.c(coeff))
    return num, den


def _tanh_expm1(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(m, m + 2) with m = expm1(2 min(|x|, 20)) (float64)."""
    a = e.abs(x)
    limit = e.c(20.0)
    a = e.select(e.cmp(">", a, limit), limit, a)
    m = internal_call(e.b, "expm1", e.add(a, a), expm1_body)
    return m, e.add(m, e.c(2.0))


def tanh_body(e: Emitter, x: ir.Value) -> ir.Value:
    if e.is_f64:
        m, d = _tanh_expm1(e, x)
        return e.copysign(e.div(m, d), x)
    num, den = _tanh_rational(e, x)
    y = e.div(num, den)
    one = e.c(1.0)
    return e.copysign(e.select(e.cmp(">", y, one), one, y), x)


def tanh_parts(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    num, den = _tanh_expm1(e, x) if e.is_f64 else _tanh_rational(e, x)
    return e.copysign(num, x), den


def _pick_by_sign(e: Emitter, x: ir.Value, negative: ir.Value, other: ir.Value) -> ir.Value:
    """`negative` where x's sign bit is set (including -0 and negative NaNs), else
    `other`: a bitwise select on the sign-extended sign bit."""
    b = e.b
    mask = b.ashr(e.to_bits(x), e.ci(e.bits - 1))
    return e.from_bits(b.or_(b.and_(mask, e.to_bits(negative)),
                             b.and_(b.not_(mask), e.to_bits(other))))


def _sigmoid_table(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(num, den) from the 16-entry table exponential (float32 with AVX-512)."""
    s = e.neg(e.abs(x))
    low = e.c(-110.0)
    s = e.select(e.cmp("<", s, low), low, s)  # NaN stays NaN
    (log2e,) = e.const("LOG2E")
    ln2_hi, ln2_lo = e.const("LN2")
    shifted = e.fma(s, e.c(log2e), e.c(SHIFTER_K16))
    k16 = e.sub(shifted, e.c(SHIFTER_K16))  # (16 k + j) / 16, exactly
    # k16 has at most 12 significant bits, so k16 * ln2_hi is exact in the FMA and so is
    # the difference (a multiple of 2^-28 below 2^-5).
    r = e.fma(k16, e.c(-ln2_hi), s)
    r = e.fma(k16, e.c(-ln2_lo), r)
    a0, a1, a2 = e.coeffs("EXP16_A")
    poly = e.fma(e.fma(e.add(r, e.c(a2)), r, e.c(a1)), r, e.c(a0))  # 6 e^r
    u = e.scalef(poly, k16)  # 6 e^r 2^k = TINV[j] e^s
    tinv = e.permute16(e.coeffs("EXP16_TINV"), e.to_bits(shifted))
    return _pick_by_sign(e, x, u, tinv), e.add(tinv, u)


def _sigmoid_exp(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    t = internal_call(e.b, "exp", e.neg(e.abs(x)), exp_body)
    num = e.select(e.cmp(">=", x, e.c(0.0)), e.c(1.0), t)
    return num, e.add(e.c(1.0), t)


def sigmoid_parts(e: Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    return _sigmoid_table(e, x) if e.avx512 and not e.is_f64 else _sigmoid_exp(e, x)


def sigmoid_body(e: Emitter, x: ir.Value) -> ir.Value:
    num, den = sigmoid_parts(e, x)
    return e.div(num, den)
