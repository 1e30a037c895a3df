"""A graph of one `matmul_integer` with a constant B, for the integer GEMM tests."""

from __future__ import annotations

import numpy as np

import graphc as gc


def integer_matmul_graph(a_shape: tuple[int, ...], w: np.ndarray, tb: bool, zp: bool
                         ) -> tuple[gc.Graph, list[gc.Node], gc.Node]:
    """(graph, its inputs: a and, with `zp`, a runtime uint8 zero point, the int32 result)
    of ``matmul_integer(a, constant(w), z, transpose_b=tb)``."""
    with gc.Graph("int8") as g:
        a = gc.placeholder(a_shape, gc.uint8, name="a")
        z = gc.placeholder((), gc.uint8, name="z")
        acc = gc.matmul_integer(a, gc.constant(w), z if zp else None, transpose_b=tb)
    return g, [a, z] if zp else [a], acc
