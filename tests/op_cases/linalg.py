"""Op-table rows for the linalg family: matmul in every rank and flag combination.

The numpy side is `np.einsum` with explicit subscripts (it broadcasts `...` dims), written
independently of np.matmul, which the op's reference uses.
"""

from __future__ import annotations

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase


def _mm(id_: str, a: tuple[int, ...], b: tuple[int, ...], subscripts: str, build=None,
        **kw) -> OpCase:
    # float32 sums of a few products of N(0,1) values: absolute error ~1e-6 near zero.
    return OpCase(f"matmul:{id_}", ("matmul",), build or (lambda x, y: x @ y),
                  lambda x, y: np.einsum(subscripts, x, y), (Arg(a), Arg(b)), atol32=1e-5,
                  **kw)


CASES: list[OpCase] = [
    _mm("2d", (3, 4), (4, 5), "ij,jk->ik", build=gc.matmul),
    _mm("batched", (2, 3, 4), (2, 4, 5), "bij,bjk->bik"),
    _mm("batched_broadcast", (2, 1, 3, 4), (5, 4, 2), "...ij,...jk->...ik"),
    _mm("batched_times_matrix", (2, 3, 4), (4, 5), "...ij,jk->...ik"),
    _mm("vec_mat", (4,), (4, 5), "j,jk->k"),
    _mm("mat_vec", (3, 4), (4,), "ij,j->i"),
    _mm("vec_vec", (4,), (4,), "j,j->"),
    _mm("batched_mat_vec", (2, 3, 4), (4,), "bij,j->bi"),
    _mm("vec_batched_mat", (4,), (2, 4, 3), "j,bjk->bk"),
    _mm("transpose_a", (4, 3), (4, 5), "ji,jk->ik",
        build=lambda x, y: gc.matmul(x, y, transpose_a=True)),
    _mm("transpose_b", (3, 4), (5, 4), "ij,kj->ik",
        build=lambda x, y: gc.matmul(x, y, transpose_b=True)),
    _mm("transpose_ab", (4, 3), (5, 4), "ji,kj->ik",
        build=lambda x, y: gc.matmul(x, y, transpose_a=True, transpose_b=True)),
    _mm("transpose_ab_broadcast", (2, 1, 4, 3), (3, 5, 4), "...ji,...kj->...ik",
        build=lambda x, y: gc.matmul(x, y, transpose_a=True, transpose_b=True)),
    _mm("transpose_a_broadcast", (3, 4, 2), (2, 1, 4, 5), "...ji,...jk->...ik",
        build=lambda x, y: gc.matmul(x, y, transpose_a=True)),
    _mm("transpose_b_vec", (4,), (2, 5, 4), "j,bkj->bk",
        build=lambda x, y: gc.matmul(x, y, transpose_b=True)),
    _mm("chain", (3, 4), (4, 5), "ij,jk->ik",
        build=lambda x, y: (x @ y) @ gc.constant(np.eye(5), dtype=x.dtype)),
    OpCase("matmul:int32", ("matmul",), lambda x, y: x @ y,
           lambda x, y: np.einsum("bij,jk->bik", x, y).astype(np.int32),
           (Arg((2, 3, 4), "int", -5, 5), Arg((4, 2), "int", -5, 5)), grad=False),
    OpCase("matmul:int64_transpose_b", ("matmul",),
           lambda x, y: gc.matmul(x, y, transpose_b=True),
           lambda x, y: np.einsum("ij,kj->ik", x, y),
           (Arg((3, 4), "int", -9, 9, "int64"), Arg((2, 4), "int", -9, 9, "int64")),
           grad=False),
    OpCase("matmul:bf16", ("matmul", "cast"),
           lambda x, y: gc.matmul(gc.cast(x, gc.bfloat16), gc.cast(y, gc.bfloat16),
                                  transpose_b=True),
           lambda x, y: np.einsum("ij,kj->ik", _bf16(x), _bf16(y)).astype(np.float32),
           (Arg((5, 6)), Arg((7, 6))), dtypes=("float32",), grad=False, atol32=1e-5),
    OpCase("matmul_integer", ("matmul_integer",),
           lambda a, b, z: gc.matmul_integer(a, b, z),
           lambda a, b, z: np.einsum("ij,jk->ik", a.astype(np.int64) - int(z),
                                     b.astype(np.int64)).astype(np.int32),
           (Arg((5, 9), "int", 0, 256, "uint8"), Arg((9, 7), "int", -128, 128, "int8"),
            Arg((), "int", 0, 256, "uint8")), dtypes=("float32",), grad=False),
    OpCase("matmul_integer:batched_transpose_b", ("matmul_integer",),
           lambda a, b: gc.matmul_integer(a, b, transpose_b=True),
           lambda a, b: np.einsum("bij,kj->bik", a.astype(np.int64),
                                  b.astype(np.int64)).astype(np.int32),
           (Arg((2, 3, 9), "int", 0, 256, "uint8"), Arg((4, 9), "int", -128, 128, "int8")),
           dtypes=("float32",), grad=False),
    OpCase("linear", ("matmul", "add"), gc.linear,
           lambda x, w, b: np.einsum("bi,io->bo", x, w) + b,
           (Arg((3, 4)), Arg((4, 2)), Arg((2,))), atol32=1e-5),
    OpCase("linear:no_bias", ("matmul",), lambda x, w: gc.linear(x, w, name="y"),
           lambda x, w: np.einsum("bti,io->bto", x, w), (Arg((2, 3, 4)), Arg((4, 2))),
           atol32=1e-5),
]


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 x rounded to bf16 (8 significant bits, half to even), for normal values."""
    m, e = np.frexp(np.asarray(x, np.float32).astype(np.float64))
    return np.ldexp(np.round(m * 256) / 256, e)
