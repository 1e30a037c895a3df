"""`Generator`: autoregressive generation from a `GPT` with a KV cache, compiled once.

    gen = gc.nn.Generator(gpt, max_len=256, temperature=0.8, top_k=40, seed=0)
    ids = gen.generate(prompt_ids, max_new_tokens=100)       # (B, P + 100) int64
    gen.export("build/libgpt.so")                            # the decode step, for C

Like Hugging Face's ``model.generate(input_ids, max_new_tokens=...)``, `generate` returns
the prompt followed by the new tokens. Unlike it, the sampling settings are fixed when the
generator is made, because they are part of the compiled graph (so an exported decode step
samples exactly as Python does); make another generator for other settings.

The generator adds to the GPT's graph (which it shares, with its weights):

- one `KVCache` pair per layer, variables ``<name>/<layer>/{k,v}_cache`` of shape
  (batch, kv_heads, max_len, head_dim) (per-layer variables rather than the issue's single
  (layers, 2, heads, Tmax, Dh) tensor: reading a layer from one tensor is a slice, a copy
  kernel per step in graphc; per-layer variables are read in place), and a ``<name>/seed``
  int64 scalar;
- signature ``<name>/decode``: inputs ``ids`` (batch,) int64 (the token at `pos`) and ``pos``
  (an int64 scalar), outputs ``next_ids`` (batch,) int64 (the token for pos + 1) and, with
  `return_logits`, ``logits`` (batch, vocab) at pos; updates: the caches at pos;
- signature ``<name>/prefill_<P>`` per prompt length P met (static shapes): input ``prompt``
  (batch, P) int64, the same outputs for position P - 1, updates: cache rows [0, P).

Each signature is compiled once, at its first use (the decode step for the fixed max_len,
never per token; `compiles` counts them). The caches live in the graph's variables, so the
prefill and decode executables share them.

Sampling happens inside the graph on the logits of the last position:

- ``temperature == 0``: greedy, ``argmax(logits)`` (the lowest id among equal maxima);
- else the Gumbel-max trick: ``argmax(logits / temperature + g)`` with
  ``g = -log(-log(u))``, u from the counter-based `random_uniform` keyed by
  ``seed * max_len + position``: a draw from softmax(logits / temperature), the same for
  the same seed, prompt and position, on every backend and in the exported library;
- ``top_k``: before the noise, logits below the k-th largest (counted with multiplicity,
  found without sorting: k rounds of a max reduction, then one count; `_kth_largest`)
  become -inf. Ties at the threshold are all kept, as in Hugging Face's top-k filter, so
  more than k tokens stay only when the k-th largest value is tied. Cost: about 2k
  vectorized passes over the vocabulary per token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from graphc import builder
from graphc.compile import compile as compile_graph
from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.export.api import ExportedLibrary, export
from graphc.ir import DType, Graph, Node, Signature
from graphc.nn.gpt import GPT
from graphc.nn.kv_cache import KVCache
from graphc.ops import elementwise as ew
from graphc.ops import join, layout, random, reduce
from graphc.options import CompileOptions
from graphc.passes.autocast import autocast
from graphc.quant import quantize_dynamic
from graphc.runtime.executable import Executable
from graphc.runtime.reference import ReferenceFunction, reference

__all__ = ["Generator", "sample"]

Runner = Executable | ReferenceFunction
PRECISIONS = ("float32", "bfloat16", "int8")


def _kth_largest(logits: Node, k: int) -> Node:
    """(B, 1): the k-th largest logit of each row, counting equal values separately.

    k rounds find the row's k largest distinct values m1 > m2 > ... (a max, then every
    element equal to it set to -inf); the answer is the largest m_i with at least k
    elements >= m_i. Max reductions are vectorized kernels, unlike arg reductions, so this
    costs a few vector passes over the row per round."""
    minus_inf = np.array(-np.inf, logits.dtype.np)
    rest, maxima = logits, []
    for i in range(k):
        top = reduce.max(rest, axis=-1, keepdims=True)
        maxima.append(top)
        if i < k - 1:
            rest = ew.where(ew.greater_equal(rest, top), minus_inf, rest)
    distinct = join.concat(maxima, axis=-1)  # (B, k), descending (then -inf)
    at_least = ew.greater_equal(layout.expand_dims(logits, 1), layout.expand_dims(distinct, 2))
    counts = reduce.sum(ew.cast(at_least, logits.dtype), axis=-1)  # exact below 2**24
    return reduce.max(ew.where(ew.greater_equal(counts, float(k)), distinct, minus_inf),
                      axis=-1, keepdims=True)


def sample(logits: Node, key: Node, *, temperature: float, top_k: int | None,
           seed: int = 0, name: str | None = None) -> Node:
    """Next ids (B,) int64 from logits (B, V): greedy at temperature 0, else Gumbel-max
    with noise `random_uniform((B, V), seed=seed, key=key)`, top-k filtered first (see the
    module docstring)."""
    if temperature == 0:
        return reduce.argmax(logits, axis=-1, name=name)
    if top_k is not None and top_k < logits.shape[-1]:
        threshold = _kth_largest(logits, top_k)
        logits = ew.where(ew.greater_equal(logits, threshold), logits,
                          np.array(-np.inf, logits.dtype.np))
    u = random.random_uniform(logits.shape, logits.dtype, seed=seed, key=key)
    # u is k·2⁻²⁴ for k in [0, 2²⁴): log(u) < 0, so g is finite except at u = 0 (-inf: a
    # token that cannot win, with probability 2⁻²⁴).
    gumbel = ew.neg(ew.log(ew.neg(ew.log(u))))
    return reduce.argmax(ew.add(ew.mul(logits, 1.0 / temperature), gumbel), axis=-1,
                         name=name)


def _free_prefix(graph: Graph, base: str) -> str:
    """`base`, or ``base_1``, ``base_2`` ...: the first prefix no variable or signature of
    `graph` uses yet (two generators on one graph keep separate caches)."""
    taken = {name.split("/", 1)[0] for name in (*graph.variables, *graph.signatures)}
    candidate, n = base, 0
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


class Generator:
    """KV-cached generation from `gpt` (see the module docstring).

    `max_len` is the cache length Tmax (prompt plus generated tokens; at most gpt.max_len
    with learned positions); `batch` the number of sequences generated together;
    `temperature` >= 0 (0: greedy); `top_k` None or >= 1; `seed` the default seed of
    `generate`. `return_logits` adds the logits to the signatures' outputs (and `step`'s
    result). An unbuilt gpt is built in a new graph. `backend` "reference" runs the
    signatures on the numpy interpreter (the oracle; slow) instead of compiling them.
    `precision` "bfloat16" runs each signature through `gc.autocast` when it is first
    compiled: matmuls on bf16 weights stored once (a snapshot then: make a new generator
    after changing the weights), float32 accumulation, caches and the rest in float32.
    `precision` "int8" runs them through `gc.quantize_dynamic` instead: weights quantized
    per output channel to int8 once (a snapshot too), each matmul's activations to uint8
    per call, int32 accumulation (the u8 x s8 GEMV at batch 1); caches stay float32.
    """

    def __init__(self, gpt: GPT, *, max_len: int, batch: int = 1, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0, return_logits: bool = False,
                 name: str = "generate", backend: str = "compiled",
                 options: CompileOptions | None = None, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise AttrError(f"precision must be one of {PRECISIONS}, got {precision!r}",
                            op="Generator")
        self.precision = precision
        if not isinstance(gpt, GPT):
            raise GraphcError(f"gpt: expected a gc.nn.GPT, got {gpt!r}", op="Generator")
        for what, value in (("max_len", max_len), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AttrError(f"{what} must be an int >= 1, got {value!r}", op="Generator")
        if gpt.positions == "learned" and max_len > gpt.max_len:
            raise AttrError(f"max_len {max_len} exceeds the GPT's learned positions "
                            f"(max_len {gpt.max_len})", op="Generator")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise AttrError(f"temperature must be a finite number >= 0, got {temperature!r}",
                            op="Generator")
        if backend not in ("compiled", "reference"):
            raise AttrError(f"backend must be 'compiled' or 'reference', got {backend!r}",
                            op="Generator")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise AttrError(f"top_k must be None or an int >= 1, got {top_k!r}",
                            op="Generator")
        self.gpt, self.max_len, self.batch = gpt, max_len, batch
        self.temperature, self.top_k = float(temperature), top_k
        self.seed = self._check_seed(seed)
        self.return_logits = return_logits
        self.backend, self.options = backend, options
        self.compiles = 0  # executables made so far: one per signature, ever
        self._executables: dict[str, Runner] = {}
        if gpt.graph is None:
            self.graph = Graph(gpt.name)
            with self.graph:  # builds the GPT's variables in its new graph
                gpt(builder.placeholder((batch, 1), DType.int64, name=f"{gpt.name}/tokens"))
        else:
            self.graph = gpt.graph
        g = self.graph
        self.name = _free_prefix(g, name)
        with g:
            self.caches = [KVCache.zeros(f"{self.name}/{block.name}", batch, gpt.num_kv_heads,
                                         max_len, gpt.head_dim, gpt.weight_type)
                           for block in gpt.blocks]
            self._seed = builder.variable(np.int64(self.seed), name=f"{self.name}/seed",
                                          trainable=False)
        self.decode_signature = self._add_decode()

    @staticmethod
    def _check_seed(seed: object) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= int(seed) < 2**31:
            raise AttrError(f"seed must be an int in [0, 2**31), got {seed!r}",
                            op="Generator")
        return int(seed)

    # --- graph building -----------------------------------------------------------------
    def _sampled(self, logits: Node, position: Node, prefix: str) -> list[Node]:
        """The signature's outputs ``<prefix>/next_ids`` (and ``<prefix>/logits``) for
        logits (B, 1, V) of the token at `position`."""
        flat = layout.reshape(logits, (self.batch, self.gpt.vocab_size),
                              name=f"{prefix}/logits")
        key = ew.add(ew.mul(self._seed, self.max_len), position)
        next_ids = sample(flat, key, temperature=self.temperature, top_k=self.top_k,
                          name=f"{prefix}/next_ids")
        return [next_ids, flat] if self.return_logits else [next_ids]

    def _add_decode(self) -> Signature:
        g = self.graph
        with g:
            ids = builder.placeholder((self.batch,), DType.int64, name=f"{self.name}/ids")
            pos = builder.placeholder((), DType.int64, name=f"{self.name}/pos")
            tokens = layout.reshape(ids, (self.batch, 1))
            logits = self.gpt(tokens, caches=self.caches, pos=pos)
            outputs = self._sampled(logits, pos, f"{self.name}/decode")
        return g.add_signature(f"{self.name}/decode", [ids, pos], outputs,
                               dict(self.gpt.state_updates))

    def _add_prefill(self, steps: int) -> Signature:
        g = self.graph
        with g:
            prompt = builder.placeholder((self.batch, steps), DType.int64,
                                         name=f"{self.name}/prefill_{steps}/prompt")
            logits = self.gpt(prompt, caches=self.caches, last_only=True)
            last = builder.constant(np.int64(steps - 1))
            outputs = self._sampled(logits, last, f"{self.name}/prefill_{steps}")
        return g.add_signature(f"{self.name}/prefill_{steps}", [prompt], outputs,
                               dict(self.gpt.state_updates))

    def _executable(self, signature: str) -> Runner:
        exe = self._executables.get(signature)
        if exe is None:
            graph = self._graph_for(signature)
            if self.backend == "reference":
                exe = reference(graph, signature=signature)
            else:
                exe = compile_graph(graph, signature=signature, options=self.options)
            self._executables[signature] = exe
            self.compiles += 1
        return exe

    def _graph_for(self, signature: str) -> Graph:
        """The graph `signature` compiles from: the GPT's, or its bf16 autocast or int8
        quantization (each sharing the caches' and the seed's arrays with it)."""
        if self.precision == "float32":
            return self.graph
        if self.precision == "int8":
            return quantize_dynamic(self.graph)
        return autocast(self.graph, self.precision, signatures=[signature])

    @property
    def decode_executable(self) -> Runner:
        """The compiled decode step (compiled at the first access, then reused)."""
        return self._executable(self.decode_signature.name)

    # --- running ------------------------------------------------------------------------
    def prefill(self, prompt: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Write the caches for `prompt` (batch, P) and return the ids for position P
        (and the logits at P - 1 with `return_logits`)."""
        steps = prompt.shape[1]
        name = f"{self.name}/prefill_{steps}"
        if name not in self.graph.signatures:
            self._add_prefill(steps)
        out = self._executable(name)(np.ascontiguousarray(prompt, np.int64))
        return out if self.return_logits else out[0]

    def step(self, ids: np.ndarray, pos: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """One decode step: `ids` (batch,) are the tokens at `pos`; returns the ids for
        pos + 1 (and the logits at pos with `return_logits`). A pos outside
        [0, max_len) is a ShapeError naming it (and in compiled code, which the exported
        step runs unguarded by Python, an error of the cache write)."""
        if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) \
                or not 0 <= pos < self.max_len:
            raise ShapeError(f"pos: expected an int in [0, max_len={self.max_len}), got "
                             f"{pos!r}", op="Generator")
        out = self.decode_executable(np.ascontiguousarray(ids, np.int64), np.int64(pos))
        return out if self.return_logits else out[0]

    def generate(self, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int, *,
                 seed: int | None = None) -> np.ndarray:
        """The prompt followed by `max_new_tokens` generated ids, int64: (batch, P + n) for a
        (batch, P) prompt, (P + n,) for a 1-D prompt when batch is 1. `seed` (default: the
        generator's) selects the sampling noise; it does not recompile anything."""
        prompt = np.asarray(prompt_ids)
        one_d = prompt.ndim == 1
        if one_d:
            prompt = prompt[None, :]
        if prompt.ndim != 2 or prompt.shape[0] != self.batch or prompt.shape[1] < 1 \
                or prompt.dtype.kind not in "iu":
            raise ShapeError(f"prompt_ids: expected int ids (batch={self.batch}, P >= 1)"
                             f"{' or (P,)' if self.batch == 1 else ''}, got "
                             f"{prompt.dtype}{list(np.shape(prompt_ids))}", op="Generator")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 0:
            raise AttrError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}",
                            op="Generator")
        steps = prompt.shape[1]
        # The last new token is sampled at position P + n - 2 (it is never fed back).
        if steps + max(max_new_tokens - 1, 0) > self.max_len:
            raise ShapeError(f"prompt of {steps} tokens + max_new_tokens {max_new_tokens} "
                             f"need {steps + max_new_tokens - 1} cache positions; the "
                             f"generator's max_len is {self.max_len}", op="Generator")
        out = np.empty((self.batch, steps + max_new_tokens), np.int64)
        out[:, :steps] = prompt
        if max_new_tokens:
            self.graph.variables[self._seed.name] = np.int64(
                self._check_seed(self.seed if seed is None else seed))
            nxt = self._first(self.prefill(prompt))
            out[:, steps] = nxt
            for i in range(1, max_new_tokens):
                nxt = self._first(self.step(nxt, steps + i - 1))
                out[:, steps + i] = nxt
        return out[0] if one_d else out

    def _first(self, result: np.ndarray | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return result[0] if isinstance(result, tuple) else result

    # --- export -------------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str], *, name: str | None = None,
               options: CompileOptions | None = None) -> ExportedLibrary:
        """`gc.export` of the decode step: ``NAME_run(ctx, ids, pos, next_ids[, logits])``.
        The caches live in the library's context, like a training library's state (their
        values at export are irrelevant: rows past pos are masked until written), so a C
        loop passes only the token and its position; feed the prompt one token per call
        (decode at pos attends to every earlier position). The seed is the generator's
        at export. See examples/gpt_generate_c."""
        sig = self.decode_signature.name
        return export(self._graph_for(sig), path, signature=sig, name=name, options=options)
