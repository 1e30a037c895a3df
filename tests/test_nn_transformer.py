"""gc.nn transformer layers: MultiHeadAttention, TransformerEncoderLayer,
TransformerDecoderLayer, PositionalEmbedding.

- Parity (llm.c's pattern): a 2-layer d=256 GPT built with the layers against a PyTorch twin
  with the same weights (`tests/gpt_twin.py`): logits, and the losses of 10 AdamW steps, on
  the reference interpreter and compiled (the compiled cases skip until the attention
  kernels exist).
- Layers against torch's own modules (f64, copied weights) and an independent numpy
  attention (grouped-query heads), masks, causality, gradients (`gc.check_grad`), Sequential
  and gc.Model, errors.

Small shapes everywhere but the parity case; the file runs in well under a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc import nn

RNG = np.random.default_rng(15)



def _torch() -> Any:
    return pytest.importorskip("torch", reason="PyTorch is the reference of these tests")


def _twin() -> Any:
    _torch()
    from tests import gpt_twin
    return gpt_twin


def rand(*shape: int, dtype: Any = np.float64) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def run(fn: Callable[..., gc.Node], *arrays: np.ndarray, training: bool = False,
        compiled: bool = False) -> tuple[np.ndarray, gc.Graph]:
    """`fn` on placeholders for `arrays`, run once on the reference (or compiled)."""
    with gc.Graph("t") as g:
        phs = [gc.placeholder(a.shape, gc.DType.of(a.dtype), name=f"in{i}")
               for i, a in enumerate(arrays)]
        with nn.Scope(training=training):
            out = fn(*phs)
    make = gc.compile if compiled else gc.reference
    return make(g, phs, [out])(*arrays)[0], g


# --- parity: a small GPT against its PyTorch twin --------------------------------------------

B, T_FULL, T_TRAIN = 2, 128, 16
TOL = {"float32": 1e-5, "float64": 1e-10}


def _gpt_graph(twin: Any, dtype: str, steps: int, training: bool = False) -> tuple[Any, ...]:
    config = twin.GPTConfig()
    with gc.Graph("gpt") as g:
        ids = gc.placeholder((B, steps), gc.int32, name="ids")
        net = twin.build_gpt(config, dtype)
        logits = net(ids, training=training)
    return config, g, ids, net, logits


@pytest.mark.parametrize("compiled", [False, True],
                         ids=["reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpt_logits_match_the_torch_twin(dtype: str, compiled: bool) -> None:
    torch = _torch()
    twin = _twin()
    config, g, ids, net, logits = _gpt_graph(twin, dtype, T_FULL)
    model = twin.TorchGPT(config).to(getattr(torch, dtype))
    twin.copy_gpt(g, net, model)
    x = RNG.integers(0, config.vocab, (B, T_FULL)).astype(np.int32)
    run_fn = (gc.compile if compiled else gc.reference)(g, [ids], [logits])
    ours = run_fn(x)[0]
    theirs = model(torch.from_numpy(x).long()).detach().numpy()
    assert ours.dtype == np.dtype(dtype)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL[dtype])


ADAMW = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
_TORCH_LOSSES: dict[str, list[float]] = {}  # per dtype: the reference and compiled cases share


def _training_data() -> list[np.ndarray]:
    """10 batches of a learnable stream (small alphabet), so the loss really moves."""
    rng = np.random.default_rng(10)
    return [rng.integers(0, 50, (B, T_TRAIN + 1)).astype(np.int32) for _ in range(10)]


def _torch_losses(twin: Any, config: Any, g: gc.Graph, net: nn.Sequential, dtype: str
                  ) -> list[float]:
    """The twin's losses over `_training_data` from the graph's (initial) weights."""
    if dtype not in _TORCH_LOSSES:
        torch = _torch()
        model = twin.TorchGPT(config).to(getattr(torch, dtype))
        twin.copy_gpt(g, net, model)
        opt = torch.optim.AdamW(model.parameters(), **ADAMW)
        losses = []
        for x in _training_data():
            inputs, targets = (torch.from_numpy(a).long() for a in (x[:, :-1], x[:, 1:]))
            loss = torch.nn.functional.cross_entropy(
                model(inputs).reshape(-1, config.vocab), targets.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        _TORCH_LOSSES[dtype] = losses
    return _TORCH_LOSSES[dtype]


@pytest.mark.parametrize("compiled", [False, True],
                         ids=["reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpt_adamw_steps_match_the_torch_twin(dtype: str, compiled: bool) -> None:
    twin = _twin()
    config, g, ids, net, logits = _gpt_graph(twin, dtype, T_TRAIN, training=True)
    with g:
        targets = gc.placeholder((B, T_TRAIN), gc.int32, name="targets")
        loss = gc.mean(gc.softmax_cross_entropy(logits, targets))
        updates = gc.optim.AdamW(**ADAMW).minimize(loss)
    theirs = _torch_losses(twin, config, g, net, dtype)  # before our steps move the weights
    step = (gc.compile if compiled else gc.reference)(g, [ids, targets], [loss],
                                                      updates=updates)
    ours = [float(step(x[:, :-1], x[:, 1:])[0]) for x in _training_data()]
    assert ours[-1] < ours[0] - 1.0  # it trained
    np.testing.assert_allclose(ours, theirs, rtol=TOL[dtype], atol=0)


# --- MultiHeadAttention ------------------------------------------------------------------------

def np_attention(x: np.ndarray, ctx: np.ndarray, w_q: np.ndarray, b_q: np.ndarray,
                 w_kv: np.ndarray, b_kv: np.ndarray, w_o: np.ndarray, b_o: np.ndarray,
                 heads: int, kv_heads: int, causal: bool = False,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """Independent multi-head attention: projections, key/value heads repeated for their
    query groups, masked softmax, merge, output projection. `keep` (B, T, S): True attends."""
    b, t, _ = x.shape
    s = ctx.shape[1]
    q = (x @ w_q + b_q).reshape(b, t, heads, -1).transpose(0, 2, 1, 3)
    dh = q.shape[-1]
    kv = ctx @ w_kv + b_kv
    k = kv[..., :kv_heads * dh].reshape(b, s, kv_heads, dh).transpose(0, 2, 1, 3)
    v = kv[..., kv_heads * dh:].reshape(b, s, kv_heads, dh).transpose(0, 2, 1, 3)
    k, v = (np.repeat(a, heads // kv_heads, axis=1) for a in (k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    allowed = np.ones((b, 1, t, s), bool)
    if causal:
        allowed = allowed & np.tril(np.ones((t, s), bool))
    if keep is not None:
        allowed = allowed & keep[:, None]
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(b, t, heads * dh)
    return o @ w_o + b_o


def _weights(g: gc.Graph, layer: nn.Layer) -> dict[str, np.ndarray]:
    return {short: g.variables[node.name] for short, node in layer.weights.items()}


def test_mha_self_attention_shapes_and_weights() -> None:
    mha = nn.MultiHeadAttention(4, causal=True)
    out, g = run(mha, rand(2, 5, 16))
    assert out.shape == (2, 5, 16)
    w = _weights(g, mha)
    assert {k: v.shape for k, v in w.items()} == {
        "qkv_kernel": (16, 48), "qkv_bias": (48,), "out_kernel": (16, 16), "out_bias": (16,)}
    assert not w["qkv_bias"].any() and not w["out_bias"].any()  # PyTorch's zero biases
    assert np.abs(w["qkv_kernel"]).max() <= np.sqrt(6 / (16 + 48))  # xavier over (D, 3D)
    assert np.abs(w["out_kernel"]).max() <= 1 / np.sqrt(16)  # nn.Linear's default
    assert all(v.dtype == np.float64 for v in w.values())
    assert mha.count_params() == 16 * 48 + 48 + 16 * 16 + 16


@pytest.mark.parametrize(("heads", "kv_heads", "key_dim", "causal"),
                         [(4, 4, None, False), (4, 2, None, True), (4, 1, 3, False)],
                         ids=["mha", "gqa", "mqa-key-dim"])
def test_mha_matches_numpy_attention(heads: int, kv_heads: int, key_dim: int | None,
                                     causal: bool) -> None:
    mha = nn.MultiHeadAttention(heads, num_kv_heads=kv_heads, key_dim=key_dim, causal=causal)
    x = rand(2, 6, 8)
    out, g = run(mha, x)
    w = _weights(g, mha)
    dh = key_dim or 8 // heads
    inner = heads * dh
    assert w["qkv_kernel"].shape == (8, inner + 2 * kv_heads * dh)
    want = np_attention(x, x, w["qkv_kernel"][:, :inner], w["qkv_bias"][:inner],
                        w["qkv_kernel"][:, inner:], w["qkv_bias"][inner:], w["out_kernel"],
                        w["out_bias"], heads, kv_heads, causal)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)


def test_mha_cross_attention_with_another_width_matches_torch() -> None:
    torch = _torch()
    mha = nn.MultiHeadAttention(2, use_bias=True)
    x, ctx = rand(2, 3, 8), rand(2, 5, 6)
    keep = np.ones((2, 5), bool)
    keep[1, 3:] = False
    out, g = run(lambda a, c, m: mha(a, c, padding_mask=m), x, ctx, keep)
    w = _weights(g, mha)
    assert w["q_kernel"].shape == (8, 8) and w["kv_kernel"].shape == (6, 16)
    ref = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True,
                                      dtype=torch.float64)
    with torch.no_grad():
        ref.q_proj_weight.copy_(torch.from_numpy(w["q_kernel"].T.copy()))
        ref.k_proj_weight.copy_(torch.from_numpy(w["kv_kernel"][:, :8].T.copy()))
        ref.v_proj_weight.copy_(torch.from_numpy(w["kv_kernel"][:, 8:].T.copy()))
        ref.in_proj_bias.copy_(torch.from_numpy(np.concatenate([w["q_bias"], w["kv_bias"]])))
        ref.out_proj.weight.copy_(torch.from_numpy(w["out_kernel"].T.copy()))
        ref.out_proj.bias.copy_(torch.from_numpy(w["out_bias"]))
    theirs, _ = ref(*(torch.from_numpy(a) for a in (x, ctx, ctx)),
                    key_padding_mask=torch.from_numpy(~keep), need_weights=False)
    np.testing.assert_allclose(out, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_mha_fused_kernel_serves_cross_attention_of_the_same_width() -> None:
    mha = nn.MultiHeadAttention(2)
    x, ctx = rand(1, 3, 4), rand(1, 5, 4)
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float64, name="x")
        c = gc.placeholder(ctx.shape, gc.float64, name="c")
        self_out, cross_out = mha(a), mha(a, c)  # one set of weights
    got = gc.reference(g, [a, c], [self_out, cross_out])(x, ctx)
    w = _weights(g, mha)
    assert set(w) == {"qkv_kernel", "qkv_bias", "out_kernel", "out_bias"}
    args = (w["qkv_kernel"][:, :4], w["qkv_bias"][:4], w["qkv_kernel"][:, 4:],
            w["qkv_bias"][4:], w["out_kernel"], w["out_bias"], 2, 2)
    np.testing.assert_allclose(got[0], np_attention(x, x, *args), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], np_attention(x, ctx, *args), rtol=1e-10, atol=1e-12)


def test_mha_masks_bool_additive_padding_and_per_example() -> None:
    mha = nn.MultiHeadAttention(2)
    x = rand(2, 4, 6)
    keep = RNG.random((2, 4, 4)) < 0.7
    keep[..., 0] = True  # no fully masked rows
    additive = np.where(keep, 0.0, -np.inf)
    pad = np.array([[True] * 4, [True, True, True, False]])
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float64, name="x")
        outs = [mha(a, mask=keep), mha(a, mask=additive), mha(a, mask=keep[0]),
                mha(a, padding_mask=pad), mha(a, mask=keep, padding_mask=pad),
                mha(a, mask=additive, padding_mask=pad)]
    got = gc.reference(g, [a], outs)(x)
    w = _weights(g, mha)
    args = (w["qkv_kernel"][:, :6], w["qkv_bias"][:6], w["qkv_kernel"][:, 6:],
            w["qkv_bias"][6:], w["out_kernel"], w["out_bias"], 2, 2)
    both = keep & pad[:, None, :]
    wants = [keep, keep, np.broadcast_to(keep[0], keep.shape), np.broadcast_to(
        pad[:, None, :], keep.shape), both, both]
    for out, want in zip(got, wants, strict=True):
        np.testing.assert_allclose(out, np_attention(x, x, *args, keep=want), rtol=1e-10,
                                   atol=1e-12)


def test_causal_attention_ignores_the_future() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, causal=True)
    x = rand(1, 6, 8)
    changed = x.copy()
    changed[0, 4:] += 10.0
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float64, name="x")
        out = layer(a)
    fn = gc.reference(g, [a], out)
    before, after = fn(x), fn(changed)
    np.testing.assert_array_equal(before[0, :4], after[0, :4])
    assert np.abs(before[0, 4:] - after[0, 4:]).min() > 1e-3


def test_padding_mask_hides_padded_keys() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    x = rand(2, 5, 8)
    pad = np.array([[True] * 5, [True, True, True, False, False]])
    changed = x.copy()
    changed[1, 3:] = rand(2, 8) * 5
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float64, name="x")
        out = layer(a, padding_mask=pad)
    fn = gc.reference(g, [a], out)
    before, after = fn(x), fn(changed)
    np.testing.assert_array_equal(before[1, :3], after[1, :3])  # real tokens unaffected
    np.testing.assert_array_equal(before[0], after[0])


def test_mha_dropout_drops_the_merged_output_in_training_only() -> None:
    mha = nn.MultiHeadAttention(2, dropout=0.5, seed=3)
    x = rand(2, 4, 8)
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float64, name="x")
        infer = mha(a)
        with nn.Scope(training=True) as scope:
            train = mha(a)
    assert set(scope.updates) == {mha.weights["step"]}
    fn = gc.reference(g, [a], [infer, train], updates=scope.updates)
    first, second = fn(x), fn(x)
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.allclose(first[1], first[0])
    assert not np.allclose(first[1], second[1])  # a fresh mask each step
    assert int(g.variables[mha.weights["step"].name]) == 2


def test_mha_gradients_check_in_float64() -> None:
    def fn(x: gc.Node, c: gc.Node) -> gc.Node:
        keep = np.array([[True, True, False, True]] * 2)
        self_attn = nn.MultiHeadAttention(2, num_kv_heads=1, causal=True, seed=1)
        cross = nn.MultiHeadAttention(2, seed=2)  # separate q and kv kernels (c is 3 wide)
        fused_cross = nn.MultiHeadAttention(2, seed=3)  # column slices of one qkv kernel
        h = self_attn(x)
        return fused_cross(cross(h, c, padding_mask=keep), h, mask=np.triu(np.ones((3, 3))))

    # The data are this test's own (not the module's shared stream, which would make the
    # result depend on which tests ran before). The context reaches the output through
    # two attentions and a padding mask, so its directional derivatives are ~1e-5: the
    # floor judges derivatives that small by their absolute error (~1e-10 here) instead
    # of dividing finite-difference noise by them.
    rng = np.random.default_rng(11)
    args = [rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 3))]
    gc.check_grad(fn, args, floor=1e-3).assert_ok(1e-6)


def test_encoder_layer_gradients_check_in_float64() -> None:
    layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, causal=True, seed=0)
    gc.check_grad(layer, [rand(2, 3, 4)]).assert_ok(1e-6)


# --- encoder and decoder layers against torch -------------------------------------------------

def _torch_mask(torch: Any, steps: int) -> Any:
    """torch's causal mask as booleans (True: *not* attended), like its padding masks."""
    return torch.ones(steps, steps, dtype=torch.bool).triu(1)


