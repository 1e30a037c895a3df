"""The conv op family: 2-D convolution and pooling (NCHW activations, OIHW weights).

The ops live in submodules; this module collects their definitions into `OPS` and their
builders into `__all__`:
- `conv_geometry`: window attributes, output sizes, "same" padding, numpy window views;
- `conv_conv2d`: conv2d, conv2d_grad_input, conv2d_grad_weight;
- `conv_pool`: max_pool2d(_grad, _gather), avg_pool2d(_grad), global_avg_pool2d.
"""

from __future__ import annotations

from graphc.ir.opdef import OpDef
from graphc.ops import conv_conv2d as _conv2d
from graphc.ops import conv_pool as _pool
from graphc.ops.conv_conv2d import conv2d, conv2d_grad_input, conv2d_grad_weight
from graphc.ops.conv_pool import (
    avg_pool2d,
    avg_pool2d_grad,
    global_avg_pool2d,
    max_pool2d,
    max_pool2d_gather,
    max_pool2d_grad,
)

__all__ = [
    "avg_pool2d",
    "avg_pool2d_grad",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "global_avg_pool2d",
    "max_pool2d",
    "max_pool2d_gather",
    "max_pool2d_grad",
]

OPS: list[OpDef] = [*_conv2d.OPS, *_pool.OPS]
