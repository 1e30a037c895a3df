"""The torch peers of the benchmark workloads: torch eager, and torch.compile of the same code.

Each setup takes `compiled`: False is torch eager (the "torch" peer, in the WORKLOADS table
of workloads.py); True wraps the same function in torch.compile (the "torch-compile" peer,
workloads_torch_compile.py), so both peers run the same Python code on the same data
(workloads_data.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.workloads_data import (
    LSTM_BATCH,
    LSTM_HIDDEN,
    LSTM_IN,
    LSTM_SEQ,
    _ew_data,
    _gemm_data,
    _lenet_batch,
    _lenet_params,
    _lstm_batch,
    _lstm_params,
    _mlp_batch,
    _mlp_params,
)

Runner = Callable[[], object]


def _torch_fn(fn: Callable[..., object], compiled: bool) -> Callable[..., object]:
    """`fn` itself (torch eager) or torch.compile(fn) in the default mode (torch-compile)."""
    if not compiled:
        return fn
    import torch

    return torch.compile(fn)


# --- elementwise chain ----------------------------------------------------------------------

def ew_torch(threads: int, compiled: bool = False) -> Runner:
    import torch

    torch.set_num_threads(threads)
    x_val, a, b = _ew_data()
    x = torch.from_numpy(x_val)
    # Python floats: float() of a numpy scalar inside torch.compile is a graph break.
    af, bf = float(a), float(b)

    def chain() -> object:
        return torch.tanh(x * af + bf) * torch.sigmoid(x) + 0.5 * x * x

    f = _torch_fn(chain, compiled)

    def run() -> object:
        with torch.no_grad():
            return f()

    return run


# --- the MLP 784-512-512-10 ---------------------------------------------------------------

def mlp_infer_torch(batch: int, compiled: bool = False) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        p = [torch.from_numpy(a) for a in _mlp_params()]
        xb = torch.from_numpy(_mlp_batch(batch)[0])

        def forward() -> object:
            h = torch.relu(torch.addmm(p[1], xb, p[0]))
            h = torch.relu(torch.addmm(p[3], h, p[2]))
            return torch.addmm(p[5], h, p[4])

        f = _torch_fn(forward, compiled)

        def run() -> object:
            with torch.no_grad():
                return f().numpy()

        return run

    return setup


def mlp_train_torch(threads: int, compiled: bool = False) -> Runner:
    import torch

    torch.set_num_threads(threads)
    p = [torch.from_numpy(a.copy()).requires_grad_(True) for a in _mlp_params()]
    opt = torch.optim.SGD(p, lr=0.01, momentum=0.9)
    xb_np, yb_np = _mlp_batch(128)
    xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        h = torch.relu(torch.addmm(p[1], xb, p[0]))
        h = torch.relu(torch.addmm(p[3], h, p[2]))
        loss = torch.nn.functional.cross_entropy(torch.addmm(p[5], h, p[4]), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    f = _torch_fn(step, compiled)
    return lambda: float(f())


# --- compile time ---------------------------------------------------------------------------

def compile_first_call(cold: bool) -> Callable[[int], Runner]:
    """Seconds of torch.compile's first call of the MLP training step (after
    torch._dynamo.reset(), so dynamo traces again): the closest peer to JAX's jit compile.

    cold: inductor's caches (compiled C++ kernels, FX graphs; on disk and in memory) start
    empty at every call (torch._inductor.utils.fresh_cache: a new cache directory), like
    graphc's empty-cache row; else they are warm from the warm-up calls, like graphc's
    warm-cache row.
    """
    return lambda threads: _compile_first_call(threads, cold)


def _compile_first_call(threads: int, cold: bool) -> Runner:
    import torch

    torch.set_num_threads(threads)

    def run() -> object:
        if cold:
            from torch._inductor.utils import fresh_cache

            with fresh_cache():
                return first_call()
        return first_call()

    def first_call() -> float:
        torch._dynamo.reset()
        p = [torch.from_numpy(a.copy()).requires_grad_(True) for a in _mlp_params()]
        xb_np, yb_np = _mlp_batch(128)
        xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))

        @torch.compile
        def step(xb: object, yb: object) -> object:
            h = torch.relu(torch.addmm(p[1], xb, p[0]))
            h = torch.relu(torch.addmm(p[3], h, p[2]))
            loss = torch.nn.functional.cross_entropy(torch.addmm(p[5], h, p[4]), yb)
            loss.backward()
            return loss

        t = time.perf_counter()
        step(xb, yb)
        return time.perf_counter() - t

    return run


# --- square GEMM --------------------------------------------------------------------------

def gemm_torch(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        a, b = (torch.from_numpy(v) for v in _gemm_data(n))
        return lambda: a @ b

    return setup


# --- LeNet-5 ---------------------------------------------------------------------------------

def lenet_torch(batch: int, train: bool, compiled: bool = False) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch
        import torch.nn.functional as F  # noqa: N812

        torch.set_num_threads(threads)
        p = [torch.from_numpy(a.copy()).requires_grad_(train) for a in _lenet_params()]
        xb_np, yb_np = _lenet_batch(batch)
        xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))
        opt = torch.optim.SGD(p, lr=0.01, momentum=0.9) if train else None

        def forward() -> object:
            h = F.max_pool2d(F.relu(F.conv2d(xb, p[0], p[1], padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3])), 2).reshape(batch, 400)
            h = F.relu(torch.addmm(p[5], h, p[4]))
            h = F.relu(torch.addmm(p[7], h, p[6]))
            return torch.addmm(p[9], h, p[8])

        if not train:
            fwd = _torch_fn(forward, compiled)

            def infer() -> object:
                with torch.no_grad():
                    return fwd().numpy()
            return infer

        def step() -> object:
            assert opt is not None
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(), yb)
            loss.backward()
            opt.step()
            return loss.detach()

        f = _torch_fn(step, compiled)
        return lambda: float(f())

    return setup


# --- LSTM ------------------------------------------------------------------------------

def lstm_torch(threads: int, compiled: bool = False) -> Runner:
    import torch

    torch.set_num_threads(threads)
    p = [torch.from_numpy(a.copy()).requires_grad_(True) for a in _lstm_params()]
    opt = torch.optim.SGD(p, lr=0.01, momentum=0.9)
    xb_np, yb_np = _lstm_batch()
    xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))
    hid = LSTM_HIDDEN

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        h = torch.zeros(LSTM_BATCH, hid)
        c = torch.zeros(LSTM_BATCH, hid)
        xs = (xb.reshape(-1, LSTM_IN) @ p[0] + p[2]).reshape(LSTM_SEQ, LSTM_BATCH, 4 * hid)
        for t in range(LSTM_SEQ):
            z = xs[t] + h @ p[1]
            i, f = torch.sigmoid(z[:, :hid]), torch.sigmoid(z[:, hid:2 * hid])
            gg, o = torch.tanh(z[:, 2 * hid:3 * hid]), torch.sigmoid(z[:, 3 * hid:])
            c = f * c + i * gg
            h = o * torch.tanh(c)
        loss = torch.nn.functional.cross_entropy(h @ p[3] + p[4], yb)
        loss.backward()
        opt.step()
        return loss.detach()

    f = _torch_fn(step, compiled)
    return lambda: float(f())


# --- the GPT and fused attention (benchmarks.workloads_gpt) -------------------------------

def _torch_gpt() -> object:
    from benchmarks import workloads_gpt as wg
    from benchmarks.torch_nets import TorchGPT

    c = wg.GPT
    return TorchGPT(c.vocab, c.d, c.heads, c.ffn, c.layers, c.steps).load(wg.gpt_params())


def gpt_infer_torch(compiled: bool = False) -> Callable[[int], Runner]:
    """The causal GPT's logits at batch 1 (eval mode, no_grad)."""

    def setup(threads: int) -> Runner:
        import torch

        from benchmarks import workloads_gpt as wg

        torch.set_num_threads(threads)
        model = _torch_gpt().eval()  # type: ignore[attr-defined]
        ids = torch.from_numpy(wg.gpt_tokens(wg.INFER_BATCH)[:, :-1].astype(np.int64))
        f = _torch_fn(model, compiled)

        def run() -> object:
            with torch.no_grad():
                return f(ids)

        wg.check("torch-compile" if compiled else "torch", run().numpy(), wg.infer_reference())
        return run

    return setup


