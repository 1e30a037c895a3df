"""Op families: each module defines its ops (one `OpDef` each, in its `OPS`) and their
builder functions; `registry` lists the families and maps op names to definitions.

Families import downward only, in this order (`tests/test_import_layers.py` forbids
cycles): `common` (shared helpers) <- `elementwise` <- `layout` <- `slicing` <- `join` <-
`reduce` <- `gather`, `getitem` <- `linalg` <- `geometry` <- `conv`, `pool` <- `random` <-
`neural`; `control` (scan, cond, while_loop; with `trace` and `control_grad`), then
`collective` (allreduce; it reads `graphc.comm`, below the ops).
A gradient rule that needs an op of a later family builds it through a `Node`
method the registry fills (``g.sum(...)``, ``g.reshape(...)``, ``x.T``).
"""