@pytest.mark.parametrize(("norm_first", "activation"), [(True, "gelu"), (False, "relu")])
def test_encoder_layer_matches_torch(norm_first: bool, activation: str) -> None:
    torch = _torch()
    twin = _twin()
    layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation=activation,
                                       norm_first=norm_first, causal=True)
    x = rand(2, 5, 8)
    pad = np.array([[True] * 5, [True] * 3 + [False] * 2])
    out, g = run(lambda a: layer(a, padding_mask=pad), x)
    assert sorted(layer.sublayers) == ["linear1", "linear2", "norm1", "norm2", "self_attn"]
    ref = torch.nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=norm_first,
                                           dtype=torch.float64)
    twin.copy_block(g, layer, ref)
    theirs = ref(torch.from_numpy(x), src_mask=_torch_mask(torch, 5), is_causal=True,
                 src_key_padding_mask=torch.from_numpy(~pad))
    np.testing.assert_allclose(out, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_decoder_layer_matches_torch() -> None:
    torch = _torch()
    twin = _twin()
    layer = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0)
    x, memory = rand(2, 4, 8), rand(2, 6, 8)
    memory_pad = np.array([[True] * 6, [True] * 4 + [False] * 2])
    out, g = run(lambda a, m: layer(a, m, memory_padding_mask=memory_pad), x, memory)
    assert set(layer.sublayers) == {"self_attn", "multihead_attn", "linear1", "linear2",
                                    "norm1", "norm2", "norm3"}
    ref = torch.nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True,
                                           dtype=torch.float64)
    twin.copy_block(g, layer, ref)
    theirs = ref(torch.from_numpy(x), torch.from_numpy(memory),
                 tgt_mask=_torch_mask(torch, 4), tgt_is_causal=True,
                 memory_key_padding_mask=torch.from_numpy(~memory_pad))
    np.testing.assert_allclose(out, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_compiled_encoder_and_decoder_match_the_reference() -> None:
    enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, causal=True, num_kv_heads=2)
    dec = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0)
    x, src = rand(2, 8, 16, dtype=np.float32), rand(2, 6, 16, dtype=np.float32)
    pad = np.array([[True] * 6, [True] * 4 + [False] * 2])
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float32, name="x")
        s = gc.placeholder(src.shape, gc.float32, name="src")
        out = dec(a, enc(s, padding_mask=pad), memory_padding_mask=pad)
        loss = gc.mean(out * out)
        grads = gc.grad(loss, g.trainable_variables)
    want = gc.reference(g, [a, s], [out, *grads])(x, src)
    got = gc.compile(g, [a, s], [out, *grads])(x, src)
    for o, e in zip(got, want, strict=True):
        np.testing.assert_allclose(o, e, rtol=1e-4, atol=1e-5)


