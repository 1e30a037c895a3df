"""The graph IR: dtypes, tensor types, nodes, graphs and signatures.

A `Graph` is a DAG of immutable `Node`s in SSA form. Each node is one op applied to input
nodes with hashable attributes and has exactly one output whose `TensorType` is static.
The IR imports nothing from the rest of graphc but `errors`; `verify` lives in
`graphc/verify.py` because it needs the op registry.

    types.py   DType, TensorType, Attrs
    node.py    Node, OPERATORS (filled by graphc.ops), SOURCE_OPS, ancestors
    graph.py   Graph, Signature, VariableStore, normalize_updates, current_graph
"""

from graphc.ir.graph import (
    Graph,
    Signature,
    VariableStore,
    current_graph,
    normalize_updates,
)
from graphc.ir.node import OPERATORS, SOURCE_OPS, Node, ancestors
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
