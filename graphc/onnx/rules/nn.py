"""Neural-network ONNX ops: MatMul, Gemm, Conv, pooling, normalizations, Softmax and
LogSoftmax (both opset versions), reductions and arg reductions. 1-D and 2-D convolution and
pooling map to graphc's kernels; other ranks, dilated pooling and ceil_mode are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.ir import Node
from graphc.onnx.convert import Context, Value, axis_of, ints, rule
from graphc.onnx.rules import windows
from graphc.ops import conv, gather, layout, linalg, neural, norm, pool, reduce, slicing
from graphc.ops import elementwise as ew

Inputs = list[Value | None]


@rule("MatMul", 1)
def _matmul(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    a, b = inputs[0], inputs[1]
    if a is None or b is None:
        raise ctx.error("needs two inputs")
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [np.matmul(a, b)]
    return [linalg.matmul(ctx.node(a), ctx.node(b))]


@rule("Gemm", 6)  # its `broadcast` attribute only allowed what broadcasting does
@rule("Gemm", 7)
def _gemm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    a, b = ctx.node(inputs[0]), ctx.node(inputs[1])
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    y = linalg.matmul(a, b, transpose_a=bool(attrs.get("transA", 0)),
                      transpose_b=bool(attrs.get("transB", 0)))
    if alpha != 1.0:
        y = ew.mul(y, alpha)
    c = inputs[2] if len(inputs) > 2 else None
    if c is not None and beta != 0.0:
        cn = ctx.node(c)
        y = ew.add(y, cn if beta == 1.0 else ew.mul(cn, beta))
    return [y]


def _pads_2d(ctx: Context, attrs: dict[str, Any], x: Node, kernel: list[int],
             strides: list[int], dilations: list[int]) -> Any:
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(2):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
        return tuple(pads)
    if auto == "VALID":
        return 0
    p = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
    if len(p) != 4:
        raise ctx.error(f"pads {p} are not 2-D")
    return ((p[0], p[2]), (p[1], p[3]))


def _spatial_2d(ctx: Context, x: Node, what: str) -> None:
    if x.ndim != 4:
        raise ctx.error(f"only 1-D, 2-D and 3-D {what} (inputs of rank 3, 4 or 5) is "
                        f"supported; got "
                        f"rank {x.ndim}")


def _as_2d(x: Node, attrs: dict[str, Any], w: Node | None = None
           ) -> tuple[Node, dict[str, Any], Node | None]:
    """A 1-D op (N, C, L) as the 2-D one over (N, C, 1, L): attributes get a leading 1 (0
    for pads), the weights a height of 1."""
    x4 = layout.reshape(x, [x.shape[0], x.shape[1], 1, x.shape[2]])
    a = dict(attrs)
    for key in ("kernel_shape", "strides", "dilations"):
        if key in a:
            a[key] = [1, *a[key]]
    if "pads" in a:
        p = list(a["pads"])
        a["pads"] = [0, p[0], 0, p[1]]
    w4 = layout.reshape(w, [w.shape[0], w.shape[1], 1, w.shape[2]]) if w is not None else None
    return x4, a, w4


def _from_2d(y: Node) -> Node:
    return layout.reshape(y, [y.shape[0], y.shape[1], y.shape[3]])


@rule("Conv", 1)
def _conv(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, w = ctx.node(inputs[0]), ctx.node(inputs[1])
    if x.ndim == 5:
        bias5 = inputs[2] if len(inputs) > 2 else None
        return [windows.conv3d(ctx, x, w, ctx.node(bias5) if bias5 is not None else None,
                               attrs)]
    if x.ndim == 3:
        x4, attrs4, w4 = _as_2d(x, attrs, w)
        assert w4 is not None
        inputs4: Inputs = [x4, w4, *inputs[2:]]
        return [_from_2d(ctx.node(_conv(ctx, inputs4, attrs4)[0]))]
    _spatial_2d(ctx, x, "convolution")
    kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in attrs.get("dilations", [1, 1])]
    padding = _pads_2d(ctx, attrs, x, kernel, strides, dilations)
    bias = inputs[2] if len(inputs) > 2 else None
    return [conv.conv2d(x, w, stride=strides, padding=padding, dilation=dilations,
                        groups=int(attrs.get("group", 1)),
                        bias=ctx.node(bias) if bias is not None else None)]


def _pool(ctx: Context, inputs: Inputs, attrs: dict[str, Any], kind: str) -> Node:
    """MaxPool/AveragePool: graphc's 2-D pooling kernels for 1-D and 2-D windows without
    dilation (ceil_mode as extra end padding where that is exact), else the strided-slice
    composition of `windows.window_pool`."""
    x = ctx.node(inputs[0])
    if x.ndim < 3:
        raise ctx.error(f"needs an input of rank >= 3 (N, C, spatial...); got rank {x.ndim}")
    if "kernel_shape" not in attrs:
        raise ctx.error("attribute 'kernel_shape' is missing")
    kernel = [int(k) for k in attrs["kernel_shape"]]
    win = windows.window(ctx, attrs, x.shape[2:], kernel)
    ceil_mode = bool(int(attrs.get("ceil_mode", 0)))
    include = bool(int(attrs.get("count_include_pad", 0)))
    spatial = list(x.shape[2:])
    out = windows.pooled_sizes(ctx, spatial, win, ceil_mode)
    extra = windows.overhang(spatial, win, out)
    native = (x.ndim in (3, 4) and x.dtype.is_float and all(d == 1 for d in win.dilations)
              and not (kind == "avg" and include and any(extra))
              and all(win.begin[i] < kernel[i] and win.end[i] + extra[i] < kernel[i]
                      for i in range(len(spatial))))
    if not native:
        return windows.window_pool(ctx, x, win, kind, ceil_mode, include)
    padding = [(win.begin[i], win.end[i] + extra[i]) for i in range(len(spatial))]
    x4 = x if x.ndim == 4 else layout.reshape(x, [x.shape[0], x.shape[1], 1, x.shape[2]])
    if x.ndim == 3:
        kernel, strides, padding = [1, *kernel], [1, *win.strides], [(0, 0), *padding]
    else:
        strides = win.strides
    if kind == "max":
        y = pool.max_pool2d(x4, kernel, strides, tuple(padding))
    else:
        y = pool.avg_pool2d(x4, kernel, strides, tuple(padding), count_include_pad=include)
    return y if x.ndim == 4 else _from_2d(y)


@rule("MaxPool", 1)
def _max_pool(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    if ctx.num_outputs > 1:
        raise ctx.error("the Indices output is not supported")
    if int(attrs.get("storage_order", 0)):
        raise ctx.error("storage_order=1 is not supported")
    return [_pool(ctx, inputs, attrs, "max")]


@rule("AveragePool", 1)
def _avg_pool(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [_pool(ctx, inputs, attrs, "avg")]


@rule("GlobalAveragePool", 1)
def _global_avg(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    return [reduce.mean(x, tuple(range(2, x.ndim)), keepdims=True)]


@rule("GlobalMaxPool", 1)
def _global_max(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    return [reduce.max(x, tuple(range(2, x.ndim)), keepdims=True)]


@rule("BatchNormalization", 6)
@rule("BatchNormalization", 7)
def _batch_norm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Inference: the running statistics. Training mode (`training_mode=1` from opset 14,
    `is_test=0` before 7): the batch's statistics (population variance over all axes but
    the channels), and the running ones updated with `momentum` as extra outputs."""
    if not int(attrs.get("spatial", 1)):
        raise ctx.error("spatial=0 (statistics per element, not per channel) is not supported")
    training = bool(int(attrs.get("training_mode", 0))) or ctx.num_outputs > 1 or (
        ctx.opset < 7 and not int(attrs.get("is_test", 0)))
    x = ctx.node(inputs[0])
    gamma, beta, mean, var = (ctx.node(v) for v in inputs[1:5])
    eps = float(attrs.get("epsilon", 1e-5))
    if not training:
        return [neural.batch_norm(x, mean, var, gamma, beta, eps=eps, axis=1)]
    if ctx.num_outputs > 3:
        raise ctx.error("the saved_mean/saved_var outputs (opsets 6-13) are not supported")
    axes = tuple(a for a in range(x.ndim) if a != 1)
    shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    batch_mean = reduce.mean(x, axes, keepdims=True)
    centered = ew.sub(x, batch_mean)
    batch_var = reduce.mean(ew.mul(centered, centered), axes, keepdims=True)
    y = ew.add(ew.mul(ew.mul(centered, ew.rsqrt(ew.add(batch_var, eps))),
                      layout.reshape(gamma, shape)), layout.reshape(beta, shape))
    momentum = float(attrs.get("momentum", 0.9))
    flat = [mean.shape[0]]
    running_mean = ew.add(ew.mul(mean, momentum),
                          ew.mul(layout.reshape(batch_mean, flat), 1.0 - momentum))
    running_var = ew.add(ew.mul(var, momentum),
                         ew.mul(layout.reshape(batch_var, flat), 1.0 - momentum))
    return [y, running_mean, running_var][:max(ctx.num_outputs, 1)]


