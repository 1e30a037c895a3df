"""Random ops: a stateless, counter-based generator (`random_uniform`, `random_normal`).

A random op has no hidden state. Its output depends only on its attributes (shape, dtype,
seed, distribution parameters), on the value of its `key` input, and on each element's flat
(C-order) index. Running a graph twice gives the same numbers; feeding a different key (a
step counter variable, say) gives fresh ones. Because the ops are pure, passes may fold, CSE
or duplicate them freely -- which also means two ops with equal attributes and the same key
produce the same tensor: give each use its own seed.

The generator (all arithmetic on uint32, i.e. mod 2**32; ``>>`` is a logical shift)::

    mix32(x):                       # Chris Wellons' "lowbias32" integer hash
        x ^= x >> 16;  x *= 0x7FEB352D
        x ^= x >> 15;  x *= 0x846CA68B
        x ^= x >> 16;  return x

    k = key mod 2**32               # the low 32 bits (two's complement) of the key value
    s = seed                        # attribute, 0 <= seed < 2**32
    stream = mix32(s ^ mix32(k + 0x632BE5AB))        # once per op execution
    bits(c) = mix32(c * 0x9E3779B9 + stream)         # c: a uint32 counter

For the element of flat index ``i`` (taken mod 2**32):

- random_uniform: ``u = (bits(i) >> 8) * 2**-24``, a float64 in [0, 1) that is exact in
  float32 too; ``out = low + (high - low) * u``, each operation in IEEE float64 (no fused
  multiply-add), then rounded once to `dtype`.
- random_normal (Box-Muller, cosine branch): ``u1 = ((bits(2i) >> 8) + 1) * 2**-24`` in
  (0, 1], ``u2 = (bits(2i + 1) >> 8) * 2**-24`` in [0, 1), ``2i`` and ``2i + 1`` mod 2**32;
  ``z = sqrt(-2 * log(u1)) * cos(TWO_PI * u2)`` with ``TWO_PI = 6.283185307179586`` and
  ``out = mean + std * z``, all in float64, then rounded once to `dtype`.

The integer stream is bit-exact across implementations (the LLVM backend re-implements it).
The uniform transform is exact IEEE arithmetic, so it is bit-exact too. The normal transform
calls log/cos/sqrt, whose float64 results may differ by an ulp between math libraries; after
rounding to float32 that almost never shows. |z| <= sqrt(48 ln 2) ~ 5.77 since u1 >= 2**-24.

Different seeds or keys select different offsets into one sequence (``c * 0x9E3779B9`` is a
bijection), so two streams overlap only for tensors of billions of elements.

Each op has exactly one input, the key: an int32 or int64 scalar. Without a user key the
builder passes the constant 0, so ``random_uniform(s, seed=7)`` equals
``random_uniform(s, seed=7, key=0)``. One op name per distribution with a fixed arity keeps
the type rule, the interpreter and the backend's lowering free of "is there a key?" cases.
The fusion kind is BROADCAST: each output element is computed on its own from the
broadcast scalar key (no output element reads another).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.builder import apply, user_location
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops.common import FLOATS, INTS

__all__ = ["random_normal", "random_uniform"]

OPS: list[OpDef] = []

MASK32 = 0xFFFFFFFF
KEY_OFFSET = 0x632BE5AB
COUNTER_MULTIPLIER = 0x9E3779B9
TWO_PI = 6.283185307179586
_2_POW_M24 = 2.0**-24


# --- the generator ------------------------------------------------------------------------

def _mix32_int(x: int) -> int:
    """lowbias32 on a Python int (the per-op stream key; no numpy overflow warnings)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def _mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on a uint32 array (array arithmetic wraps mod 2**32 silently)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def stream_key(seed: int, key: int) -> int:
    """``mix32(seed ^ mix32(key + 0x632BE5AB))``; `key` is reduced to its low 32 bits."""
    return _mix32_int((seed & MASK32) ^ _mix32_int((key & MASK32) + KEY_OFFSET))


def random_bits(counters: np.ndarray, seed: int, key: int) -> np.ndarray:
    """``bits(c)`` of the module docstring for a uint32 array of counters."""
    assert counters.dtype == np.uint32
    stream = np.uint32(stream_key(seed, key))
    return _mix32(counters * np.uint32(COUNTER_MULTIPLIER) + stream)


def _flat_counters(size: int) -> np.ndarray:
    # int64 -> uint32 keeps the low 32 bits: the flat index mod 2**32.
    return np.arange(size, dtype=np.int64).astype(np.uint32)


def _unit_float(bits: np.ndarray) -> np.ndarray:
    """The top 24 bits as a float64 multiple of 2**-24 in [0, 1)."""
    return (bits >> np.uint32(8)).astype(np.float64) * _2_POW_M24


def uniform_reference(shape: tuple[int, ...], dtype: DType, seed: int, key: int,
                      low: float, high: float) -> np.ndarray:
    u = _unit_float(random_bits(_flat_counters(math.prod(shape)), seed, key))
    out = low + (high - low) * u
    return out.astype(dtype.np).reshape(shape)


def normal_reference(shape: tuple[int, ...], dtype: DType, seed: int, key: int,
                     mean: float, std: float) -> np.ndarray:
    i = _flat_counters(math.prod(shape))
    even = i * np.uint32(2)
    u1 = _unit_float(random_bits(even, seed, key)) + _2_POW_M24
    u2 = _unit_float(random_bits(even + np.uint32(1), seed, key))
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(TWO_PI * u2)
    out = mean + std * z
    return out.astype(dtype.np).reshape(shape)


# --- type rule ----------------------------------------------------------------------------

