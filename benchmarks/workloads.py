"""Benchmark workloads: the WORKLOADS table, and each workload's graphc and numpy setups.

A workload implementation is a function `setup(threads) -> Callable[[], object]` returning
the thing to time (one call = one iteration). Setup (building graphs, compiling, allocating
inputs) is not timed, except by the compile-time workload, which times it. Inputs come from
workloads_data.py (fixed seeds), so every peer sees the same data. The torch setups (eager,
and the same code under torch.compile) live in workloads_torch.py; the jax, ort and
torch-compile peers are modules of their own (workloads_jax.py, workloads_ort.py,
workloads_torch_compile.py), which run.py finds by peer name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks import workloads_bf16 as wb
from benchmarks import workloads_gpt as wg
from benchmarks import workloads_lowp as wl
from benchmarks import workloads_onnx as wo
from benchmarks import workloads_onnx_loop as wol
from benchmarks import workloads_quant as wq
from benchmarks import workloads_scan as ws
from benchmarks.workloads_data import (
    EW_SHAPE,
    LSTM_BATCH,
    LSTM_HIDDEN,
    LSTM_IN,
    LSTM_SEQ,
    SIZES,
    _ew_data,
    _gemm_data,
    _lenet_batch,
    _lenet_params,
    _lstm_batch,
    _lstm_params,
    _mlp_batch,
    _mlp_params,
)
from benchmarks.workloads_torch import (
    attention_torch,
    compile_first_call,
    ew_torch,
    gemm_torch,
    gpt_decode_torch,
    gpt_infer_torch,
    gpt_train_torch,
    lenet_torch,
    lstm_torch,
    mlp_infer_torch,
    mlp_train_torch,
)

Runner = Callable[[], object]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    flops: float  # per call (0 if not meaningful)
    bytes: float  # memory traffic per call (for GB/s; 0 if not meaningful)
    peers: dict[str, Callable[[int], Runner]]


# --- (a) elementwise chain --------------------------------------------------------------------

def ew_graphc(threads: int) -> Runner:
    import graphc as gc

    x_val, a, b = _ew_data()
    with gc.Graph("ew") as g:
        x = gc.placeholder(EW_SHAPE, gc.float32, name="x")
        y = gc.tanh(x * float(a) + float(b)) * gc.sigmoid(x) + 0.5 * x * x
    f = gc.compile(g, [x], y, options=gc.CompileOptions(threads=threads))
    return lambda: f(x_val)


def ew_numpy(threads: int) -> Runner:
    x, a, b = _ew_data()
    return lambda: np.tanh(x * a + b) * (1 / (1 + np.exp(-x))) + np.float32(0.5) * x * x


# --- (b, c) the MLP 784-512-512-10 -------------------------------------------------------------

def _mlp_graph(batch: int, train: bool):
    import graphc as gc

    params = _mlp_params()
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, SIZES[0]), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        ws = [gc.variable(p, name=f"p{i}") for i, p in enumerate(params)]
        h = x
        for i in range(0, len(ws), 2):
            h = h @ ws[i] + ws[i + 1]
            if i + 2 < len(ws):
                h = gc.relu(h)
        loss = gc.mean(gc.softmax_cross_entropy(h, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss) if train else None
    return g, x, y, h, loss, updates


def mlp_infer_graphc(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        g, x, _, logits, _, _ = _mlp_graph(batch, train=False)
        g = gc.freeze(g)  # serving: weights as constants (prepacked), as ORT's initializers
        f = gc.compile(g, [g[x.name]], g[logits.name],
                       options=gc.CompileOptions(threads=threads))
        xb, _ = _mlp_batch(batch)
        return lambda: f(xb)

    return setup


def mlp_infer_numpy(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        w1, b1, w2, b2, w3, b3 = _mlp_params()
        xb, _ = _mlp_batch(batch)

        def run() -> object:
            h = np.maximum(xb @ w1 + b1, 0)
            h = np.maximum(h @ w2 + b2, 0)
            return h @ w3 + b3

        return run

    return setup


def mlp_train_graphc(threads: int) -> Runner:
    import graphc as gc

    g, x, y, _, loss, updates = _mlp_graph(128, train=True)
    f = gc.compile(g, [x, y], [loss], updates=updates,
                   options=gc.CompileOptions(threads=threads))
    xb, yb = _mlp_batch(128)
    return lambda: f(xb, yb)


def mlp_train_numpy(threads: int) -> Runner:
    """A hand-written forward/backward with SGD momentum (what a numpy user would write)."""
    params = _mlp_params()
    velocity = [np.zeros_like(p) for p in params]
    xb, yb = _mlp_batch(128)
    n = len(yb)
    lr, mom = np.float32(0.01), np.float32(0.9)

    def run() -> object:
        w1, b1, w2, b2, w3, b3 = params
        z1 = xb @ w1 + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ w2 + b2
        h2 = np.maximum(z2, 0)
        logits = h2 @ w3 + b3
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - logits[np.arange(n), yb]))
        d = e / s
        d[np.arange(n), yb] -= 1
        d /= n
        grads = [None] * 6
        grads[4], grads[5] = h2.T @ d, d.sum(0)
        d = (d @ w3.T) * (z2 > 0)
        grads[2], grads[3] = h1.T @ d, d.sum(0)
        d = (d @ w2.T) * (z1 > 0)
        grads[0], grads[1] = xb.T @ d, d.sum(0)
        for p, v, gr in zip(params, velocity, grads):
            v *= mom
            v += gr
            p -= lr * v
        return loss

    return run


# --- (d) compile time ---------------------------------------------------------------------------

def compile_graphc(cached: bool, fresh: bool = False) -> Callable[[int], Runner]:
    """Time gc.compile of the MLP training step, with an empty or a warm cache; `fresh`:
    also without the shared GEMM functions an earlier compile in the process made
    (`runtime.kernel_library`), as in a fresh process's first compile."""

    def setup(threads: int) -> Runner:
        import tempfile

        import graphc as gc
        from graphc.runtime import kernel_library

        cache = tempfile.mkdtemp(prefix="graphc-bench-cache-")
        g, x, y, _, loss, updates = _mlp_graph(128, train=True)
        options = gc.CompileOptions(cache_dir=cache, threads=threads)
        if not fresh:  # fills the cache and makes the process's shared GEMM functions
            gc.compile(g, [x, y], [loss], updates=updates, options=options)

        def run() -> object:
            if not cached:
                for f in __import__("pathlib").Path(cache).glob("*.o"):
                    f.unlink()
            if fresh:
                kernel_library.forget_library_objects()
            return gc.compile(g, [x, y], [loss], updates=updates, options=options)

        return run

    return setup


