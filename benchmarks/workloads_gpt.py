"""Transformer workloads: a small GPT's inference and AdamW training step, and the fused
attention alone; their data, numpy references, FLOP counts and graphc setups.

The model is issue 15's: 2 pre-norm layers, d=256, 4 heads, FFN 1024, GELU (erf), vocab 1000,
T=128, dropout 0, float32, learned token and position embeddings, a final LayerNorm and a
vocabulary projection with bias; attention is causal (a decoder-only GPT) in every row, so
inference is the GPT's prompt forward (prefill) and training is the same model's step. Every
peer loads the same canonical weights (`gpt_params`, kernels (in, out)) and tokens
(`gpt_tokens`); the torch model is `benchmarks.torch_nets.TorchGPT` (torch's own
`nn.TransformerEncoderLayer`), the jax one a hand-written forward in workloads_jax.py, the
ONNX model that torch module exported (opset 17), run by ONNX Runtime and imported by graphc.

Setup checks every peer before it is timed (max error relative to the largest |value| at most
1e-4, `check`): logits against a float64 numpy forward (`gpt_forward_numpy`); the losses of the
first two training steps against torch's AdamW in float64 (`reference_losses`; the first step
alone against numpy when torch is missing); attention's output and gradients against a float64
numpy forward and backward (`attention_numpy`).

FLOPs, from shapes (`gpt_flops`, `attention_flops`): a forward pass is 2 FLOPs per
multiply-add of every matmul weight per token, 2·N·tokens with N = layers·(4d² + 2·d·ffn) +
d·vocab (the embeddings are lookups, not matmuls), plus attention's q·kᵀ and p·v, 4·T²·d per
sequence and layer, counted in full although a causal kernel may skip half of it; a training
step is 3× the forward (backward 2×). Norms, GELU, softmax, the loss and AdamW are not counted.
Fused attention forward + backward is 14·B·H·T²·Dh: forward 2 matmuls (4·B·H·T²·Dh), backward
2.5× that (5 matmuls, q·kᵀ recomputed), FlashAttention-2's convention.

KV-cache decode (`gpt_decode`): one call is one token, batch 1, greedy, at positions
P=128 ... Tmax-1=255 in turn after a prefill of P tokens (teacher-forced from `decode_tokens`,
so each position's logits are checked against one full forward pass); the position table has
Tmax rows (`decode_params`). Its rate is GB/s of the bytes a step must read (`decode_bytes`:
every matmul weight once, plus the K/V rows it attends over, on average), not FLOP/s.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Runner = Callable[[], object]
RTOL = 1e-4


@dataclass(frozen=True)
class GPTShape:
    vocab: int = 1000
    d: int = 256
    heads: int = 4
    ffn: int = 1024
    layers: int = 2
    steps: int = 128  # T (also max_len of the position table)


GPT = GPTShape()
INFER_BATCH, TRAIN_BATCH = 1, 8
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
CHECK_STEPS = 2  # training steps setup compares with the reference before timing
ATTENTION_SHAPE = (1, 4, 1024, 64)  # B, H, T, Dh: the GPT's 4 heads of 64 at T=1024
ONNX_FORMAT = 1  # bump when the exported model changes (names the cached file)
DECODE_MAX_LEN, DECODE_PROMPT = 256, 128  # Tmax of the KV cache; positions prefilled


# --- data --------------------------------------------------------------------------------

def _block_names(i: int) -> list[str]:
    return [f"h{i}.{n}" for n in ("ln1_g", "ln1_b", "qkv_w", "qkv_b", "out_w", "out_b",
                                  "ln2_g", "ln2_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")]


def gpt_params() -> dict[str, np.ndarray]:
    """The canonical float32 weights (fresh arrays; seed 20): GPT-2-like N(0, 0.02) kernels,
    non-zero biases and norm affines (so a dropped bias or gamma shows), N(0, 0.1) embeddings."""
    c = GPT
    rng = np.random.default_rng(20)

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    p = {"wte": normal((c.vocab, c.d), 0.1), "wpe": normal((c.steps, c.d), 0.1)}
    for i in range(c.layers):
        shapes = [(c.d,), (c.d,), (c.d, 3 * c.d), (3 * c.d,), (c.d, c.d), (c.d,), (c.d,),
                  (c.d,), (c.d, c.ffn), (c.ffn,), (c.ffn, c.d), (c.d,)]
        for name, shape in zip(_block_names(i), shapes, strict=True):
            short = name.split(".")[1]
            if short.startswith("ln"):  # gamma ~ 1, beta ~ 0
                p[name] = normal(shape, 0.1, 1.0 if short.endswith("_g") else 0.0)
            else:
                p[name] = normal(shape, 0.02)
    p.update(lnf_g=normal((c.d,), 0.1, 1.0), lnf_b=normal((c.d,), 0.1),
             head_w=normal((c.d, c.vocab), 0.02), head_b=normal((c.vocab,), 0.02))
    return p


def decode_params() -> dict[str, np.ndarray]:
    """`gpt_params` with a position table of DECODE_MAX_LEN rows (the first T the same)."""
    p = gpt_params()
    extra = np.random.default_rng(23).standard_normal((DECODE_MAX_LEN - GPT.steps, GPT.d))
    p["wpe"] = np.concatenate([p["wpe"], (0.1 * extra).astype(np.float32)])
    return p


def decode_tokens() -> np.ndarray:
    """(1, DECODE_MAX_LEN) int32 ids (seed 24): the prompt, then the tokens fed at each
    decode position (teacher forcing: the logits then match one full forward pass)."""
    return np.random.default_rng(24).integers(0, GPT.vocab, (1, DECODE_MAX_LEN)).astype(
        np.int32)


def gpt_tokens(batch: int) -> np.ndarray:
    """(batch, T + 1) int32 token ids (seed 21): inputs [:, :-1], next-token targets [:, 1:]."""
    return np.random.default_rng(21).integers(0, GPT.vocab, (batch, GPT.steps + 1)).astype(
        np.int32)


def attention_data() -> tuple[np.ndarray, ...]:
    """q, k, v and the output gradient, each (B, H, T, Dh) float32 N(0, 1) (seed 22)."""
    rng = np.random.default_rng(22)
    return tuple(rng.standard_normal(ATTENTION_SHAPE).astype(np.float32) for _ in range(4))


# --- FLOPs -------------------------------------------------------------------------------

def gpt_flops(batch: int, train: bool) -> float:
    """See the module docstring: 2·N·tokens + 4·T²·d per layer and sequence; training 3×."""
    c = GPT
    weights = c.layers * (4 * c.d * c.d + 2 * c.d * c.ffn) + c.d * c.vocab
    forward = batch * (2 * weights * c.steps + c.layers * 4 * c.steps**2 * c.d)
    return float(3 * forward if train else forward)


def decode_bytes() -> float:
    """Bytes a decode step must read, averaged over the timed positions [P, Tmax): every
    matmul weight once (the embedding rows and small vectors left out) and the K and V cache
    rows [0, pos] of every layer, float32."""
    c = GPT
    weights = c.layers * (4 * c.d * c.d + 2 * c.d * c.ffn) + c.d * c.vocab
    context = np.mean(np.arange(DECODE_PROMPT, DECODE_MAX_LEN) + 1)
    return float(4 * (weights + c.layers * 2 * context * c.d))


def attention_flops() -> float:
    b, h, t, dh = ATTENTION_SHAPE
    return float(14 * b * h * t * t * dh)


# --- numpy references (float64) ------------------------------------------------------------

def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf elementwise: scipy's, or math.erf per element (a second or so) without scipy."""
    try:
        from scipy.special import erf
    except ImportError:
        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


