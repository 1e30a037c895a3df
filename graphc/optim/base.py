"""The `Optimizer` base class: gradients -> `updates` (variable -> new-value node).

An optimizer builds, in the loss's graph, the nodes that compute one training step. Nothing
runs at build time: `minimize` returns an updates dict that `gc.compile`/`gc.reference` apply
after each call. All state lives in graph variables (``trainable=False``) so that a
checkpoint (`gc.save_checkpoint`) carries it and two executables share it:

- ``<prefix>/lr``: the learning rate, a float64 scalar. `opt.lr` reads and writes its value
  in `g.variables` in place, so a schedule changes it between steps without a rebuild.
- ``<prefix>/step``: the number of steps taken, an int64 scalar (PyTorch's ``state['step']``).
  Every step's update increments it; bias corrections use the incremented value.
- slots such as ``w1/adam_m``: one per parameter and kind of moment, of the parameter's type.
- optimizer-wide scalar state such as ``<prefix>/nadam_mu_product`` (float64), for a rule
  whose running quantity is the same for every parameter (`Optimizer._make_state`).

`prefix` is the optimizer's `name` ("optim" by default; "optim_1" ... if a second optimizer
is built in the same graph). Before `minimize` builds anything, `opt.lr` is a plain float.

Gradient pipeline of one step, in this order (PyTorch's order when a user clips with
``clip_grad_*`` before ``opt.step()``):
``g = clip_by_value(g)`` (clipvalue), ``g = clip_by_global_norm(g)`` (clipnorm), then the
subclass's rule, which adds coupled weight decay ``g += weight_decay * p`` itself where its
PyTorch rule does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc import builder
from graphc.errors import AttrError, GraphcError
from graphc.ir import DType, Graph, Node
from graphc.ops import elementwise as ew
from graphc.ops.collective import allreduce
from graphc.optim.clipping import clip_by_global_norm, clip_by_value
from graphc.passes.autodiff import grad as _grad

GradsAndVars = Iterable[tuple[Node, Node]]


def check_hyper(owner: str, name: str, value: float, *, low: float = 0.0,
                high: float | None = None, high_open: bool = False) -> float:
    """`value` as a float in [low, high] (or [low, high)); otherwise an AttrError naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AttrError(f"{name} must be a number, got {value!r}", op=owner) from None
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or number < low or too_high:
        bound = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")
        raise AttrError(f"{name} must be a finite number >= {low}{bound}, got {value!r}",
                        op=owner)
    return number


@dataclass
class StepContext:
    """Scalar nodes shared by all parameters' rules within one `apply_gradients` call.

    `t` is the step number after this step's increment (1 on the first step), float64.
    Casts and powers are built once per dtype/base and reused.
    """

    lr64: Node
    step_new: Node
    t: Node
    _lr: dict[DType, Node] = field(default_factory=dict)
    _pow: dict[tuple[float, DType], Node] = field(default_factory=dict)
    memo: dict[object, Any] = field(default_factory=dict)  # per-rule scalars, built once

    def lr(self, dtype: DType) -> Node:
        """The learning rate as a scalar of `dtype`."""
        if dtype not in self._lr:
            self._lr[dtype] = self.lr64 if dtype == DType.float64 else ew.cast(self.lr64, dtype)
        return self._lr[dtype]

    def power(self, base: float, dtype: DType = DType.float64) -> Node:
        """``base ** t`` as exp(t * log(base)) (float64, then cast to `dtype`); base in [0, 1)."""
        key = (base, dtype)
        if key not in self._pow:
            if base == 0.0:
                value = ew.mul(self.t, 0.0)  # 0**t = 0 for every t >= 1
            else:
                value = ew.exp(ew.mul(self.t, math.log(base)))
            self._pow[key] = value if dtype == DType.float64 else ew.cast(value, dtype)
        return self._pow[key]

    @staticmethod
    def as_dtype(value: Node, dtype: DType) -> Node:
        return value if value.dtype == dtype else ew.cast(value, dtype)


