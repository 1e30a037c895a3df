"""gc.nn.GPT, KV-cached attention and gc.nn.Generator.

- A prefill plus decode steps with the cache give the logits of the full causal forward at
  every position (reference f64 tight, compiled f64 and f32), with learned and rotary
  positions, grouped-query heads, RMS norms and tied embeddings.
- Greedy generation is argmax decoding with the whole forward recomputed each step;
  sampling is reproducible per seed and differs across seeds; top-k never leaves the top k;
  temperature near 0 is greedy; Gumbel-max draws follow softmax.
- Each signature is compiled once; positions past the cache are errors naming them.
- The exported decode step generates the same ids from C (examples/gpt_generate_c).

Small models throughout (vocabulary 37, d = 32), so the file runs in seconds.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.nn import generate as generate_mod
from graphc.nn.generate import _kth_largest, sample

V, D, LAYERS, HEADS, FF, MAX_LEN = 37, 32, 2, 4, 64, 24
RNG = np.random.default_rng(7)
TOL = {"float64": (1e-10, 1e-12), "float32": (2e-5, 1e-5)}


def make_gpt(dtype: str = "float32", **kwargs: Any) -> nn.GPT:
    return nn.GPT(V, D, LAYERS, HEADS, FF, MAX_LEN, dtype=dtype, seed=3, **kwargs)


def full_forward(gpt: nn.GPT, batch: int, steps: int) -> Any:
    """The training-mode graph's forward (no dropout here) as a compiled function."""
    with gc.Graph("full") as g:
        tokens = gc.placeholder((batch, steps), gc.int64, name="tokens")
        logits = gpt(tokens)
    return g, tokens, logits


# --- the cache gives the full forward's logits ----------------------------------------------

CONFIGS = {
    "learned": {},
    "rope-gqa": {"positions": "rope", "num_kv_heads": 2},
    "rms-tied": {"norm": "rms", "tie_embeddings": True, "num_kv_heads": 1},
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("dtype,backend", [("float64", "reference"), ("float64", "compiled"),
                                           ("float32", "compiled")])
def test_decode_with_cache_equals_the_full_forward(config: str, dtype: str,
                                                   backend: str) -> None:
    batch, steps, prompt = 2, 10, 4
    gpt = make_gpt(dtype, **CONFIGS[config])
    g, tokens, logits = full_forward(gpt, batch, steps)
    ids = RNG.integers(0, V, (batch, steps))
    want = (gc.reference if dtype == "float64" else gc.compile)(g, [tokens], [logits])(ids)[0]
    gen = nn.Generator(gpt, max_len=16, batch=batch, temperature=0.0, return_logits=True,
                       backend=backend)
    assert gen.graph is g  # the generator shares the model's graph and weights
    got = [gen.prefill(ids[:, :prompt])[1]]
    for pos in range(prompt, steps):
        got.append(gen.step(ids[:, pos], pos)[1])
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.stack(got, 1), want[:, prompt - 1:], rtol=rtol, atol=atol)
    # A second sequence overwrites the first one's cache rows; stale rows stay hidden.
    other = RNG.integers(0, V, (batch, steps))
    want2 = gc.reference(g, [tokens], [logits])(other)[0] if dtype == "float64" else None
    gen.prefill(other[:, :2])
    for pos in range(2, 6):
        step_logits = gen.step(other[:, pos], pos)[1]
        if want2 is not None:
            np.testing.assert_allclose(step_logits, want2[:, pos], rtol=rtol, atol=atol)


def test_greedy_generation_is_argmax_of_the_recomputed_forward() -> None:
    gpt = make_gpt("float64", positions="rope")
    total, prompt = 20, [5, 1, 30]
    g, tokens, logits = full_forward(gpt, 1, total)
    forward = gc.compile(g, [tokens], [logits])
    gen = nn.Generator(gpt, max_len=MAX_LEN, temperature=0.0)
    got = gen.generate(prompt, total - len(prompt))
    seq = np.zeros((1, total), np.int64)  # causal: padding after t never changes t's logits
    seq[0, :len(prompt)] = prompt
    for t in range(len(prompt), total):
        seq[0, t] = np.argmax(forward(seq)[0][0, t - 1])
    np.testing.assert_array_equal(got, seq[0])
    assert got.dtype == np.int64 and got.shape == (total,)


# --- sampling ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sampler() -> nn.Generator:
    return nn.Generator(make_gpt(), max_len=MAX_LEN, batch=3, temperature=1.5, top_k=4,
                        seed=11, return_logits=True)


def test_sampling_is_reproducible_per_seed_and_differs_across_seeds(
        sampler: nn.Generator) -> None:
    prompt = RNG.integers(0, V, (3, 3))
    first = sampler.generate(prompt, 15)
    np.testing.assert_array_equal(sampler.generate(prompt, 15), first)
    np.testing.assert_array_equal(sampler.generate(prompt, 15, seed=11), first)
    other = sampler.generate(prompt, 15, seed=12)
    assert not np.array_equal(other[:, 3:], first[:, 3:])
    np.testing.assert_array_equal(other[:, :3], prompt)
    assert sampler.compiles == 2  # a new seed is a variable's value, not a new program


