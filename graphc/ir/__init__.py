"""The graph IR: dtypes, tensor types, nodes, graphs and signatures, and what an op is.

A `Graph` is a DAG of immutable `Node`s in SSA form. Each node is one op applied to input
nodes with hashable attributes and has exactly one output whose `TensorType` is static --
except region ops (scan, cond, while_loop), which own body graphs (`Region`s) and whose
`TupleType` of results `get` nodes read.
The IR imports nothing from the rest of graphc but `errors`; `verify` lives in
`graphc/verify.py` because it needs the op registry.

    types.py      DType, TensorType, TupleType, Attrs
    bf16.py       bfloat16 <-> float32 conversions (bf16 tensors are uint16 bit patterns)
    graph.py      Node, Region, Signature, Graph, OPERATORS (filled by graphc.ops),
                  SOURCE_OPS, ancestors, normalize_updates, current_graph, target_graph
    variables.py  VariableStore (the live variable arrays of a graph)
    opdef.py      OpDef (type rule, reference, gradient, fusion facts), Fusion, Anchor
"""

from graphc.ir.bf16 import from_bfloat16, to_bfloat16
from graphc.ir.graph import (
    OPERATORS,
    SOURCE_OPS,
    Graph,
    Node,
    Region,
    Signature,
    ancestors,
    checked_signature,
    current_graph,
    normalize_updates,
    target_graph,
)
from graphc.ir.types import (
    Attrs,
    AttrValue,
    DType,
    TensorType,
    TupleType,
    ValueType,
    bfloat16,
    bool_,
    float32,
    float64,
    int8,
    int32,
    int64,
    uint8,
)
from graphc.ir.variables import VariableStore
