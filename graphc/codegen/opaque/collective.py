"""The allreduce kernel: a call through the module's communicator slot.

Every module with an allreduce defines one global, ``graphc_comm`` (external linkage, so an
exported library exposes it): a pointer to a communicator, null until the host binds one.
Its C layout, the ABI between generated code and whoever binds it:

    typedef struct graphc_comm {
        /* out = sum over ranks of `send` (count elements of `dtype`); 0 on success */
        int32_t (*allreduce)(void *ctx, const void *send, void *recv, int64_t count,
                             int32_t dtype, int32_t op);
        void *ctx;       /* passed back to every function */
        int64_t size;    /* number of ranks */
        /* optional (may be NULL: the step then reduces each bucket blocking): start the
           same reduction and store its handle in *request (at most 8 bytes); finish it */
        int32_t (*iallreduce)(void *ctx, const void *send, void *recv, int64_t count,
                              int32_t dtype, int32_t op, void *request);
        int32_t (*wait)(void *ctx, void *request);
        /* optional (may be NULL): let a started reduction progress without blocking (an
           MPI_Test); called between the kernels that run while a bucket is in flight */
        int32_t (*test)(void *ctx, void *request);
    } graphc_comm;
    extern graphc_comm *graphc_comm;   /* the slot */

dtype: `DTYPE_CODES`; op: `OP_SUM` (the only one for now). Gradient buckets
(`passes/allreduce_buckets.py`) call `iallreduce` after the kernel writing their last
gradient and `wait` before the first kernel reading a result (`emit_bucket_start`,
`emit_bucket_wait`, called by the entry point in `codegen/module.py`); other allreduces
are kernels calling `allreduce`. In the JIT, `runtime/mpi.py` binds
the slot to MPI_Allreduce with mpi4py's handles; an exported library takes it from its caller
(so the library still needs only libc). With the slot null the kernel copies (a world of one
process). "mean" divides the sum by `size` after the call: a division, as the reference does,
so both round alike. A nonzero return stops the step before any update
(`Lowering.failure`). `send` and `recv` never alias: the op does not declare `overwrites`, so
the memory planner gives its result a buffer of its own.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.llvm_types import I1, I8, I32, I64, PTR, VOID, compute_type, intrinsic
from graphc.codegen.loops import for_range
from graphc.codegen.threadpool import call_pointer
from graphc.ir import DType, Node
from graphc.passes.allreduce_buckets import Bucket

COMM_SLOT = "graphc_comm"
DTYPE_CODES = {DType.float32: 1, DType.float64: 2}
OP_SUM = 0
# Byte offsets of the communicator's fields (x86-64 / aarch64 LP64 layout).
_FN, _CTX, _SIZE, _IFN, _WAIT, _TEST = 0, 8, 16, 24, 32, 40
ALLREDUCE_TYPE = ir.FunctionType(I32, [PTR, PTR, PTR, I64, I32, I32])
IALLREDUCE_TYPE = ir.FunctionType(I32, [PTR, PTR, PTR, I64, I32, I32, PTR])
WAIT_TYPE = ir.FunctionType(I32, [PTR, PTR])


def comm_slot(module: ir.Module) -> ir.GlobalVariable:
    """The module's ``graphc_comm`` pointer (defined once, null-initialized)."""
    slot = module.globals.get(COMM_SLOT)
    if slot is None:
        slot = ir.GlobalVariable(module, PTR, COMM_SLOT)
        slot.initializer = ir.Constant(PTR, None)
        slot.align = 8
    return slot


def _field(b: ir.IRBuilder, base: ir.Value, offset: int, typ: ir.Type) -> ir.Value:
    ptr = b.gep(base, [ir.Constant(I64, offset)], inbounds=True, source_etype=I8)
    return b.load(ptr, typ=typ, align=8)


def _allreduce(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    b = ctx.b
    count = math.prod(node.shape)
    if count == 0:
        return  # nothing to reduce, and every rank agrees on that statically
    src, out = ctx.ptr(node.inputs[0]), ctx.out
    ftype = compute_type(node.dtype)
    # Atomic-free plain load: the host writes the slot before any call, never during one.
    comm = b.load(comm_slot(ctx.module), typ=PTR, align=8)
    single = b.icmp_unsigned("==", comm, ir.Constant(PTR, None))
    with b.if_else(single) as (alone, together):
        with alone:
            memcpy = intrinsic(ctx.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1],
                               [PTR, PTR, I64])
            b.call(memcpy, [out, src, ir.Constant(I64, count * node.dtype.itemsize),
                            ir.Constant(I1, 0)])
        with together:
            fn = _field(b, comm, _FN, PTR)
            user = _field(b, comm, _CTX, PTR)
            status = call_pointer(b, fn, ALLREDUCE_TYPE, [
                user, src, out, ir.Constant(I64, count),
                ir.Constant(I32, DTYPE_CODES[node.dtype]), ir.Constant(I32, OP_SUM)])
            failed = b.icmp_signed("!=", status, ir.Constant(I32, 0))
            ctx.report_error(failed)
            if node.attrs["reduction"] == "mean":
                size = b.sitofp(_field(b, comm, _SIZE, I64), ftype)
                with for_range(b, 0, count, 1, name="m") as i:
                    p = b.gep(out, [i], inbounds=True, source_etype=ftype)
                    b.store(b.fdiv(b.load(p, typ=ftype, align=node.dtype.itemsize), size), p,
                            align=node.dtype.itemsize)