@rule("InstanceNormalization", 6)
def _instance_norm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, gamma, beta = (ctx.node(v) for v in inputs[:3])
    axes = tuple(range(2, x.ndim))
    eps = float(attrs.get("epsilon", 1e-5))
    mean = reduce.mean(x, axes, keepdims=True)
    centered = ew.sub(x, mean)
    var = reduce.mean(ew.mul(centered, centered), axes, keepdims=True)
    norm = ew.mul(centered, ew.rsqrt(ew.add(var, eps)))
    shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    return [ew.add(ew.mul(norm, layout.reshape(gamma, shape)), layout.reshape(beta, shape))]


@rule("LayerNormalization", 17)
def _layer_norm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    axis = axis_of(int(attrs.get("axis", -1)), x.ndim, ctx)
    eps = float(attrs.get("epsilon", 1e-5))
    if int(attrs.get("stash_type", 1)) != 1 and x.dtype.name != "float64":
        raise ctx.error("stash_type other than float32 is not supported")
    axes = tuple(range(axis, x.ndim))
    params = [ctx.node(p) if p is not None else None for p in (list(inputs) + [None] * 3)[1:3]]
    if ctx.num_outputs == 1 and all(p is None or p.type == norm.param_type(x.type, axes)
                                    for p in params):
        return [norm.layer_norm(x, *params, axis=axes, eps=eps)]  # the fused kernel
    mean = reduce.mean(x, axes, keepdims=True)
    centered = ew.sub(x, mean)
    var = reduce.mean(ew.mul(centered, centered), axes, keepdims=True)
    inv_std = ew.rsqrt(ew.add(var, eps))
    y = ew.mul(centered, inv_std)
    if len(inputs) > 1 and inputs[1] is not None:
        y = ew.mul(y, ctx.node(inputs[1]))
    if len(inputs) > 2 and inputs[2] is not None:
        y = ew.add(y, ctx.node(inputs[2]))
    return [y, mean, inv_std][:ctx.num_outputs]


