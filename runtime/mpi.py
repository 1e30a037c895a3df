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

The non-blocking functions (`graphc_mpi_iallreduce`, `graphc_mpi_wait`, `graphc_mpi_test`:
``MPI_Iallreduce``, ``MPI_Wait``, ``MPI_Test``, the request stored in the 8 bytes the step
gives it) serve gradient buckets.
Time spent in ``MPI_Wait`` and in the blocking ``MPI_Allreduce`` (measured with
``MPI_Wtime``) accumulates in the context: `wait_seconds()` reads it, so a training loop
can report how long each step waited on the reduction.

The structures are built once per process and kept alive for its lifetime.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.llvm_types import I8, I32, I64, PTR
from graphc.codegen.opaque.collective import (
    ALLREDUCE_TYPE,
    DTYPE_CODES,
    IALLREDUCE_TYPE,
    OP_SUM,
    WAIT_TYPE,
)
from graphc.codegen.threadpool import call_pointer
from graphc.comm import World, world
from graphc.errors import GraphcError
from graphc.ir import DType
from graphc.runtime.jit import JitModule, jit_compile

BINDING = "graphc_mpi_allreduce"
START = "graphc_mpi_iallreduce"
WAIT = "graphc_mpi_wait"
TEST = "graphc_mpi_test"
_STATUS_BYTES = 256  # room for any MPI_Status (MPICH: 20 bytes, Open MPI: 24)
_INT_MAX = 2**31 - 1


