"""The communicator slot of an exported data-parallel training step (issue 18).

A step built with ``minimize(..., distributed=True)`` averages its gradients over the ranks
of a job by calling through the module's ``graphc_comm`` pointer
(`codegen/opaque/collective.py` documents the struct). `gc.compile` binds it to MPI in the
process (`runtime/mpi.py`); an exported library cannot (it needs only libc), so its caller
fills it: the library exports ``NAME_set_communicator(const NAME_comm *)``, which stores the
pointer in the slot, and its header declares ``NAME_comm`` (the same layout). Until it is
called the step reduces over the calling process alone. `gc.runtime.load` calls it with
this process's MPI binding when the job has several ranks.

`examples/distributed_c/` is a C caller binding it to MPI in about 20 lines.
"""

from __future__ import annotations

from string import Template

from graphc.codegen.opaque.collective import COMM_SLOT, DTYPE_CODES
from graphc.ir import DType

ROLE = "set_communicator"

_HEADER = Template("""
/* Data parallelism: this step averages its gradients over the ranks of a job through a
 * communicator the caller provides (examples/distributed_c/ binds it to MPI). Until
 * ${name}_set_communicator is called (or after a call with NULL) it reduces over this
 * process alone. The struct must stay valid while steps run; the slot is process-wide
 * (one per library), not per context. Each function returns 0 on success; `dtype` is
 * ${f32} (float32) or ${f64} (float64), `op` 0 (sum); iallreduce stores its handle in the
 * 8 bytes at `request`, which wait completes. iallreduce and wait may be NULL: the step
 * then reduces each bucket of gradients with allreduce, blocking. */
typedef struct ${name}_comm {
    int32_t (*allreduce)(void *ctx, const void *send, void *recv, int64_t count,
                         int32_t dtype, int32_t op);
    void *ctx;     /* passed back to each function */
    int64_t size;  /* number of ranks (a "mean" divides the sum by it) */
    int32_t (*iallreduce)(void *ctx, const void *send, void *recv, int64_t count,
                          int32_t dtype, int32_t op, void *request);
    int32_t (*wait)(void *ctx, void *request);
    /* optional (NULL: none): progress a started reduction without blocking (MPI_Test) */
    int32_t (*test)(void *ctx, void *request);
} ${name}_comm;
void ${name}_set_communicator(const ${name}_comm *comm);
""")

_SOURCE = Template("""
/* Data parallelism (see ${name}.h): the generated code's communicator slot. */
extern void *${slot};
API void ${name}_set_communicator(const ${name}_comm *comm) { ${slot} = (void *)comm; }
""")


def header_part(name: str) -> str:
    """The declarations NAME.h gains (inserted before its closing ``extern "C"``)."""
    return _HEADER.substitute(name=name, f32=DTYPE_CODES[DType.float32],
                              f64=DTYPE_CODES[DType.float64])


def source_part(name: str) -> str:
    """The definition NAME.c gains."""
    return _SOURCE.substitute(name=name, slot=COMM_SLOT)


def add_to_header(header: str, name: str) -> str:
    """`header` with `header_part` inserted before its final ``#ifdef __cplusplus``."""
    at = header.rindex("#ifdef __cplusplus")
    return header[:at] + header_part(name).lstrip("\n") + "\n" + header[at:]
