"""Convolution and pooling layers on NCHW tensors: Conv2D, DepthwiseConv2D, MaxPool2D,
AvgPool2D, GlobalAvgPool2D.

A Conv2D kernel is (filters, in_channels / groups, kh, kw) -- PyTorch's layout, so a
``torch.nn.Conv2d`` weight copies over unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphc.errors import AttrError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import activations, regularizers
from graphc.nn.initializers import InitializerLike
from graphc.nn.layer import Layer, Scope
from graphc.ops import conv as conv_ops
from graphc.ops import pool as pool_ops

__all__ = ["AvgPool2D", "Conv2D", "DepthwiseConv2D", "GlobalAvgPool2D", "MaxPool2D"]

IntPair = int | Sequence[int]


def _pair(owner: str, name: str, value: IntPair) -> tuple[int, int]:
    items = (value, value) if isinstance(value, int) else tuple(value)
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                  for v in items):
        raise AttrError(f"{name} must be an int >= 1 or a pair of them, got {value!r}",
                        op=owner)
    return items[0], items[1]


def _rank4(owner: str, x: Node) -> None:
    if x.ndim != 4:
        raise ShapeError(f"x: expected a rank-4 NCHW tensor, got {x.type}", op=owner)


class Conv2D(Layer):
    """``activation(conv2d(x, kernel, stride, padding, dilation, groups) + bias)``.

    `padding`: "valid" (default), "same" (output ceil(H / stride); odd padding goes to the
    bottom/right), an int, a pair, or ((top, bottom), (left, right)). `groups` splits the
    channels into independent convolutions; ``groups == in_channels`` is a depthwise
    convolution (see `DepthwiseConv2D`). Variables: ``kernel`` (filters, C/groups, kh, kw),
    ``bias`` (filters,).
    """

    def __init__(self, filters: int, kernel_size: IntPair, strides: IntPair = 1,
                 padding: Any = "valid", dilation: IntPair = 1, groups: int = 1,
                 activation: activations.ActivationLike = None, *, use_bias: bool = True,
                 kernel_initializer: InitializerLike = "glorot_uniform",
                 bias_initializer: InitializerLike = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 name: str | None = None, dtype: DType | str | None = None,
                 seed: int | None = None):
        super().__init__(name, dtype, seed)
        owner = type(self).__name__
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise AttrError(f"filters must be an int >= 1, got {filters!r}", op=owner)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise AttrError(f"groups must be an int >= 1, got {groups!r}", op=owner)
        if filters % groups:
            raise AttrError(f"filters ({filters}) must be divisible by groups ({groups})",
                            op=owner)
        self.filters = filters
        self.kernel_size = _pair(owner, "kernel_size", kernel_size)
        self.strides = _pair(owner, "strides", strides)
        self.dilation = _pair(owner, "dilation", dilation)
        self.padding = padding
        self.groups = groups
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def build(self, x: Node) -> None:
        owner = type(self).__name__
        _rank4(owner, x)
        channels = x.shape[1]
        if channels % self.groups:
            raise ShapeError(f"x: {channels} input channels are not divisible by groups "
                             f"({self.groups}); x is {x.type}", op=owner)
        dtype = self.weight_dtype(x)
        shape = (self.filters, channels // self.groups, *self.kernel_size)
        self.add_weight("kernel", shape, self.kernel_initializer, dtype,
                        regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer, dtype,
                            regularizer=self.bias_regularizer)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        y = conv_ops.conv2d(x, self.weights["kernel"], stride=self.strides,
                            padding=self.padding, dilation=self.dilation, groups=self.groups,
                            bias=self.weights.get("bias"))
        return self.activation(y)


class DepthwiseConv2D(Conv2D):
    """A depthwise convolution: each input channel convolved with `depth_multiplier` kernels
    of its own (Conv2D with groups = filters / depth_multiplier = in_channels)."""

    def __init__(self, kernel_size: IntPair, depth_multiplier: int = 1, **kwargs: Any):
        self.depth_multiplier = depth_multiplier
        # filters/groups are known only at build time; placeholders that pass validation.
        super().__init__(depth_multiplier, kernel_size, **kwargs)

    def build(self, x: Node) -> None:
        _rank4("DepthwiseConv2D", x)
        self.groups = x.shape[1]
        self.filters = x.shape[1] * self.depth_multiplier
        super().build(x)


class _Pool(Layer):
    def __init__(self, pool_size: IntPair = 2, strides: IntPair | None = None,
                 padding: Any = "valid", name: str | None = None):
        super().__init__(name)
        owner = type(self).__name__
        self.pool_size = _pair(owner, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair(owner, "strides", strides)
        self.padding = padding


class MaxPool2D(_Pool):
    """The max over pool_size windows (stride defaults to pool_size; padding never wins)."""

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        _rank4("MaxPool2D", x)
        return pool_ops.max_pool2d(x, self.pool_size, self.strides, self.padding)


class AvgPool2D(_Pool):
    """The mean over pool_size windows; with padding, `count_include_pad` (default True, as
    PyTorch) counts padded zeros in the mean."""

    def __init__(self, pool_size: IntPair = 2, strides: IntPair | None = None,
                 padding: Any = "valid", count_include_pad: bool = True,
                 name: str | None = None):
        super().__init__(pool_size, strides, padding, name)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        _rank4("AvgPool2D", x)
        return pool_ops.avg_pool2d(x, self.pool_size, self.strides, self.padding,
                                   count_include_pad=self.count_include_pad)


class GlobalAvgPool2D(Layer):
    """The mean over H and W: (N, C, H, W) -> (N, C) (or (N, C, 1, 1) with `keepdims`)."""

    def __init__(self, keepdims: bool = False, name: str | None = None):
        super().__init__(name)
        self.keepdims = bool(keepdims)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        _rank4("GlobalAvgPool2D", x)
        return pool_ops.global_avg_pool2d(x, keepdims=self.keepdims)