def gpt_forward_numpy(params: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """The causal GPT's logits (B, T, vocab) in float64."""
    c = GPT
    p = {k: v.astype(np.float64) for k, v in params.items()}
    b, t = ids.shape
    dh = c.d // c.heads
    x = p["wte"][ids] + p["wpe"][:t]
    future = np.triu(np.ones((t, t), bool), 1)
    for i in range(c.layers):
        w = {n.split(".", 1)[1]: p[n] for n in _block_names(i)}
        qkv = _layer_norm(x, w["ln1_g"], w["ln1_b"]) @ w["qkv_w"] + w["qkv_b"]
        q, k, v = (qkv[..., j * c.d:(j + 1) * c.d].reshape(b, t, c.heads, dh).transpose(0, 2, 1, 3)
                   for j in range(3))
        s = np.where(future, -np.inf, q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh))
        o = (_softmax(s) @ v).transpose(0, 2, 1, 3).reshape(b, t, c.d)
        x = x + o @ w["out_w"] + w["out_b"]
        h = _layer_norm(x, w["ln2_g"], w["ln2_b"]) @ w["fc1_w"] + w["fc1_b"]
        x = x + (0.5 * h * (1 + _erf(h / np.sqrt(2)))) @ w["fc2_w"] + w["fc2_b"]
    return _layer_norm(x, p["lnf_g"], p["lnf_b"]) @ p["head_w"] + p["head_b"]


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    m = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float(np.mean(logz - picked))