def test_top_k_never_leaves_the_top_k(sampler: nn.Generator) -> None:
    nxt, logits = sampler.prefill(RNG.integers(0, V, (3, 2)))
    outside_argmax = 0
    for pos in range(2, MAX_LEN - 1):
        kth = np.sort(logits, axis=1)[:, -4]
        assert (logits[np.arange(3), nxt] >= kth).all(), pos
        outside_argmax += int((nxt != logits.argmax(1)).sum())
        nxt, logits = sampler.step(nxt, pos)
    assert outside_argmax > 5  # it does sample (temperature 1.5), within the top 4


def test_kth_largest_counts_ties_and_top_k_keeps_tied_values() -> None:
    rows = np.array([[5, 5, 3, 3, 1, 0], [0, 1, 2, 3, 4, 5]], np.float64)
    with gc.Graph("t") as g:
        x = gc.placeholder(rows.shape, gc.float64, name="x")
        kth = [_kth_largest(x, k) for k in (1, 2, 3, 5)]
    got = gc.reference(g, [x], kth)(rows)
    assert [list(v[:, 0]) for v in got] == [[5, 5], [5, 4], [3, 3], [1, 1]]


def test_gumbel_max_draws_follow_softmax() -> None:
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    draws = 20000
    with gc.Graph("t") as g:
        x = gc.constant(np.tile(logits, (draws, 1)))
        ids = sample(x, gc.constant(np.int64(3)), temperature=1.0, top_k=None)
    counts = np.bincount(gc.compile(g, [], [ids])()[0], minlength=4) / draws
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.15, 0.1], atol=0.015)


def test_temperature_near_zero_is_greedy() -> None:
    gpt = make_gpt()
    prompt = RNG.integers(0, V, (2, 4))
    greedy = nn.Generator(gpt, max_len=MAX_LEN, batch=2, temperature=0.0)
    cold = nn.Generator(gpt, max_len=MAX_LEN, batch=2, temperature=1e-4, top_k=5, seed=4)
    np.testing.assert_array_equal(cold.generate(prompt, 16), greedy.generate(prompt, 16))
    assert greedy.name == "generate" and cold.name == "generate_1"  # separate caches


# --- compiled once; errors -------------------------------------------------------------------

def test_each_signature_compiles_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    real = generate_mod.compile_graph

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("signature"))
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_mod, "compile_graph", counting)
    gen = nn.Generator(make_gpt(), max_len=MAX_LEN, temperature=0.7, seed=1)
    gen.generate([1, 2, 3], 12)
    decode = gen.decode_executable
    gen.generate([4, 5, 6], 18)
    gen.generate([7, 8], 5)
    assert gen.decode_executable is decode
    assert calls == ["generate/prefill_3", "generate/decode", "generate/prefill_2"]
    assert gen.compiles == 3
    assert set(gen.graph.signatures) >= {"generate/decode", "generate/prefill_3"}


def test_positions_past_the_cache_are_errors_naming_them() -> None:
    gen = nn.Generator(make_gpt(positions="rope"), max_len=8, temperature=0.0)
    with pytest.raises(gc.GraphcError, match=r"pos: expected an int in \[0, max_len=8\), "
                                             r"got 8"):
        gen.step(np.array([1]), 8)
    with pytest.raises(gc.GraphcError, match=r"need 9 cache positions; the generator's "
                                             r"max_len is 8"):
        gen.generate([1, 2, 3], 7)
    assert len(gen.generate([1, 2, 3], 6)) == 9  # 8 positions fed: fits exactly
    with pytest.raises(gc.GraphcError, match=r"dynamic_update_slice: a start in .*"
                                             r"%generate/pos.* is out of range"):
        gen.decode_executable(np.array([1]), np.int64(8))  # the compiled check itself