def _check_finite(attrs: Attrs, name: str) -> float:
    value = attrs[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AttrError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _random_infer(params: tuple[str, str]):
    def infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
        (key,) = types
        if key.dtype not in INTS:
            raise DTypeError(f"key: expected an int32 or int64 scalar, got {key}")
        if key.shape != ():
            raise ShapeError(f"key: expected an int32 or int64 scalar, got {key}")
        dtype = attrs["dtype"]
        if dtype not in FLOATS:
            raise DTypeError(f"dtype: expected float32 or float64, got {dtype}")
        seed = attrs["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MASK32:
            raise AttrError(f"seed must be an int in [0, 2**32), got {seed!r}")
        shape = attrs["shape"]
        if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise AttrError(f"shape must be a tuple of non-negative ints, got {shape!r}")
        first, second = (_check_finite(attrs, p) for p in params)
        if params == ("low", "high") and not first < second:
            raise AttrError(f"low must be less than high, got low={first}, high={second}")
        if params == ("mean", "std") and second < 0:
            raise AttrError(f"std must be non-negative, got {second}")
        return TensorType(shape, dtype)

    return infer


def _key_value(arrays: Sequence[np.ndarray]) -> int:
    # .item() rather than int(): it also accepts a size-1 array that lost its 0-d shape.
    return int(arrays[0].item())


def _uniform_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return uniform_reference(attrs["shape"], attrs["dtype"], attrs["seed"], _key_value(arrays),
                             float(attrs["low"]), float(attrs["high"]))


def _normal_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return normal_reference(attrs["shape"], attrs["dtype"], attrs["seed"], _key_value(arrays),
                            float(attrs["mean"]), float(attrs["std"]))


SAMPLE_ATTRS = (AttrSpec("shape", Kind.INTS, low=0), AttrSpec("dtype", Kind.DTYPE),
                AttrSpec("seed", Kind.INT, low=0, high=MASK32))
RANDOM_UNIFORM = OpDef(
    "random_uniform", "random", 1, _random_infer(("low", "high")), _uniform_ref,
    Fusion.BROADCAST, None, random=True,
    doc="counter-based uniform samples in [low, high) from (seed, key, element index)",
    attrs=(*SAMPLE_ATTRS, AttrSpec("low", Kind.FLOAT, finite=True),
           AttrSpec("high", Kind.FLOAT, finite=True)),
)
RANDOM_NORMAL = OpDef(
    "random_normal", "random", 1, _random_infer(("mean", "std")), _normal_ref,
    Fusion.BROADCAST, None, random=True,
    doc="counter-based normal samples (Box-Muller) from (seed, key, element index)",
    attrs=(*SAMPLE_ATTRS, AttrSpec("mean", Kind.FLOAT, finite=True),
           AttrSpec("std", Kind.FLOAT, low=0, finite=True)),
)
OPS.extend([RANDOM_UNIFORM, RANDOM_NORMAL])


# --- builders -----------------------------------------------------------------------------

KeyOperand = Node | int | np.integer


def _shape_attr(shape: Sequence[int] | int) -> tuple[int, ...] | Sequence[int] | int:
    """A tuple of ints when `shape` looks like one; anything else goes to the type rule."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return (int(shape),)
    if isinstance(shape, (list, tuple)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape
    ):
        return tuple(int(d) for d in shape)
    return shape


def _dtype_attr(dtype: DType | str, op: str) -> DType:
    try:
        return DType.of(dtype)
    except GraphcError as exc:
        raise exc.with_context(op=op, loc=user_location()) from None


def _number_attr(value: object) -> object:
    """Python floats for numbers, so the reference's float64 arithmetic is the documented one;
    other values reach the type rule unchanged and fail there with a clear message."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return value


def _key_operand(key: KeyOperand | None) -> KeyOperand:
    # A Python int key becomes an int32 or int64 constant; only its low 32 bits matter, so
    # reduce it to a signed 32-bit value that always fits int32.
    if key is None:
        return 0
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        low = int(key) & MASK32
        return low - (1 << 32) if low >= 1 << 31 else low
    return key


def random_uniform(
    shape: Sequence[int] | int,
    dtype: DType | str = DType.float32,
    seed: int = 0,
    low: float = 0.0,
    high: float = 1.0,
    key: KeyOperand | None = None,
    name: str | None = None,
) -> Node:
    """Uniform samples in [low, high) (high itself only through rounding to `dtype`).

    `key` is an optional int32/int64 scalar node (e.g. a step counter) or int mixed into the
    stream; see the module docstring for the exact algorithm.
    """
    attrs = {"shape": _shape_attr(shape), "dtype": _dtype_attr(dtype, "random_uniform"),
             "seed": seed, "low": _number_attr(low), "high": _number_attr(high)}
    return apply(RANDOM_UNIFORM, [_key_operand(key)], attrs, name=name)


def random_normal(
    shape: Sequence[int] | int,
    dtype: DType | str = DType.float32,
    seed: int = 0,
    mean: float = 0.0,
    std: float = 1.0,
    key: KeyOperand | None = None,
    name: str | None = None,
) -> Node:
    """Normal samples with the given mean and standard deviation (Box-Muller).

    `key` is an optional int32/int64 scalar node (e.g. a step counter) or int mixed into the
    stream; see the module docstring for the exact algorithm.
    """
    attrs = {"shape": _shape_attr(shape), "dtype": _dtype_attr(dtype, "random_normal"),
             "seed": seed, "mean": _number_attr(mean), "std": _number_attr(std)}
    return apply(RANDOM_NORMAL, [_key_operand(key)], attrs, name=name)
