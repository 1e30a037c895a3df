"""The JAX peer of every workload (used when jax is installed), with the same data
(benchmarks.workloads_data).

Every runner blocks until the result is ready. Training steps keep parameters and momentum
as device arrays and donate them to the jitted step, like a JAX user would.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks import workloads_data as d

Runner = Callable[[], object]


def _jax():
    import jax

    return jax


def ew(threads: int) -> Runner:
    jax = _jax()
    jnp = jax.numpy
    x_val, a, b = d._ew_data()
    x = jnp.asarray(x_val)
    f = jax.jit(lambda x: jnp.tanh(x * a + b) * jax.nn.sigmoid(x) + 0.5 * x * x)
    return lambda: f(x).block_until_ready()


def _mlp_forward(p: list, x: object) -> object:
    jax = _jax()
    h = jax.nn.relu(x @ p[0] + p[1])
    h = jax.nn.relu(h @ p[2] + p[3])
    return h @ p[4] + p[5]


def mlp_infer(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        jax = _jax()
        p = [jax.numpy.asarray(a) for a in d._mlp_params()]
        x = jax.numpy.asarray(d._mlp_batch(batch)[0])
        f = jax.jit(_mlp_forward)
        return lambda: f(p, x).block_until_ready()

    return setup


def _sgd_step(loss_fn: Callable[..., object]) -> Callable[..., object]:
    jax = _jax()

    def step(params: list, velocity: list, *batch: object) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        velocity = [0.9 * v + g for v, g in zip(velocity, grads)]
        params = [p - 0.01 * v for p, v in zip(params, velocity)]
        return params, velocity, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _cross_entropy(logits: object, y: object) -> object:
    jax = _jax()
    logp = jax.nn.log_softmax(logits)
    return -jax.numpy.mean(jax.numpy.take_along_axis(logp, y[:, None], axis=1))


def _trainer(params_np: list, loss_fn: Callable[..., object], batch: tuple) -> Runner:
    jax = _jax()
    state = {"p": [jax.numpy.asarray(a) for a in params_np]}
    state["v"] = [jax.numpy.zeros_like(a) for a in state["p"]]
    data = [jax.numpy.asarray(a) for a in batch]
    step = _sgd_step(loss_fn)

    def run() -> object:
        state["p"], state["v"], loss = step(state["p"], state["v"], *data)
        return float(loss)

    return run


def mlp_train(threads: int) -> Runner:
    return _trainer(d._mlp_params(),
                    lambda p, x, y: _cross_entropy(_mlp_forward(p, x), y), d._mlp_batch(128))


def gemm(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        jax = _jax()
        a, b = (jax.numpy.asarray(v) for v in d._gemm_data(n))
        f = jax.jit(lambda a, b: a @ b)
        return lambda: f(a, b).block_until_ready()

    return setup


def _lenet_forward(p: list, x: object) -> object:
    jax = _jax()
    lax = jax.lax

    def conv(h: object, k: object, bias: object, pad: int) -> object:
        out = lax.conv_general_dilated(h, k, (1, 1), [(pad, pad), (pad, pad)],
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return out + bias[None, :, None, None]

    def pool(h: object) -> object:
        return lax.reduce_window(h, -jax.numpy.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    h = pool(jax.nn.relu(conv(x, p[0], p[1], 2)))
    h = pool(jax.nn.relu(conv(h, p[2], p[3], 0)))
    h = h.reshape(h.shape[0], 400)
    h = jax.nn.relu(h @ p[4] + p[5])
    h = jax.nn.relu(h @ p[6] + p[7])
    return h @ p[8] + p[9]


def lenet(batch: int, train: bool) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        jax = _jax()
        data = d._lenet_batch(batch)
        if train:
            return _trainer(d._lenet_params(),
                            lambda p, x, y: _cross_entropy(_lenet_forward(p, x), y), data)
        p = [jax.numpy.asarray(a) for a in d._lenet_params()]
        x = jax.numpy.asarray(data[0])
        f = jax.jit(_lenet_forward)
        return lambda: f(p, x).block_until_ready()

    return setup


def _lstm_loss(p: list, x: object, y: object) -> object:
    jax = _jax()
    jnp = jax.numpy
    hid = d.LSTM_HIDDEN
    h = jnp.zeros((d.LSTM_BATCH, hid), jnp.float32)
    c = h
    xs = (x.reshape(-1, d.LSTM_IN) @ p[0] + p[2]).reshape(d.LSTM_SEQ, d.LSTM_BATCH, 4 * hid)
    for t in range(d.LSTM_SEQ):
        z = xs[t] + h @ p[1]
        i, f = jax.nn.sigmoid(z[:, :hid]), jax.nn.sigmoid(z[:, hid:2 * hid])
        g, o = jnp.tanh(z[:, 2 * hid:3 * hid]), jax.nn.sigmoid(z[:, 3 * hid:])
        c = f * c + i * g
        h = o * jnp.tanh(c)
    return _cross_entropy(h @ p[3] + p[4], y)


def lstm_train(threads: int) -> Runner:
    return _trainer(d._lstm_params(), _lstm_loss, d._lstm_batch())


def compile_first_call(threads: int) -> Runner:
    """Seconds of jax.jit's first call of the MLP training step (a fresh function each time,
    so JAX's in-memory cache never answers)."""
    jax = _jax()

    def run() -> object:
        def loss(p: list, x: object, y: object) -> object:
            return _cross_entropy(_mlp_forward(p, x), y)

        p = [jax.numpy.asarray(a) for a in d._mlp_params()]
        v = [jax.numpy.zeros_like(a) for a in p]
        x, y = (jax.numpy.asarray(a) for a in d._mlp_batch(128))
        step = _sgd_step(loss)
        t = time.perf_counter()
        out = step(p, v, x, y)
        jax.block_until_ready(out)
        return time.perf_counter() - t

    return run