# --- positions, RoPE, containers --------------------------------------------------------------

def test_positional_embedding_static_and_runtime_offsets() -> None:
    pos = nn.PositionalEmbedding(10, 4)
    x = rand(2, 3, 4)
    with gc.Graph("t") as g:
        a = gc.placeholder(x.shape, gc.float64, name="x")
        at = gc.placeholder((), gc.int32, name="at")
        outs = [pos(a), pos(a, 5), pos(a, at)]
    fn = gc.reference(g, [a, at], outs)
    table = g.variables["positional_embedding/embeddings"]
    assert table.shape == (10, 4) and table.dtype == np.float64
    first, fifth, runtime = fn(x, np.int32(7))
    np.testing.assert_array_equal(first, x + table[:3])
    np.testing.assert_array_equal(fifth, x + table[5:8])
    np.testing.assert_array_equal(runtime, x + table[7:10])
    compiled = gc.compile(g, [a, at], outs)
    np.testing.assert_array_equal(compiled(x, np.int32(7))[2], runtime)
    for bad in (8, -1):  # past the table, and negative (take() would wrap it)
        for run_fn in (fn, compiled):
            with pytest.raises(gc.GraphcError):
                run_fn(x, np.int32(bad))
    with gc.Graph("t2"), pytest.raises(gc.GraphcError, match=r"offset: expected an int in "
                                                              r"\[0, 7\]"):
        pos2 = nn.PositionalEmbedding(10, 4)
        pos2(gc.placeholder(x.shape, gc.float64, name="x"), 8)


