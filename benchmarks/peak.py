"""The machine's float32 FMA peak on one core, measured (not looked up), so a run's rates can
be quoted as a fraction of the peak of the same run on the same machine.

A register-only loop, JIT-compiled with llvmlite for the host CPU: ACCUMULATORS independent
vector accumulators of the widest float32 vector the target has, each updated by `llvm.fma`
per iteration (enough independent chains to cover the FMA latency on every x86 core we know).
No memory traffic, so the loop runs at the FMA units' throughput. The median of repeated timed
runs is reported as GFLOP/s (2 flops per lane per FMA).
"""

from __future__ import annotations

import ctypes
import statistics
import time

import llvmlite.binding as llvm
import llvmlite.ir as ir

ACCUMULATORS = 12
ITERATIONS = 1 << 22


def _module(lanes: int) -> str:
    f32 = ir.FloatType()
    vt = ir.VectorType(f32, lanes)
    i64 = ir.IntType(64)
    module = ir.Module("peak")
    fma = ir.Function(module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(module, ir.FunctionType(f32, [i64]), "peak")
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    a = ir.Constant(vt, [1.0000001] * lanes)
    c = ir.Constant(vt, [1e-7] * lanes)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), entry)
    accs = []
    for k in range(ACCUMULATORS):
        phi = b.phi(vt)
        phi.add_incoming(ir.Constant(vt, [float(k)] * lanes), entry)
        accs.append(phi)
    new = [b.call(fma, [acc, a, c]) for acc in accs]
    for phi, v in zip(accs, new):
        phi.add_incoming(v, loop)
    nxt = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    total = new[0]
    for v in new[1:]:
        total = b.fadd(total, v)
    b.ret(b.extract_element(total, ir.Constant(ir.IntType(32), 0)))
    return str(module)


def fp32_peak(repeats: int = 7) -> float:
    """GFLOP/s of float32 FMAs on the calling thread's core (median of `repeats` runs)."""
    from graphc.codegen.target import create_target_machine, host_target

    target = host_target()
    machine = create_target_machine(target, 2, jit=True)
    lanes = target.lanes(4)
    mod = llvm.parse_assembly(_module(lanes))
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, machine)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(engine.get_function_address("peak"))
    fn(ITERATIONS // 8)  # warm up (clock ramp)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(ITERATIONS)
        elapsed = time.perf_counter() - start
        rates.append(2 * lanes * ACCUMULATORS * ITERATIONS / elapsed / 1e9)
    return statistics.median(rates)


if __name__ == "__main__":
    print(f"{fp32_peak():.1f}")
