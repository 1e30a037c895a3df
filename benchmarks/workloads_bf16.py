"""bf16 at batch 1 (issue 17 x issue 15): the GEMV and the GPT's KV-cache decode.

- `gemv_f32_1` / `gemv_bf16_1`: y = x @ W + b, x (1, K) float32, W (K, N) a frozen weight,
  K = N = 1024 (W: 4 MB in float32, 2 MB in bf16: past L2, so the rate is the bandwidth W
  streams in at). graphc bf16: `gc.autocast` of the float32 graph (W stored once in bf16 as
  (N, K), x rounded to bf16, float32 accumulation; `codegen/gemm/gemv_bf16.py`); torch: the
  same in bf16 tensors (`F.linear` on bf16 x and W, oneDNN). Rate: GB/s of W's bytes.
- `gpt_decode_bf16`: `gpt_decode` (workloads_gpt.py: model, weights, positions) with
  `Generator(precision="bfloat16")`. Setup checks the logits of every timed position against
  the float64 reference within a bf16 tolerance and prints the top-1 agreement with it.
  Rate: GB/s of what a step must read (bf16 weights, float32 cache rows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks import workloads_gpt as wg

Runner = Callable[[], object]
K = N = 1024
# Of max |logit|: bf16 weights and activations with float32 sums; int8 weights and uint8
# activations (per tensor, per call) with int32 sums.
DECODE_RTOL = {"bfloat16": 2e-2, "int8": 5e-2}


def gemv_bytes(itemsize: int) -> float:
    return float(K * N * itemsize)


def _gemv_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(31)
    return (rng.standard_normal((1, K)).astype(np.float32),
            (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32),
            rng.standard_normal(N).astype(np.float32))


def _gemv(threads: int, bf16: bool) -> Runner:
    import graphc as gc

    x, w, b = _gemv_data()
    with gc.Graph("gemv") as g:
        px = gc.placeholder(x.shape, gc.float32, name="x")
        y = gc.matmul(px, gc.variable(w, name="w")) + gc.variable(b, name="b")
        g.add_signature("run", [px], [y])
    if bf16:
        g = gc.autocast(g)
    f = gc.compile(g, signature="run", options=gc.CompileOptions(threads=threads))
    (got,) = f(x)
    xr, wr = x.astype(np.float64), w.astype(np.float64)
    if bf16:
        xr = gc.from_bfloat16(gc.to_bfloat16(x)).astype(np.float64)
        wr = gc.from_bfloat16(gc.to_bfloat16(w)).astype(np.float64)
    bound = K * 2.0**-24 * (np.abs(xr) @ np.abs(wr)) + 1e-6 * np.abs(b)
    if not np.all(np.abs(got - (xr @ wr + b)) <= bound + 1e-6):
        raise AssertionError("graphc gemv: result outside the float32-accumulation bound")
    return lambda: f(x)


def gemv_f32_graphc(threads: int) -> Runner:
    return _gemv(threads, bf16=False)


def gemv_bf16_graphc(threads: int) -> Runner:
    return _gemv(threads, bf16=True)


def gemv_f32_torch(threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    x, w, b = (torch.from_numpy(a) for a in _gemv_data())
    wt = w.t().contiguous()
    return lambda: torch.nn.functional.linear(x, wt, b)


def gemv_bf16_torch(threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    x, w, b = (torch.from_numpy(a) for a in _gemv_data())
    wt = w.t().contiguous().bfloat16()
    bb = b.bfloat16()
    return lambda: torch.nn.functional.linear(x.bfloat16(), wt, bb)


def decode_bytes_bf16() -> float:
    """`wg.decode_bytes` with the matmul weights in bf16 (2 bytes) and the cache float32."""
    c = wg.GPT
    weights = c.layers * (4 * c.d * c.d + 2 * c.d * c.ffn) + c.d * c.vocab
    return wg.decode_bytes() - 2.0 * weights


def gpt_decode_lowp_graphc(precision: str) -> Callable[[int], Runner]:
    """`wg.gpt_decode_graphc` with `Generator(precision=...)`: "bfloat16" (autocast) or
    "int8" (quantize_dynamic); its logits are checked against float64 first."""

    def setup(threads: int) -> Runner:
        import graphc as gc

        c = wg.GPT
        gpt = gc.nn.GPT(c.vocab, c.d, c.layers, c.heads, c.ffn, max_len=wg.DECODE_MAX_LEN)
        gen = gc.nn.Generator(gpt, max_len=wg.DECODE_MAX_LEN, temperature=0.0,
                              return_logits=True, precision=precision,
                              options=gc.CompileOptions(threads=threads))
        sub = gpt.sublayers
        nodes = {"wte": sub["wte"].weights["embeddings"],
                 "wpe": sub["wpe"].weights["embeddings"],
                 "lnf_g": sub["ln_f"].weights["gamma"], "lnf_b": sub["ln_f"].weights["beta"],
                 "head_w": sub["lm_head"].weights["kernel"],
                 "head_b": sub["lm_head"].weights["bias"]}
        for i, block in enumerate(gpt.blocks):
            nodes.update(zip(wg._block_names(i), wg._graphc_block_weights(block), strict=True))
        params = wg.decode_params()
        for name, node in nodes.items():
            gen.graph.variables[node.name] = params[name]  # before the first compile
        tokens = wg.decode_tokens().astype(np.int64)
        want = wg.decode_reference()
        gen.prefill(tokens[:, :wg.DECODE_PROMPT])
        step = gen.decode_executable
        got = np.stack([step(tokens[:, pos], np.int64(pos))[1][0]
                        for pos in range(wg.DECODE_PROMPT, wg.DECODE_MAX_LEN)])
        ref = want[wg.DECODE_PROMPT:]
        err = float(np.max(np.abs(got - ref))) / float(np.max(np.abs(ref)))
        if not err <= DECODE_RTOL[precision]:
            raise AssertionError(f"graphc {precision} decode: max error {err:.2e} of max "
                                 f"|logit| exceeds {DECODE_RTOL[precision]}")
        agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
        print(f"graphc {precision} decode: logits within {err:.2e} of max |logit|, top-1 "
              f"agreement with float64 {agree:.3f} over {len(ref)} positions")
        positions = wg.decode_positions()
        feeds = [(tokens[:, pos].copy(), np.int64(pos)) for pos in range(wg.DECODE_MAX_LEN)]

        def run() -> object:
            return step(*feeds[next(positions)])

        return run

    return setup