@pytest.mark.skipif(getattr(gc, "rope", None) is None, reason="gc.rope is not there yet")
def test_mha_rope_rotates_queries_and_keys() -> None:
    mha = nn.MultiHeadAttention(2, rope=True)
    x = rand(1, 5, 8)
    out, g = run(mha, x)
    w = _weights(g, mha)
    q, k, v = (x @ w["qkv_kernel"][:, i * 8:(i + 1) * 8] + w["qkv_bias"][i * 8:(i + 1) * 8]
               for i in range(3))
    q, k, v = (a.reshape(1, 5, 2, 4).transpose(0, 2, 1, 3) for a in (q, k, v))
    angles = np.arange(5)[:, None] * 10000.0 ** (-np.arange(2) * 2 / 4)

    def rotate(a: np.ndarray) -> np.ndarray:  # rotate-half (GPT-NeoX, HF Llama)
        first, second = a[..., :2], a[..., 2:]
        cos, sin = np.cos(angles), np.sin(angles)
        return np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)

    q, k = rotate(q), rotate(k)
    s = q @ k.transpose(0, 1, 3, 2) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ v).transpose(0, 2, 1, 3).reshape(1, 5, 8) @ w["out_kernel"] + w["out_bias"]
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)


def _tiny_gpt(vocab: int, steps: int, dropout: float) -> nn.Sequential:
    return nn.Sequential([
        nn.Embedding(vocab, 16), nn.PositionalEmbedding(steps, 16),
        nn.TransformerEncoderLayer(16, 2, 32, dropout=dropout, causal=True),
        nn.TransformerEncoderLayer(16, 2, 32, dropout=dropout, causal=True, num_kv_heads=1),
        nn.LayerNorm(), nn.Dense(vocab)])


