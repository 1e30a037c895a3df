"""Op-table rows for the collective family. The suite runs in a world of one process, where
an allreduce is the identity (sum and mean alike); `tests/test_distributed.py` runs it on
two ranks under mpiexec."""

from __future__ import annotations

import graphc as gc
from tests.op_table import Arg, OpCase

CASES: list[OpCase] = [
    OpCase("allreduce:mean", ("allreduce",), lambda x: gc.allreduce(x * 3.0),
           lambda x: x * 3.0, (Arg((4, 5)),)),
    OpCase("allreduce:sum", ("allreduce",), lambda x: gc.allreduce(x, "sum") + 1.0,
           lambda x: x + 1.0, (Arg((7,)),)),
]
