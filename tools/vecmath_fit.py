"""Regenerates `vecmath_coeffs.py`: polynomial coefficients and split constants for vecmath.

Run `python -m tools.vecmath_fit` (needs mpmath, a development-only dependency; graphc
itself never imports this module); it rewrites graphc/codegen/vecmath/coeffs.py atomically.

Most polynomials are Chebyshev interpolants (`mpmath.chebyfit`, close to minimax for these
smooth functions) of a smooth auxiliary function on the interval the algorithm's range
reduction produces, computed at 50 significant digits and rounded to the target precision.
The `error` printed beside each table is mpmath's estimate of the interpolant's maximum
absolute error on that interval (before rounding the coefficients); what the emitted code
achieves end to end is measured by tests/test_vecmath.py. The float32 tanh's rational
approximation comes from `vecmath_fit_rational` (a Remez fit), the float32 sigmoid's
16-entry table exponential from `_exp16` below, and the float32 erf's 16-interval piecewise
polynomial (AVX-512) from `vecmath_fit_erf16` (numpy minimax fits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LN2_HALF = 0.3466  # ln(2)/2 = 0.34657...: |r| after the exp/expm1 reduction, plus rounding
LOG_S_MAX = 0.1716  # (sqrt(2)-1)/(sqrt(2)+1) = 0.17157...: |s| after the log reduction
TRIG_R_MAX = 0.7933  # pi/4 * 1.01: |r| after sin/cos reduction (j may be off by one ulp)
EXP16_R_MAX = 0.02167  # ln(2)/32 = 0.021661 plus the rounding of x*log2(e): |r| in _exp16
# The float32 normal CDF Phi (GELU): 0.5 erfc(a / sqrt 2) = exp(-a^2 / 2) P(u) with
# u = 1 / (1 + PHI_P a), a = |x| <= PHI_AMAX (beyond it Phi(-a) is below float32's range).
PHI_P = 0.25
PHI_AMAX = 13.0


@dataclass(frozen=True)
class Fit:
    """One polynomial: `name` fitted to `func` of variable v on [lo, hi] with `terms` terms."""

    name: str
    func: Callable[[object], object]
    lo: float
    hi: float
    terms: dict[str, int]  # dtype name -> number of coefficients
    split_first: bool = False  # emit the constant term as hi + lo (two entries)


def _fits() -> list[Fit]:
    import mpmath as mp

    def exp_g(r: object) -> object:
        # expm1(r) = r + r^2 G(r)
        if abs(r) < mp.mpf("1e-30"):
            return mp.mpf(1) / 2
        return (mp.expm1(r) - r) / (r * r)

    def log_p(z: object) -> object:
        # log1p(f) = 2s + s z P(z) with s = f / (2 + f), z = s^2 (2 atanh(s) = 2s + ...)
        if z < mp.mpf("1e-30"):
            return mp.mpf(2) / 3
        s = mp.sqrt(z)
        return (2 * mp.atanh(s) / s - 2) / z

    def erf_a(z: object) -> object:
        # erf(x) = x A(x^2)
        if z < mp.mpf("1e-30"):
            return 2 / mp.sqrt(mp.pi)
        x = mp.sqrt(z)
        return mp.erf(x) / x

    def erfcx(c: float) -> Callable[[object], object]:
        # erfc(x) = exp(-x^2) B(x - c): B is the scaled complementary error function
        return lambda u: mp.erfc(u + c) * mp.exp((u + c) ** 2)

    def phi_u(u: object) -> object:
        # 0.5 erfc(a / sqrt 2) exp(a^2 / 2) at a = (1/u - 1) / PHI_P: smooth on (0, 1]
        a = (1 / u - 1) / PHI_P
        return mp.erfc(a / mp.sqrt(2)) * mp.exp(a * a / 2) / 2

    def sin_s(z: object) -> object:
        # sin(r) = r + r^3 S(r^2)
        if z < mp.mpf("1e-30"):
            return -mp.mpf(1) / 6
        r = mp.sqrt(z)
        return (mp.sin(r) - r) / (r * z)

    def cos_c(z: object) -> object:
        # cos(r) = 1 - r^2/2 + r^4 C(r^2)
        if z < mp.mpf("1e-30"):
            return mp.mpf(1) / 24
        r = mp.sqrt(z)
        return (mp.cos(r) - 1 + z / 2) / (z * z)

    return [
        Fit("EXP_G", exp_g, -LN2_HALF, LN2_HALF, {"f32": 5, "f64": 10}),
        Fit("LOG_P", log_p, 0.0, LOG_S_MAX**2, {"f32": 3, "f64": 7}),
        Fit("ERF_A", erf_a, 0.0, 1.0, {"f32": 7, "f64": 11}, split_first=True),
        Fit("ERF_B", erfcx(2.5), 1.0 - 2.5, 4.0 - 2.5, {"f32": 12}),
        Fit("ERF_B", erfcx(3.5), 1.0 - 3.5, 6.0 - 3.5, {"f64": 26}),
        Fit("PHI_U", phi_u, 1 / (1 + PHI_P * PHI_AMAX), 1.0, {"f32": 10}),
        Fit("SIN_S", sin_s, 0.0, TRIG_R_MAX**2, {"f32": 3, "f64": 6}),
        Fit("COS_C", cos_c, 0.0, TRIG_R_MAX**2, {"f32": 3, "f64": 6}),
    ]


def _round(value: object, dtype: str) -> float:
    v = float(value)
    return float(np.float32(v)) if dtype == "f32" else v


def _split(value: object, parts: int, dtype: str) -> list[float]:
    """`value` as a sum of `parts` numbers of the dtype, each the rounded remainder."""
    import mpmath as mp

    out = []
    rest = mp.mpf(value)
    for _ in range(parts):
        p = _round(rest, dtype)
        out.append(p)
        rest -= mp.mpf(p)
    return out


def _exp16() -> tuple[list[float], list[float], object]:
    """The float32 sigmoid's exponential (see vecmath_act): e^r ~ 1 + r + r^2/2 + r^3/6 on
    |r| <= EXP16_R_MAX, stored monic: A = (6, 6, 3) so that ((r + A2) r + A1) r + A0 =
    6 (1 + r + r^2/2 + r^3/6), and the table TINV[j] = 6 * 2^(-j/16) (TINV[0] == A[0], so
    sigmoid(0) is exactly 1/2). Taylor, not minimax: its constants are exact, and measured
    over all float32 inputs that beats a minimax cubic (whose rounded constants cost more
    than its smaller truncation error, 2.3e-9 against 9.2e-9, gains)."""
    import mpmath as mp

    monic = [6.0, 6.0, 3.0]
    table = [_round(6 * mp.mpf(2) ** (mp.mpf(-j) / 16), "f32") for j in range(16)]
    r = mp.mpf(EXP16_R_MAX)
    err = max(abs(mp.exp(v) - (1 + v + v**2 / 2 + v**3 / 6)) / mp.exp(v) for v in (r, -r))
    return monic, table, err


def generate() -> str:
    """The text of vecmath_coeffs.py."""
    import mpmath as mp

    mp.mp.dps = 50
    out = [
        '"""Generated by `python -m tools.vecmath_fit`; do not edit by hand.',
        "",
        "Polynomials are lowest degree first (a split constant term takes two entries, hi",
        "and lo); `error` is the fit's max absolute error on its interval. Constants are",
        'split as sums of exactly representable parts."""',
        "",
        "from __future__ import annotations",
        "",
        "COEFFS: dict[tuple[str, str], tuple[float, ...]] = {",
    ]
    for fit in _fits():
        for dtype, n in fit.terms.items():
            coeffs, err = mp.chebyfit(fit.func, [fit.lo, fit.hi], n, error=True)
            coeffs = list(reversed(coeffs))
            values = [_round(c, dtype) for c in coeffs]
            if fit.split_first:
                # The constant term dominates: keep the rounding error of its hi part.
                values[:1] = _split(coeffs[0], 2, dtype)
            out.append(f"    # {fit.name} {dtype}: {n} terms on [{fit.lo:g}, {fit.hi:g}], "
                       f"error {mp.nstr(err, 3)}")
            out.append(f'    ("{fit.name}", "{dtype}"): (')
            out.extend(f"        {v!r}," for v in values)
            out.append("    ),")
    from tools.vecmath_fit_erf16 import AMAX, DEGREE, SPLIT, erf16_f32_coeffs
    from tools.vecmath_fit_rational import tanh_f32_coeffs

    tanh_p, tanh_q, tanh_clamp, tanh_err = tanh_f32_coeffs()
    monic, table, exp16_err = _exp16()
    extra = [
        ("TANH_P", f"(5, 5) rational, x P(x^2)/Q(x^2) ~ tanh on [0, 9.25], rel. error "
                   f"{mp.nstr(tanh_err, 3)}", tanh_p),
        ("TANH_Q", "its denominator, monic", tanh_q),
        ("EXP16_A", f"monic cubic, 6 e^r on |r| <= {EXP16_R_MAX} with rel. error "
                    f"{mp.nstr(exp16_err, 3)}", monic),
        ("EXP16_TINV", "6 * 2^(-j/16) for j = 0..15", table),
    ]
    erf16 = erf16_f32_coeffs()
    names = [f"C{k}" for k in range(DEGREE + 1)] + ["C1X"]
    notes = {"C0": "erf, |x| < 3.92 in 16 intervals: ERF16_Ck[j] = coefficient k on interval j",
             f"C{DEGREE}": f"fit error {erf16.ulp_error:.2g} ulp (j >= 1), rel. "
                           f"{erf16.rel_error0:.2g} (j = 0)",
             f"C{DEGREE - 1}": f"coefficient {DEGREE - 1}; evaluated in float32: max 1.0 ulp "
                               "over all inputs (vecmath_exp)",
             "C1X": "the part of interval 0's linear coefficient multiplied exactly"}
    extra += [(f"ERF16_{name}", notes.get(name, f"coefficient {name[1:]}"), erf16.tables[name])
              for name in names]
    for name, comment, values in extra:
        out.append(f"    # {name} f32: {comment}")
        out.append(f'    ("{name}", "f32"): (')
        out.extend(f"        {v!r}," for v in values)
        out.append("    ),")
    out += ["}", "", "CONSTS: dict[tuple[str, str], tuple[float, ...]] = {"]
    for dtype in ("f32", "f64"):
        rows = {
            "LOG2E": [_round(1 / mp.log(2), dtype)],
            "LN2": _split(mp.log(2), 2, dtype),
            "PIO2": _split(mp.pi / 2, 3, dtype),
            "TWO_OVER_PI": [_round(2 / mp.pi, dtype)],
        }
        if dtype == "f32":
            rows["TANH_CLAMP"] = [tanh_clamp]
            rows["ERF16_SPLIT"] = [SPLIT]
            rows["ERF16_AMAX"] = [AMAX]
            rows["PHI_P"] = [PHI_P]
            rows["PHI_AMAX"] = [PHI_AMAX]
        for name, parts in rows.items():
            out.append(f'    ("{name}", "{dtype}"): ({", ".join(repr(p) for p in parts)},),')
    out += ["}", ""]
    return "\n".join(out)


def main() -> None:
    from graphc.io.atomic import atomic_write

    text = generate().encode()
    path = Path(__file__).parents[1] / "graphc" / "codegen" / "vecmath" / "coeffs.py"
    atomic_write(path, lambda f: f.write(text))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