# --- (e) square GEMM --------------------------------------------------------------------------

def gemm_graphc(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        a_val, b_val = _gemm_data(n)
        with gc.Graph("gemm") as g:
            a = gc.placeholder((n, n), gc.float32, name="a")
            b = gc.placeholder((n, n), gc.float32, name="b")
            c = a @ b
        f = gc.compile(g, [a, b], c, options=gc.CompileOptions(threads=threads))
        return lambda: f(a_val, b_val)

    return setup


def gemm_numpy(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        a, b = _gemm_data(n)
        return lambda: a @ b

    return setup


# --- (c) LeNet-5 ---------------------------------------------------------------------------------

def lenet_graphc(batch: int, train: bool) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        p = _lenet_params()
        with gc.Graph("lenet") as g:
            x = gc.placeholder((batch, 1, 28, 28), gc.float32, name="x")
            y = gc.placeholder((batch,), gc.int32, name="y")
            v = [gc.variable(a, name=f"p{i}") for i, a in enumerate(p)]
            h = gc.max_pool2d(gc.relu(gc.conv2d(x, v[0], padding=2, bias=v[1])), 2)
            h = gc.max_pool2d(gc.relu(gc.conv2d(h, v[2], bias=v[3])), 2)
            h = gc.reshape(h, (batch, 400))
            h = gc.relu(h @ v[4] + v[5])
            h = gc.relu(h @ v[6] + v[7])
            logits = h @ v[8] + v[9]
            loss = gc.mean(gc.softmax_cross_entropy(logits, y))
            updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss) if train else None
        options = gc.CompileOptions(threads=threads)
        xb, yb = _lenet_batch(batch)
        if train:
            f = gc.compile(g, [x, y], [loss], updates=updates, options=options)
            return lambda: f(xb, yb)
        g = gc.freeze(g)  # serving: weights as constants (prepacked), as ORT's initializers
        f = gc.compile(g, [g[x.name]], g[logits.name], options=options)
        return lambda: f(xb)

    return setup


# --- (f) LSTM ------------------------------------------------------------------------------

def lstm_graphc(threads: int) -> Runner:
    import graphc as gc

    p = _lstm_params()
    hid = LSTM_HIDDEN
    with gc.Graph("lstm") as g:
        x = gc.placeholder((LSTM_SEQ, LSTM_BATCH, LSTM_IN), gc.float32, name="x")
        y = gc.placeholder((LSTM_BATCH,), gc.int32, name="y")
        wx, wh, b, wo, bo = (gc.variable(a, name=f"p{i}") for i, a in enumerate(p))
        h = gc.constant(np.zeros((LSTM_BATCH, hid), np.float32))
        c = h
        # The input projection of all steps is one GEMM; the recurrence is one per step.
        xs = gc.reshape(gc.reshape(x, (LSTM_SEQ * LSTM_BATCH, LSTM_IN)) @ wx + b,
                        (LSTM_SEQ, LSTM_BATCH, 4 * hid))
        for t in range(LSTM_SEQ):
            z = xs[t] + h @ wh
            i, f = gc.sigmoid(z[:, :hid]), gc.sigmoid(z[:, hid:2 * hid])
            gg, o = gc.tanh(z[:, 2 * hid:3 * hid]), gc.sigmoid(z[:, 3 * hid:])
            c = f * c + i * gg
            h = o * gc.tanh(c)
        loss = gc.mean(gc.softmax_cross_entropy(h @ wo + bo, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
    f = gc.compile(g, [x, y], [loss], updates=updates, options=gc.CompileOptions(threads=threads))
    xb, yb = _lstm_batch()
    return lambda: f(xb, yb)


def _lenet_flops(batch: int) -> float:
    conv1 = 2 * 28 * 28 * 6 * 25
    conv2 = 2 * 10 * 10 * 16 * 6 * 25
    dense = 2 * (400 * 120 + 120 * 84 + 84 * 10)
    return batch * (conv1 + conv2 + dense)


_GPT = (f"{wg.GPT.layers} layers d={wg.GPT.d} {wg.GPT.heads} heads FFN {wg.GPT.ffn} "
        f"vocab {wg.GPT.vocab} T={wg.GPT.steps}")

WORKLOADS: list[Workload] = [
    Workload("ew", "elementwise tanh(x*a+b)*sigmoid(x)+0.5*x*x, 4096x1024 f32", 0,
             2 * 4 * EW_SHAPE[0] * EW_SHAPE[1],
             {"graphc": ew_graphc, "numpy": ew_numpy, "torch": ew_torch}),
    Workload("mlp_infer_1", "MLP 784-512-512-10 inference, batch 1",
             2 * (784 * 512 + 512 * 512 + 512 * 10), 0,
             {"graphc": mlp_infer_graphc(1), "numpy": mlp_infer_numpy(1),
              "torch": mlp_infer_torch(1)}),
    Workload("mlp_infer_256", "MLP 784-512-512-10 inference, batch 256",
             2 * 256 * (784 * 512 + 512 * 512 + 512 * 10), 0,
             {"graphc": mlp_infer_graphc(256), "numpy": mlp_infer_numpy(256),
              "torch": mlp_infer_torch(256)}),
    Workload("mlp_train", "MLP training step, batch 128, SGD momentum",
             3 * 2 * 128 * (784 * 512 + 512 * 512 + 512 * 10), 0,
             {"graphc": mlp_train_graphc, "numpy": mlp_train_numpy, "torch": mlp_train_torch}),
    Workload("compile_cold", "compile MLP training step, empty cache (graphc: its shared "
             "GEMM functions compiled by an earlier graph in the process, as JAX's and "
             "torch's GEMMs come precompiled; torch: torch.compile first call, empty inductor "
             "caches)", 0, 0,
             {"graphc": compile_graphc(False), "torch": compile_first_call(cold=True)}),
    Workload("compile_fresh", "compile MLP training step, nothing compiled before (graphc: "
             "empty cache and no shared GEMM function in the process, a fresh process's "
             "first compile; torch: torch.compile first call, empty inductor caches)", 0, 0,
             {"graphc": compile_graphc(False, fresh=True),
              "torch": compile_first_call(cold=True)}),
    Workload("compile_cached", "compile MLP training step, warm cache (torch: torch.compile "
             "first call, warm inductor caches)", 0, 0,
             {"graphc": compile_graphc(True), "torch": compile_first_call(cold=False)}),
    *(Workload(f"gemm_{n}", f"GEMM {n}x{n} f32", 2 * n**3, 0,
               {"graphc": gemm_graphc(n), "numpy": gemm_numpy(n), "torch": gemm_torch(n)})
      for n in (256, 512, 1024)),
    Workload("lenet_train", "LeNet-5 training step, batch 64", 3 * _lenet_flops(64), 0,
             {"graphc": lenet_graphc(64, True), "torch": lenet_torch(64, True)}),
    Workload("lenet_infer_1", "LeNet-5 inference, batch 1", _lenet_flops(1), 0,
             {"graphc": lenet_graphc(1, False), "torch": lenet_torch(1, False)}),
    Workload("lenet_infer_64", "LeNet-5 inference, batch 64", _lenet_flops(64), 0,
             {"graphc": lenet_graphc(64, False), "torch": lenet_torch(64, False)}),
    Workload("lstm_train", "LSTM (in 64, hidden 128, seq 32, batch 32) training step",
             3 * 2 * LSTM_SEQ * LSTM_BATCH * 4 * LSTM_HIDDEN * (LSTM_IN + LSTM_HIDDEN), 0,
             {"graphc": lstm_graphc, "torch": lstm_torch}),
    # The same step with the recurrence in one gc.scan (workloads_scan.py); torch: nn.LSTM.
    *(Workload(f"lstm_scan_{seq}", f"LSTM as lstm_train, recurrence in gc.scan, seq {seq} "
               "(torch: nn.LSTM)", ws.flops(seq), 0,
               {"graphc": ws.graphc_scan(seq), "torch": ws.torch_nn_lstm(seq)})
      for seq in (LSTM_SEQ, ws.LONG_SEQ)),
    *(Workload(f"compile_lstm_{seq}", f"build + compile gc.Model LSTM(64) training step, "
               f"seq {seq}, no cache", 0, 0, {"graphc": ws.compile_model(seq)})
      for seq in ws.COMPILE_SEQS),
    *(Workload(f"onnx_{name}", f"{title} (imported ONNX)", 2 * wo.MACS[name], 0,
               {"graphc": wo.graphc_infer(name), "torch": wo.torch_infer(name)})
      for name, title in wo.NETS.items()),
    Workload("onnx_compile_cold", "import + compile ResNet-18 ONNX, empty cache (graphc: "
             "shared GEMM functions of an earlier compile in the process kept; ORT: session "
             "creation)", 0, 0, {"graphc": wo.graphc_import_compile(False)}),
    Workload("onnx_compile_cached", "import + compile ResNet-18 ONNX, warm cache", 0, 0,
             {"graphc": wo.graphc_import_compile(True)}),
    Workload("onnx_loop_compile", f"import + compile an ONNX Loop RNN, T={wol.STEPS}, no cache "
             "(ORT: session creation)", 0, 0, {"graphc": wol.graphc_compile}),
    Workload("onnx_loop_run", f"an ONNX Loop RNN (hidden {wol.HIDDEN}, T={wol.STEPS}), imported",
             0, 0, {"graphc": wol.graphc_run}),
    # Low precision at the shape (workloads_lowp.py).
    Workload("gemm_f32_512x1024", "GEMM M=512 K=N=1024 f32 (baseline of the two below)",
             wl.FLOPS, 0, {"graphc": wl.f32_graphc, "torch": wl.f32_torch}),
    Workload("gemm_bf16", "GEMM M=512 K=N=1024 bf16 inputs, f32 accumulation (torch: bf16 "
             "tensors, oneDNN)", wl.FLOPS, 0, {"graphc": wl.bf16_graphc, "torch": wl.bf16_torch}),
    Workload("gemm_int8", "GEMM M=512 K=N=1024 uint8 x int8 -> int32 (torch: _int_mm, int8 x "
             "int8; ORT: MatMulInteger), rate in GOP/s", wl.FLOPS, 0,
             {"graphc": wl.int8_graphc, "torch": wl.int8_torch}),
    # bf16 at batch 1: GEMV and KV-cache decode (workloads_bf16.py).
    Workload("gemv_f32_1", f"GEMV batch 1, K=N={wb.K} f32 frozen weight, rate: GB/s of W",
             0, wb.gemv_bytes(4), {"graphc": wb.gemv_f32_graphc, "torch": wb.gemv_f32_torch}),
    Workload("gemv_bf16_1", f"GEMV batch 1, K=N={wb.K}, gc.autocast bf16 weight, f32 "
             "accumulation (torch: bf16 F.linear)", 0, wb.gemv_bytes(2),
             {"graphc": wb.gemv_bf16_graphc, "torch": wb.gemv_bf16_torch}),
    Workload("gpt_decode_bf16", "gpt_decode with bf16 weights (Generator(precision="
             "'bfloat16')), rate: GB/s of bf16 weights + f32 cache rows", 0,
             wb.decode_bytes_bf16(), {"graphc": wb.gpt_decode_lowp_graphc("bfloat16")}),
    Workload("gpt_decode_int8", "gpt_decode with int8 weights (Generator(precision="
             "'int8'): gc.quantize_dynamic)", 0, 0,
             {"graphc": wb.gpt_decode_lowp_graphc("int8")}),
    # int8 dynamic quantization (workloads_quant.py); the fp32 baselines are mlp_infer_*.
    *(Workload(f"mlp_int8_{b}", f"MLP 784-512-512-10 inference, batch {b}, int8 dynamic "
               f"(gc.quantize_dynamic; ORT: quantize_dynamic); fp32: mlp_infer_{b}",
               wq.flops(b), 0, {"graphc": wq.graphc_int8(b)}) for b in (1, 256)),
    *(Workload(f"mlp_int8_7bit_{b}", f"MLP 784-512-512-10 inference, batch {b}, int8 dynamic, "
               "7-bit weights (reduce_range=True in gc.quantize_dynamic and ORT's)",
               wq.flops(b), 0, {"graphc": wq.graphc_int8(b, reduce_range=True)})
      for b in (1, 256)),
    Workload("mlp_int8_onnx_256", "MLP 784-512-512-10 inference, batch 256, ORT's "
             "quantize_dynamic model file run by both (graphc: gc.onnx.load)",
             wq.flops(256), 0, {"graphc": wq.graphc_int8_onnx(256)}),
    Workload("onnx_resnet18_int8", "ResNet-18 inference 1x3x224x224, ORT's quantize_dynamic "
             "model file (ConvInteger) run by both (graphc: gc.onnx.load)",
             2 * wo.MACS["resnet18"], 0, {"graphc": wq.net_graphc_int8("resnet18")}),
    *(Workload(f"mlp_int8_static_{b}", f"MLP 784-512-512-10 inference, batch {b}, int8 "
               f"static (gc.quantize_static, minmax over 4 batches); fp32: mlp_infer_{b}",
               wq.flops(b), 0, {"graphc": wq.graphc_int8(b, static=True)}) for b in (1, 256)),
    Workload("onnx_encoder_int8", "2-layer transformer encoder d=256 (imported ONNX), int8 "
             "dynamic (gc.quantize_dynamic; ORT: quantize_dynamic per channel)",
             2 * wo.MACS["encoder"], 0, {"graphc": wq.encoder_graphc_int8}),
    # The transformer rows (workloads_gpt.py: model, data, checks and FLOP counts).
    Workload("gpt_infer_1", f"GPT inference (causal, ids -> logits), {_GPT}, batch 1",
             wg.gpt_flops(wg.INFER_BATCH, train=False), 0,
             {"graphc": wg.gpt_infer_graphc, "torch": gpt_infer_torch()}),
    Workload("gpt_infer_1_onnx", f"GPT inference (causal), {_GPT}, batch 1, torch's ONNX "
             "export (graphc: gc.onnx.load)", wg.gpt_flops(wg.INFER_BATCH, train=False), 0,
             {"graphc": wg.gpt_onnx_graphc}),
    Workload("gpt_train_8", f"GPT (causal) training step, {_GPT}, batch 8, AdamW",
             wg.gpt_flops(wg.TRAIN_BATCH, train=True), 0,
             {"graphc": wg.gpt_train_graphc, "torch": gpt_train_torch}),
    Workload("attention_1024", "attention forward + backward (q, k, v grads), B=1 H=4 T=1024 "
             "Dh=64, not causal (torch: scaled_dot_product_attention)", wg.attention_flops(), 0,
             {"graphc": wg.attention_graphc, "torch": attention_torch}),
    Workload("gpt_decode", f"GPT KV-cache decode, one token per call, {_GPT.split(' T=')[0]}, "
             f"Tmax={wg.DECODE_MAX_LEN}, positions {wg.DECODE_PROMPT}..{wg.DECODE_MAX_LEN - 1} "
             "after a prefill (graphc: gc.nn.Generator; torch: a hand-written cache)", 0,
             wg.decode_bytes(), {"graphc": wg.gpt_decode_graphc, "torch": gpt_decode_torch}),
]