def _flattened(ctx: Context, x: Node, axis: int, fn: Any) -> Node:
    """Softmax before opset 13: over the input flattened to 2-D at `axis`."""
    axis = axis_of(axis, x.ndim, ctx) if x.ndim else 0
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis:], dtype=np.int64))
    y = fn(layout.reshape(x, [outer, inner]), -1)
    return layout.reshape(y, list(x.shape))


@rule("Softmax", 1)
def _softmax1(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [_flattened(ctx, ctx.node(inputs[0]), int(attrs.get("axis", 1)), neural.softmax)]


@rule("LogSoftmax", 1)
def _log_softmax1(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [_flattened(ctx, ctx.node(inputs[0]), int(attrs.get("axis", 1)),
                       neural.log_softmax)]


@rule("Softmax", 13)
def _softmax13(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [neural.softmax(ctx.node(inputs[0]), int(attrs.get("axis", -1)))]


@rule("LogSoftmax", 13)
def _log_softmax13(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [neural.log_softmax(ctx.node(inputs[0]), int(attrs.get("axis", -1)))]


@rule("Hardmax", 13)
def _hardmax(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    axis = axis_of(int(attrs.get("axis", -1)), x.ndim, ctx)
    idx = reduce.argmax(x, axis, keepdims=False)
    hot = gather.one_hot(idx, x.shape[axis], "bool", axis)
    return [ew.where(hot, ew.add(ew.mul(x, 0.0), 1.0), ew.mul(x, 0.0))]


# --- reductions ------------------------------------------------------------------------------

def _reduce_axes(ctx: Context, inputs: Inputs, attrs: dict[str, Any], rank: int,
                 from_input: bool) -> tuple[int, ...] | None:
    """The reduced axes, or None for "all"; () for none (noop_with_empty_axes)."""
    if from_input:
        axes = (ints(ctx.need_known(inputs[1], "axes"))
                if len(inputs) > 1 and inputs[1] is not None else [])
    else:
        axes = [int(a) for a in attrs.get("axes", [])]
    if not axes:
        return () if int(attrs.get("noop_with_empty_axes", 0)) else None
    return tuple(sorted({axis_of(a, rank, ctx) for a in axes}))


def _reduction(op: str, build: Any, since_input: int) -> None:
    def make(from_input: bool) -> Any:
        def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
            x = ctx.node(inputs[0])
            axes = _reduce_axes(ctx, inputs, attrs, x.ndim, from_input)
            if axes == ():
                return [x]
            if axes is None:
                axes = tuple(range(x.ndim))
            return [build(x, axes, bool(attrs.get("keepdims", 1)))]
        return convert
    rule(op, 1)(make(False))
    rule(op, since_input)(make(True))


def _log_sum(x: Node, axes: tuple[int, ...], keep: bool) -> Node:
    return ew.log(reduce.sum(x, axes, keep))


_reduction("ReduceSum", lambda x, a, k: reduce.sum(x, a, k), 13)
_reduction("ReduceMean", lambda x, a, k: reduce.mean(x, a, k), 18)
_reduction("ReduceMax", lambda x, a, k: reduce.max(x, a, k), 18)
_reduction("ReduceMin", lambda x, a, k: reduce.min(x, a, k), 18)
_reduction("ReduceProd", lambda x, a, k: reduce.prod(x, a, k), 18)
_reduction("ReduceSumSquare", lambda x, a, k: reduce.sum(ew.mul(x, x), a, k), 18)
_reduction("ReduceL1", lambda x, a, k: reduce.sum(ew.abs(x), a, k), 18)
_reduction("ReduceL2", lambda x, a, k: ew.sqrt(reduce.sum(ew.mul(x, x), a, k)), 18)
_reduction("ReduceLogSum", _log_sum, 18)
_reduction("ReduceLogSumExp", lambda x, a, k: reduce.logsumexp(x, a, k), 18)


def _arg(op: str, fn: Any) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        x = ctx.node(inputs[0])
        axis = axis_of(int(attrs.get("axis", 0)), x.ndim, ctx)
        keep = bool(attrs.get("keepdims", 1))
        if int(attrs.get("select_last_index", 0)):
            # The last of equal extremes: the first one along the reversed axis.
            first = fn(slicing.reverse(x, axis), axis, keepdims=keep)
            out = ew.sub(x.shape[axis] - 1, ew.cast(first, "int64"))
        else:
            out = fn(x, axis, keepdims=keep)
        return [out if out.dtype.name == "int64" else ew.cast(out, "int64")]
    rule(op, 1)(convert)


_arg("ArgMax", reduce.argmax)
_arg("ArgMin", reduce.argmin)