class CommStruct(ctypes.Structure):
    """``graphc_comm`` (see `codegen/opaque/collective.py`)."""

    _fields_ = [("allreduce", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("size", ctypes.c_int64), ("iallreduce", ctypes.c_void_p),
                ("wait", ctypes.c_void_p), ("test", ctypes.c_void_p)]


class _MpiContext(ctypes.Structure):
    """What the binding reads: MPI_Allreduce and the handles, each widened to 64 bits."""

    _fields_ = [("mpi_allreduce", ctypes.c_void_p), ("float32", ctypes.c_uint64),
                ("float64", ctypes.c_uint64), ("sum", ctypes.c_uint64),
                ("comm", ctypes.c_uint64), ("mpi_iallreduce", ctypes.c_void_p),
                ("mpi_wait", ctypes.c_void_p), ("mpi_wtime", ctypes.c_void_p),
                ("status", ctypes.c_void_p), ("waited", ctypes.c_double),
                ("mpi_test", ctypes.c_void_p)]


_OFFSETS = {name: getattr(_MpiContext, name).offset for name, _ in _MpiContext._fields_}


_BOUND: tuple[World, CommStruct, _MpiContext, JitModule, ctypes.Array] | None = None


def wait_seconds() -> float:
    """Seconds this process's compiled steps have spent in MPI_Wait and the blocking
    MPI_Allreduce so far (0.0 before any, or in a world of one)."""
    return float(_BOUND[2].waited) if _BOUND is not None else 0.0


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
        functions = [ctypes.cast(getattr(library, f"MPI_{name}"), ctypes.c_void_p).value
                     for name in ("Allreduce", "Iallreduce", "Wait", "Wtime", "Test")]
    except (OSError, AttributeError) as exc:
        raise GraphcError(f"cannot find MPI_Allreduce, MPI_Iallreduce, MPI_Wait or "
                          f"MPI_Wtime in the MPI library mpi4py loaded ({exc})",
                          op="allreduce") from None
    widths = (MPI._sizeof(MPI.Datatype), MPI._sizeof(MPI.Op), MPI._sizeof(MPI.Comm))
    if MPI._sizeof(MPI.Request) > 8 or MPI._sizeof(MPI.Status) > _STATUS_BYTES:
        raise GraphcError("this MPI's MPI_Request or MPI_Status is larger than graphc "
                          "reserves for it", op="allreduce")
    jit = jit_compile(_binding_ir(*widths), symbols=[BINDING, START, WAIT, TEST])
    status = ctypes.create_string_buffer(_STATUS_BYTES)
    context = _MpiContext(functions[0], _unsigned(MPI._handleof(MPI.FLOAT)),
                          _unsigned(MPI._handleof(MPI.DOUBLE)), _unsigned(MPI._handleof(MPI.SUM)),
                          _unsigned(MPI._handleof(w.comm)), functions[1], functions[2],
                          functions[3], ctypes.addressof(status), 0.0, functions[4])
    comm = CommStruct(jit.address(BINDING), ctypes.addressof(context), w.size,
                      jit.address(START), jit.address(WAIT), jit.address(TEST))
    return w, comm, context, jit, status


def _unsigned(handle: int) -> int:
    return handle % 2**64  # a pointer handle may come back negative on some builds


def _binding_ir(datatype_bytes: int, op_bytes: int, comm_bytes: int) -> str:
    """The three functions of the communicator (`codegen/opaque/collective.py`) calling
    MPI through the context (`_MpiContext`)."""
    module = ir.Module("graphc_mpi")
    dt_t, op_t, comm_t = (ir.IntType(8 * n) for n in (datatype_bytes, op_bytes, comm_bytes))
    f64 = ir.DoubleType()
    wtime_type = ir.FunctionType(f64, [])

    def field(b: ir.IRBuilder, ctx: ir.Value, name: str, typ: ir.Type = I64) -> ir.Value:
        ptr = b.gep(ctx, [ir.Constant(I64, _OFFSETS[name])], inbounds=True, source_etype=I8)
        return b.load(ptr, typ=typ, align=8)

    def timed(b: ir.IRBuilder, ctx: ir.Value, call: Callable[[], ir.Value]) -> ir.Value:
        """`call()`, its duration (MPI_Wtime) added to the context's `waited`."""
        wtime = field(b, ctx, "mpi_wtime", PTR)
        t0 = call_pointer(b, wtime, wtime_type, [])
        status = call()
        spent = b.fsub(call_pointer(b, wtime, wtime_type, []), t0)
        ptr = b.gep(ctx, [ir.Constant(I64, _OFFSETS["waited"])], inbounds=True,
                    source_etype=I8)
        b.store(b.fadd(b.load(ptr, typ=f64, align=8), spent), ptr, align=8)
        return status

    def reduction(name: str, blocking: bool) -> None:
        fn = ir.Function(module, ALLREDUCE_TYPE if blocking else IALLREDUCE_TYPE, name)
        ctx, send, recv, count, dtype, op = fn.args[:6]
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        # MPI counts are ints: a larger tensor (or an op we did not bind) is an error.
        bad = b.or_(b.icmp_signed(">", count, ir.Constant(I64, _INT_MAX)),
                    b.icmp_signed("!=", op, ir.Constant(I32, OP_SUM)))
        with b.if_then(bad, likely=False):
            b.ret(ir.Constant(I32, -1))
        is_f64 = b.icmp_signed("==", dtype, ir.Constant(I32, DTYPE_CODES[DType.float64]))
        datatype = b.select(is_f64, field(b, ctx, "float64"), field(b, ctx, "float32"))
        args = [send, recv, b.trunc(count, I32), _narrow(b, datatype, dt_t),
                _narrow(b, field(b, ctx, "sum"), op_t), _narrow(b, field(b, ctx, "comm"), comm_t)]
        params = [PTR, PTR, I32, dt_t, op_t, comm_t]
        if blocking:
            target = field(b, ctx, "mpi_allreduce", PTR)
            status = timed(b, ctx, lambda: call_pointer(
                b, target, ir.FunctionType(I32, params), args))
        else:
            status = call_pointer(b, field(b, ctx, "mpi_iallreduce", PTR),
                                  ir.FunctionType(I32, [*params, PTR]), [*args, fn.args[6]])
        b.ret(status)

    reduction(BINDING, True)
    reduction(START, False)
    fn = ir.Function(module, WAIT_TYPE, WAIT)
    ctx, request = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    wait = field(b, ctx, "mpi_wait", PTR)
    b.ret(timed(b, ctx, lambda: call_pointer(b, wait, ir.FunctionType(I32, [PTR, PTR]),
                                             [request, field(b, ctx, "status", PTR)])))
    # MPI_Test(request, &flag, status): progress only; a completed request becomes
    # MPI_REQUEST_NULL, which the later MPI_Wait returns at once for.
    fn = ir.Function(module, WAIT_TYPE, TEST)
    ctx, request = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    flag = b.alloca(I32)
    test = field(b, ctx, "mpi_test", PTR)
    b.ret(call_pointer(b, test, ir.FunctionType(I32, [PTR, PTR, PTR]),
                       [request, flag, field(b, ctx, "status", PTR)]))
    return str(module)


def _narrow(b: ir.IRBuilder, value: ir.Value, typ: ir.IntType) -> ir.Value:
    return value if typ.width == 64 else b.trunc(value, typ)
