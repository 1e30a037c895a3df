"""The process's worker pools: one per thread count, shared by every JIT-compiled program.

A program compiled by `gc.compile` with `threads=t > 1` does not carry a pool of its own: its
parallel kernels call `graphc_process_parallel_for_<t>` (`codegen.threadpool.
declare_process_pool`), which `ensure(t)` defines once per process: the pool's code
(`codegen.threadpool.define_pool`) compiled into an engine of its own and registered in the
process's symbol table, where the loader of every program finds it.

Why one pool per process and not one per program: idle workers spin for about 2 ms before
they sleep (waking a sleeping one costs 0.2-0.5 ms on a VM), so with a pool per program, the
workers of the program that ran last would keep spinning on the cores that the next program
(an evaluation graph beside a training step, a generator's prefill then decode) needs. A
shared pool has one set of workers, so programs of one thread count never oversubscribe the
cores (programs of different thread counts still have a pool each) and a second program
finds the workers awake. Two Python threads calling programs of the same thread count at
once share it: one gets the workers, the other runs its tasks on its own thread
(`threadpool`: correct, never blocked).

The pools live until the interpreter exits; `atexit` stops and joins their workers before
the engines holding their code can be freed. A forked child resets every pool to a stopped
one (the parent's workers are not in the child), so its first parallel region starts
workers of its own. Exported libraries embed a pool of their own (they must need nothing
but libc).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm
import llvmlite.ir as ir

from graphc.codegen.target import host_target
from graphc.codegen.threadpool import POOL_BYTES, define_pool, process_pool_symbols
from graphc.runtime.jit import CompileStats, JitModule, load_object, optimize_and_emit

_SHUTDOWN_TYPE = ctypes.CFUNCTYPE(None)


@dataclass
class _Pool:
    jit: JitModule  # owns the pool's code: kept for the life of the process
    shutdown: ctypes._CFuncPtr
    state: int  # the address of its POOL_BYTES of state


_pools: dict[int, _Pool] = {}
_lock = threading.Lock()


def ensure(threads: int) -> None:
    """Define the process pool of `threads` threads (once; a no-op for `threads` <= 1).

    Its workers start at the first parallel region that uses it, not here."""
    if threads <= 1 or threads in _pools:
        return
    with _lock:
        if threads in _pools:
            return
        run, stop, state = process_pool_symbols(threads)
        module = ir.Module(name=f"graphc.process_pool.{threads}")
        target = host_target()
        module.triple = target.triple
        define_pool(module, threads, (run, stop), state)
        obj = optimize_and_emit(str(module), target, 2, CompileStats())
        jit = load_object(obj, target, 2, (run, stop))
        llvm.add_symbol(run, jit.address(run))
        _pools[threads] = _Pool(jit, _SHUTDOWN_TYPE(jit.address(stop)),
                                jit.engine.get_global_value_address(state))


@atexit.register
def _stop_all() -> None:
    """Join every pool's workers (at interpreter exit, before any engine is freed)."""
    with _lock:
        for pool in _pools.values():
            pool.shutdown()


def _reset_all() -> None:
    """In a forked child: the parent's workers do not exist here, and its pools' state may
    be mid-region (a fork from another Python thread): make every pool a stopped one (all
    zeros: a fresh mutex and condition variable), which its next region starts with
    workers of the child's own. The lock may have been held by a parent thread inside
    `ensure` at the fork, and that thread is not here to release it: a new one."""
    global _lock
    _lock = threading.Lock()
    for pool in _pools.values():
        ctypes.memset(pool.state, 0, POOL_BYTES)


os.register_at_fork(after_in_child=_reset_all)