def gpt_train_torch(threads: int, compiled: bool = False) -> Runner:
    """One AdamW step of the causal GPT at batch 8 on next-token cross-entropy."""
    import torch

    from benchmarks import workloads_gpt as wg

    torch.set_num_threads(threads)
    model = _torch_gpt().train()  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), **wg.ADAMW)  # type: ignore[arg-type]
    tokens = wg.gpt_tokens(wg.TRAIN_BATCH).astype(np.int64)
    ids, targets = torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(tokens[:, 1:].copy())
    vocab = wg.GPT.vocab

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, vocab),
                                                 targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss.detach()

    f = _torch_fn(step, compiled)

    def run() -> float:
        return float(f())

    wg.check_training("torch-compile" if compiled else "torch", run)
    return run


def attention_torch(threads: int, compiled: bool = False) -> Runner:
    """scaled_dot_product_attention forward and the gradients of q, k, v for a given output
    gradient (torch.autograd.grad: no .grad accumulation)."""
    import torch

    from benchmarks import workloads_gpt as wg

    torch.set_num_threads(threads)
    arrays = wg.attention_data()
    q, k, v = (torch.from_numpy(a).requires_grad_(True) for a in arrays[:3])
    dout = torch.from_numpy(arrays[3])

    def fwd_bwd() -> object:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))

    f = _torch_fn(fwd_bwd, compiled)
    got = f()
    wg.check("torch-compile" if compiled else "torch", tuple(t.numpy() for t in got),
             wg.attention_reference())
    return f