# --- the GPT and fused attention (benchmarks.workloads_gpt) -------------------------------

def _layer_norm(x: object, g: object, b: object) -> object:
    jax = _jax()
    mu = x.mean(-1, keepdims=True)  # type: ignore[attr-defined]
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # type: ignore[operator]
    return (x - mu) * jax.lax.rsqrt(var + 1e-5) * g + b  # type: ignore[operator]


def _gpt_logits(p: dict, ids: object) -> object:
    """The causal GPT of workloads_gpt on (B, T) ids: jax.nn.dot_product_attention (XLA's
    implementation on the CPU) in the (B, T, heads, Dh) layout it takes, exact GELU."""
    jax = _jax()
    from benchmarks.workloads_gpt import GPT, _block_names

    c = GPT
    b, t = ids.shape  # type: ignore[attr-defined]
    x = p["wte"][ids] + p["wpe"][:t]
    for i in range(c.layers):
        w = {n.split(".", 1)[1]: p[n] for n in _block_names(i)}
        qkv = _layer_norm(x, w["ln1_g"], w["ln1_b"]) @ w["qkv_w"] + w["qkv_b"]
        q, k, v = (qkv[..., j * c.d:(j + 1) * c.d].reshape(b, t, c.heads, c.d // c.heads)
                   for j in range(3))
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, c.d)
        x = x + o @ w["out_w"] + w["out_b"]
        h = _layer_norm(x, w["ln2_g"], w["ln2_b"]) @ w["fc1_w"] + w["fc1_b"]
        x = x + jax.nn.gelu(h, approximate=False) @ w["fc2_w"] + w["fc2_b"]
    return _layer_norm(x, p["lnf_g"], p["lnf_b"]) @ p["head_w"] + p["head_b"]


def gpt_infer(threads: int) -> Runner:
    jax = _jax()
    from benchmarks import workloads_gpt as wg

    p = {k: jax.numpy.asarray(a) for k, a in wg.gpt_params().items()}
    ids = jax.numpy.asarray(wg.gpt_tokens(wg.INFER_BATCH)[:, :-1])
    f = jax.jit(_gpt_logits)

    def run() -> object:
        return f(p, ids).block_until_ready()

    wg.check("jax", run(), wg.infer_reference())
    return run


def _adamw_step(loss_fn: Callable[..., object]) -> Callable[..., object]:
    """One jitted step: loss and gradients, then torch's AdamW (decoupled weight decay,
    bias-corrected moments) by hand on every parameter; the state is donated."""
    jax = _jax()
    jnp = jax.numpy
    from benchmarks.workloads_gpt import ADAMW

    lr, (b1, b2), eps, wd = ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"]

    def step(params: dict, m: dict, v: dict, t: object, *batch: object) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        t = t + 1
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        params = jax.tree.map(
            lambda p, m, v: p * (1 - lr * wd) - (lr / bc1) * m / (jnp.sqrt(v) / jnp.sqrt(bc2)
                                                                 + eps),
            params, m, v)
        return params, m, v, t, loss

    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


def gpt_train(threads: int) -> Runner:
    jax = _jax()
    jnp = jax.numpy
    from benchmarks import workloads_gpt as wg

    def loss_fn(p: dict, ids: object, targets: object) -> object:
        logp = jax.nn.log_softmax(_gpt_logits(p, ids))
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    tokens = wg.gpt_tokens(wg.TRAIN_BATCH)
    data = [jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])]
    state = {"p": {k: jnp.asarray(a) for k, a in wg.gpt_params().items()}}
    state["m"] = jax.tree.map(jnp.zeros_like, state["p"])
    state["v"] = jax.tree.map(jnp.zeros_like, state["p"])
    state["t"] = jnp.zeros((), jnp.float32)
    step = _adamw_step(loss_fn)

    def run() -> float:
        state["p"], state["m"], state["v"], state["t"], loss = step(
            state["p"], state["m"], state["v"], state["t"], *data)
        return float(loss)

    wg.check_training("jax", run)
    return run


def attention(threads: int) -> Runner:
    """Non-causal attention forward and the q, k, v gradients (jax.vjp) under one jit, the
    explicit softmax(q·kᵀ/√Dh)·v on (B, H, T, Dh) (measured ~10 % faster than
    jax.nn.dot_product_attention with the transposes to its (B, T, H, Dh) layout)."""
    jax = _jax()
    jnp = jax.numpy
    from benchmarks import workloads_gpt as wg

    def attn(q: object, k: object, v: object) -> object:
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)

    def fwd_bwd(q: object, k: object, v: object, dout: object) -> tuple:
        out, vjp = jax.vjp(attn, q, k, v)
        return (out, *vjp(dout))

    data = [jax.numpy.asarray(a) for a in wg.attention_data()]
    f = jax.jit(fwd_bwd)

    def run() -> object:
        return jax.block_until_ready(f(*data))

    wg.check("jax", tuple(run()), wg.attention_reference())
    return run


PEERS: dict[str, Callable[[int], Runner]] = {
    "ew": ew,
    "mlp_infer_1": mlp_infer(1),
    "mlp_infer_256": mlp_infer(256),
    "mlp_train": mlp_train,
    "compile_cold": compile_first_call,
    "compile_fresh": compile_first_call,
    "gemm_256": gemm(256),
    "gemm_512": gemm(512),
    "gemm_1024": gemm(1024),
    "lenet_train": lenet(64, True),
    "lenet_infer_1": lenet(1, False),
    "lenet_infer_64": lenet(64, False),
    "lstm_train": lstm_train,
    "gpt_infer_1": gpt_infer,
    "gpt_train_8": gpt_train,
    "attention_1024": attention,
}

