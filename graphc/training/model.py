"""`Model`: a network definition, a loss and an optimizer, trained by compiled steps.

    model = gc.Model(net, input_shape=(64,), loss="sparse_categorical_crossentropy",
                     optimizer=gc.optim.Adam(1e-3), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=20, validation_data=(xv, yv))
    model.evaluate(xt, yt); model.predict(xt)

One definition, one graph. `net` (a layer, e.g. `gc.nn.Sequential`, or any function of one
node built from layers) is called once per mode and batch size, all in ``model.graph``:
the training forward (under ``gc.nn.Scope(training=True)``: batch statistics, dropout)
and the inference forward share every variable. The training graph adds the loss, the
layers' regularization terms, the optimizer's updates and the layers' state updates
(BatchNorm running statistics, Dropout step counters). Each is compiled on first use
(`gc.compile`, or `gc.reference` with ``backend="reference"``) and cached per batch size.

The last, smaller batch: **pad and mask**. Every training step has the same static batch
size; a short batch is zero-padded and a sample-mask input marks the real rows. The loss
is ``sum(mask * per_example_loss) / sum(mask)`` and BatchNorm's batch statistics count
only masked-in rows, so the padded step computes exactly the gradient and the running
statistics of the real examples. We chose this over compiling a second specialization
because that costs a second LLVM compile (0.1-1 s, more than many epochs of a small
model) for every (batch size, data size) pair; the price of padding is some wasted
arithmetic on one batch per epoch. Inference pads the same way and drops the padded rows.

`predict` runs the evaluation executable with zero targets and discards its loss, so one
compile serves `evaluate`, validation and `predict`.

`save`/`load` write/read a *checkpoint of the variables* (`gc.save_checkpoint`, atomic):
the weights, BatchNorm statistics, Dropout counters and the optimizer state. The graph
itself is rebuilt from the Python definition, which is what gives a `Model` its layers;
use `save_graph` for a `.gcg` file (for the `graphc` CLI) and `export` for a shared library.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from graphc import comm, optim
from graphc.builder import placeholder
from graphc.compile import compile as gc_compile
from graphc.errors import ArgumentError, GraphcError
from graphc.export.api import export
from graphc.io import checkpoint
from graphc.io.gcg import save
from graphc.ir import DType, Graph, Node
from graphc.nn import losses as losses_mod
from graphc.nn.layer import Scope
from graphc.ops import elementwise as ew
from graphc.ops import reduce as rd
from graphc.ops.collective import allreduce
from graphc.options import CompileOptions
from graphc.runtime.reference import reference
from graphc.training import loop, parallel
from graphc.training.history import History
from graphc.training.metrics import resolve

__all__ = ["Model"]

Net = Callable[[Node], Node]


@dataclass
class _TrainGraph:
    x: Node
    y: Node
    mask: Node
    loss: Node
    outputs: Node
    updates: dict[Node, Node]
    fn: Any = None


@dataclass
class _InferGraph:
    x: Node
    y: Node
    outputs: Node
    per_example: Node
    extra: list[Node] = field(default_factory=list)  # the regularization term, if any
    fn: Any = None


class Model:
    """See the module docstring. `metrics` are names (see `graphc.metrics.resolve`) or
    callables ``fn(y_true, outputs) -> float`` on numpy arrays; `optimizer` defaults to
    ``Adam(1e-3)``; `backend` is "compiled" (LLVM) or "reference" (numpy interpreter)."""

    def __init__(self, net: Net, input_shape: Sequence[int], *,
                 input_dtype: DType | str = DType.float32,
                 loss: str | losses_mod.Loss = "sparse_categorical_crossentropy",
                 optimizer: optim.Optimizer | None = None,
                 metrics: Sequence[str | Callable[..., float]] = ("accuracy",),
                 name: str = "model", backend: str = "compiled",
                 compile_options: CompileOptions | None = None):
        if not callable(net):
            raise GraphcError(f"net must be a layer or a function of one node, got {net!r}",
                              op="Model")
        if backend not in ("compiled", "reference"):
            raise GraphcError(f"backend must be 'compiled' or 'reference', got {backend!r}",
                              op="Model")
        self.net = net
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_dtype = DType.of(input_dtype)
        self.loss = losses_mod.get(loss)
        self.optimizer = optimizer if optimizer is not None else optim.Adam(1e-3)
        self.metrics = [resolve(m, self.loss.task) for m in metrics]
        self.backend = backend
        self.compile_options = compile_options
        self.graph = Graph(name)
        self.stop_training = False
        self.default_batch_size = 32
        self._train: dict[int, _TrainGraph] = {}
        self._train_dp: dict[int, _TrainGraph] = {}  # data-parallel steps, by per-rank batch
        self._infer: dict[int, _InferGraph] = {}

    # --- building ----------------------------------------------------------------------
    def _mask_dtype(self) -> DType:
        return self.input_dtype if self.input_dtype.is_float else DType.float32

    def _forward(self, x: Node, scope: Scope) -> Node:
        with self.graph, scope:
            out = self.net(x)
        if not isinstance(out, Node):
            raise GraphcError(f"net must return a node, returned {out!r}", op="Model")
        return out

    def _targets(self, out: Node, prefix: str) -> Node:
        want = self.loss.target_type(out.type)
        dtype = out.dtype if want.dtype.is_float else want.dtype
        return placeholder(want.shape, dtype, name=self.graph.unique_name(f"{prefix}y"))

    def train_graph(self, batch_size: int, distributed: bool = False) -> _TrainGraph:
        """The training step's nodes for `batch_size` (built on first request).

        `distributed` builds the data-parallel step of this rank (`batch_size` is then the
        per-rank batch; see `graphc.training.parallel` for the semantics): the loss is this
        rank's masked sum over the *global* count of real examples times the number of
        ranks (so the mean over ranks of the gradients is the gradient of the global mean,
        even for a padded last batch split unevenly), the optimizer averages every gradient
        over the ranks before clipping (`minimize(distributed=True)`), float layer state
        (BatchNorm's running statistics) is averaged over the ranks each step so every
        variable stays bitwise identical on all ranks, and dropout draws from stream
        `rank`.
        """
        cache = self._train_dp if distributed else self._train
        if batch_size in cache:
            return cache[batch_size]
        g = self.graph
        prefix = "train_dp/" if distributed else "train/"
        with g:
            x = placeholder((batch_size, *self.input_shape), self.input_dtype,
                            name=g.unique_name(f"{prefix}x"))
            mask = placeholder((batch_size,), self._mask_dtype(),
                               name=g.unique_name(f"{prefix}sample_mask"))
        scope = Scope(training=True, sample_mask=mask,
                      stream=comm.world().rank if distributed else 0)
        out = self._forward(x, scope)
        with g:
            y = self._targets(out, prefix)
            per_example = self.loss(out, y)
            m = mask if mask.dtype == per_example.dtype else ew.cast(mask, per_example.dtype)
            count = rd.sum(m)
            if distributed:  # the global count of real examples / ranks (equal shares)
                count = allreduce(count, "mean", name=g.unique_name(f"{prefix}count"))
            loss = rd.sum(per_example * m) / count
            loss = self._with_regularization(loss, scope.regularization_losses())
            trainable = [v for v in g.trainable_variables if v.dtype.is_float]
            updates = self.optimizer.minimize(loss, trainable, distributed=distributed)
            state = dict(scope.updates)
            if distributed:
                state = {v: allreduce(new, "mean") if new.dtype.is_float else new
                         for v, new in state.items()}
        clash = [v.name for v in state if v in updates]
        if clash:
            raise GraphcError(f"variables updated both by the optimizer and by a layer: {clash}",
                              op="Model")
        updates.update(state)
        built = _TrainGraph(x, y, mask, loss, out, updates)
        name = f"train_dp_b{batch_size}" if distributed else f"train_b{batch_size}"
        g.add_signature(name, [x, y, mask], [loss, out], updates)
        cache[batch_size] = built
        return built

    def infer_graph(self, batch_size: int) -> _InferGraph:
        """The inference nodes for `batch_size`: outputs and per-example losses."""
        if batch_size in self._infer:
            return self._infer[batch_size]
        g = self.graph
        with g:
            x = placeholder((batch_size, *self.input_shape), self.input_dtype,
                            name=g.unique_name("x"))
        scope = Scope(training=False)
        out = self._forward(x, scope)
        with g:
            y = self._targets(out, "")
            per_example = self.loss(out, y)
            terms = scope.regularization_losses()
            extra = [self._with_regularization(terms[0], terms[1:])] if terms else []
        built = _InferGraph(x, y, out, per_example, extra)
        g.add_signature(f"evaluate_b{batch_size}", [x, y], [out, per_example, *extra])
        g.add_signature(f"predict_b{batch_size}", [x], [out])
        self._infer[batch_size] = built
        return built

    @staticmethod
    def _with_regularization(loss: Node, terms: list[Node]) -> Node:
        for term in terms:
            loss = loss + (term if term.dtype == loss.dtype else ew.cast(term, loss.dtype))
        return loss

    def build(self, batch_size: int | None = None) -> Model:
        """Build the training and inference graphs (no compilation); creates every variable
        (layers' and optimizer's)."""
        b = batch_size or self.default_batch_size
        self.train_graph(b)
        self.infer_graph(b)
        return self

    def _compile(self, inputs: list[Node], outputs: list[Node],
                 updates: dict[Node, Node] | None = None) -> Any:
        if self.backend == "reference":
            return reference(self.graph, inputs, outputs, updates=updates)
        return gc_compile(self.graph, inputs, outputs, updates=updates,
                          options=self.compile_options)

    def train_step_fn(self, batch_size: int, distributed: bool = False) -> Any:
        """The compiled training step ``(x, y, mask) -> (loss, outputs)`` (cached)."""
        t = self.train_graph(batch_size, distributed)
        if t.fn is None:
            t.fn = self._compile([t.x, t.y, t.mask], [t.loss, t.outputs], t.updates)
        return t.fn

    def evaluate_fn(self, batch_size: int) -> Any:
        """The compiled inference ``(x, y) -> (outputs, per-example loss[, reg])``."""
        t = self.infer_graph(batch_size)
        if t.fn is None:
            t.fn = self._compile([t.x, t.y], [t.outputs, t.per_example, *t.extra])
        return t.fn

    # --- data --------------------------------------------------------------------------
    def check_x(self, x: Any) -> np.ndarray:
        """`x` as a contiguous array of (n, *input_shape) in the input dtype, or an
        ArgumentError saying what was expected."""
        array = np.asarray(x)
        if array.ndim == 0 or array.shape[1:] != self.input_shape:
            raise ArgumentError(f"x: expected shape (n, {', '.join(map(str, self.input_shape))})"
                                f" of {self.input_dtype}, got {array.shape}")
        if len(array) == 0:
            raise ArgumentError("x has no examples")
        want = self.input_dtype.np
        if array.dtype != want:
            if array.dtype.kind == want.kind or (array.dtype.kind in "iub" and want.kind == "f"):
                array = array.astype(want)
            else:
                raise ArgumentError(f"x: expected dtype {want}, got {array.dtype}")
        return np.ascontiguousarray(array)

    def check_y(self, y: Any, n: int, target: Node) -> np.ndarray:
        """`y` as an array of n targets of `target`'s per-example type, or an ArgumentError."""
        array = np.asarray(y)
        want_shape, want = target.shape[1:], target.dtype.np
        if array.shape != (n, *want_shape):
            raise ArgumentError(f"y: expected shape {(n, *want_shape)} for loss "
                                f"{self.loss.name!r}, got {array.shape}")
        if array.dtype != want:
            if want.kind == "i" and array.dtype.kind not in "iu":
                raise ArgumentError(f"y: expected integer labels, got {array.dtype}")
            array = array.astype(want)
        return np.ascontiguousarray(array)

    # --- public API ----------------------------------------------------------------------
    def fit(self, x: Any, y: Any, batch_size: int = 32, epochs: int = 1, *,
            validation_data: tuple[Any, Any] | None = None, validation_split: float = 0.0,
            shuffle: bool = True, seed: int = 0, callbacks: Sequence[Any] = (),
            verbose: int = 1, initial_epoch: int = 0, stream: TextIO | None = None,
            distributed: bool = False) -> History:
        """Train for `epochs` epochs (counting from `initial_epoch`); return the History.

        Each epoch visits every example once, in an order drawn from ``default_rng(seed)``
        when `shuffle`. `validation_split` holds out that fraction (a seeded split) when
        no `validation_data` is given. Validation runs after every epoch and adds
        ``val_<name>`` entries. `callbacks` get the Keras hooks; a callback may set
        ``model.stop_training``. Progress goes to `stream` (default sys.stdout).

        `distributed=True` trains data-parallel over the ranks of an MPI job (launch with
        ``mpiexec -n N``): `batch_size` is then the global batch, split between the ranks;
        progress and callbacks run on rank 0. See `graphc.training.parallel`.
        """
        if not isinstance(distributed, bool):
            raise GraphcError(f"distributed must be True or False, got {distributed!r}",
                              op="Model.fit")
        if distributed:
            return parallel.fit_distributed(
                self, x, y, batch_size, epochs, validation_data, validation_split, shuffle,
                seed, list(callbacks), verbose, initial_epoch, stream or sys.stdout)
        return loop.fit(self, x, y, batch_size, epochs, validation_data, validation_split,
                        shuffle, seed, list(callbacks), verbose, initial_epoch,
                        stream or sys.stdout)

    def evaluate(self, x: Any, y: Any, batch_size: int | None = None) -> dict[str, float]:
        """{"loss": mean loss (+ regularization), metric: value, ...} in inference mode."""
        b = batch_size or self.default_batch_size
        t = self.infer_graph(b)
        xs = self.check_x(x)
        ys = self.check_y(y, len(xs), t.y)
        outputs, per_example, extra = loop.run_inference(self, xs, ys, b)
        logs = {"loss": float(np.mean(per_example, dtype=np.float64)) + extra}
        for name, fn in self.metrics:
            logs[name] = float(fn(ys, outputs))
        return logs

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The network's outputs (e.g. logits) for every example, in inference mode."""
        b = batch_size or self.default_batch_size
        t = self.infer_graph(b)
        xs = self.check_x(x)
        zeros = np.zeros((len(xs), *t.y.shape[1:]), t.y.dtype.np)
        return loop.run_inference(self, xs, zeros, b)[0]

    # --- weights and files -------------------------------------------------------------
    def _ensure_built(self) -> None:
        if not self._train and not self._train_dp:
            self.train_graph(self.default_batch_size)

    @property
    def weight_names(self) -> list[str]:
        """The model's own variables (layers' weights and state), not the optimizer's."""
        self._ensure_built()
        optimizer = {v.name for v in self.optimizer.variables}
        return [n for n in self.graph.variables if n not in optimizer]

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the model's variables by name (see `weight_names`)."""
        return {n: self.graph.variables[n].copy() for n in self.weight_names}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Copy values into the live variables (compiled steps see them at once)."""
        unknown = sorted(set(weights) - set(self.graph.variables))
        if unknown:
            raise ArgumentError(f"unknown variables: {', '.join(unknown)}")
        for name, value in weights.items():
            self.graph.variables[name] = value

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint of every variable (model and optimizer) atomically."""
        self._ensure_built()
        return checkpoint.save_checkpoint(self.graph, path)

    def load(self, path: str | os.PathLike[str]) -> Model:
        """Load a checkpoint written by `save` of a model with the same definition."""
        self._ensure_built()
        checkpoint.load_checkpoint(self.graph, path)
        return self

    def save_graph(self, path: str | os.PathLike[str]) -> None:
        """Save the graph with its signatures and current values as a `.gcg` file."""
        self._ensure_built()
        save(self.graph, path)

    def export(self, path: str | os.PathLike[str], batch_size: int | None = None,
               **kwargs: Any) -> Any:
        """Export inference (x -> outputs at `batch_size`) as a shared library through
        `gc.export` (its keyword arguments pass through)."""
        t = self.infer_graph(batch_size or self.default_batch_size)
        return export(self.graph, path, inputs=[t.x], outputs=t.outputs, **kwargs)

    def summary(self) -> str:
        """A table of the model's variables (shape, parameters, trainable)."""
        self._ensure_built()
        rows = [("variable", "shape", "params", "trainable")]
        total = trainable = 0
        nodes = {n.name: n for n in self.graph.variable_nodes}
        for name in self.weight_names:
            node = nodes[name]
            is_trainable = bool(node.attrs.get("trainable", True))
            rows.append((name, str(node.type), f"{node.size:,}", "yes" if is_trainable else ""))
            total += node.size
            trainable += node.size if is_trainable else 0
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"total params: {total:,} (trainable {trainable:,})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Model {self.graph.name!r}: loss {self.loss.name}, {len(self._train)} train " \
               f"graph(s)>"
