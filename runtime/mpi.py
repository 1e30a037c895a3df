"""Binding compiled code's communicator slot to MPI (`codegen/opaque/collective.py`).

`comm_address()` returns the address of a ``graphc_comm`` for this process's world, or 0 in
a world of one process (the kernel then copies). The communicator's `allreduce` is a small
function JIT-compiled here, at run time, that calls ``MPI_Allreduce(send, recv, count,
datatype, op, comm)``:

- MPI_Allreduce's address is looked up in the libmpi that mpi4py loaded (through mpi4py's
  extension module, whose dependencies include it), never in some other libmpi on the path;
- the handles (MPI_FLOAT, MPI_DOUBLE, MPI_SUM, the communicator) come from mpi4py
  (``MPI._handleof``) and their widths from ``MPI._sizeof``: MPICH's are 32-bit ints, Open
  MPI's pointers. They live in a context struct, not in the program, so the program (and
  its cache entry) is the same under every MPI.

The structures are built once per process and kept alive for its lifetime.
"""

from __future__ import annotations

import ctypes

import llvmlite.ir as ir

from graphc.codegen.llvm_types import I8, I32, I64, PTR
from graphc.codegen.opaque.collective import ALLREDUCE_TYPE, DTYPE_CODES, OP_SUM
from graphc.codegen.threadpool import call_pointer
from graphc.comm import World, world
from graphc.errors import GraphcError
from graphc.ir import DType
from graphc.runtime.jit import JitModule, jit_compile

BINDING = "graphc_mpi_allreduce"
_INT_MAX = 2**31 - 1


class CommStruct(ctypes.Structure):
    """``graphc_comm`` (see `codegen/opaque/collective.py`)."""

    _fields_ = [("allreduce", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("size", ctypes.c_int64)]


class _MpiContext(ctypes.Structure):
    """What the binding reads: MPI_Allreduce and the handles, each widened to 64 bits."""

    _fields_ = [("mpi_allreduce", ctypes.c_void_p), ("float32", ctypes.c_uint64),
                ("float64", ctypes.c_uint64), ("sum", ctypes.c_uint64),
                ("comm", ctypes.c_uint64)]


_BOUND: tuple[World, CommStruct, _MpiContext, JitModule] | None = None


def comm_address() -> int:
    """Address of the process's communicator (0 in a world of one); built on first use."""
    global _BOUND
    w = world()
    if w.size == 1 or w.comm is None:
        return 0
    if _BOUND is None or _BOUND[0] is not w:
        _BOUND = _bind(w)
    return ctypes.addressof(_BOUND[1])


def _bind(w: World) -> tuple[World, CommStruct, _MpiContext, JitModule]:
    from mpi4py import MPI

    try:
        library = ctypes.CDLL(MPI.__file__)
        mpi_allreduce = ctypes.cast(library.MPI_Allreduce, ctypes.c_void_p).value
    except (OSError, AttributeError) as exc:
        raise GraphcError(f"cannot find MPI_Allreduce in the MPI library mpi4py loaded "
                          f"({exc})", op="allreduce") from None
    widths = (MPI._sizeof(MPI.Datatype), MPI._sizeof(MPI.Op), MPI._sizeof(MPI.Comm))
    jit = jit_compile(_binding_ir(*widths), symbols=[BINDING])
    context = _MpiContext(mpi_allreduce, _unsigned(MPI._handleof(MPI.FLOAT)),
                          _unsigned(MPI._handleof(MPI.DOUBLE)), _unsigned(MPI._handleof(MPI.SUM)),
                          _unsigned(MPI._handleof(w.comm)))
    comm = CommStruct(jit.address(BINDING), ctypes.addressof(context), w.size)
    return w, comm, context, jit


def _unsigned(handle: int) -> int:
    return handle % 2**64  # a pointer handle may come back negative on some builds


def _binding_ir(datatype_bytes: int, op_bytes: int, comm_bytes: int) -> str:
    """``int32_t graphc_mpi_allreduce(ctx, send, recv, count, dtype, op)`` calling MPI."""
    module = ir.Module("graphc_mpi")
    fn = ir.Function(module, ALLREDUCE_TYPE, BINDING)
    ctx, send, recv, count, dtype, op = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    dt_t, op_t, comm_t = (ir.IntType(8 * n) for n in (datatype_bytes, op_bytes, comm_bytes))
    mpi_type = ir.FunctionType(I32, [PTR, PTR, I32, dt_t, op_t, comm_t])

    def field(offset: int) -> ir.Value:
        ptr = b.gep(ctx, [ir.Constant(I64, offset)], inbounds=True, source_etype=I8)
        return b.load(ptr, typ=PTR if offset == 0 else I64, align=8)

    # MPI counts are ints: a larger tensor (or an op or dtype we did not bind) is an error.
    bad = b.or_(b.icmp_signed(">", count, ir.Constant(I64, _INT_MAX)),
                b.icmp_signed("!=", op, ir.Constant(I32, OP_SUM)))
    with b.if_then(bad, likely=False):
        b.ret(ir.Constant(I32, -1))
    is_f64 = b.icmp_signed("==", dtype, ir.Constant(I32, DTYPE_CODES[DType.float64]))
    datatype = b.select(is_f64, field(16), field(8))
    status = call_pointer(b, field(0), mpi_type, [
        send, recv, b.trunc(count, I32), _narrow(b, datatype, dt_t),
        _narrow(b, field(24), op_t), _narrow(b, field(32), comm_t)])
    b.ret(status)
    return str(module)


def _narrow(b: ir.IRBuilder, value: ir.Value, typ: ir.IntType) -> ir.Value:
    return value if typ.width == 64 else b.trunc(value, typ)