def test_bad_arguments_name_the_layer_and_the_values() -> None:
    with pytest.raises(gc.GraphcError, match=r"GPT: positions must be one of"):
        nn.GPT(10, 8, 1, 2, 16, 8, positions="sinusoid")
    with pytest.raises(gc.GraphcError, match=r"num_kv_heads 3 must divide num_heads"):
        nn.GPT(10, 8, 1, 2, 16, 8, num_kv_heads=3)
    gpt = make_gpt()
    with pytest.raises(gc.GraphcError, match=r"max_len 30 exceeds the GPT's learned "
                                             r"positions \(max_len 24\)"):
        nn.Generator(gpt, max_len=30)
    with pytest.raises(gc.GraphcError, match=r"top_k must be None or an int >= 1, got 0"):
        nn.Generator(gpt, max_len=8, top_k=0)
    gen = nn.Generator(gpt, max_len=8, batch=2, temperature=0.0)
    with pytest.raises(gc.GraphcError, match=r"prompt_ids: expected int ids \(batch=2"):
        gen.generate([1, 2], 3)
    with gc.Graph("t"):
        x = gc.placeholder((1, 1, 8), gc.float32, name="x")
        pos = gc.placeholder((), gc.int64, name="pos")
        mha = nn.MultiHeadAttention(2)
        cache = nn.KVCache.zeros("c", 1, 2, 6, 4)
        with pytest.raises(gc.GraphcError, match=r"MultiHeadAttention 'multi_head_attention'"
                                                 r": cache: a KV cache serves a causal"):
            mha(x, cache=cache, pos=pos)
        causal = nn.MultiHeadAttention(2, causal=True, num_kv_heads=1)
        with pytest.raises(gc.GraphcError, match=r"cache.k: expected \(B, Hkv, Tmax, Dh\) = "
                                                 r"\(1, 1, 6, 4\) of float32, got f32\[1,2,6,4\]"):
            causal(x, cache=cache, pos=pos)
        with pytest.raises(gc.GraphcError, match=r"pos: expected an int32/int64 scalar"):
            nn.MultiHeadAttention(2, causal=True)(x, cache=cache, pos=3)  # type: ignore[arg-type]


# --- training -----------------------------------------------------------------------------

def test_gpt_trains_in_gc_model_and_with_a_hand_written_adamw_step() -> None:
    steps = 8
    x = RNG.integers(0, 12, (64, steps))
    y = np.roll(x, 1, axis=1)  # copy the previous token: needs attention
    gpt = nn.GPT(12, 16, 2, 2, 32, steps, dropout=0.1, seed=0)
    model = gc.Model(gpt, input_shape=(steps,), input_dtype="int64",
                     loss="sparse_categorical_crossentropy",
                     optimizer=gc.optim.AdamW(1e-2, weight_decay=0.0), metrics=[])
    losses = model.fit(x, y, batch_size=16, epochs=10, verbose=0, seed=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert "gpt/h1/self_attn/qkv_kernel" in model.weight_names
    gen = nn.Generator(gpt, max_len=steps, temperature=0.0)  # on the trained model's graph
    assert gen.graph is model.graph and len(gen.generate([3, 5, 7], 4)) == 7

    tied = nn.GPT(12, 16, 1, 2, 32, steps, tie_embeddings=True, norm="rms", seed=1)
    with gc.Graph("train") as g:
        xs = gc.placeholder((16, steps), gc.int64, name="x")
        ys = gc.placeholder((16, steps), gc.int64, name="y")
        logits = tied(xs, training=True)
        loss = gc.mean(gc.softmax_cross_entropy(logits, ys))
        updates = gc.optim.AdamW(1e-2).minimize(loss)
    assert "gpt/lm_head/kernel" not in g.variables  # the head is the embedding table
    step = gc.compile(g, [xs, ys], [loss], updates=updates)
    history = [float(step(x[i % 4 * 16:(i % 4 + 1) * 16], y[i % 4 * 16:(i % 4 + 1) * 16])[0])
               for i in range(40)]
    assert history[-1] < 0.7 * history[0]


# --- the exported decode step, from C ---------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt_generate_c"


def _example_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpt_generate_c_model", EXAMPLE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler `cc`")
def test_c_generation_equals_python_greedy_ids(tmp_path: Path) -> None:
    example = _example_model()
    gen, chars = example.build(steps=20)
    lib = gen.export(tmp_path / "libgpt.so")
    assert lib.metadata["trains"]  # the caches are state in the library's context
    prompt = example.encode(chars, "First Citizen:\n")
    want = gen.generate(prompt, 40)[len(prompt):]
    exe = tmp_path / "gpt_generate"
    cc = subprocess.run([str(shutil.which("cc")), "-O2", "-std=c99", "-Wall", "-Wextra",
                         "-Werror", f"-I{tmp_path}", "-o", str(exe), str(EXAMPLE / "main.c"),
                         f"-L{tmp_path}", "-lgpt", f"-Wl,-rpath,{tmp_path}"],
                        capture_output=True, text=True, check=False)
    assert cc.returncode == 0, cc.stderr
    (tmp_path / "vocab.txt").write_bytes(chars.encode("ascii"))
    done = subprocess.run([str(exe), "-v", str(tmp_path / "vocab.txt"), "40",
                           *map(str, prompt)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    ids_line, text_line = done.stdout.splitlines()[:2]
    np.testing.assert_array_equal(np.array(ids_line.split(), np.int64), want)
    assert text_line == "".join(chars[i] for i in want)
    assert "us/token" in done.stderr
    # Past the cache (max_len 128), the library refuses the call and says why (here the
    # learned positions' lookup fails first, before the cache write would).
    done = subprocess.run([str(exe), "200", "1"], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "step 128:" in done.stderr
    assert "out of range" in done.stderr and "model.py" in done.stderr
