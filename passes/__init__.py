"""Graph -> graph passes (installed as `graphc.passes`).

`PASSES` is the pass registry: the one list of passes, by name. A pass's name is its
module's name and its CLI name (`graphc passes --list` prints this table); the pass
manager (`graphc.passes.manager`) runs them by name. `autodiff` builds gradient nodes
inside a graph and is not a pipeline pass.
"""

from __future__ import annotations

from . import (
    attention,
    constant_fold,
    cse,
    integer_matmul,
    loop_hoist,
    loop_sink,
    loop_unroll,
    lower_control,
    prune,
    qdq,
    simplify,
    winograd,
)
from .rewrite import PassDef

_MODULES = (qdq, lower_control, loop_hoist, loop_sink, loop_unroll, simplify, constant_fold,
            integer_matmul, attention, winograd, cse, prune)
PASSES: dict[str, PassDef] = {module.PASS.name: module.PASS for module in _MODULES}
for _module in _MODULES:
    assert _module.__name__.rsplit(".", 1)[1] == _module.PASS.name, "module name != pass name"