@pytest.mark.parametrize("backend", ["reference",
                                     "compiled"])
def test_model_fit_learns_a_sequence_task(backend: str) -> None:
    """A tiny GPT in gc.Model learns to copy the previous token (needs attention)."""
    vocab, steps = 12, 8
    net = _tiny_gpt(vocab, steps, dropout=0.1)
    model = gc.Model(net, input_shape=(steps,), input_dtype="int32",
                     loss="sparse_categorical_crossentropy",
                     optimizer=gc.optim.AdamW(1e-2, weight_decay=0.0), metrics=[],
                     backend=backend)
    x = RNG.integers(0, vocab, (64, steps)).astype(np.int32)
    y = np.roll(x, 1, axis=1)
    y[:, 0] = 0
    history = model.fit(x, y, batch_size=16, epochs=12, verbose=0, seed=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert model.predict(x[:5]).shape == (5, steps, vocab)
    names = model.weight_names
    assert "transformer_encoder_layer/self_attn/qkv_kernel" in names
    assert "transformer_encoder_layer_1/dropout1/step" in names


def test_mha_in_a_sequential_is_self_attention() -> None:
    mha = nn.MultiHeadAttention(2, causal=True)
    net = nn.Sequential([mha, nn.LayerNorm()])
    x = rand(2, 4, 6)
    out, g = run(net, x, training=True)
    w = _weights(g, mha)
    want = np_attention(x, x, w["qkv_kernel"][:, :6], w["qkv_bias"][:6],
                        w["qkv_kernel"][:, 6:], w["qkv_bias"][6:], w["out_kernel"],
                        w["out_bias"], 2, 2, causal=True)
    want = (want - want.mean(-1, keepdims=True)) / np.sqrt(want.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-10)


def test_names_seeds_and_variables_of_nested_layers() -> None:
    a = nn.TransformerEncoderLayer(8, 2, 12, seed=5)
    b = nn.TransformerEncoderLayer(8, 2, 12, seed=5)
    with gc.Graph("t") as g:
        x = gc.placeholder((1, 3, 8), gc.float32, name="x")
        b(a(x))
    assert a.name == "transformer_encoder_layer" and b.name == "transformer_encoder_layer_1"
    va, vb = (g.variables[v.name] for v in (a.variables[0], b.variables[0]))
    np.testing.assert_array_equal(va, vb)  # same seed, same weights
    k1 = g.variables[a.sublayers["linear1"].weights["kernel"].name]
    k2 = g.variables[a.sublayers["linear2"].weights["kernel"].name]
    assert not np.allclose(k1.ravel()[:12], k2.ravel()[:12])  # distinct streams per sublayer
    assert len(a.trainable_variables) == 12  # qkv, out, 2 linears (+ biases), 2 norms x 2
    assert len(a.variables) == 16  # + 4 dropout step counters: dropout{,1,2}, self_attn's


# --- errors -----------------------------------------------------------------------------------

def test_errors_name_the_layer_and_the_values() -> None:
    with pytest.raises(gc.GraphcError, match=r"TransformerEncoderLayer: d_model 10 is not "
                                             r"divisible by nhead 4"):
        nn.TransformerEncoderLayer(10, 4)
    with pytest.raises(gc.GraphcError, match=r"TransformerDecoderLayer: num_kv_heads 3 must "
                                             r"divide nhead 4"):
        nn.TransformerDecoderLayer(8, 4, num_kv_heads=3)
    with pytest.raises(gc.GraphcError, match="num_kv_heads 3 must divide num_heads 4"):
        nn.MultiHeadAttention(4, num_kv_heads=3)
    with pytest.raises(gc.GraphcError, match=r"dropout must be a number in \[0, 1\)"):
        nn.MultiHeadAttention(4, dropout=1.0)
    with gc.Graph("t"):
        x = gc.placeholder((2, 3, 10), gc.float32, name="x")
        with pytest.raises(gc.GraphcError, match=r"MultiHeadAttention 'multi_head_attention'"
                                                 r".*width 10 .*not divisible by num_heads 4"):
            nn.MultiHeadAttention(4)(x)
        with pytest.raises(gc.GraphcError, match=r"x: expected a float \(B, T, "
                                                 r"d_model=8\) tensor, got f32\[2,3,10\]"):
            nn.TransformerEncoderLayer(8, 2)(x)
        with pytest.raises(gc.GraphcError, match=r"mask: expected \(T, S\) = \(3, 3\)"):
            nn.MultiHeadAttention(2)(x, mask=np.ones((3, 4), bool))
        with pytest.raises(gc.GraphcError, match=r"padding_mask: expected \(B, S\) = \(2, 3\)"):
            nn.MultiHeadAttention(2)(x, padding_mask=np.ones((3,), bool))
        with pytest.raises(gc.GraphcError, match="needs a memory node"):
            nn.TransformerDecoderLayer(10, 2)(x)
        with pytest.raises(gc.GraphcError, match=r"mask: expected bool \(True: attend\) or "
                                                 r"an additive float32 mask, got i32"):
            nn.MultiHeadAttention(2)(x, mask=np.ones((3, 3), np.int32))