@functools.lru_cache(maxsize=1)
def reference_losses() -> tuple[float, ...]:
    """The losses of the first CHECK_STEPS training steps: torch's AdamW on `torch_nets.TorchGPT` in
    float64; without torch, the first step's loss from the numpy forward."""
    tokens = gpt_tokens(TRAIN_BATCH)
    try:
        import torch
    except ImportError:
        return (_cross_entropy(gpt_forward_numpy(gpt_params(), tokens[:, :-1]), tokens[:, 1:]),)
    from benchmarks.torch_nets import TorchGPT

    c = GPT
    model = TorchGPT(c.vocab, c.d, c.heads, c.ffn, c.layers, c.steps).double()
    model.load(gpt_params())
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)  # type: ignore[arg-type]
    ids, targets = (torch.from_numpy(a.astype(np.int64)) for a in (tokens[:, :-1], tokens[:, 1:]))
    losses = []
    for _ in range(CHECK_STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, c.vocab),
                                                 targets.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return tuple(losses)


def attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray
                    ) -> tuple[np.ndarray, ...]:
    """Non-causal attention's output and (dq, dk, dv) for output gradient `dout`, float64."""
    q, k, v, dout = (a.astype(np.float64) for a in (q, k, v, dout))
    scale = 1 / np.sqrt(q.shape[-1])
    p = _softmax(q @ k.swapaxes(-1, -2) * scale)
    dp = dout @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    return p @ v, ds @ k, ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ dout


@functools.lru_cache(maxsize=1)
def decode_reference() -> np.ndarray:
    """The logits (DECODE_MAX_LEN, vocab) at every position of `decode_tokens`, float64."""
    return gpt_forward_numpy(decode_params(), decode_tokens())[0]


@functools.lru_cache(maxsize=1)
def attention_reference() -> tuple[np.ndarray, ...]:
    return attention_numpy(*attention_data())


def infer_reference() -> np.ndarray:
    return gpt_forward_numpy(gpt_params(), gpt_tokens(INFER_BATCH)[:, :-1])


# --- checks ------------------------------------------------------------------------------

def check(peer: str, got: object, want: object) -> None:
    """Raise unless `got` equals `want` within RTOL of the largest |want| (each of a tuple)."""
    pairs = zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]
    for i, (g, w) in enumerate(pairs):
        w = np.asarray(w, np.float64)
        g = np.asarray(g, np.float64)
        err = float(np.max(np.abs(g - w))) / max(float(np.max(np.abs(w))), 1e-30)
        if g.shape != w.shape or not np.isfinite(err) or err > RTOL:
            what = f"output {i}" if isinstance(want, tuple) else "output"
            raise AssertionError(f"{peer}: {what} differs from the reference: max error {err:.2e} "
                                 f"relative to max |expected| (tolerance {RTOL:g}), shapes "
                                 f"{g.shape} vs {w.shape}")


def check_training(peer: str, step: Runner) -> None:
    """Run the first steps of `step` (returning the loss) and compare with the reference."""
    want = reference_losses()
    check(peer + " (training losses)", [float(step()) for _ in want], np.asarray(want))


# --- graphc ------------------------------------------------------------------------------

