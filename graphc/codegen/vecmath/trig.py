"""vecmath algorithms for sin and cos.

Fast path (|x| <= LIMIT): j = rint(|x| 2/pi), r = |x| - j pi/2 with pi/2 split in three
parts of the working precision (Cody-Waite; each product exact inside an FMA, the first
difference exact), |r| <= pi/4 (+1%); sin r = r + r^3 S(r^2), cos r = 1 - r^2/2 + r^4 C(r^2);
the quadrant j mod 4 picks the polynomial and the sign (cos(x) = sin(|x| + pi/2)).

Lanes with |x| > LIMIT (finite) would lose accuracy to the three-part reduction. They are
rare, so when any lane has one, a branch calls the C library's sinf/cosf (sin/cos for
double) for those lanes; other lanes keep the polynomial result, so a lane's value does not
depend on its neighbours. inf and NaN give NaN without the branch.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.vecmath.emitter import Emitter, per_lane_libm_call

LIMIT_F32 = 2.0**16
LIMIT_F64 = 2.0**30


def _sincos(e: Emitter, x: ir.Value, *, cos: bool) -> ir.Value:
    b = e.b
    limit = e.pick(LIMIT_F32, LIMIT_F64)
    a = e.abs(x)
    fast = e.cmp("<=", a, limit)  # false for NaN, inf and large lanes
    a_fast = e.select(fast, a, e.c(0.0))  # keeps the quadrant conversion defined
    (two_over_pi,) = e.const("TWO_OVER_PI")
    p1, p2, p3 = e.const("PIO2")
    j = e.rint(e.mul(a_fast, e.c(two_over_pi)))
    r = e.fma(j, e.c(-p1), a_fast)
    r = e.fma(j, e.c(-p2), r)
    r = e.fma(j, e.c(-p3), r)
    q = e.to_int(j)
    if cos:
        q = b.add(q, e.ci(1))
    z = e.mul(r, r)
    sin_r = e.fma(e.mul(r, z), e.poly(z, e.coeffs("SIN_S")), r)
    cos_r = e.fma(e.mul(z, z), e.poly(z, e.coeffs("COS_C")), e.fma(z, e.c(-0.5), e.c(1.0)))
    odd = b.icmp_unsigned("!=", b.and_(q, e.ci(1)), e.ci(0))
    y = e.select(odd, cos_r, sin_r)
    # Quadrants 2 and 3 negate: move bit 1 of q to the sign bit. sin is odd: add x's sign.
    sign = b.shl(b.and_(q, e.ci(2)), e.ci(e.bits - 2))
    if not cos:
        sign = b.xor(sign, b.and_(e.to_bits(x), e.sign_bit()))
    y = e.from_bits(b.xor(e.to_bits(y), sign))
    y = e.select(fast, y, e.sub(x, x))  # inf - inf and NaN - NaN are NaN

    large = e.cmp(">", a, limit)
    large = b.and_(large, e.cmp("!=", a, e.c(float("inf"))))
    entry = b.block
    slow = b.append_basic_block("large_arguments")
    done = b.append_basic_block("done")
    branch = b.cbranch(e.any(large), slow, done)
    branch.set_weights([1, 1000])  # large arguments are rare
    b.position_at_end(slow)
    exact = e.select(large, per_lane_libm_call(b, "cos" if cos else "sin", [x]), y)
    b.branch(done)
    b.position_at_end(done)
    phi = b.phi(e.ty)
    phi.add_incoming(y, entry)
    phi.add_incoming(exact, slow)
    return phi


def sin_body(e: Emitter, x: ir.Value) -> ir.Value:
    return _sincos(e, x, cos=False)


def cos_body(e: Emitter, x: ir.Value) -> ir.Value:
    return _sincos(e, x, cos=True)