def gpt_decode_torch(threads: int) -> Runner:
    """One token of a hand-written KV-cache decode per call (torch eager, inference_mode):
    the TorchGPT's weights, K and V of each layer preallocated (1, heads, Tmax, Dh), the
    new row written at pos and scaled_dot_product_attention over rows [0, pos]; positions
    as workloads_gpt.decode_positions. Setup fills the caches by decoding every position
    once (the prompt too, one token at a time) and checks each position's logits."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from benchmarks import workloads_gpt as wg
    from benchmarks.torch_nets import TorchGPT

    torch.set_num_threads(threads)
    c = wg.GPT
    model = TorchGPT(c.vocab, c.d, c.heads, c.ffn, c.layers, wg.DECODE_MAX_LEN)
    model = model.load(wg.decode_params()).eval()
    dh = c.d // c.heads
    caches = [(torch.zeros(1, c.heads, wg.DECODE_MAX_LEN, dh),
               torch.zeros(1, c.heads, wg.DECODE_MAX_LEN, dh)) for _ in model.blocks]

    def decode(token: torch.Tensor, pos: int) -> torch.Tensor:
        """Logits (1, vocab) of `token` (1,) at position `pos`; writes the caches at pos."""
        x = model.wte(token) + model.wpe.weight[pos]  # (1, d)
        for block, (k_cache, v_cache) in zip(model.blocks, caches, strict=True):
            attn = block.self_attn
            h = F.layer_norm(x, (c.d,), block.norm1.weight, block.norm1.bias)
            q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(
                3, c.heads, 1, dh)
            k_cache[0, :, pos] = k[:, 0]
            v_cache[0, :, pos] = v[:, 0]
            o = F.scaled_dot_product_attention(q[None], k_cache[:, :, :pos + 1],
                                               v_cache[:, :, :pos + 1])
            x = x + F.linear(o.reshape(1, c.d), attn.out_proj.weight, attn.out_proj.bias)
            h = F.layer_norm(x, (c.d,), block.norm2.weight, block.norm2.bias)
            x = x + block.linear2(F.gelu(block.linear1(h)))
        return model.head(model.ln_f(x))

    tokens = torch.from_numpy(wg.decode_tokens().astype(np.int64))[0]
    want = wg.decode_reference()
    with torch.inference_mode():
        got = [decode(tokens[pos:pos + 1], pos)[0].numpy() for pos in range(wg.DECODE_MAX_LEN)]
    wg.check("torch (decode)", np.stack(got), want)
    positions = wg.decode_positions()
    feeds = [tokens[pos:pos + 1].clone() for pos in range(wg.DECODE_MAX_LEN)]

    def run() -> object:
        pos = next(positions)
        with torch.inference_mode():
            return decode(feeds[pos], pos).argmax(-1)

    return run
