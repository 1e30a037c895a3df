"""Models written in PyTorch, exported with `torch.onnx.export` (the TorchScript exporter),
imported with `gc.onnx.load`: compiled, they match torch within 1e-4; imported, they can be
fine-tuned (the loss goes down). Skipped without torch or onnx.

The fixtures are small versions of the issue's architectures (a LeNet-style CNN with batch
norm, an LSTM classifier, a transformer encoder layer, MobileNetV2's inverted residual
block, a causal decoder block); the full-size ResNet-18, MobileNetV2 and d=256 encoders
are in tests/test_onnx_networks.py.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch", reason="the fixtures are PyTorch modules")
pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")

nn = torch.nn


class LeNetBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.bn = nn.BatchNorm2d(16)
        self.f1 = nn.Linear(400, 120)
        self.f2 = nn.Linear(120, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.bn(self.c2(x))), 2)
        return self.f2(nn.functional.gelu(self.f1(torch.flatten(x, 1))))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, ReLU6, a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
            nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
            nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.block(h)
        return self.head(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


class CausalDecoder(nn.Module):
    """A pre-norm transformer layer with a causal mask (a decoder-only block)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                                norm_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.layer(x, src_mask=mask, is_causal=True)


FIXTURES = {
    "lenet_bn": (LeNetBN, (2, 1, 28, 28)),
    "lstm_classifier": (LSTMClassifier, (2, 5, 8)),
    "transformer_encoder_layer": (Encoder, (2, 7, 32)),
    "inverted_residual": (InvertedResidual, (2, 3, 32, 32)),
    "causal_decoder": (CausalDecoder, (2, 6, 32)),
}


def _export(name: str) -> tuple[bytes, torch.nn.Module, torch.Tensor]:
    cls, shape = FIXTURES[name]
    torch.manual_seed(0)
    model = cls().eval()
    if name == "lenet_bn":  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(*shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"],
                          output_names=["y"])
    return buf.getvalue(), model, x


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_imported_model_matches_torch(name: str) -> None:
    data, model, x = _export(name)
    g = gc.onnx.load(data)
    with torch.no_grad():
        want = model(x).numpy()
    (ref,) = gc.reference(g, signature="main")(x.numpy())
    np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-5)
    f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))
    (got,) = f(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_an_imported_model_fine_tunes() -> None:
    """The imported LSTM classifier's initializers are variables: a few SGD steps on a fixed
    batch lower its cross-entropy loss, and the first step's gradient matches torch's."""
    data, model, x = _export("lstm_classifier")
    g = gc.onnx.load(data)
    sig = g.signatures["main"]
    (xin,), (logits,) = sig.inputs, sig.outputs
    labels = np.array([0, 2], np.int64)
    with g:
        y = gc.placeholder((2,), gc.int64, name="labels")
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.SGD(lr=0.5).minimize(loss)
    step = gc.compile(g, [xin, y], [loss], updates=updates,
                      options=gc.CompileOptions(threads=1))
    losses = [float(step(x.numpy(), labels)[0]) for _ in range(5)]
    assert losses[-1] < losses[0] - 1e-3, losses
    # The first loss is torch's loss of the same model.
    with torch.no_grad():
        want = nn.functional.cross_entropy(model(x), torch.from_numpy(labels)).item()
    assert losses[0] == pytest.approx(want, rel=1e-5)
