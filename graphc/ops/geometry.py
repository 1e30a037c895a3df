"""Sliding-window geometry shared by convolution and pooling: attributes, sizes, numpy views.

A `Window` is the static description of how a kernel slides over the two spatial axes of an
NCHW tensor: kernel size, strides, explicit pads ((top, bottom), (left, right)) and dilation.
Builders turn user-friendly arguments (an int, a pair, "same", "valid") into a `Window` with
`normalize_padding`; type rules rebuild it from node attributes with `Window.from_attrs`,
which validates every attribute (attributes can come from a parsed file, not only from a
builder). Output sizes follow PyTorch:

    Ho = (H + top + bottom - dh*(kh-1) - 1) // sh + 1

The numpy helpers give the reference implementations one vocabulary: `padded` pads the
spatial axes, `windows` returns a zero-copy (N, C, Ho, Wo, kh, kw) view of every window, and
`tap` is the strided slice of a padded array that kernel offset (i, j) reads (or, in a
backward pass, scatters into). Loops over the kh*kw offsets are the only Python loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import AttrError, ShapeError, SourceLoc
from graphc.ir import Attrs, Node, TensorType

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]

PADDING_HELP = "an int, a pair (ph, pw), ((top, bottom), (left, right)), 'same' or 'valid'"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def pair(value: Any, what: str, minimum: int = 1, allow_int: bool = True) -> Pair:
    """An int (if `allow_int`) or a sequence of two ints, each >= `minimum`, as a pair;
    else AttrError."""
    if _is_int(value) and allow_int:
        items: Sequence[Any] = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        items = value
    else:
        want = "an int or a pair of ints" if allow_int else "a pair of ints"
        raise AttrError(f"{what}: expected {want}, got {value!r}")
    result = (int(items[0]), int(items[1]))
    if min(result) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise AttrError(f"{what}: expected {bound} values, got {value!r}")
    return result


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> Pair:
    """TensorFlow/PyTorch "same": output ceil(size/stride); the odd pad goes to the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return (total // 2, total - total // 2)


def normalize_padding(
    padding: Any, spatial: Pair, kernel: Pair, strides: Pair, dilation: Pair
) -> Pads:
    """Explicit ((top, bottom), (left, right)) pads from any accepted `padding` spelling."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            return (same_padding(spatial[0], kernel[0], strides[0], dilation[0]),
                    same_padding(spatial[1], kernel[1], strides[1], dilation[1]))
        raise AttrError(f"padding: expected {PADDING_HELP}, got {padding!r}")
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        return (pair(padding[0], "padding (top, bottom)", 0),
                pair(padding[1], "padding (left, right)", 0))
    try:
        ph, pw = pair(padding, "padding", 0)
    except AttrError:
        raise AttrError(f"padding: expected {PADDING_HELP} (non-negative), "
                        f"got {padding!r}") from None
    return ((ph, ph), (pw, pw))


@dataclass(frozen=True)
class Window:
    """How a kh x kw kernel slides over the spatial axes (H, W) of an NCHW tensor."""

    kernel: Pair
    strides: Pair
    pads: Pads
    dilation: Pair = (1, 1)

    @classmethod
    def from_attrs(cls, attrs: Attrs, kernel: Pair | None = None, dilated: bool = True
                   ) -> Window:
        """Validate `strides`, `pads`, `dilation` if `dilated` (and `kernel` unless given)."""
        # Attributes are canonical pairs (never a bare int), so equal windows compare equal.
        if kernel is None:
            kernel = pair(_attr(attrs, "kernel"), "kernel", allow_int=False)
        strides = pair(_attr(attrs, "strides"), "strides", allow_int=False)
        dilation = (pair(_attr(attrs, "dilation"), "dilation", allow_int=False) if dilated
                    else (1, 1))
        raw = _attr(attrs, "pads")
        if not (isinstance(raw, tuple) and len(raw) == 2):
            raise AttrError(f"pads: expected ((top, bottom), (left, right)), got {raw!r}")
        pads = (pair(raw[0], "pads (top, bottom)", 0, allow_int=False),
                pair(raw[1], "pads (left, right)", 0, allow_int=False))
        return cls(kernel, strides, pads, dilation)

    def conv_attrs(self) -> dict[str, Any]:
        """The node attributes of a convolution (its kernel size is the weight's shape)."""
        return {"strides": self.strides, "pads": self.pads, "dilation": self.dilation}

    def pool_attrs(self) -> dict[str, Any]:
        """The node attributes of a pool (no dilation)."""
        return {"kernel": self.kernel, "strides": self.strides, "pads": self.pads}

    @property
    def effective(self) -> Pair:
        """The extent of the dilated kernel: d*(k-1)+1 on each axis."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))  # type: ignore[return-value]

    def out_size(self, spatial: Sequence[int], operand: str = "x", t: TensorType | None = None
                 ) -> Pair:
        """(Ho, Wo) for an input of spatial size (H, W), or a ShapeError naming the size."""
        result = []
        for axis, size, k, s, d, (lo, hi) in zip(("height", "width"), spatial, self.kernel,
                                                 self.strides, self.dilation, self.pads):
            out = (size + lo + hi - d * (k - 1) - 1) // s + 1
            if out <= 0:
                shown = t if t is not None else tuple(spatial)
                raise ShapeError(
                    f"{operand} {shown}: output {axis} ({size} + {lo} + {hi} - {d}*({k}-1) - 1)"
                    f"//{s} + 1 = {out} is not positive: the kernel extent {d * (k - 1) + 1} "
                    f"exceeds the padded input {axis} {size + lo + hi}")
            result.append(out)
        return (result[0], result[1])


def _attr(attrs: Attrs, key: str) -> Any:
    try:
        return attrs[key]
    except KeyError:
        raise AttrError(f"missing attribute {key!r}") from None


def shape_attr(attrs: Attrs, key: str) -> tuple[int, int, int, int]:
    """A validated 4-int shape attribute (`input_shape`, `weight_shape`)."""
    value = _attr(attrs, key)
    if not (isinstance(value, tuple) and len(value) == 4 and all(_is_int(v) and v >= 0
                                                                 for v in value)):
        raise AttrError(f"{key}: expected 4 non-negative ints, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]), int(value[3]))


def shape_arg(op: str, loc: SourceLoc | None, value: Any, what: str) -> tuple[int, ...]:
    """A builder's 4-int shape argument, or an AttrError at the user's line."""
    if (isinstance(value, (tuple, list)) and len(value) == 4
            and all(_is_int(d) and d >= 0 for d in value)):
        return tuple(int(d) for d in value)
    raise AttrError(f"{what}: expected 4 non-negative ints, got {value!r}",
                    op=op, loc=loc)


def shape_of(v: Any) -> tuple[int, ...]:
    """The shape of a node or of a value a builder will turn into a constant."""
    return v.shape if isinstance(v, Node) else np.shape(v)


def check_rank4(t: TensorType, operand: str, layout: str) -> None:
    if t.ndim != 4:
        raise ShapeError(f"{operand}: expected a rank-4 {layout} tensor, got {t}")


# --- numpy helpers for the reference implementations ------------------------------------

def padded(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """`x` (N, C, H, W) with its spatial axes padded by `pads`, filled with `value`."""
    if pads == ((0, 0), (0, 0)):
        return x
    return np.pad(x, ((0, 0), (0, 0), *pads), constant_values=value)


def windows(xp: np.ndarray, win: Window, out: Pair) -> np.ndarray:
    """A read-only (N, C, Ho, Wo, kh, kw) view: element [..., y, x, i, j] is
    xp[..., y*sh + i*dh, x*sw + j*dw] (xp already padded)."""
    eh, ew = win.effective
    view = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    (sh, sw), (dh, dw) = win.strides, win.dilation
    return view[:, :, ::sh, ::sw, ::dh, ::dw][:, :, : out[0], : out[1]]


def tap(win: Window, i: int, j: int, out: Pair) -> tuple[slice, slice, slice, slice]:
    """The index of the (N, C, Ho, Wo) slice of a padded array under kernel offset (i, j)."""
    (sh, sw), (dh, dw) = win.strides, win.dilation
    return (slice(None), slice(None),
            slice(i * dh, i * dh + sh * (out[0] - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (out[1] - 1) + 1, sw))


def cropped(xp: np.ndarray, pads: Pads) -> np.ndarray:
    """Undo `padded`: the (N, C, H, W) interior of a padded array."""
    (t, b), (left, r) = pads
    return xp[:, :, t: xp.shape[2] - b, left: xp.shape[3] - r]