def _graphc_block_weights(block: object) -> list:
    """The variable nodes of a graphc encoder layer, in `_block_names` order."""
    s = block.sublayers  # type: ignore[attr-defined]
    return [s["norm1"].weights["gamma"], s["norm1"].weights["beta"],
            s["self_attn"].weights["qkv_kernel"], s["self_attn"].weights["qkv_bias"],
            s["self_attn"].weights["out_kernel"], s["self_attn"].weights["out_bias"],
            s["norm2"].weights["gamma"], s["norm2"].weights["beta"],
            s["linear1"].weights["kernel"], s["linear1"].weights["bias"],
            s["linear2"].weights["kernel"], s["linear2"].weights["bias"]]


def _graphc_gpt(batch: int, train: bool) -> tuple:
    """graphc's GPT (gc.nn layers) on (batch, T) int32 ids with the canonical weights; for
    training also next-token targets, the mean cross-entropy and AdamW's updates."""
    import graphc as gc

    c = GPT
    with gc.Graph("gpt") as g:
        ids = gc.placeholder((batch, c.steps), gc.int32, name="ids")
        net = gc.nn.Sequential([
            gc.nn.Embedding(c.vocab, c.d),
            gc.nn.PositionalEmbedding(c.steps, c.d),
            *(gc.nn.TransformerEncoderLayer(c.d, c.heads, c.ffn, dropout=0.0,
                                            activation="gelu", norm_first=True, causal=True)
              for _ in range(c.layers)),
            gc.nn.LayerNorm(), gc.nn.Dense(c.vocab)])
        logits = net(ids, training=train)
        targets = loss = updates = None
        if train:
            targets = gc.placeholder((batch, c.steps), gc.int32, name="targets")
            loss = gc.mean(gc.softmax_cross_entropy(logits, targets))
            updates = gc.optim.AdamW(ADAMW["lr"], ADAMW["betas"], ADAMW["eps"],
                                     ADAMW["weight_decay"]).minimize(loss)
    emb, pos, *blocks, norm, head = net.layers
    nodes = {"wte": emb.weights["embeddings"], "wpe": pos.weights["embeddings"],
             "lnf_g": norm.weights["gamma"], "lnf_b": norm.weights["beta"],
             "head_w": head.weights["kernel"], "head_b": head.weights["bias"]}
    for i, block in enumerate(blocks):
        nodes.update(zip(_block_names(i), _graphc_block_weights(block), strict=True))
    params = gpt_params()
    if set(nodes) != set(params) or len(g.variables) < len(params):
        raise AssertionError("graphc GPT: the weight mapping misses variables")
    for name, node in nodes.items():
        g.variables[node.name] = params[name]
    return g, ids, logits, targets, loss, updates


def gpt_infer_graphc(threads: int) -> Runner:
    import graphc as gc

    g, ids, logits, *_ = _graphc_gpt(INFER_BATCH, train=False)
    g = gc.freeze(g)  # serving: weights as constants (prepacked), as ORT's initializers
    f = gc.compile(g, [g[ids.name]], [g[logits.name]], options=gc.CompileOptions(threads=threads))
    x = gpt_tokens(INFER_BATCH)[:, :-1].copy()
    check("graphc", f(x)[0], infer_reference())
    return lambda: f(x)


def gpt_train_graphc(threads: int) -> Runner:
    import graphc as gc

    g, ids, _, targets, loss, updates = _graphc_gpt(TRAIN_BATCH, train=True)
    f = gc.compile(g, [ids, targets], [loss], updates=updates,
                   options=gc.CompileOptions(threads=threads))
    tokens = gpt_tokens(TRAIN_BATCH)
    x, y = tokens[:, :-1].copy(), tokens[:, 1:].copy()

    def step() -> float:
        return float(f(x, y)[0])

    check_training("graphc", step)
    return step


def attention_graphc(threads: int) -> Runner:
    """gc.attention forward and its gradients for a given output gradient, one executable."""
    import graphc as gc

    data = attention_data()
    with gc.Graph("attention") as g:
        q, k, v, dout = (gc.placeholder(ATTENTION_SHAPE, gc.float32, name=n)
                         for n in ("q", "k", "v", "dout"))
        out = gc.attention(q, k, v)
        grads = gc.grad(out, [q, k, v], grad_y=dout)
    f = gc.compile(g, [q, k, v, dout], [out, *grads], options=gc.CompileOptions(threads=threads))
    check("graphc", tuple(f(*data)), attention_reference())
    return lambda: f(*data)


