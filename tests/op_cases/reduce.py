"""Op-table rows for the reduce family (numpy expressions written independently)."""

from __future__ import annotations

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase

S3 = (2, 3, 4)


def _r(id: str, build, ref, shape=S3, kind: str = "normal", grad: bool = True, **kw) -> OpCase:
    return OpCase(id, (id.split(":")[0],), build, ref, (Arg(shape, kind),), grad=grad, **kw)


def _i(id: str, build, ref, shape=S3, lo: int = -5, hi: int = 6) -> OpCase:
    return OpCase(id, (id.split(":")[0],), build, ref, (Arg(shape, "int", lo, hi),),
                  dtypes=("float64",), grad=False)


def _logsumexp(x: np.ndarray, axis, keepdims: bool = False) -> np.ndarray:
    return np.logaddexp.reduce(x, axis=axis, keepdims=keepdims)


def _var(x: np.ndarray, axis, ddof: int = 0, keepdims: bool = False) -> np.ndarray:
    axes = tuple(range(x.ndim)) if axis is None else np.atleast_1d(axis)
    n = int(np.prod([x.shape[a] for a in axes]))
    centered = x - x.mean(axis=axis, keepdims=True)
    return (centered**2).sum(axis=axis, keepdims=keepdims) / (n - ddof)


CASES: list[OpCase] = [
    _r("sum", gc.sum, lambda x: x.sum()),
    _r("sum:axis_keepdims", lambda x: gc.sum(x, axis=1, keepdims=True),
       lambda x: x.sum(axis=1)[:, None, :]),
    _r("sum:neg_axes", lambda x: gc.sum(x, axis=(-1, 0)),
       lambda x: np.einsum("ijk->j", x)),
    _r("sum:no_axes", lambda x: gc.sum(x, axis=()) * 2.0, lambda x: x * 2),
    _r("sum:scalar", lambda x: gc.sum(x, keepdims=True), lambda x: x + 0, shape=()),
    _r("sum:size1", lambda x: gc.sum(x, axis=1), lambda x: x[:, 0, :], shape=(3, 1, 2)),
    _i("sum:int", lambda x: gc.sum(x, axis=0), lambda x: x[0] + x[1]),
    _r("max", lambda x: gc.max(x, axis=-1), lambda x: np.sort(x, axis=-1)[..., -1],
       kind="distinct"),
    _r("max:all_keepdims", lambda x: gc.max(x, keepdims=True),
       lambda x: np.full((1, 1, 1), x.flat[np.argsort(x, axis=None)[-1]]), kind="distinct"),
    _r("max:two_axes", lambda x: gc.max(x, axis=(0, 2)),
       lambda x: np.sort(x.transpose(1, 0, 2).reshape(3, -1), axis=1)[:, -1], kind="distinct"),
    _i("max:int", lambda x: gc.max(x, axis=1), lambda x: np.sort(x, axis=1)[:, -1]),
    _r("min", lambda x: gc.min(x, axis=0), lambda x: np.sort(x, axis=0)[0], kind="distinct"),
    _r("min:keepdims", lambda x: gc.min(x, axis=-2, keepdims=True),
       lambda x: np.sort(x, axis=1)[:, :1, :], kind="distinct"),
    _i("min:int", lambda x: gc.min(x), lambda x: np.sort(x, axis=None)[0]),
    _r("prod", lambda x: gc.prod(x, axis=1), lambda x: x[:, 0] * x[:, 1] * x[:, 2],
       kind="away0"),
    _r("prod:all", gc.prod, lambda x: np.exp(np.log(x).sum()), shape=(2, 3), kind="positive"),
    _r("prod:keepdims", lambda x: gc.prod(x, axis=(0, 2), keepdims=True),
       lambda x: np.multiply.reduce(np.multiply.reduce(x, axis=2), axis=0)[None, :, None],
       kind="away0"),
    _i("prod:int", lambda x: gc.prod(x, axis=-1), lambda x: x[..., 0] * x[..., 1] * x[..., 2]
       * x[..., 3], lo=-3, hi=4),
    _r("argmax", lambda x: gc.argmax(x, axis=1),
       lambda x: np.argsort(x, axis=1)[:, -1, :], kind="distinct", grad=False),
    _r("argmax:flat_keepdims", lambda x: gc.argmax(x, keepdims=True),
       lambda x: np.full((1, 1, 1), np.argsort(x.ravel())[-1]), kind="distinct", grad=False),
    _i("argmax:int", lambda x: gc.argmax(x, axis=-1),
       lambda x: np.array([[list(r).index(r.max()) for r in m] for m in x])),
    _r("argmin", lambda x: gc.argmin(x, axis=-3, keepdims=True),
       lambda x: np.argsort(x, axis=0)[:1], kind="distinct", grad=False),
    _r("argmin:flat", gc.argmin, lambda x: np.argsort(x.ravel())[0], kind="distinct",
       grad=False),
]

CASES += [
    OpCase("mean", ("sum", "mul"), lambda x: gc.mean(x, axis=(0, 2)),
           lambda x: x.sum(axis=(0, 2)) / 8, (Arg(S3),)),
    OpCase("mean:all_keepdims", ("sum", "mul"), lambda x: gc.mean(x, keepdims=True),
           lambda x: np.full((1, 1, 1), x.sum() / 24), (Arg(S3),)),
    OpCase("var", ("sum", "mul", "sub", "square", "div"), lambda x: gc.var(x, axis=-1),
           lambda x: _var(x, -1), (Arg(S3),)),
    OpCase("var:ddof_keepdims", ("sum", "div"), lambda x: gc.var(x, 0, keepdims=True, ddof=1),
           lambda x: _var(x, 0, ddof=1, keepdims=True), (Arg(S3),)),
    OpCase("std", ("sum", "sqrt"), lambda x: gc.std(x, axis=(1, 2)),
           lambda x: np.sqrt(_var(x, (1, 2))), (Arg(S3),)),
    OpCase("logsumexp", ("max", "sum", "exp", "log"), lambda x: gc.logsumexp(x, axis=-1),
           lambda x: _logsumexp(x, -1), (Arg(S3),)),
    OpCase("logsumexp:keepdims_all", ("max", "sum"),
           lambda x: gc.logsumexp(x, axis=None, keepdims=True),
           lambda x: np.full((1, 1, 1), _logsumexp(x.ravel(), 0)), (Arg(S3),)),
    # exp(1000 x) overflows unless the max is subtracted first.
    OpCase("logsumexp:large", ("max", "sum"), lambda x: gc.logsumexp(x * 1000.0, axis=1),
           lambda x: _logsumexp(x * 1000, 1), (Arg(S3),), grad=False),
]
