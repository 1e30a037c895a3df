"""Fits for vecmath_fit that need more than a Chebyshev interpolant (development only).

`remez_rational`: the minimax rational approximation, in relative error, of f(x) by
P(x^2) / Q(x^2) on [lo, hi] (Remez exchange, the linearised system solved at each step).
vecmath fits tanh(x)/x with it: the float32 tanh evaluates x P(z) / Q(z).

`tanh_f32_coeffs`: those coefficients in the form the emitted code uses, rounded to float32,
and the clamp bound (see vecmath_act for the algorithm). `emulate_tanh_f32` evaluates the
emitted float32 operations exactly (mpmath at 24 bits, one rounding per operation), which the
clamp choice relies on.

Needs mpmath (imported inside the functions; graphc itself never imports this module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def remez_rational(f: Callable[[object], object], n_num: int, n_den: int, lo: float,
                   hi: float, iterations: int = 30) -> tuple[list[object], list[object], object]:
    """(p, q, max relative error) with f(x) ~ P(x^2)/Q(x^2), P of n_num and Q of n_den
    coefficients (lowest degree first), q[0] = 1, equioscillating on [lo, hi]."""
    import mpmath as mp

    n = n_num + n_den  # unknowns: p (n_num), q[1:] (n_den - 1), the levelled error E
    a, b = mp.mpf(lo), mp.mpf(hi)
    xs = [a + (b - a) * (1 - mp.cos(mp.pi * i / (n - 1))) / 2 for i in range(n)]
    q: list[object] = [mp.mpf(1)] + [mp.mpf(0)] * (n_den - 1)
    p: list[object] = []
    worst: object = mp.inf
    grid = [a + (b - a) * (1 - mp.cos(mp.pi * k / 4000)) / 2 for k in range(4001)]
    fgrid = [f(x) for x in grid]
    for _ in range(iterations):
        for _ in range(6):  # the system is linear once E*Q(z) uses the previous Q
            m = mp.matrix(n, n)
            rhs = mp.matrix(n, 1)
            for i, x in enumerate(xs):
                z, fx = x * x, f(x)
                for j in range(n_num):
                    m[i, j] = z**j
                for j in range(1, n_den):
                    m[i, n_num + j - 1] = -fx * z**j
                m[i, n - 1] = -((-1) ** i) * fx * mp.polyval(q[::-1], z)
                rhs[i] = fx
            sol = mp.lu_solve(m, rhs)
            p = [sol[j] for j in range(n_num)]
            q = [mp.mpf(1)] + [sol[n_num + j] for j in range(n_den - 1)]
        errs = [mp.polyval(p[::-1], x * x) / mp.polyval(q[::-1], x * x) / fx - 1
                for x, fx in zip(grid, fgrid, strict=True)]
        # Local extrema of the error, then one per run of equal sign.
        ext = [(grid[k], e) for k, e in enumerate(errs)
               if (k == 0 or abs(e) >= abs(errs[k - 1]))
               and (k == len(errs) - 1 or abs(e) >= abs(errs[k + 1]))]
        alt: list[tuple[object, object]] = []
        for x, e in ext:
            if alt and mp.sign(alt[-1][1]) == mp.sign(e):
                if abs(e) > abs(alt[-1][1]):
                    alt[-1] = (x, e)
            else:
                alt.append((x, e))
        while len(alt) > n:
            alt.pop(0 if abs(alt[0][1]) < abs(alt[-1][1]) else -1)
        worst = max(abs(e) for _, e in alt)
        if len(alt) < n:
            break
        xs = [x for x, _ in alt]
        levelled = min(abs(e) for _, e in alt)
        if worst - levelled < 1e-3 * worst:
            break
    return p, q, worst


def f32(value: object) -> float:
    """Round to float32 (nearest even), via mpmath at 24 bits (no double rounding)."""
    import mpmath as mp

    with mp.workprec(24):
        return float(+mp.mpf(value))


def emulate_tanh_f32(a: float, p: Sequence[float], q: Sequence[float]) -> float:
    """a P(z) / Q(z) for 0 <= a as the emitted code computes it: z = a*a; Horner with one
    fused multiply-add per coefficient for P; Q monic, its first step z + q[-2]; a*P; the
    quotient; each rounded to float32 once."""
    import mpmath as mp

    with mp.workprec(200):  # exact for these operand sizes; f32() rounds once
        z = f32(mp.mpf(a) * a)
        acc = p[-1]
        for c in reversed(p[:-1]):
            acc = f32(mp.mpf(acc) * z + c)
        den = f32(mp.mpf(z) + q[-2])
        for c in reversed(q[:-2]):
            den = f32(mp.mpf(den) * z + c)
        num = f32(mp.mpf(a) * acc)
        return f32(mp.mpf(num) / den)


def tanh_f32_coeffs(hi: float = 9.25) -> tuple[list[float], list[float], float, object]:
    """(P, Q, clamp, fit error) for the float32 tanh: tanh(a) = a P(a^2)/Q(a^2), (5, 5)
    terms fitted on [0, hi]; Q is monic (its last coefficient is 1, so the first Horner
    step is an addition) and P[0] equals Q[0] bit for bit, so tanh(x) = x(1 + O(ulp)) for
    tiny x. The clamp is the smallest multiple of 1/64 above 13 ln(2) (beyond which tanh
    rounds to 1 in float32) at which the float32 evaluation reaches 1; min(y, 1) then gives exactly
    1 there and beyond."""
    import mpmath as mp

    def tanh_over_x(x: object) -> object:
        return mp.tanh(x) / x if x != 0 else mp.mpf(1)

    p, q, err = remez_rational(tanh_over_x, 5, 5, 0.0, hi)
    scale = q[-1]
    qs = [f32(c / scale) for c in q[:-1]] + [1.0]
    ps = [qs[0]] + [f32(c / scale) for c in p[1:]]
    start = int(mp.ceil(13 * mp.log(2) * 64))
    for k in range(start, int(hi * 64) + 1):
        clamp = k / 64
        if emulate_tanh_f32(clamp, ps, qs) >= 1.0:
            return ps, qs, clamp, err
    raise RuntimeError("no clamp bound in range gives tanh = 1")