# --- the ONNX export of the torch GPT (ONNX Runtime, and graphc importing it) ---------------

def onnx_file() -> Path:
    """The torch GPT exported to ONNX (opset 17; input int64 "ids" (1, T), output "logits"),
    cached next to workloads_onnx's models; exporting needs torch."""
    from benchmarks import workloads_onnx

    c = GPT
    folder = workloads_onnx._folder()
    path = folder / f"gpt_v{ONNX_FORMAT}_b{INFER_BATCH}_t{c.steps}_d{c.d}_causal.onnx"
    if path.exists():
        return path
    try:
        import torch
    except ImportError as e:
        raise ImportError("skipped: exporting the GPT to ONNX needs torch (pip install "
                          "torch), and no cached export exists at " + str(path)) from e
    from benchmarks.torch_nets import TorchGPT, export_gpt

    model = TorchGPT(c.vocab, c.d, c.heads, c.ffn, c.layers, c.steps).load(gpt_params())
    data = export_gpt(model, torch.from_numpy(onnx_ids()))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def onnx_ids() -> np.ndarray:
    """The inference tokens as the ONNX model's int64 input."""
    return gpt_tokens(INFER_BATCH)[:, :-1].astype(np.int64)


def gpt_onnx_graphc(threads: int) -> Runner:
    """gc.onnx.load of the exported GPT (weights as constants) + gc.compile."""
    import graphc as gc

    g = gc.onnx.load(onnx_file(), trainable=False)
    f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=threads))
    x = onnx_ids()
    check("graphc (imported ONNX)", f(x)[0], infer_reference())
    return lambda: f(x)


# --- KV-cache decode --------------------------------------------------------------------

def decode_positions() -> object:
    """The positions the timed decode calls take, in turn: P, P + 1, ..., Tmax - 1, P, ...
    (each call writes the cache row it attends up to, so the cycle stays consistent)."""
    while True:
        yield from range(DECODE_PROMPT, DECODE_MAX_LEN)


def gpt_decode_graphc(threads: int) -> Runner:
    """One token of `gc.nn.Generator`'s compiled decode step (greedy, logits returned for
    the check) per call, after a prefill of P tokens; the executable is called directly
    (what the exported C step does), not through Generator.step's Python checks."""
    import graphc as gc

    c = GPT
    gpt = gc.nn.GPT(c.vocab, c.d, c.layers, c.heads, c.ffn, max_len=DECODE_MAX_LEN)
    gen = gc.nn.Generator(gpt, max_len=DECODE_MAX_LEN, temperature=0.0, return_logits=True,
                          options=gc.CompileOptions(threads=threads))
    sub = gpt.sublayers
    nodes = {"wte": sub["wte"].weights["embeddings"], "wpe": sub["wpe"].weights["embeddings"],
             "lnf_g": sub["ln_f"].weights["gamma"], "lnf_b": sub["ln_f"].weights["beta"],
             "head_w": sub["lm_head"].weights["kernel"], "head_b": sub["lm_head"].weights["bias"]}
    for i, block in enumerate(gpt.blocks):
        nodes.update(zip(_block_names(i), _graphc_block_weights(block), strict=True))
    params = decode_params()
    if set(nodes) != set(params):
        raise AssertionError("graphc GPT: the weight mapping misses variables")
    for name, node in nodes.items():
        gen.graph.variables[node.name] = params[name]
    tokens = decode_tokens().astype(np.int64)
    want = decode_reference()
    _, logits = gen.prefill(tokens[:, :DECODE_PROMPT])
    check("graphc (prefill)", logits[0], want[DECODE_PROMPT - 1])
    step = gen.decode_executable
    got = [step(tokens[:, pos], np.int64(pos))[1][0]
           for pos in range(DECODE_PROMPT, DECODE_MAX_LEN)]
    check("graphc (decode)", np.stack(got), want[DECODE_PROMPT:])
    positions = decode_positions()
    feeds = [(tokens[:, pos].copy(), np.int64(pos)) for pos in range(DECODE_MAX_LEN)]

    def run() -> object:
        return step(*feeds[next(positions)])

    return run
