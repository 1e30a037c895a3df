"""ONNX's recurrent layers (RNN, GRU, LSTM), unrolled over the static sequence length.

The input projection of every step is one matmul over the whole sequence; each step then
adds its hidden state's projection and applies the gates. Directions forward, reverse and
bidirectional; LSTM peepholes, GRU's linear_before_reset, `clip`, layout 0 and 1, and the
activations Sigmoid, Tanh, Relu, HardSigmoid, LeakyRelu, Softsign and Softplus.
`sequence_lens` is accepted when every sequence has the full length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import join, layout, linalg, slicing

Inputs = list[Value | None]
Act = Callable[[Node], Node]


def _activation(ctx: Context, name: str, alpha: float | None, beta: float | None) -> Act:
    if name == "Sigmoid":
        return ew.sigmoid
    if name == "Tanh":
        return ew.tanh
    if name == "Relu":
        return ew.relu
    if name == "Softsign":
        return lambda x: ew.div(x, ew.add(ew.abs(x), 1.0))
    if name == "Softplus":
        return ew.softplus
    if name == "LeakyRelu":
        return lambda x: ew.leaky_relu(x, 0.01 if alpha is None else alpha)
    if name == "HardSigmoid":
        a, b = (0.2 if alpha is None else alpha), (0.5 if beta is None else beta)
        return lambda x: ew.clip(ew.add(ew.mul(x, a), b), 0.0, 1.0)
    raise ctx.error(f"activation '{name}' is not supported")


def _activations(ctx: Context, attrs: dict[str, Any], defaults: list[str],
                 directions: int) -> list[list[Act]]:
    names = list(attrs.get("activations", defaults * directions))
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    per = len(defaults)
    if len(names) != per * directions:
        raise ctx.error(f"{len(names)} activations for {directions} direction(s); expected "
                        f"{per * directions}")
    acts = [_activation(ctx, n, alphas[i] if i < len(alphas) else None,
                        betas[i] if i < len(betas) else None) for i, n in enumerate(names)]
    return [acts[d * per:(d + 1) * per] for d in range(directions)]


def _cols(x: Node, start: int, stop: int) -> Node:
    """x[..., start:stop]."""
    starts: list[int | None] = [None] * x.ndim
    stops: list[int | None] = [None] * x.ndim
    starts[-1], stops[-1] = start, stop
    return slicing.slice(x, starts, stops)


def _row(x: Node, i: int) -> Node:
    """x[i] (dropping the first axis)."""
    starts: list[int | None] = [None] * x.ndim
    stops: list[int | None] = [None] * x.ndim
    starts[0], stops[0] = i, i + 1
    return layout.reshape(slicing.slice(x, starts, stops), list(x.shape[1:]))


class _Setup:
    """The inputs every recurrent op shares, normalized: X as (seq, batch, input)."""

    def __init__(self, ctx: Context, inputs: Inputs, attrs: dict[str, Any], gates: int):
        self.x = ctx.node(inputs[0])
        self.layout = int(attrs.get("layout", 0))
        if self.layout:
            self.x = layout.transpose(self.x, [1, 0, 2])
        self.w, self.r = ctx.node(inputs[1]), ctx.node(inputs[2])
        self.directions = self.w.shape[0]
        self.hidden = int(attrs.get("hidden_size", self.r.shape[-1]))
        self.seq, self.batch = self.x.shape[0], self.x.shape[1]
        self.bias = ctx.node(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
        lens = inputs[4] if len(inputs) > 4 else None
        if lens is not None:
            known = ctx.need_known(lens, "sequence_lens")
            if not np.all(known == self.seq):
                raise ctx.error("sequence_lens shorter than the sequence are not supported")
        init = inputs[5] if len(inputs) > 5 else None
        self.init_h = ctx.node(init) if init is not None else None
        self.clip = attrs.get("clip")
        direction = str(attrs.get("direction", "forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ctx.error(f"direction '{direction}' is not forward, reverse or bidirectional")
        self.reverse = [False, True] if direction == "bidirectional" else \
            [direction == "reverse"]
        if len(self.reverse) != self.directions:
            raise ctx.error(f"direction '{direction}' with weights for {self.directions} "
                            "direction(s)")
        self.gates = gates

    def projections(self, d: int) -> tuple[Node, Node, Node | None, Node]:
        """(X·Wᵀ + Wb over the whole sequence (seq, batch, G·H), Rᵀ, Rb, the initial h:
        zeros unless given)."""
        g = self.gates * self.hidden
        w, r = _row(self.w, d), _row(self.r, d)
        flat = layout.reshape(self.x, [self.seq * self.batch, self.x.shape[2]])
        xw = linalg.matmul(flat, w, transpose_b=True)
        rb = None
        if self.bias is not None:
            b = _row(self.bias, d)
            xw = ew.add(xw, _cols(b, 0, g))
            rb = _cols(b, g, 2 * g)
        xw = layout.reshape(xw, [self.seq, self.batch, g])
        h0 = _row(self.init_h, d) if self.init_h is not None else _zeros(self, xw)
        return xw, layout.transpose(r, [1, 0]), rb, h0

    def steps(self, d: int) -> range:
        """The time steps of direction `d`, in the order it visits them."""
        return range(self.seq - 1, -1, -1) if self.reverse[d] else range(self.seq)

    def clipped(self, x: Node) -> Node:
        if self.clip is None:
            return x
        c = float(self.clip)
        return ew.clip(x, -c, c)

    def outputs(self, ctx: Context, per_dir: list[list[Node]], finals: list[list[Node]]
                ) -> list[Value]:
        """Y (seq, dirs, batch, hidden) and the final states (dirs, batch, hidden) each, in
        the requested layout."""
        steps = []
        for t in range(self.seq):
            steps.append(layout.reshape(join.stack([hs[t] for hs in per_dir], 0),
                                        [1, self.directions, self.batch, self.hidden]))
        y = join.concat(steps, 0) if len(steps) > 1 else steps[0]
        states = [join.stack(list(f), 0) for f in zip(*finals)]
        if self.layout:
            y = layout.transpose(y, [2, 0, 1, 3])
            states = [layout.transpose(s, [1, 0, 2]) for s in states]
        return [y, *states][:max(ctx.num_outputs, 1)]


def _zeros(s: _Setup, like: Node) -> Node:
    """The default initial state: zeros (batch, hidden) of `like`'s dtype."""
    dtype = np.float32 if like.dtype.name == "float32" else np.float64
    return gb.constant(np.zeros((s.batch, s.hidden), dtype))