class Optimizer:
    """Base class: subclasses implement `_rule` (one parameter's update) and document it.

    Contract of `minimize`/`apply_gradients`: they return a new dict covering every updated
    parameter, each of its slots, and the step counter; the learning-rate variable is never
    updated by the graph (only by the host, through `opt.lr`).
    """

    def __init__(
        self,
        lr: float,
        *,
        weight_decay: float = 0.0,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        owner = type(self).__name__
        self._lr_value = check_hyper(owner, "lr", lr)
        self.weight_decay = check_hyper(owner, "weight_decay", weight_decay)
        self.clipvalue = None if clipvalue is None else check_hyper(owner, "clipvalue", clipvalue)
        self.clipnorm = None if clipnorm is None else check_hyper(owner, "clipnorm", clipnorm)
        if self.clipnorm == 0.0:
            raise AttrError("clipnorm must be > 0 (None disables clipping)", op=owner)
        self.name = name
        self._graph: Graph | None = None
        self._lr_node: Node | None = None
        self._step_node: Node | None = None
        self._prefix: str | None = None  # "<prefix>/lr", "<prefix>/step", ... once built
        self._states: dict[str, Node] = {}  # optimizer-wide scalars by kind (_make_state)
        # Keyed by (variable name, kind): tuples of nodes would compare nodes with ==,
        # which builds an `equal` node instead of answering.
        self._slots: dict[tuple[str, str], Node] = {}

    # --- host-side state ------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The current learning rate (the live value of the lr variable once built)."""
        if self._graph is not None and self._lr_node is not None:
            return float(self._graph.variables[self._lr_node.name])
        return self._lr_value

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr_value = check_hyper(type(self).__name__, "lr", value)
        if self._graph is not None and self._lr_node is not None:
            self._graph.variables[self._lr_node.name] = np.float64(self._lr_value)

    @property
    def iterations(self) -> int:
        """How many steps the graph has taken (the step variable; 0 before building)."""
        if self._graph is None or self._step_node is None:
            return 0
        return int(self._graph.variables[self._step_node.name])

    @property
    def lr_variable(self) -> Node | None:
        return self._lr_node

    @property
    def step_variable(self) -> Node | None:
        return self._step_node

    @property
    def variables(self) -> list[Node]:
        """Every state variable this optimizer created: lr, step, the optimizer-wide
        scalars, then the slots (`gc.Model` tells its weights from these by this list)."""
        common = [n for n in (self._lr_node, self._step_node) if n is not None]
        return common + list(self._states.values()) + list(self._slots.values())

    def slot(self, var: Node, kind: str) -> Node:
        """The slot variable of `kind` (e.g. "adam_m") of parameter `var` (after building)."""
        try:
            return self._slots[(var.name, kind)]
        except KeyError:
            raise GraphcError(f"{type(self).__name__} has no slot {kind!r} for %{var.name}",
                              op="optimizer") from None

    # --- building -------------------------------------------------------------------------
    def minimize(self, loss: Node, var_list: Sequence[Node] | None = None, *,
                 distributed: bool = False) -> dict[Node, Node]:
        """Updates that take one step on `loss` for `var_list` (default: the graph's float
        trainable variables, i.e. not those made with ``trainable=False``).

        `distributed=True` (data parallelism): each gradient is replaced by its mean over the
        ranks (`gc.allreduce(g, "mean")`) before clipping and the rule, so every rank applies
        the same update and, with the loss a mean over each rank's equal share of the batch,
        N ranks x batch B/N take the step 1 rank x batch B takes. The allreduces are nodes of
        the step, so it stays one native call. In a world of one they are identities.
        Learning-rate scaling with the number of ranks is left to the user.
        """
        owner = type(self).__name__
        if not isinstance(distributed, bool):
            raise GraphcError(f"distributed must be True or False, got {distributed!r}",
                              op=f"{owner}.minimize")
        if not isinstance(loss, Node):
            raise GraphcError(f"loss must be a node, got {loss!r}", op=f"{owner}.minimize")
        if loss.shape != () or not loss.dtype.is_float:
            raise GraphcError(f"loss (%{loss.name}) must be a float scalar, got {loss.type}",
                              op=f"{owner}.minimize", loc=loss.loc)
        if var_list is None:
            var_list = [v for v in loss.graph.trainable_variables if v.dtype.is_float]
            if not var_list:
                raise GraphcError(f"graph {loss.graph.name!r} has no trainable float variables",
                                  op=f"{owner}.minimize")
        variables = list(var_list)
        with loss.graph:  # gc.grad builds constants in the current graph
            grads = _grad(loss, variables) if variables else []
            if distributed:
                # One allreduce per gradient, for now: bucketing them into a contiguous
                # region and overlapping them with the backward pass come later (issue 18).
                grads = [allreduce(g, "mean", name=loss.graph.unique_name(f"{v.name}/allreduce"))
                         for g, v in zip(grads, variables)]
        return self.apply_gradients(list(zip(grads, variables)))

    def apply_gradients(self, grads_and_vars: GradsAndVars) -> dict[Node, Node]:
        """Updates that apply the given (gradient, variable) pairs, tf/keras style."""
        pairs = list(grads_and_vars)
        graph = self._check_pairs(pairs)
        with graph:
            ctx = self._build_common(graph)
            grads = [g for g, _ in pairs]
            if self.clipvalue is not None:
                grads = clip_by_value(grads, -self.clipvalue, self.clipvalue)
            if self.clipnorm is not None:
                grads, _ = clip_by_global_norm(grads, self.clipnorm)
            assert self._step_node is not None
            updates: dict[Node, Node] = {self._step_node: ctx.step_new}
            for g, (_, var) in zip(grads, pairs):
                updates.update(self._rule(var, g, ctx))
        return updates

    def _check_pairs(self, pairs: list[tuple[Node, Node]]) -> Graph:
        owner = f"{type(self).__name__}.apply_gradients"
        if not pairs:
            raise GraphcError("no (gradient, variable) pairs to apply", op=owner)
        graph = self._graph or pairs[0][1].graph
        seen: set[Node] = set()
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise GraphcError(f"pair {i}: expected (gradient, variable), got {pair!r}",
                                  op=owner)
            g, var = pair
            if not isinstance(var, Node) or var.op != "variable":
                raise GraphcError(f"pair {i}: {var!r} is not a variable node", op=owner)
            if not isinstance(g, Node):
                raise GraphcError(f"pair {i}: the gradient of %{var.name} is not a node: {g!r}",
                                  op=owner)
            if var.graph is not graph or g.graph is not graph:
                raise GraphcError(f"pair {i}: %{var.name} and its gradient must belong to graph "
                                  f"{graph.name!r} (one optimizer serves one graph)", op=owner)
            if not var.dtype.is_float:
                raise GraphcError(f"variable %{var.name} is {var.type}; only float variables "
                                  "can be optimized", op=owner, loc=var.loc)
            if g.type != var.type:
                raise GraphcError(f"the gradient of %{var.name}: expected {var.type}, got "
                                  f"{g.type}", op=owner, loc=g.loc)
            if var in seen:
                raise GraphcError(f"variable %{var.name} is listed twice", op=owner)
            seen.add(var)
        return graph

    def _build_common(self, graph: Graph) -> StepContext:
        """Create (once per optimizer) the lr and step variables; build this step's scalars."""
        if self._lr_node is None or self._step_node is None:
            prefix = self.name
            n = 0
            while f"{prefix}/lr" in graph or f"{prefix}/step" in graph:
                n += 1
                prefix = f"{self.name}_{n}"
            self._graph = graph
            self._prefix = prefix
            self._lr_node = builder.variable(self._lr_value, name=f"{prefix}/lr",
                                             dtype=DType.float64, trainable=False)
            self._step_node = builder.variable(0, name=f"{prefix}/step", dtype=DType.int64,
                                               trainable=False)
        step_new = ew.add(self._step_node, 1)
        return StepContext(self._lr_node, step_new, ew.cast(step_new, DType.float64))

    def _make_slot(self, var: Node, kind: str, init: float = 0.0) -> Node:
        """The slot variable `<var>/<kind>`, filled with `init`, created on first use."""
        key = (var.name, kind)
        if key not in self._slots:
            assert self._graph is not None
            name = self._graph.unique_name(f"{var.name}/{kind}")
            value = np.full(var.shape, init, dtype=var.dtype.np)
            self._slots[key] = builder.variable(value, name=name, trainable=False)
        return self._slots[key]

    def _make_state(self, kind: str, init: float) -> Node:
        """The optimizer-wide float64 scalar `<prefix>/<kind>`, filled with `init`, created
        on first use. For state that torch keeps per parameter but that is equal for all of
        them (it depends on the step only): one variable, kept in float64 whatever the
        parameters' dtype (torch's is float32 unless its default dtype is float64)."""
        if kind not in self._states:
            assert self._graph is not None and self._prefix is not None
            name = self._graph.unique_name(f"{self._prefix}/{kind}")
            self._states[kind] = builder.variable(np.float64(init), name=name,
                                                  dtype=DType.float64, trainable=False)
        return self._states[kind]

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        """{var: new value, slot: new slot value, ...} for one parameter."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} lr={self.lr:g}>"
