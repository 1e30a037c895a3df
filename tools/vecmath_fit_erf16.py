"""The float32 erf's piecewise polynomial for AVX-512 targets (development only).

vecmath_exp's `erf_body` evaluates, with AVX-512 and float32, erf(a) for a = |x| < AMAX
(3.9192059, the smallest float32 whose erf rounds to 1; beyond it the result is 1) with
j = min(rint(4a), 15), or j = 0 for a < SPLIT, and t = a - j/4 (exact). Intervals of width
1/4 centred on j/4, except the first, [0, SPLIT) with SPLIT = 0.2265625 (just above erfinv(1/4),
so that interval 1's results are at least 1/4: in its lower part the rounding of the Horner
value next to the cancellation C0 + t acc would otherwise cost up to 1.07 ulp), and the last,
[3.625, AMAX). So t lies in [-1/8, 1/8] (interval 0: [0, SPLIT], 1: [SPLIT - 1/4, 1/8], 15:
[-1/8, AMAX - 15/4]). Each coefficient is read per lane with one vpermps from a 16-entry table
(ERF16_<name>[j]):

    acc   = C6 t + C5, then Horner down to  acc = acc t + C1
    inner = acc t + C0
    erf(a) ~ C1X t + inner                                  (every step one FMA)

For j >= 1, C1X is 0 and this is plain Horner on P_j(t) = C0 + C1 t + ... + C6 t^6, a fit
of erf(j/4 + t) with C0 = erf(j/4) rounded to float32, minimax in units of the float32
spacing of the result. For j = 0 the linear coefficient 2/sqrt(pi) is split: C1X[0] = its
float32 value (the product t C1X is exact inside the last FMA), C1[0] = the rest, C0[0] = 0;
P_0(t) = t Q(t) is fitted in relative error, so erf(x) keeps full relative accuracy for tiny
and subnormal x (and -0 stays -0).

Fit: numpy float64 with `math.erf` as the reference (accurate to ~1e-16, far below the
float32 tolerances, so no mpmath). Each polynomial is a discrete minimax fit (Lawson's
iteratively reweighted least squares on 2001 Chebyshev-distributed points); the
coefficients are rounded to float32 one at a time, lowest degree first, each rounding
followed by a refit of the higher ones to the remaining error.

`emulate_erf16_f32` evaluates the emitted float32 operations in numpy (each FMA exact in
float64 before its float32 rounding, up to the rare double rounding), for a quick end-to-end
look (`python -m tools.vecmath_fit_erf16`); tests/test_vecmath_erf.py measures the compiled
code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INTERVALS = 16
WIDTH = 0.25  # interval j is centred on j * WIDTH


def _saturation() -> float:
    """The smallest float32 a with erf(a) rounding to 1 in float32 (3.9192059)."""
    def value(bits: int) -> float:
        return float(np.array([bits], dtype=np.int32).view(np.float32)[0])

    lo, hi = (int(np.array([v], dtype=np.float32).view(np.int32)[0]) for v in (3.5, 4.5))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.float32(math.erf(value(mid))) == 1.0:
            hi = mid
        else:
            lo = mid
    return value(hi)


AMAX = _saturation()  # erf(x) = +-1 for |x| >= AMAX, exactly where float32 erf reaches 1
DEGREE = 6  # P_j has DEGREE + 1 coefficients
SPLIT = 0.2265625  # interval 0 is [0, SPLIT): see the module docstring

# 2/sqrt(pi) = C1_HI + C1_LO, both float32.
C1_HI = float(np.float32(2 / math.sqrt(math.pi)))
C1_LO = float(np.float32(2 / math.sqrt(math.pi) - C1_HI))

_erf = np.vectorize(math.erf, otypes=[np.float64])


@dataclass(frozen=True)
class Erf16Fit:
    """tables: name ("C0" .. "C6", "C1X") -> 16 float32 values, in the form the code reads
    them. ulp_error: the max error, on intervals 1..15, of the polynomials with the rounded
    coefficients evaluated exactly, in units of the float32 spacing at erf (C0's rounding
    included); rel_error0: the max relative error on interval 0."""

    tables: dict[str, list[float]]
    ulp_error: float
    rel_error0: float


def _bounds(j: int) -> tuple[float, float]:
    """The range of t = a - j/4 on interval j."""
    lo = {0: 0.0, 1: SPLIT - WIDTH}.get(j, -WIDTH / 2)
    hi = {0: SPLIT, INTERVALS - 1: AMAX - (INTERVALS - 1) * WIDTH}.get(j, WIDTH / 2)
    return lo, hi


def _minimax(basis: np.ndarray, target: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Coefficients c minimising max |basis @ c - target| (Lawson's algorithm)."""
    w = np.full(len(target), 1.0 / len(target))
    best, best_err = None, np.inf
    for _ in range(iterations):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(basis * sw[:, None], target * sw, rcond=None)
        err = np.abs(basis @ c - target)
        if err.max() < best_err:
            best, best_err = c, err.max()
        w = w * err
        w /= w.sum()
    assert best is not None
    return best


def _fit_rounded(t: np.ndarray, target: np.ndarray, fixed: list[float], terms: int,
                 weight: np.ndarray) -> list[float]:
    """Coefficients of sum c_m t^m ~ target (m < terms), the first ones given by `fixed`,
    the others rounded to float32 one at a time, each after a minimax refit of the rest
    (of the error times `weight`)."""
    scale = float(np.max(np.abs(t)))  # the basis in u = t / scale keeps the systems sound
    u = t / scale
    coeffs = list(fixed)
    for i in range(len(fixed), terms):
        rest = target - sum(c * t**m for m, c in enumerate(coeffs))
        basis = np.stack([u**m for m in range(i, terms)], axis=1)
        sol = _minimax(basis * weight[:, None], rest * weight)
        coeffs.append(float(np.float32(sol[0] / scale**i)))
    return coeffs