def _failure(node: Node) -> str:
    return (f"allreduce of %{node.name}: the communicator's allreduce failed (MPI returned "
            "an error, or the tensor has more than 2**31 - 1 elements)")


LOWERINGS = (Lowering("allreduce", _allreduce, failure=_failure),)


def _at(b: ir.IRBuilder, arena: ir.Value, offset: int) -> ir.Value:
    return b.gep(arena, [ir.Constant(I64, offset)], inbounds=True, source_etype=I8)


def _status_var(b: ir.IRBuilder) -> ir.Value:
    """A zeroed i32 in the entry block (mem2reg promotes it)."""
    block = b.block
    with b.goto_entry_block():
        var = b.alloca(I32, name="bucket.status")
    b.position_at_end(block)
    b.store(ir.Constant(I32, 0), var)
    return var


def emit_bucket_start(b: ir.IRBuilder, module: ir.Module, bucket: Bucket,
                      arena: ir.Value) -> ir.Value:
    """Start reducing `bucket` (arena offsets from the memory plan); an i1: it failed.

    Alone (null slot) the results are a copy of the gradients; without `iallreduce` the
    bucket is reduced here, blocking."""
    send, recv = _at(b, arena, bucket.send), _at(b, arena, bucket.recv)
    request = _at(b, arena, bucket.request)
    count, dtype = ir.Constant(I64, bucket.count), ir.Constant(I32, DTYPE_CODES[bucket.dtype])
    status = _status_var(b)
    comm = b.load(comm_slot(module), typ=PTR, align=8)
    with b.if_else(b.icmp_unsigned("==", comm, ir.Constant(PTR, None))) as (alone, together):
        with alone:
            memcpy = intrinsic(module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1],
                               [PTR, PTR, I64])
            b.call(memcpy, [recv, send, ir.Constant(I64, bucket.nbytes), ir.Constant(I1, 0)])
        with together:
            user = _field(b, comm, _CTX, PTR)
            start = _field(b, comm, _IFN, PTR)
            blocking = b.icmp_unsigned("==", start, ir.Constant(PTR, None))
            with b.if_else(blocking) as (now, later):
                with now:
                    b.store(call_pointer(b, _field(b, comm, _FN, PTR), ALLREDUCE_TYPE, [
                        user, send, recv, count, dtype, ir.Constant(I32, OP_SUM)]), status)
                with later:
                    b.store(call_pointer(b, start, IALLREDUCE_TYPE, [
                        user, send, recv, count, dtype, ir.Constant(I32, OP_SUM), request]),
                        status)
    return b.icmp_signed("!=", b.load(status, typ=I32), ir.Constant(I32, 0))


def emit_bucket_wait(b: ir.IRBuilder, module: ir.Module, bucket: Bucket,
                     arena: ir.Value) -> ir.Value:
    """Finish `bucket` and divide a "mean" by the number of ranks; an i1: it failed."""
    recv, request = _at(b, arena, bucket.recv), _at(b, arena, bucket.request)
    status = _status_var(b)
    comm = b.load(comm_slot(module), typ=PTR, align=8)
    with b.if_then(b.icmp_unsigned("!=", comm, ir.Constant(PTR, None))):
        wait = _field(b, comm, _WAIT, PTR)
        started = b.icmp_unsigned("!=", _field(b, comm, _IFN, PTR), ir.Constant(PTR, None))
        with b.if_then(started):
            b.store(call_pointer(b, wait, WAIT_TYPE, [_field(b, comm, _CTX, PTR), request]),
                    status)
        if bucket.reduction == "mean":
            ftype = compute_type(bucket.dtype)
            size = b.sitofp(_field(b, comm, _SIZE, I64), ftype)
            align = bucket.dtype.itemsize
            with for_range(b, 0, bucket.count, 1, name="m") as i:
                p = b.gep(recv, [i], inbounds=True, source_etype=ftype)
                b.store(b.fdiv(b.load(p, typ=ftype, align=align), size), p, align=align)
    return b.icmp_signed("!=", b.load(status, typ=I32), ir.Constant(I32, 0))


def emit_bucket_poke(b: ir.IRBuilder, module: ir.Module, bucket: Bucket,
                     arena: ir.Value) -> ir.Value:
    """Let `bucket`'s reduction progress (`test`), if it was started non-blocking and the
    communicator has `test`: MPI implementations without a progress thread move a
    non-blocking collective forward only inside MPI calls, so without these calls between
    the backward kernels most of the transfer would happen in `wait`. An i1: it failed."""
    request = _at(b, arena, bucket.request)
    status = _status_var(b)
    comm = b.load(comm_slot(module), typ=PTR, align=8)
    with b.if_then(b.icmp_unsigned("!=", comm, ir.Constant(PTR, None))):
        test = _field(b, comm, _TEST, PTR)
        usable = b.and_(
            b.icmp_unsigned("!=", _field(b, comm, _IFN, PTR), ir.Constant(PTR, None)),
            b.icmp_unsigned("!=", test, ir.Constant(PTR, None)))
        with b.if_then(usable):
            b.store(call_pointer(b, test, WAIT_TYPE, [_field(b, comm, _CTX, PTR), request]),
                    status)
    return b.icmp_signed("!=", b.load(status, typ=I32), ir.Constant(I32, 0))
