"""Accuracy of int8 quantization on the bundled digits (issue 17's acceptance): the MLP of
examples/train_digits_mlp.py (64-512-10), trained here, then quantized statically
(calibrated on the training images) and dynamically: top-1 within 0.5 points of float32."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn


@pytest.fixture(scope="module")
def trained() -> tuple[dict[str, np.ndarray], gc.datasets.Dataset, gc.datasets.Dataset]:
    data = gc.datasets.digits()
    train, test = gc.datasets.train_test_split(data, test_fraction=0.25, seed=0)
    net = nn.Sequential([nn.Dense(512, "relu", kernel_initializer="he_normal", seed=0),
                         nn.Dropout(0.3, seed=0), nn.Dense(10, seed=1)])
    model = gc.Model(net, input_shape=(64,), optimizer=gc.optim.Adam(2e-3),
                     metrics=["accuracy"])
    model.fit(train.images, train.labels, batch_size=32, epochs=10, seed=0, verbose=0)
    return model.get_weights(), train, test


def _inference_graph(weights: dict[str, np.ndarray], batch: int) -> gc.Graph:
    with gc.Graph("digits_mlp") as g:
        x = gc.placeholder((batch, 64), name="x")
        h = gc.relu(gc.linear(x, gc.constant(weights["dense/kernel"]),
                              gc.constant(weights["dense/bias"])))
        y = gc.linear(h, gc.constant(weights["dense_1/kernel"]),
                      gc.constant(weights["dense_1/bias"]))
    g.add_signature("main", [x], [y])
    return g


def _top1(graph: gc.Graph, images: np.ndarray, labels: np.ndarray) -> float:
    f = gc.compile(graph, signature="main", options=gc.CompileOptions(threads=1))
    return float(np.mean(np.argmax(f(images)[0], axis=1) == labels))


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_static_int8_top1_within_half_a_point(trained: tuple, method: str) -> None:
    weights, train, test = trained
    n = len(test.images)
    g = _inference_graph(weights, n)
    calibration = [train.images[i:i + n] for i in range(0, len(train.images) - n + 1, n)]
    q = gc.quantize_static(g, calibration, method)
    assert sum(node.op == "matmul_integer" for node in q.nodes) == 2
    fp32 = _top1(g, test.images, test.labels)
    int8 = _top1(q, test.images, test.labels)
    assert fp32 > 0.95
    assert abs(int8 - fp32) <= 0.005, (fp32, int8)


def test_dynamic_int8_top1_within_half_a_point(trained: tuple) -> None:
    weights, _, test = trained
    g = _inference_graph(weights, len(test.images))
    fp32 = _top1(g, test.images, test.labels)
    int8 = _top1(gc.quantize_dynamic(g), test.images, test.labels)
    assert abs(int8 - fp32) <= 0.005, (fp32, int8)


@pytest.fixture(scope="module")
def trained_cnn() -> tuple[dict[str, np.ndarray], gc.datasets.Dataset, gc.datasets.Dataset]:
    data = gc.datasets.digits(flatten=False)
    train, test = gc.datasets.train_test_split(data, test_fraction=0.25, seed=0)
    net = nn.Sequential([
        nn.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                  seed=0),
        nn.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                  seed=1),
        nn.MaxPool2D(2), nn.Flatten(), nn.Dense(10, seed=2)])
    model = gc.Model(net, input_shape=(1, 8, 8), optimizer=gc.optim.Adam(2e-3),
                     metrics=["accuracy"])
    model.fit(train.images, train.labels, batch_size=32, epochs=6, seed=0, verbose=0)
    return model.get_weights(), train, test


def _cnn_graph(weights: dict[str, np.ndarray], batch: int) -> gc.Graph:
    with gc.Graph("digits_cnn") as g:
        x = gc.placeholder((batch, 1, 8, 8), name="x")
        h = x
        for layer in ("conv2d", "conv2d_1"):
            h = gc.conv2d(h, gc.constant(weights[f"{layer}/kernel"]), padding=1, name=layer)
            h = gc.relu(h + gc.reshape(gc.constant(weights[f"{layer}/bias"]), (-1, 1, 1)))
        h = gc.reshape(gc.max_pool2d(h, 2), (batch, -1))
        y = gc.linear(h, gc.constant(weights["dense/kernel"]), gc.constant(weights["dense/bias"]))
    g.add_signature("main", [x], [y])
    return g


def test_cnn_static_int8_top1_within_half_a_point(trained_cnn: tuple) -> None:
    weights, train, test = trained_cnn
    n = len(test.images)
    g = _cnn_graph(weights, n)
    calibration = [train.images[i:i + n] for i in range(0, len(train.images) - n + 1, n)]
    q = gc.quantize_static(g, calibration)
    assert sum(node.op == "matmul_integer" for node in q.nodes) == 3  # two convs, the dense
    assert not any(node.op == "conv2d" for node in q.nodes)
    fp32 = _top1(g, test.images, test.labels)
    int8 = _top1(q, test.images, test.labels)
    assert fp32 > 0.95
    assert abs(int8 - fp32) <= 0.005, (fp32, int8)
