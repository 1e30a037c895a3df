"""A persistent worker pool in generated code (pthreads, spin-then-sleep).

The same code serves two homes. An exported library defines a pool of its own in its module
(`ensure_pool`: it links nothing but libc's pthreads). A JIT program only declares the pool
of its thread count (`declare_process_pool`), which `runtime.process_pool` defines once per
process (`define_pool` under `process_pool_symbols`), so every program of a process shares
one set of workers. The functions, under their exported library names:

    void graphc_parallel_for(void (*fn)(void *ctx, int64_t task), void *ctx, int64_t n)
        Runs fn(ctx, t) for t in [0, n) on the pool and the calling thread; returns when all
        tasks are done. If another thread is already running a region on this pool, the call
        runs its tasks serially instead (correct, never blocked).
    void graphc_pool_shutdown(void)
        Stops and joins the workers (an exported library calls it from its destructor,
        `runtime.process_pool` at interpreter exit). The next parallel_for restarts them.

Protocol (all shared fields are accessed with sequentially consistent atomics):
- `gen` counts region transitions; it is odd while the master sets a region up and even
  while the region is open. A worker that sees a new even `gen` increments `active`, checks
  `gen` again (retreating if it moved), then takes task indices from `next` with fetch-add
  until they run out, counting finished tasks in `done`.
- The master opens a region: gen += 1 (odd); wait for active == 0 (late workers of the
  previous region retreat or finish); store fn, ctx, n, done = 0, next = 0; gen += 1 (even);
  broadcast the condition variable; run tasks itself; wait for done == n and active == 0.
- Idle workers spin (with `pause`) for SPIN_TICKS of the time-stamp counter, then sleep on
  a condition variable; the master's broadcast holds the mutex, so no wake-up is lost.
Which task runs on which thread varies, but every task is the same computation, so results
do not depend on the thread count as long as tasks write disjoint outputs (they do: the
kernels split work by output ranges).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.llvm_types import I1, I8, I32, I64, PTR, VOID, intrinsic

POOL = "graphc.pool"
PARALLEL_FOR = "graphc_parallel_for"
SHUTDOWN = "graphc_pool_shutdown"
WORKER = "graphc.pool.worker"
MAX_WORKERS = 63
# How long an idle worker spins before it sleeps, in time-stamp-counter ticks (about 2 ms at
# the 2-4 GHz TSC rates of x86 servers). Waking a sleeping worker costs 0.2-0.5 ms on the VMs
# we measured (the vCPU is halted), which made 2-thread calls after a short pause in the
# caller run at 1-thread speed; a worker that is still spinning joins within a microsecond.
SPIN_TICKS = 6_000_000
# Pauses between two reads of the time-stamp counter.
SPIN_BATCH = 64

# Byte offsets of the pool's fields (counters on their own cache lines).
_STATE, _NWORK, _SHUTDOWN, _BUSY = 0, 4, 8, 12
_FN, _CTX, _NTASKS = 16, 24, 32
_GEN, _NEXT, _DONE, _ACTIVE = 64, 128, 192, 256
_MUTEX, _COND, _THREADS = 320, 384, 448  # glibc x86-64: mutex 40 B, cond 48 B
_SIZE = _THREADS + 8 * MAX_WORKERS
POOL_BYTES = _SIZE

TASK_FN = ir.FunctionType(VOID, [PTR, I64])
TASK_FOR_FN = ir.FunctionType(VOID, [PTR, PTR, I64])  # parallel_for(task, ctx, n)


class _IndirectCallee:
    """A function pointer with a known function type, callable with IRBuilder.call.

    llvmlite's `call` reads the callee's function type from a typed pointer, which opaque
    pointers no longer have; this carries the type beside the pointer value.
    """

    def __init__(self, pointer: ir.Value, fnty: ir.FunctionType):
        self.pointer = pointer
        self.function_type = fnty
        self.type = pointer.type

    def get_reference(self) -> str:
        return self.pointer.get_reference()

    def __str__(self) -> str:
        return f"{self.type} {self.get_reference()}"


def store_atomic(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, align: int) -> None:
    """A seq_cst atomic store (llvmlite's store_atomic assumes typed pointers)."""
    b._insert(ir.instructions.StoreAtomicInstr(b.block, value, ptr, "seq_cst", align))


def call_pointer(b: ir.IRBuilder, pointer: ir.Value, fnty: ir.FunctionType,
                 args: list[ir.Value]) -> ir.Value:
    """Call through a function pointer of type `fnty`."""
    return b.call(_IndirectCallee(pointer, fnty), args)  # type: ignore[arg-type]


def process_pool_symbols(threads: int) -> tuple[str, str, str]:
    """The names under which the process pool of `threads` threads (`runtime.process_pool`)
    exports its `parallel_for`, its shutdown and its state."""
    return (f"graphc_process_parallel_for_{threads}", f"graphc_process_pool_shutdown_{threads}",
            f"graphc_process_pool_state_{threads}")


def declare_process_pool(module: ir.Module, threads: int) -> None:
    """Make `module`'s parallel kernels call the process's pool of `threads` threads (an
    external function the loader resolves) instead of a pool of the module's own."""
    ir.Function(module, TASK_FOR_FN, process_pool_symbols(threads)[0])


def ensure_pool(module: ir.Module, threads: int) -> ir.Function:
    """The `parallel_for` that `module`'s kernels call: the process pool's if the module
    declares it (`declare_process_pool`), else a pool of the module's own, defined once."""
    existing = module.globals.get(process_pool_symbols(threads)[0]) \
        or module.globals.get(PARALLEL_FOR)
    if existing is not None:
        return existing
    define_pool(module, threads)
    return module.globals[PARALLEL_FOR]


def define_pool(module: ir.Module, threads: int,
                names: tuple[str, str] = (PARALLEL_FOR, SHUTDOWN),
                state: str | None = None) -> None:
    """Define a pool of `threads` threads in `module`, its `parallel_for` and shutdown
    exported as `names`; its state (POOL_BYTES; all zeros is a stopped pool with a fresh
    mutex and condition variable) is internal, or exported as `state` (for a reset after
    a fork)."""
    pool = ir.GlobalVariable(module, ir.ArrayType(I8, _SIZE), state or POOL)
    if state is None:
        pool.linkage = "internal"
    pool.align = 64
    pool.initializer = ir.Constant(ir.ArrayType(I8, _SIZE), None)
    _Emitter(module, pool, max(1, min(threads, MAX_WORKERS + 1)), names).emit()


class _Emitter:
    def __init__(self, module: ir.Module, pool: ir.GlobalVariable, threads: int,
                 names: tuple[str, str]):
        self.m = module
        self.pool = pool
        self.threads = threads
        self.parallel_for_name, self.shutdown_name = names
        self.ext = {
            "pthread_create": ir.FunctionType(I32, [PTR, PTR, PTR, PTR]),
            "pthread_join": ir.FunctionType(I32, [I64, PTR]),
            "pthread_mutex_lock": ir.FunctionType(I32, [PTR]),
            "pthread_mutex_unlock": ir.FunctionType(I32, [PTR]),
            "pthread_cond_wait": ir.FunctionType(I32, [PTR, PTR]),
            "pthread_cond_broadcast": ir.FunctionType(I32, [PTR]),
        }

    # --- helpers ------------------------------------------------------------------------
    def call(self, b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
        fn = self.m.globals.get(name)
        if fn is None:
            fn = ir.Function(self.m, self.ext[name], name)
        return b.call(fn, args)

    def field(self, b: ir.IRBuilder, offset: int) -> ir.Value:
        return b.gep(self.pool, [ir.Constant(I64, offset)], inbounds=True, source_etype=I8)

    def load(self, b: ir.IRBuilder, offset: int, typ: ir.Type) -> ir.Value:
        return b.load_atomic(self.field(b, offset), "seq_cst", typ.width // 8
                             if isinstance(typ, ir.IntType) else 8, typ=typ)

    def store(self, b: ir.IRBuilder, offset: int, value: ir.Value) -> None:
        typ = value.type
        store_atomic(b, value, self.field(b, offset),
                     typ.width // 8 if isinstance(typ, ir.IntType) else 8)

    def rmw(self, b: ir.IRBuilder, op: str, offset: int, value: ir.Value) -> ir.Value:
        return b.atomic_rmw(op, self.field(b, offset), value, "seq_cst")

    def pause(self, b: ir.IRBuilder) -> None:
        b.call(intrinsic(self.m, "llvm.x86.sse2.pause", VOID, [], []), [])

    def ticks(self, b: ir.IRBuilder) -> ir.Value:
        """The time-stamp counter (`rdtsc`: constant-rate on every x86 CPU we target)."""
        return b.call(intrinsic(self.m, "llvm.readcyclecounter", I64, [], []), [])

    def function(self, name: str, fnty: ir.FunctionType, internal: bool) -> ir.Function:
        fn = ir.Function(self.m, fnty, name)
        if internal:
            fn.linkage = "internal"
        fn.attributes.add("nounwind")
        return fn

    # --- the pieces ---------------------------------------------------------------------
    def emit(self) -> None:
        self.run_tasks = self._emit_run_tasks()
        self._emit_worker()
        self._emit_start()
        self._emit_parallel_for()
        self._emit_shutdown()

    def _emit_run_tasks(self) -> ir.Function:
        """Take tasks from `next` until none are left; count them in `done`."""
        fn = self.function("graphc.pool.run_tasks", ir.FunctionType(VOID, []), True)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        loop = fn.append_basic_block("loop")
        work = fn.append_basic_block("work")
        out = fn.append_basic_block("out")
        b.branch(loop)
        b.position_at_end(loop)
        t = self.rmw(b, "add", _NEXT, ir.Constant(I64, 1))
        n = self.load(b, _NTASKS, I64)
        b.cbranch(b.icmp_signed("<", t, n), work, out)
        b.position_at_end(work)
        task_fn = b.load_atomic(self.field(b, _FN), "seq_cst", 8, typ=PTR)
        ctx = b.load_atomic(self.field(b, _CTX), "seq_cst", 8, typ=PTR)
        call_pointer(b, task_fn, TASK_FN, [ctx, t])
        self.rmw(b, "add", _DONE, ir.Constant(I64, 1))
        b.branch(loop)
        b.position_at_end(out)
        b.ret_void()
        return fn

    def _emit_worker(self) -> None:
        fn = self.function(WORKER, ir.FunctionType(PTR, [PTR]), True)
        entry = fn.append_basic_block("entry")
        wait = fn.append_basic_block("wait")
        spin = fn.append_basic_block("spin")
        sleep = fn.append_basic_block("sleep")
        sleep_loop = fn.append_basic_block("sleep.loop")
        sleep_wait = fn.append_basic_block("sleep.wait")
        sleep_done = fn.append_basic_block("sleep.done")
        join = fn.append_basic_block("join")
        retreat = fn.append_basic_block("retreat")
        run = fn.append_basic_block("run")
        exit_ = fn.append_basic_block("exit")
        b = ir.IRBuilder(entry)
        local = b.alloca(I64)
        spins = b.alloca(I32)
        since = b.alloca(I64)  # the time-stamp counter when this worker last went idle
        b.store(self.load(b, _GEN, I64), local)
        b.store(ir.Constant(I32, 0), spins)
        b.store(self.ticks(b), since)
        b.branch(wait)

        # wait: a new, even generation -> join; shutdown -> exit; else spin, then sleep.
        b.position_at_end(wait)
        g = self.load(b, _GEN, I64)
        fresh = b.and_(b.icmp_unsigned("!=", g, b.load(local)),
                       b.icmp_unsigned("==", b.and_(g, ir.Constant(I64, 1)),
                                       ir.Constant(I64, 0)))
        stop = b.icmp_unsigned("!=", self.load(b, _SHUTDOWN, I32), ir.Constant(I32, 0))
        not_fresh = fn.append_basic_block("not_fresh")
        b.cbranch(fresh, join, not_fresh)
        b.position_at_end(not_fresh)
        b.cbranch(stop, exit_, spin)

        # spin: pause; every SPIN_BATCH pauses, sleep if idle for SPIN_TICKS.
        b.position_at_end(spin)
        count = b.add(b.load(spins), ir.Constant(I32, 1))
        b.store(count, spins)
        check = b.icmp_unsigned("==", b.and_(count, ir.Constant(I32, SPIN_BATCH - 1)),
                                ir.Constant(I32, 0))
        spin_check = fn.append_basic_block("spin.check")
        spin_more = fn.append_basic_block("spin.more")
        b.cbranch(check, spin_check, spin_more)
        b.position_at_end(spin_check)
        idle = b.sub(self.ticks(b), b.load(since))
        b.cbranch(b.icmp_unsigned("<", idle, ir.Constant(I64, SPIN_TICKS)), spin_more, sleep)
        b.position_at_end(spin_more)
        self.pause(b)
        b.branch(wait)

        b.position_at_end(sleep)
        mutex, cond = self.field(b, _MUTEX), self.field(b, _COND)
        self.call(b, "pthread_mutex_lock", [mutex])
        b.branch(sleep_loop)
        b.position_at_end(sleep_loop)
        g2 = self.load(b, _GEN, I64)
        unchanged = b.or_(b.icmp_unsigned("==", g2, b.load(local)),
                          b.icmp_unsigned("!=", b.and_(g2, ir.Constant(I64, 1)),
                                          ir.Constant(I64, 0)))
        running = b.icmp_unsigned("==", self.load(b, _SHUTDOWN, I32), ir.Constant(I32, 0))
        b.cbranch(b.and_(unchanged, running), sleep_wait, sleep_done)
        b.position_at_end(sleep_wait)
        self.call(b, "pthread_cond_wait", [cond, mutex])
        b.branch(sleep_loop)
        b.position_at_end(sleep_done)
        self.call(b, "pthread_mutex_unlock", [mutex])
        b.store(ir.Constant(I32, 0), spins)
        b.store(self.ticks(b), since)
        b.branch(wait)

        # join: announce, re-check the generation, then run tasks.
        b.position_at_end(join)
        self.rmw(b, "add", _ACTIVE, ir.Constant(I64, 1))
        same = b.icmp_unsigned("==", self.load(b, _GEN, I64), g)
        b.cbranch(same, run, retreat)
        b.position_at_end(retreat)
        self.rmw(b, "sub", _ACTIVE, ir.Constant(I64, 1))
        b.branch(wait)
        b.position_at_end(run)
        b.store(g, local)
        b.call(self.run_tasks, [])
        self.rmw(b, "sub", _ACTIVE, ir.Constant(I64, 1))
        b.store(ir.Constant(I32, 0), spins)
        b.store(self.ticks(b), since)
        b.branch(wait)

        b.position_at_end(exit_)
        b.ret(ir.Constant(PTR, None))

    def _emit_start(self) -> None:
        """Start the workers once (state: 0 stopped, 1 starting, 2 running)."""
        fn = self.function("graphc.pool.start", ir.FunctionType(VOID, []), True)
        entry = fn.append_basic_block("entry")
        try_start = fn.append_basic_block("try")
        create = fn.append_basic_block("create")
        wait = fn.append_basic_block("wait")
        done = fn.append_basic_block("done")
        b = ir.IRBuilder(entry)
        state = self.load(b, _STATE, I32)
        b.cbranch(b.icmp_unsigned("==", state, ir.Constant(I32, 2)), done, try_start)
        b.position_at_end(try_start)
        pair = b.cmpxchg(self.field(b, _STATE), ir.Constant(I32, 0), ir.Constant(I32, 1),
                         "seq_cst", "seq_cst")
        won = b.extract_value(pair, 1)
        b.cbranch(won, create, wait)
        b.position_at_end(wait)  # another thread is starting the pool
        self.pause(b)
        again = self.load(b, _STATE, I32)
        b.cbranch(b.icmp_unsigned("==", again, ir.Constant(I32, 2)), done, wait)
        b.position_at_end(create)
        workers = self.threads - 1
        self.store(b, _SHUTDOWN, ir.Constant(I32, 0))
        self.store(b, _NWORK, ir.Constant(I32, workers))
        worker = self.m.globals[WORKER]
        for i in range(workers):
            slot = self.field(b, _THREADS + 8 * i)
            self.call(b, "pthread_create", [slot, ir.Constant(PTR, None), worker,
                                            ir.Constant(PTR, None)])
        self.store(b, _STATE, ir.Constant(I32, 2))
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()

    def _emit_parallel_for(self) -> None:
        fn = self.function(self.parallel_for_name, TASK_FOR_FN, False)
        task_fn, ctx, n = fn.args
        entry = fn.append_basic_block("entry")
        serial = fn.append_basic_block("serial")
        serial_body = fn.append_basic_block("serial.body")
        serial_end = fn.append_basic_block("serial.end")
        pooled = fn.append_basic_block("pooled")
        quiesce = fn.append_basic_block("quiesce")
        setup = fn.append_basic_block("setup")
        finish = fn.append_basic_block("finish")
        released = fn.append_basic_block("released")
        b = ir.IRBuilder(entry)
        few = b.icmp_signed("<=", n, ir.Constant(I64, 1))
        single = ir.Constant(I1, int(self.threads <= 1))
        try_pool = fn.append_basic_block("try_pool")
        b.cbranch(b.or_(few, single), serial, try_pool)
        b.position_at_end(try_pool)
        pair = b.cmpxchg(self.field(b, _BUSY), ir.Constant(I32, 0), ir.Constant(I32, 1),
                         "seq_cst", "seq_cst")
        b.cbranch(b.extract_value(pair, 1), pooled, serial)

        b.position_at_end(serial)
        i = b.alloca(I64)
        b.store(ir.Constant(I64, 0), i)
        b.branch(serial_body)
        b.position_at_end(serial_body)
        cur = b.load(i)
        more = b.icmp_signed("<", cur, n)
        run_one = fn.append_basic_block("serial.run")
        b.cbranch(more, run_one, serial_end)
        b.position_at_end(run_one)
        call_pointer(b, task_fn, TASK_FN, [ctx, cur])
        b.store(b.add(cur, ir.Constant(I64, 1)), i)
        b.branch(serial_body)
        b.position_at_end(serial_end)
        b.ret_void()

        b.position_at_end(pooled)
        b.call(self.m.globals["graphc.pool.start"], [])
        self.rmw(b, "add", _GEN, ir.Constant(I64, 1))  # odd: setting up
        b.branch(quiesce)
        b.position_at_end(quiesce)
        idle = b.icmp_unsigned("==", self.load(b, _ACTIVE, I64), ir.Constant(I64, 0))
        quiesce_wait = fn.append_basic_block("quiesce.wait")
        b.cbranch(idle, setup, quiesce_wait)
        b.position_at_end(quiesce_wait)
        self.pause(b)
        b.branch(quiesce)

        b.position_at_end(setup)
        store_atomic(b, task_fn, self.field(b, _FN), 8)
        store_atomic(b, ctx, self.field(b, _CTX), 8)
        self.store(b, _NTASKS, n)
        self.store(b, _DONE, ir.Constant(I64, 0))
        self.store(b, _NEXT, ir.Constant(I64, 0))
        mutex, cond = self.field(b, _MUTEX), self.field(b, _COND)
        self.call(b, "pthread_mutex_lock", [mutex])
        self.rmw(b, "add", _GEN, ir.Constant(I64, 1))  # even: open
        self.call(b, "pthread_cond_broadcast", [cond])
        self.call(b, "pthread_mutex_unlock", [mutex])
        b.call(self.run_tasks, [])
        b.branch(finish)
        b.position_at_end(finish)
        all_done = b.and_(
            b.icmp_unsigned("==", self.load(b, _DONE, I64), n),
            b.icmp_unsigned("==", self.load(b, _ACTIVE, I64), ir.Constant(I64, 0)))
        finish_wait = fn.append_basic_block("finish.wait")
        b.cbranch(all_done, released, finish_wait)
        b.position_at_end(finish_wait)
        self.pause(b)
        b.branch(finish)
        b.position_at_end(released)
        self.store(b, _BUSY, ir.Constant(I32, 0))
        b.ret_void()

    def _emit_shutdown(self) -> None:
        fn = self.function(self.shutdown_name, ir.FunctionType(VOID, []), False)
        entry = fn.append_basic_block("entry")
        stop = fn.append_basic_block("stop")
        done = fn.append_basic_block("done")
        b = ir.IRBuilder(entry)
        running = b.icmp_unsigned("==", self.load(b, _STATE, I32), ir.Constant(I32, 2))
        b.cbranch(running, stop, done)
        b.position_at_end(stop)
        mutex, cond = self.field(b, _MUTEX), self.field(b, _COND)
        self.call(b, "pthread_mutex_lock", [mutex])
        self.store(b, _SHUTDOWN, ir.Constant(I32, 1))
        self.call(b, "pthread_cond_broadcast", [cond])
        self.call(b, "pthread_mutex_unlock", [mutex])
        for i in range(self.threads - 1):
            tid = b.load(self.field(b, _THREADS + 8 * i), typ=I64)
            self.call(b, "pthread_join", [tid, ir.Constant(PTR, None)])
        self.store(b, _STATE, ir.Constant(I32, 0))
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()