@rule("RNN", 7)
def _rnn(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    s = _Setup(ctx, inputs, attrs, 1)
    acts = _activations(ctx, attrs, ["Tanh"], s.directions)
    per_dir, finals = [], []
    for d in range(s.directions):
        xw, rt, rb, h = s.projections(d)
        hs: list[Node] = [h] * s.seq
        for t in s.steps(d):
            pre = ew.add(_row(xw, t), linalg.matmul(h, rt))
            if rb is not None:
                pre = ew.add(pre, rb)
            h = acts[d][0](s.clipped(pre))
            hs[t] = h
        per_dir.append(hs)
        finals.append([h])
    return s.outputs(ctx, per_dir, finals)


@rule("GRU", 7)
def _gru(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    s = _Setup(ctx, inputs, attrs, 3)
    acts = _activations(ctx, attrs, ["Sigmoid", "Tanh"], s.directions)
    before_reset = int(attrs.get("linear_before_reset", 0))
    hd = s.hidden
    per_dir, finals = [], []
    for d in range(s.directions):
        xw, rt, rb, h = s.projections(d)
        f, g = acts[d]
        hs: list[Node] = [h] * s.seq
        for t in s.steps(d):
            x = _row(xw, t)
            hr = linalg.matmul(h, _cols(rt, 0, 2 * hd))
            if rb is not None:
                hr = ew.add(hr, _cols(rb, 0, 2 * hd))
            z = f(s.clipped(ew.add(_cols(x, 0, hd), _cols(hr, 0, hd))))
            r = f(s.clipped(ew.add(_cols(x, hd, 2 * hd), _cols(hr, hd, 2 * hd))))
            rh_t = _cols(rt, 2 * hd, 3 * hd)
            rbh = _cols(rb, 2 * hd, 3 * hd) if rb is not None else None
            if before_reset:
                lin = linalg.matmul(h, rh_t)
                if rbh is not None:
                    lin = ew.add(lin, rbh)
                cand = ew.add(_cols(x, 2 * hd, 3 * hd), ew.mul(r, lin))
            else:
                cand = ew.add(_cols(x, 2 * hd, 3 * hd), linalg.matmul(ew.mul(r, h), rh_t))
                if rbh is not None:
                    cand = ew.add(cand, rbh)
            n = g(s.clipped(cand))
            h = ew.add(ew.mul(ew.sub(1.0, z), n), ew.mul(z, h))
            hs[t] = h
        per_dir.append(hs)
        finals.append([h])
    return s.outputs(ctx, per_dir, finals)


@rule("LSTM", 7)
def _lstm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    s = _Setup(ctx, inputs, attrs, 4)
    if int(attrs.get("input_forget", 0)):
        raise ctx.error("input_forget=1 is not supported")
    acts = _activations(ctx, attrs, ["Sigmoid", "Tanh", "Tanh"], s.directions)
    init_c = inputs[6] if len(inputs) > 6 else None
    peep = inputs[7] if len(inputs) > 7 else None
    hd = s.hidden
    per_dir, finals = [], []
    for d in range(s.directions):
        xw, rt, rb, h = s.projections(d)
        c = _row(ctx.node(init_c), d) if init_c is not None else _zeros(s, xw)
        p = _row(ctx.node(peep), d) if peep is not None else None
        f, g, hact = acts[d]
        hs: list[Node] = [h] * s.seq
        for t in s.steps(d):
            gates = ew.add(_row(xw, t), linalg.matmul(h, rt))
            if rb is not None:
                gates = ew.add(gates, rb)
            gi, go = _cols(gates, 0, hd), _cols(gates, hd, 2 * hd)
            gf, gc_ = _cols(gates, 2 * hd, 3 * hd), _cols(gates, 3 * hd, 4 * hd)
            if p is not None:
                gi = ew.add(gi, ew.mul(_cols(p, 0, hd), c))
                gf = ew.add(gf, ew.mul(_cols(p, 2 * hd, 3 * hd), c))
            i = f(s.clipped(gi))
            fg = f(s.clipped(gf))
            c = ew.add(ew.mul(fg, c), ew.mul(i, g(s.clipped(gc_))))
            if p is not None:
                go = ew.add(go, ew.mul(_cols(p, hd, 2 * hd), c))
            o = f(s.clipped(go))
            h = ew.mul(o, hact(c))
            hs[t] = h
        per_dir.append(hs)
        finals.append([h, c])
    return s.outputs(ctx, per_dir, finals)
