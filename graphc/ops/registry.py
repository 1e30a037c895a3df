"""The op registry: the one list of op families, and the table of all ops by name.

Adding an op family means adding its module to `FAMILIES`. `graphc ops --list` prints the
table. The registry also fills the IR's `OPERATORS` table, through which `Node` operators
(``a + b``, ``x[1:]``, ``x.T``) and the Node methods used by lower families' gradient
rules (``g.sum(...)``, ``g.reshape(...)``) build nodes.
"""

from __future__ import annotations

from graphc.errors import GraphcError
from graphc.ir import OPERATORS, Attrs, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import (
    attention,
    collective,
    control,
    conv,
    elementwise,
    gather,
    getitem,
    join,
    layout,
    linalg,
    neural,
    norm,
    pool,
    random,
    reduce,
    sequence,
    slicing,
    winograd,
)


def _no_reference(arrays: object, attrs: Attrs) -> object:
    raise GraphcError("source ops have no reference; the interpreter binds their values")


def _source_infer(types: object, attrs: Attrs) -> TensorType:
    raise GraphcError("source ops are built by gc.placeholder/variable/constant")


SOURCES = [
    OpDef(name, "source", 0, _source_infer, _no_reference, Fusion.SOURCE, doc=doc, attrs=attrs)
    for name, doc, attrs in (
        ("placeholder", "an input given at each call", ()),
        ("variable", "persistent state, changed by updates",
         (AttrSpec("trainable", Kind.BOOL, default=True),)),
        ("constant", "a fixed value", ()),
    )
]

# Families in registry order (and so `graphc ops --list`); a family module imports only the
# families before it in `docs/architecture.md`'s order, never a later one.
FAMILIES = (elementwise, reduce, layout, join, slicing, gather, linalg, conv, winograd, pool,
            neural, random, sequence, norm, attention, control, collective)

OPS: dict[str, OpDef] = {}
for _op in [*SOURCES, *(op for family in FAMILIES for op in family.OPS)]:
    assert _op.name not in OPS, f"op {_op.name} defined twice"
    OPS[_op.name] = _op


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise GraphcError(f"unknown op {name!r} (see `graphc ops --list`)") from None


OPERATORS.update(
    add=elementwise.add,
    sub=elementwise.sub,
    mul=elementwise.mul,
    div=elementwise.div,
    pow=elementwise.pow,
    mod=elementwise.mod,
    matmul=linalg.matmul,
    neg=elementwise.neg,
    abs=elementwise.abs,
    logical_not=elementwise.logical_not,
    logical_and=elementwise.logical_and,
    logical_or=elementwise.logical_or,
    less=elementwise.less,
    less_equal=elementwise.less_equal,
    greater=elementwise.greater,
    greater_equal=elementwise.greater_equal,
    equal=elementwise.equal,
    not_equal=elementwise.not_equal,
    transpose=layout.transpose,
    getitem=getitem.getitem,
    sum=reduce.sum,
    reshape=layout.reshape,
)