def _grid(j: int, points: int = 2001) -> np.ndarray:
    lo, hi = _bounds(j)
    k = np.arange(points)
    return lo + (hi - lo) * (1 - np.cos(np.pi * k / (points - 1))) / 2


def _fit_interval(j: int, degree: int) -> list[float]:
    """Interval j's coefficients C0 .. C{degree} in t (for j = 0 without t C1_HI)."""
    t = _grid(j)
    if j == 0:
        # erf(t) = t (C1_HI + Q(t)): fit Q(t) = C1_LO + c2 t + ... to erf(t)/t - C1_HI in
        # absolute terms, which is erf's relative error.
        t = t[1:]  # erf(t)/t at 0 is the limit C1_HI + C1_LO, which Q(0) = C1_LO matches
        q = _fit_rounded(t, _erf(t) / t - C1_HI, [C1_LO], degree, np.ones_like(t))
        return [0.0, *q]
    center = j * WIDTH
    c0 = float(np.float32(math.erf(center)))
    # Minimax in units of the result's float32 spacing: C0's rounding (up to half an ulp of
    # erf(j/4)) cannot be fitted away, and the fit puts what remains of it where the
    # spacing is coarse (an interval may straddle a power of two).
    ref = _erf(center + t)
    below_one = np.minimum(ref.astype(np.float32), np.float32(1 - 2.0**-24))  # near AMAX
    ulp = np.spacing(below_one).astype(np.float64)
    return _fit_rounded(t, ref, [c0], degree + 1, 1.0 / ulp)


def _poly(coeffs: list[float], t: np.ndarray) -> np.ndarray:
    acc = np.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * t + c
    return acc


def erf16_f32_coeffs(degree: int = DEGREE) -> Erf16Fit:
    """The 16-entry coefficient tables and their fit errors (see Erf16Fit)."""
    per_interval = [_fit_interval(j, degree) for j in range(INTERVALS)]
    ulp_err, rel0 = 0.0, 0.0
    for j, coeffs in enumerate(per_interval):
        lo, hi = _bounds(j)
        t = np.linspace(lo, hi, 20001)
        if j == 0:
            t = t[1:]
            y = t * C1_HI + t * _poly(coeffs[1:], t)
            rel0 = float(np.max(np.abs(y / _erf(t) - 1)))
        else:
            ref = _erf(j * WIDTH + t)
            ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
            ulp_err = max(ulp_err, float(np.max(np.abs(_poly(coeffs, t) - ref) / ulp)))
    tables = {f"C{k}": [per_interval[j][k] for j in range(INTERVALS)]
              for k in range(degree + 1)}
    tables["C1X"] = [C1_HI] + [0.0] * (INTERVALS - 1)
    return Erf16Fit(tables, ulp_err, rel0)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    prod = a.astype(np.float64) * b.astype(np.float64)  # exact: 24 + 24 bits
    return (prod + c.astype(np.float64)).astype(np.float32)


def emulate_erf16_f32(x: np.ndarray, tables: dict[str, list[float]]) -> np.ndarray:
    """erf_body's float32 AVX-512 path in numpy (see the module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    with np.errstate(invalid="ignore", over="ignore"):
        j = np.minimum(np.rint(a * np.float32(4)), np.float32(INTERVALS - 1))
        j = np.where(np.isnan(j), np.float32(INTERVALS - 1), j).astype(np.float32)
        j = np.where(a < np.float32(SPLIT), np.float32(0), j)
        t = _fma32(j, np.float32(-WIDTH), a)
        idx = j.astype(np.int64)

        def tab(name: str) -> np.ndarray:
            return np.asarray(tables[name], dtype=np.float32)[idx]

        degree = sum(1 for name in tables if name != "C1X") - 1
        acc = tab(f"C{degree}")
        for k in range(degree - 1, -1, -1):
            acc = _fma32(acc, t, tab(f"C{k}"))
        y = _fma32(t, tab("C1X"), acc)
        y = np.where(a >= np.float32(AMAX), np.float32(1), y)
        return np.copysign(y, x)


def main() -> None:
    fit = erf16_f32_coeffs()
    print(f"degree {DEGREE}: fit error {fit.ulp_error:.3g} ulp (intervals 1..15), rel. error "
          f"{fit.rel_error0:.3g} (interval 0)")
    x = np.linspace(-4.5, 4.5, 2_000_001).astype(np.float32)
    x = np.concatenate([x, (10.0 ** np.random.default_rng(0).uniform(-45, 0.6, 1_000_000))
                        .astype(np.float32)])
    y = emulate_erf16_f32(x, fit.tables).astype(np.float64)
    ref = _erf(x.astype(np.float64))
    err = np.abs(y - ref)
    tiny = float(np.finfo(np.float32).tiny)
    rel = err / np.maximum(np.abs(ref), tiny)
    ulp = err / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    print(f"emulated float32: max rel {rel.max():.3g} at {x[np.argmax(rel)]!r}, "
          f"max ulp {ulp.max():.3g} at {x[np.argmax(ulp)]!r}")


if __name__ == "__main__":
    main()
