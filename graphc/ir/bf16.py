"""bfloat16 values in numpy: conversions between float32 and bf16 bit patterns.

numpy has no bfloat16, so graphc carries bf16 tensors as `uint16` arrays holding the upper
16 bits of the float32 encoding. These two functions define graphc's bf16 semantics; the
reference interpreter, constant folding and the generated code (`codegen.index`) follow
them bit for bit:

- widening (bf16 -> f32) is exact: the bits shifted into the upper half;
- rounding (f32 -> bf16) is what AVX512_BF16's ``vcvtneps2bf16`` computes, which LLVM
  selects for ``fptrunc`` to bfloat: round to nearest, ties to even; a NaN stays a NaN of
  the same sign and upper payload with the quiet bit set; a float32 subnormal becomes a
  zero of its sign (the instruction treats input denormals as zero). Finite values beyond
  the largest bf16 round to infinity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["from_bfloat16", "to_bfloat16"]


def to_bfloat16(x: Any) -> np.ndarray:
    """The bf16 bit patterns (uint16) of `x` rounded from float32 (see the module doc).

    `x` is converted to float32 first (float64 values thus round twice, as a float32
    program's would)."""
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    f = np.require(np.asarray(x, dtype=np.float32), requirements="C")
    bits = f.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
        >> np.uint32(16)
    sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
    exponent = bits & np.uint32(0x7F800000)
    nan = (exponent == np.uint32(0x7F800000)) & ((bits & np.uint32(0x007FFFFF)) != 0)
    quiet = (bits >> np.uint32(16)) | np.uint32(0x0040)
    out = np.where(nan, quiet, np.where(exponent == 0, sign, rounded))
    return out.astype(np.uint16).reshape(f.shape)


def from_bfloat16(bits: Any) -> np.ndarray:
    """The float32 values of bf16 bit patterns (uint16); exact."""
    b = np.require(np.asarray(bits), requirements="C")
    if b.dtype != np.uint16:
        if b.dtype.name == "bfloat16" and b.dtype.itemsize == 2:  # ml_dtypes' type
            b = b.view(np.uint16)
        else:
            raise TypeError(f"expected bf16 bit patterns (uint16), got {b.dtype}")
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)
