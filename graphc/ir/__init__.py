"""The graph IR: dtypes, tensor types, nodes, graphs and signatures, and what an op is.

A `Graph` is a DAG of immutable `Node`s in SSA form. Each node is one op applied to input
nodes with hashable attributes and has exactly one output whose `TensorType` is static.
The IR imports nothing from the rest of graphc but `errors`; `verify` lives in
`graphc/verify.py` because it needs the op registry.

    types.py      DType, TensorType, Attrs
    graph.py      Node, Signature, Graph, OPERATORS (filled by graphc.ops), SOURCE_OPS,
                  ancestors, normalize_updates, current_graph
    variables.py  VariableStore (the live variable arrays of a graph)
    opdef.py      OpDef (type rule, reference, gradient, fusion facts), Fusion, Anchor
"""

from graphc.ir.graph import (
    OPERATORS,
    SOURCE_OPS,
    Graph,
    Node,
    Signature,
    ancestors,
    checked_signature,
    current_graph,
    normalize_updates,
)
from graphc.ir.types import (
    Attrs,
    AttrValue,
    DType,
    TensorType,
    bool_,
    float32,
    float64,
    int32,
    int64,
)
from graphc.ir.variables import VariableStore
